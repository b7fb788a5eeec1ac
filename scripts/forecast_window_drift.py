"""Does the forecast of one origin stay the same when the history window slides? (docs/twin.md)

Each method's path over an 8-day window of ServeGen m-small (60-s samples of the 10-minute rates,
2 % noise), and again over the window one hour later; compared at the same absolute origins (the
2,886 the selection scores). Prints the share of bit-identical forecasts and the relative
differences. `.venv/bin/python scripts/forecast_window_drift.py`
"""

from __future__ import annotations

import numpy as np
import pandas as pd

import tasks.core.forecast as F


def main() -> None:
    df = pd.read_csv("data/traces/servegen/servegen_m-small_10min.csv")
    rng = np.random.default_rng(0)
    y = np.repeat(df["total_req_per_s"].to_numpy(), 10) * (1 + 0.02 * rng.standard_normal(len(df) * 10))
    n, shift, scored = 11520, 60, 2886
    for m in F.PATHS:
        a = F._path(m, y[:n], 6, 60.0, start=n - scored)
        b = F._path(m, y[shift : n + shift], 6, 60.0, start=n - scored - shift)
        ka = np.arange(n - scored, n)
        with np.errstate(invalid="ignore", divide="ignore"):
            d = np.abs(a[ka] - b[ka - shift]) / np.abs(a[ka])
        same = float(np.mean(a[ka] == b[ka - shift]))
        print(f"{m:15s} identical {same:.3f}  median rel diff {np.nanmedian(d):.1e}  max {np.nanmax(d):.1e}")


if __name__ == "__main__":
    main()
