"""The quantile forecast against the load over two eval days (docs/img/forecast-interval.png).

Usage (from the repo root):
  .venv/bin/python scripts/plot_forecast_interval.py [--trace PATH] [--horizon-s 1800] [--day 9]

`auto` (as `bench forecast` scores it: the live selection's choice at every origin) and its
conformal p50/p90/p99 (`tasks.core.forecast_quantile`), each plotted at its target time, against
the load; the two days start at `--day` (eval days are 7-14).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from tasks.core.forecast import AUTO
from tasks.core.forecast_eval import backtest_paths
from tasks.core.forecast_quantile import LEVELS, quantile_path

ROOT = Path(__file__).resolve().parent.parent


def load(trace: Path) -> tuple[np.ndarray, float]:
    df = pd.read_csv(trace)
    col = "req_per_s" if "req_per_s" in df.columns else "total_req_per_s"
    y = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float)
    if "all_zero_gap" in df.columns:
        y = np.where(df["all_zero_gap"].to_numpy() == 1, np.nan, y)
    return y, float(np.median(np.diff(df["window_start_s"].to_numpy(dtype=float))))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trace", type=Path, default=ROOT / "data/traces/servegen/servegen_m-small_10min.csv")
    ap.add_argument("--horizon-s", type=float, default=1800.0)
    ap.add_argument("--day", type=float, default=9.0)
    ap.add_argument("--out", type=Path, default=ROOT / "docs/img/forecast-interval.png")
    a = ap.parse_args()
    y, step = load(a.trace)
    hi = max(1, round(a.horizon_s / step))
    paths, _ = backtest_paths(y, step, a.horizon_s)
    q = quantile_path(paths[AUTO], y, hi, step, LEVELS)
    n = len(y)
    lo, end = round(a.day * 86400 / step), min(n, round((a.day + 2) * 86400 / step))
    t_target = (np.arange(n) + hi) * step / 3600.0  # the forecast from origin i is for i + hi
    sel = slice(max(0, lo - hi), end - hi)
    hours = np.arange(n) * step / 3600.0
    target = np.full(n, np.nan)
    target[: n - hi] = y[hi:]
    ok = ~np.isnan(target) & ~np.isnan(q).any(axis=0)
    win = np.zeros(n, bool)
    win[sel] = True
    cover = {lv: float(np.mean(target[ok & win] <= q[k, ok & win])) for k, lv in enumerate(LEVELS)}
    fig, ax = plt.subplots(figsize=(11, 4))
    ax.fill_between(t_target[sel], q[0, sel], q[2, sel], color="tab:blue", alpha=0.15, label="p50-p99")
    ax.fill_between(t_target[sel], q[0, sel], q[1, sel], color="tab:blue", alpha=0.3, label="p50-p90")
    ax.plot(
        t_target[sel], paths[AUTO][sel], color="tab:blue", lw=1, label=f"auto forecast ({a.horizon_s / 60:g} min ahead)"
    )
    ax.plot(hours[lo:end], y[lo:end], color="black", lw=1.2, label="load")
    ax.set_xlabel("hours since trace start")
    ax.set_ylabel("req/s")
    cov = ", ".join(f"p{lv * 100:g} {c:.0%}" for lv, c in cover.items())
    ax.set_title(f"{a.trace.name}: conformal quantiles of auto, days {a.day:g}-{a.day + 2:g} (coverage here: {cov})")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(a.out, dpi=110)
    print(a.out, cov)


if __name__ == "__main__":
    main()
