"""How the conformal quantiles are calibrated: the error sets tried for `forecast_quantile` (issue 17).

Usage (from the repo root):  .venv/bin/python scripts/forecast_quantile_sweep.py [train|eval]

Per ServeGen series, horizon (10, 30 min) and forecaster (last-value, auto, profile-ar): coverage
of p50/p90/p99 and the p90 pinball loss (over the mean target) for each calibration set: the same
time of day +-1/2/3 h over 7 days (30 errors at least, else the last day), all errors of the last
1/2/7 days. The default (all errors of the last day) was chosen on `train` (targets on days 2-7);
`eval` (days 7-14) is for the record.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.core.forecast_eval import backtest_paths
from tasks.core.forecast_quantile import quantile_path

ROOT = Path(__file__).resolve().parent.parent
TRACES = (
    ROOT / "data/traces/servegen/servegen_m-small_10min.csv",
    ROOT.parent / "shared/data/traces/servegen/servegen_m-mid_10min.csv",
)
DAY = 86400.0
CONFIGS: dict[str, dict[str, float | None]] = {
    "tod+-1h/7d": {"band_s": 3600.0, "recent_s": DAY},
    "tod+-2h/7d": {"band_s": 7200.0, "recent_s": DAY},
    "tod+-3h/7d": {"band_s": 3 * 3600.0, "recent_s": DAY},
    "all/1d (default)": {"band_s": None, "recent_s": DAY},
    "all/2d": {"band_s": None, "recent_s": 2 * DAY},
    "all/7d": {"band_s": None, "recent_s": 7 * DAY},
}


def main() -> None:
    split = sys.argv[1] if len(sys.argv) > 1 else "train"
    dev: dict[str, list[float]] = {k: [] for k in CONFIGS}
    for tr in TRACES:
        df = pd.read_csv(tr)
        y = df["req_per_s" if "req_per_s" in df.columns else "total_req_per_s"].to_numpy(float)
        y = np.where(df["all_zero_gap"].to_numpy() == 1, np.nan, y)
        step = float(np.median(np.diff(df["window_start_s"].to_numpy(float))))
        n = len(y)
        for h in (600.0, 1800.0):
            hi = max(1, round(h / step))
            paths, _ = backtest_paths(y, step, h)
            tidx = np.arange(n) + hi
            lo, end = (round(2 * DAY / step), round(7 * DAY / step)) if split == "train" else (round(7 * DAY / step), n)
            sel = (tidx >= lo) & (tidx < end)
            t = np.full(n, np.nan)
            t[: n - hi] = y[hi:]
            for name, kw in CONFIGS.items():
                cells = []
                for m in ("last-value", "auto", "profile-ar"):
                    q = quantile_path(paths[m], y, hi, step, (0.5, 0.9, 0.99), **kw)  # type: ignore[arg-type]
                    ok = sel & ~np.isnan(t) & ~np.isnan(q).any(axis=0)
                    cov = [float(np.mean(t[ok] <= q[k, ok])) for k in range(3)]
                    d = t[ok] - q[1, ok]
                    pin = float(np.mean(np.maximum(0.9 * d, -0.1 * d)) / np.mean(t[ok]))
                    dev[name].append(abs(cov[1] - 0.9))
                    cells.append(f"{m} {cov[0]:.3f}/{cov[1]:.3f}/{cov[2]:.3f} pin90 {pin:.4f}")
                print(f"{tr.name.split('_')[1]} {h / 60:g} min {name:18s} " + " | ".join(cells))
    for name, v in dev.items():
        print(f"{name:18s} |coverage p90 - 90%|: mean {np.mean(v):.4f}, max {np.max(v):.4f}")


if __name__ == "__main__":
    main()
