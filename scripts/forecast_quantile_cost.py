"""CPU cost of one forecast with and without its quantiles (issue 17; docs/forecasting.md).

Usage (from the repo root):  .venv/bin/python scripts/forecast_quantile_cost.py [--json]

A synthetic daily-shaped series (8 days at 10-min and at 30-s samples, log-normal noise), one
warm-up call, then the mean process CPU time of 5 calls of `forecast_with` and of
`forecast_quantiles` per method, 30 min ahead. Prints a table (or JSON).
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

from tasks.core.forecast import forecast_with
from tasks.core.forecast_quantile import forecast_quantiles


def main() -> None:
    rng = np.random.default_rng(0)
    rows = []
    for n, step in ((8 * 144, 600.0), (8 * 2880, 30.0)):
        t = np.arange(n) * step
        y = 1000 * (1 + 0.5 * np.sin(2 * np.pi * t / 86400)) * np.exp(rng.normal(0, 0.1, n))
        history = list(zip(t.tolist(), y.tolist(), strict=True))
        for method in ("last-value", "profile-ar+holt", "auto"):
            ms = {}
            for fn in (forecast_with, forecast_quantiles):
                fn(method, history, 1800.0)
                c = time.process_time()
                for _ in range(5):
                    fn(method, history, 1800.0)
                ms[fn.__name__] = (time.process_time() - c) / 5 * 1000
            rows.append({"samples": n, "step_s": step, "method": method, **{f"{k}_ms": v for k, v in ms.items()}})
    if "--json" in sys.argv:
        print(json.dumps(rows, indent=2))
        return
    print("| samples | step s | method | forecast_with ms CPU | forecast_quantiles ms CPU |")
    print("|---:|---:|---|---:|---:|")
    for r in rows:
        print(
            f"| {r['samples']} | {r['step_s']:g} | {r['method']} | {r['forecast_with_ms']:.1f} | "
            f"{r['forecast_quantiles_ms']:.1f} |"
        )


if __name__ == "__main__":
    main()
