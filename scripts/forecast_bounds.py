"""How far below last-value can a forecast of the ServeGen series get? Evidence for issue 5.

Usage (from the repo root):  .venv/bin/python scripts/forecast_bounds.py

Everything here uses the EVAL split (targets on days 7-14) ON PURPOSE, to bound what any
forecaster could reach there; none of it is a forecaster:

1. Hindsight regression (CHEATING, in-sample): the log change h ahead regressed on a rich set of
   features (recent log changes over 1-6 windows, levels over 30 min-1 day, daily shape, profile
   deviation at two offsets, weekly shape, the same time last week, 24 hour-of-day dummies of the
   target, intercept), fitted by least squares ON the eval pairs themselves and scored on the same
   pairs. Also the same linear model fitted to minimise MAPE itself (the scored loss, in-sample).
2. Variance explained: R^2 of the in-sample least-squares fit on the (clipped) log change, and the
   correlation of the single best feature with it.
3. m-mid: the share of last-value's MAPE that its near-zero targets make up, and what shrinking
   every forecast by a constant factor does to MAPE (a LOSS-GAMING illustration, not a method).

Origins scored: observed target (> 0), split by target index as in `bench forecast`; both the
`all` and `observed` (origin's own sample observed) protocols.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy.optimize import minimize

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from forecast_experiments import DAY, STEP, TRACES, feature, load

from tasks.core.forecast import PATHS, abs_pct_errors

FEATURES = (
    "d1",
    "d2",
    "d3",
    "d4",
    "d5",
    "d6",
    "lvl3",
    "lvl6",
    "lvl18",
    "lvl36",
    "lvl144",
    "shape",
    "pdev_6",
    "pdev_36",
    "wshape",
)
NEAR_ZERO_SHARE = 0.05


def design(y: np.ndarray, hi: int) -> np.ndarray:
    n = len(y)
    cols = [np.clip(np.nan_to_num(feature(f, y, hi)), -1.0, 1.0) for f in FEATURES]
    # Same time last week at the target, relative to now (smoothed): the weekly level.
    logy = np.log(np.maximum(np.where(np.isnan(y), np.nan, y), 1e-9))
    filled = np.log(np.maximum(PATHS["last-value"](y, 0.0, STEP), 1e-9))
    week = np.full(n, 0.0)
    i = np.arange(n)
    ok = i + hi - 7 * DAY >= 0
    week[ok] = np.nan_to_num(logy[(i + hi - 7 * DAY)[ok]] - filled[ok])
    cols.append(np.clip(week, -1.0, 1.0))
    hour = ((i + hi) % DAY) // 6
    cols += [(hour == k).astype(float) for k in range(24)]  # includes the intercept
    return np.column_stack(cols)


def shrink_chosen_on_train() -> None:
    """LOSS-GAMING illustration: each honest path times the constant c minimising its TRAIN MAPE
    (MAPE rewards under-forecasting), scored on eval. Not a method: it makes forecasts biased low."""
    from tasks.core.forecast_eval import backtest_errors

    for trace in TRACES:
        y = load(trace)
        n = len(y)
        for hi in (1, 3):
            tgt = np.arange(n) + hi
            train = (tgt >= 2 * DAY) & (tgt < 7 * DAY)
            evl = (tgt >= 7 * DAY) & (tgt < n)
            errs, _ = backtest_errors(y, STEP, hi * STEP)
            lv_ev = float(np.nanmean(errs["last-value"][evl]))
            for m in ("last-value", "profile-ar"):
                f = PATHS[m](y, float(hi), STEP)
                cs = np.arange(0.80, 1.001, 0.01)
                c = min(cs, key=lambda c: float(np.nanmean(abs_pct_errors(c * f, y, hi)[train])))
                ev = float(np.nanmean(abs_pct_errors(c * f, y, hi)[evl]))
                print(
                    f"{trace} h={hi * 10}min {m} x {c:.2f} (c chosen on train, LOSS-GAMING): eval MAPE {ev:.4f} "
                    f"({ev / lv_ev - 1:+.1%} vs last-value)"
                )


def main() -> None:
    for trace in TRACES:
        y = load(trace)
        n = len(y)
        lv_path = PATHS["last-value"](y, 0.0, STEP)
        for hi in (1, 3):
            x = design(y, hi)
            tgt = np.arange(n) + hi
            e_lv = abs_pct_errors(lv_path, y, hi)
            for protocol in ("all", "observed"):
                sel = (tgt >= 7 * DAY) & (tgt < n) & ~np.isnan(e_lv)
                if protocol == "observed":
                    sel &= ~np.isnan(y)
                idx = np.flatnonzero(sel)
                base, actual = lv_path[idx], y[idx + hi]
                t = np.clip(np.log(actual) - np.log(base), -1.0, 1.0)
                xs = x[idx]
                beta, *_ = np.linalg.lstsq(xs, t, rcond=None)
                fit = xs @ beta
                r2 = 1.0 - np.sum((t - fit) ** 2) / np.sum((t - t.mean()) ** 2)
                corr = max(abs(np.corrcoef(xs[:, k], t)[0, 1]) for k in range(len(FEATURES)) if xs[:, k].std() > 0)
                lv_mape = float(np.mean(e_lv[idx]))
                ls_mape = float(np.mean(np.abs(base * np.exp(fit) - actual) / actual))

                def mape(
                    b: np.ndarray, xs: np.ndarray = xs, base: np.ndarray = base, actual: np.ndarray = actual
                ) -> float:
                    return float(np.mean(np.sqrt((base * np.exp(xs @ b) - actual) ** 2 + 1e-6) / actual))

                opt = minimize(mape, beta, method="L-BFGS-B", options={"maxiter": 500})
                mape_fit = float(np.mean(np.abs(base * np.exp(np.clip(xs @ opt.x, -5, 5)) - actual) / actual))
                print(
                    f"{trace} h={hi * 10}min eval [{protocol}] n={len(idx)}: last-value MAPE {lv_mape:.4f}; "
                    f"HINDSIGHT least-squares {ls_mape:.4f} ({ls_mape / lv_mape - 1:+.1%}), "
                    f"HINDSIGHT min-MAPE {mape_fit:.4f} ({mape_fit / lv_mape - 1:+.1%}); "
                    f"R^2 of the log change {r2:.3f}, best single |corr| {corr:.2f}"
                )
                # How much of the min-MAPE gain is a plain downward shift: the LS fit times the best constant.
                shift = min(
                    (float(np.mean(np.abs(c * base * np.exp(fit) - actual) / actual)), c)
                    for c in np.arange(0.80, 1.001, 0.01)
                )
                print(
                    f"    HINDSIGHT least-squares x best constant (c={shift[1]:.2f}, LOSS-GAMING): "
                    f"{shift[0]:.4f} ({shift[0] / lv_mape - 1:+.1%})"
                )
                if trace == "m-mid":
                    nz = actual < NEAR_ZERO_SHARE * np.nanmedian(y)
                    share = float(np.sum(e_lv[idx][nz]) / np.sum(e_lv[idx]))
                    shrink = {
                        c: float(np.mean(np.abs(c * base - actual) / actual) / lv_mape - 1) for c in (0.9, 0.8, 0.5)
                    }
                    print(
                        f"    near-zero targets: {int(nz.sum())} of {len(idx)} make up {share:.1%} of last-value's "
                        "MAPE; LOSS-GAMING illustration, last-value x c: "
                        + ", ".join(f"c={c}: {v:+.1%}" for c, v in shrink.items())
                    )


if __name__ == "__main__":
    main()
    shrink_chosen_on_train()
