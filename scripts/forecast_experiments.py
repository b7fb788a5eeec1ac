"""Forecast experiments on the ServeGen series (issue 5): candidate methods scored on train only.

Usage (from the repo root):
    .venv/bin/python scripts/forecast_experiments.py            # train split only (choices are made here)
    .venv/bin/python scripts/forecast_experiments.py --eval     # also the eval split (read once, at the end)

Splits as `heteroscale bench forecast --train-days 7`: an origin is scored in the split holding its
target; train = targets on days 2-7, eval = days 7-14. Two scoring protocols, applied identically to
every method: `all` (every observed target; the issue's metric as first measured) and `obs-origin`
(only origins whose own latest sample is observed: from a missing origin the live policy HOLDs and
does not use the forecast, see tasks/core/policy.py `_fresh`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.core.forecast import (
    PATHS,
    _ffill,
    _nanmedian_rows,
    abs_pct_errors,
    daily_shape_log_change,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "traces" / "servegen"
TRACES = ("m-small", "m-mid")
STEP = 600.0
DAY = 144
Method = Callable[[np.ndarray, float, float], np.ndarray]


def load(trace: str) -> np.ndarray:
    df = pd.read_csv(DATA / f"servegen_{trace}_10min.csv")
    y = df["total_req_per_s"].to_numpy(dtype=float)
    return np.where(df["all_zero_gap"].to_numpy() == 1, np.nan, y)


def scores(y: np.ndarray, f: np.ndarray, hi: int, split: str, protocol: str) -> dict[str, float]:
    n = len(y)
    e = abs_pct_errors(f, y, hi)
    tgt = np.arange(n) + hi
    lo, up = (2 * DAY, 7 * DAY) if split == "train" else (7 * DAY, n)
    sel = (tgt >= lo) & (tgt < up) & ~np.isnan(e)
    if protocol == "obs-origin":
        sel &= ~np.isnan(y)
    ev = e[sel]
    return {"mape": float(np.mean(ev)), "p90": float(np.percentile(ev, 90)), "med": float(np.median(ev)), "n": len(ev)}


def table(methods: dict[str, Method], splits: tuple[str, ...], protocols: tuple[str, ...]) -> None:
    for trace in TRACES:
        y = load(trace)
        for hi in (1, 3):
            paths = {m: fn(y, float(hi), STEP) for m, fn in methods.items()}
            for split in splits:
                for prot in protocols:
                    base = scores(y, paths["last-value"], hi, split, prot)
                    print(f"\n{trace} h={hi * 10}min {split} [{prot}] n={base['n']}")
                    for m, f in paths.items():
                        s = scores(y, f, hi, split, prot)
                        print(
                            f"  {m:28s} MAPE {s['mape']:.4f} ({s['mape'] / base['mape'] - 1:+6.1%})  "
                            f"p90 {s['p90']:.3f}  med {s['med']:.4f} ({s['med'] / base['med'] - 1:+6.1%})"
                        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--eval", action="store_true", help="also score the eval split (read once)")
    ap.add_argument("--only", default="", help="comma-separated method names")
    args = ap.parse_args()
    methods: dict[str, Method] = dict(PATHS)
    methods.update(candidates())
    if args.only:
        keep = {"last-value", *args.only.split(",")}
        methods = {m: f for m, f in methods.items() if m in keep}
    splits = ("train", "eval") if args.eval else ("train",)
    table(methods, splits, ("all", "obs-origin"))


# --- candidate building blocks ------------------------------------------------------------


def _log_filled(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    filled = _ffill(y)
    return filled, np.log(np.maximum(filled, 1e-9))


def _smooth(logy: np.ndarray) -> np.ndarray:
    return pd.Series(logy).rolling(3, center=True, min_periods=1).median().to_numpy()


def _seasonal_level(sm: np.ndarray, off: int, s: int, days: int) -> np.ndarray:
    """Median over the last `days` seasons of the smoothed log level at i + off - j*s (past only)."""
    n = len(sm)
    idx = np.arange(n)
    rows = np.full((days, n), np.nan)
    for j in range(1, days + 1):
        src = idx + off - j * s
        ok = (src >= 0) & (src <= idx - 1 - 1)  # centred smoothing reads src + 1: keep src + 1 < i
        ok &= src + 1 <= idx
        rows[j - 1, ok] = sm[src[ok]]
    return _nanmedian_rows(rows)


def feature(name: str, y: np.ndarray, hi: int) -> np.ndarray:
    n = len(y)
    filled, logy = _log_filled(y)
    if name.startswith("d") and name[1:].isdigit():  # recent log change over k windows
        k = int(name[1:])
        c = np.zeros(n)
        c[k:] = logy[:-k] - logy[k:]
        return c
    if name.startswith("hinge"):  # max(lvl_k, 0) or min(lvl_k, 0): bursts revert more than dips
        sign, k = name[5], name[6:]
        c = feature(f"lvl{k}", y, hi)
        return np.maximum(c, 0.0) if sign == "p" else np.minimum(c, 0.0)
    if name.startswith("lvl"):  # log of the median of the last k windows minus the current log
        k = int(name[3:])
        med = pd.Series(np.log(np.maximum(y, 1e-9))).rolling(k, min_periods=1).median().ffill().to_numpy()
        return med - logy
    if name == "shape":
        return daily_shape_log_change(filled, hi, STEP)
    if name.startswith("wshape"):  # weekly shape: smoothed log change at the same time last week
        s = 7 * DAY
        sm = pd.Series(logy).rolling(3, center=True, min_periods=1).median().to_numpy()
        c = np.full(n, np.nan)
        i = np.arange(n)
        ok = i - s >= 0
        c[ok] = sm[(i + hi - s)[ok]] - sm[(i - s)[ok]]
        return c
    if name.startswith("pdev"):  # profile forecast (rescaled to the recent level) minus current
        # pdev[_k][_days]: offset averaged over the last k windows (36), profile over `days` days (7)
        parts = name[4:].split("_")[1:]
        k = int(parts[0]) if parts else 36
        days = int(parts[1]) if len(parts) > 1 else 7
        sm = _smooth(logy)
        p_tgt = _seasonal_level(sm, hi, DAY, days)
        p_now = _seasonal_level(sm, 0, DAY, days)
        off = pd.Series(logy - p_now).rolling(k, min_periods=1).mean().to_numpy()
        return p_tgt + off - logy
    if name == "one":
        return np.ones(n)
    raise ValueError(name)


def rolling_ridge(
    y: np.ndarray,
    hi: int,
    feats: tuple[str, ...],
    *,
    window: int = 7 * DAY,
    ridge: float = 1.0,
    clip: float = 1.0,
) -> np.ndarray:
    """seasonal-ar's per-origin ridge refit, on any feature columns (NaN features = 0)."""
    n = len(y)
    filled, logy = _log_filled(y)
    x = np.clip(np.nan_to_num(np.column_stack([feature(f, y, hi) for f in feats])), -clip, clip)
    p = x.shape[1]
    target = np.full(n, np.nan)
    target[: n - hi] = np.where(np.isnan(y[hi:]), np.nan, logy[hi:] - logy[: n - hi])
    ok = ~np.isnan(target) & ~np.isnan(filled)
    t = np.where(ok, np.clip(np.nan_to_num(target), -clip, clip), 0.0)
    xo = x * ok[:, None]
    xtx = np.concatenate([np.zeros((1, p, p)), np.cumsum(xo[:, :, None] * xo[:, None, :], axis=0)])
    xty = np.concatenate([np.zeros((1, p)), np.cumsum(xo * t[:, None], axis=0)])
    i = np.arange(n)
    hi_end = np.clip(i - hi + 1, 0, n)
    lo_end = np.clip(i - hi + 1 - window, 0, n)
    a = xtx[hi_end] - xtx[lo_end] + ridge * np.eye(p)
    b = xty[hi_end] - xty[lo_end]
    beta = np.linalg.solve(a, b[:, :, None])[:, :, 0]
    return filled * np.exp(np.sum(beta * x, axis=1))


def ridge_method(feats: tuple[str, ...], **kw: float) -> Method:
    def fn(y: np.ndarray, h: float, step_s: float) -> np.ndarray:
        return rolling_ridge(y, max(1, round(h)), feats, **kw)  # type: ignore[arg-type]

    return fn


def combo(*names: str, how: str = "mean") -> Method:
    def fn(y: np.ndarray, h: float, step_s: float) -> np.ndarray:
        all_m = {**PATHS, **_CANDS}
        logs = np.vstack([np.log(np.maximum(all_m[m](y, h, step_s), 1e-9)) for m in names])
        agg = np.nanmean(logs, axis=0) if how == "mean" else np.nanmedian(logs, axis=0)
        return np.exp(agg)

    return fn


_CANDS: dict[str, Method] = {}


def candidates() -> dict[str, Method]:
    c = _CANDS
    c["ar:d1d2+shape(=seasonal-ar)"] = ridge_method(("d1", "d2", "shape"))
    c["ar:+lvl6"] = ridge_method(("d1", "d2", "shape", "lvl6"))
    c["ar:+lvl18"] = ridge_method(("d1", "d2", "shape", "lvl18"))
    c["ar:+lvl36"] = ridge_method(("d1", "d2", "shape", "lvl36"))
    c["ar:+lvl6,36"] = ridge_method(("d1", "d2", "shape", "lvl6", "lvl36"))
    c["ar:+pdev"] = ridge_method(("d1", "d2", "shape", "pdev"))
    c["ar:+lvl6+pdev"] = ridge_method(("d1", "d2", "shape", "lvl6", "pdev"))
    for k in (6, 12, 18, 72):
        c[f"ar:+lvl6+pdev_{k}"] = ridge_method(("d1", "d2", "shape", "lvl6", f"pdev_{k}"))
    c["ar:+lvl6+pdev_36_3"] = ridge_method(("d1", "d2", "shape", "lvl6", "pdev_36_3"))
    c["ar:+lvl6+pdev_36_14"] = ridge_method(("d1", "d2", "shape", "lvl6", "pdev_36_14"))
    c["ar:+lvl6+pdev_12+pdev_72"] = ridge_method(("d1", "d2", "shape", "lvl6", "pdev_12", "pdev_72"))
    c["ar:d1+lvl6+pdev"] = ridge_method(("d1", "shape", "lvl6", "pdev"))
    c["ar:d1d2+lvl6+pdev(no shape)"] = ridge_method(("d1", "d2", "lvl6", "pdev"))
    c["ar:+lvl6+pdev r0.1"] = ridge_method(("d1", "d2", "shape", "lvl6", "pdev"), ridge=0.1)
    c["ar:+lvl6+pdev r10"] = ridge_method(("d1", "d2", "shape", "lvl6", "pdev"), ridge=10.0)
    c["ar:+lvl6+pdev w3d"] = ridge_method(("d1", "d2", "shape", "lvl6", "pdev"), window=3 * DAY)
    c["ar:+lvl6+pdev w14d"] = ridge_method(("d1", "d2", "shape", "lvl6", "pdev"), window=14 * DAY)
    c["ar:+lvl6+pdev clip0.5"] = ridge_method(("d1", "d2", "shape", "lvl6", "pdev"), clip=0.5)
    c["combo:blend+ar2+holt"] = combo("seasonal-blend", "ar:+lvl6+pdev", "holt")
    c["combo:ar2+holt"] = combo("ar:+lvl6+pdev", "holt")
    c["combo:ar2+ar"] = combo("ar:+lvl6+pdev", "seasonal-ar")
    base6 = ("d1", "d2", "shape", "lvl6", "pdev_6")
    c["ar:+lvl6+pdev_6+pdev_36"] = ridge_method((*base6, "pdev_36"))
    c["ar:+lvl6+pdev_6+hingep6"] = ridge_method((*base6, "hingep6"))
    c["ar:+lvl6+pdev_6+lvl18"] = ridge_method((*base6, "lvl18"))
    c["ar:+lvl6+pdev_6 w3d"] = ridge_method(base6, window=3 * DAY)
    c["combo:ar6+holt"] = combo("ar:+lvl6+pdev_6", "holt")
    c["combo:ar6+blend"] = combo("ar:+lvl6+pdev_6", "seasonal-blend")
    c["combo:ar6+ar"] = combo("ar:+lvl6+pdev_6", "seasonal-ar")
    c["combo:ar6+ar36"] = combo("ar:+lvl6+pdev_6", "ar:+lvl6+pdev")
    c["ar:+wshape"] = ridge_method(("d1", "d2", "shape", "wshape"))
    c["ar:+one"] = ridge_method(("d1", "d2", "shape", "one"))
    c["ar:d1d2d3+shape"] = ridge_method(("d1", "d2", "d3", "shape"))
    c["combo:blend+ar"] = combo("seasonal-blend", "seasonal-ar")
    c["combo:blend+ar+holt"] = combo("seasonal-blend", "seasonal-ar", "holt")
    c["combo:blend+ar+lv"] = combo("seasonal-blend", "seasonal-ar", "last-value")
    c["combo:blend+ar+ewma"] = combo("seasonal-blend", "seasonal-ar", "ewma")
    c["combo:all5"] = combo("last-value", "ewma", "holt", "seasonal-blend", "seasonal-ar")
    c["combo:med-all5"] = combo("last-value", "ewma", "holt", "seasonal-blend", "seasonal-ar", how="median")
    return c


if __name__ == "__main__":
    main()
