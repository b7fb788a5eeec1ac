"""Quantiles of the load at the horizon, from each forecaster's own rolling-origin errors. Pure.

Conformal style: the forecast paths of `tasks.core.forecast` give the forecast from every origin,
so the errors a method made on the service's own history are known for free. The error is the log
ratio r[j] = log(y[j + h] / f[j]) (load moves multiplicatively: a 10 % miss at the trough and at
the peak are the same error). At origin i the q-quantile of the load h ahead is

    f[i] * exp(Q_q{ r[j] : target j + h already known at i, j within `window_s`, and j at the same
                            time of day as i within +- `band_s` })

with Q_q the split-conformal order statistic (rank ceil((n + 1) q), the largest one when that is
beyond n). With `band_s` set, by time of day where the history holds at least `min_errors` such
errors; else (and by default) all errors of the last `recent_s`; with fewer than `min_errors` of
those either, no quantiles (the caller sizes from the point forecast, as before).

Parameters (band, windows, minimum count) were chosen on ServeGen days 2-7 only
(docs/forecasting.md, "Probabilistic forecasts"): there the time-of-day sets over-covered.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from tasks.core.forecast import (
    AUTO,
    COMBINE_SEP,
    DAY_S,
    History,
    _path,
    combine_paths,
    h_steps,
    last_value,
    select_forecaster,
    to_grid,
)

# The quantile levels every forecast carries (the policy's `risk` is added when it is another).
LEVELS: tuple[float, ...] = (0.5, 0.9, 0.99)
# Errors considered: origins whose targets fall in the last `WINDOW_S`.
WINDOW_S = 7 * DAY_S
# Same time of day: origins within +- BAND_S of the origin's time of day, on previous days.
# None (the default): no time-of-day conditioning. On ServeGen days 2-7 every band tried
# (+-1/2/3 h over 7 days) over-covered p90 by 2-6 points (errors of earlier days were larger;
# recency mattered more than time of day); all errors of the last day were within 1.5 points.
BAND_S: float | None = None
# Fewer time-of-day errors than this: all errors of the last RECENT_S; fewer of those: none.
MIN_ERRORS = 30
RECENT_S = DAY_S

Quantiles = tuple[tuple[float, float], ...]


def log_errors(path: np.ndarray, y: np.ndarray, hi: int) -> np.ndarray:
    """r[j] = log(y[j + hi] / path[j]) where both are positive and finite (NaN elsewhere)."""
    n = len(y)
    r = np.full(n, np.nan)
    if hi >= n:
        return r
    target, f = y[hi:], path[: n - hi]
    ok = (target > 0) & (f > 0) & np.isfinite(target) & np.isfinite(f)
    with np.errstate(invalid="ignore", divide="ignore"):
        r[: n - hi] = np.where(ok, np.log(np.where(ok, target, 1.0) / np.where(ok, f, 1.0)), np.nan)
    return r


def conformal_quantile(errors: np.ndarray, q: float) -> float:
    """The split-conformal q-quantile of `errors` (no NaN): the ceil((n + 1) q)-th smallest,
    clamped to the largest (too few errors for that level: the worst one seen)."""
    s = np.sort(errors)
    k = min(len(s), max(1, math.ceil((len(s) + 1) * q - 1e-9)))
    return float(s[k - 1])


def _calibration(
    r: np.ndarray,
    i: int,
    hi: int,
    step_s: float,
    *,
    window_s: float,
    band_s: float | None,
    min_errors: int,
    recent_s: float,
) -> np.ndarray | None:
    """The errors known at origin i that calibrate its quantiles (None: too few)."""
    end = i - hi + 1  # origins j <= i - hi have their target known at i
    if end <= 0:
        return None
    lo = max(0, end - max(1, round(window_s / step_s)))
    js = np.arange(lo, end)
    s = round(DAY_S / step_s)
    b = -1 if band_s is None else round(band_s / step_s)
    if s > 0 and 0 <= b and b * 2 + 1 < s:
        d = (i - js) % s
        tod = r[js[np.minimum(d, s - d) <= b]]
        tod = tod[~np.isnan(tod)]
        if len(tod) >= min_errors:
            return tod
    recent = r[max(lo, end - max(1, round(recent_s / step_s))) : end]
    recent = recent[~np.isnan(recent)]
    return recent if len(recent) >= min_errors else None


def quantile_path(
    path: np.ndarray,
    y: np.ndarray,
    hi: int,
    step_s: float,
    levels: Sequence[float] = LEVELS,
    *,
    origins: np.ndarray | None = None,
    window_s: float = WINDOW_S,
    band_s: float | None = BAND_S,
    min_errors: int = MIN_ERRORS,
    recent_s: float = RECENT_S,
) -> np.ndarray:
    """q[k, i] = the levels[k]-quantile of y[i + hi] from origin i (NaN: no forecast or too few
    errors). Only the `origins` given are computed (default: all). Reads y[: i + 1] only."""
    n = len(y)
    r = log_errors(path, y, hi)
    out = np.full((len(levels), n), np.nan)
    for i in range(n) if origins is None else origins:
        f = path[i]
        if not (np.isfinite(f) and f > 0):
            continue
        cal = _calibration(
            r, int(i), hi, step_s, window_s=window_s, band_s=band_s, min_errors=min_errors, recent_s=recent_s
        )
        if cal is None:
            continue
        for k, q in enumerate(levels):
            out[k, i] = f * math.exp(conformal_quantile(cal, q))
    return out


def forecast_quantiles(
    method: str, history: History, horizon_s: float, levels: Sequence[float] = LEVELS
) -> tuple[float | None, str, Quantiles]:
    """`forecast_with` plus quantiles: (value, method used, ((q, value), ...) or () when the history
    holds too few errors). The value and method are those of `forecast_with`; the quantiles are
    calibrated on the errors of the method used (for `auto`, its chosen combination)."""
    grid = to_grid(history)
    if grid is None:
        return None, method, ()
    h = h_steps(horizon_s, grid.step_s)
    hi = max(1, round(h))
    n = len(grid.y)
    # Origins whose errors calibrate the last one (the time-of-day sets reach further back).
    start = max(0, n - 1 - hi - round((RECENT_S if BAND_S is None else WINDOW_S) / grid.step_s))
    if method == AUTO:
        chosen, paths = select_forecaster(grid, horizon_s)
        parts = chosen.split(COMBINE_SEP)
        first = np.flatnonzero(~np.isnan(paths[parts[0]]))
        if len(first) and first[0] <= start:  # the selection's paths already reach back far enough
            path = combine_paths([paths[m][start:] for m in parts])
        else:
            path = _path(chosen, grid.y, h, grid.step_s, start=start)[start:]
        used, method = f"{AUTO}:{chosen}", chosen
    else:
        used, path = method, _path(method, grid.y, h, grid.step_s, start=start)[start:]  # "+": the combination
    value = last_value(history, horizon_s) if method == "last-value" else _nonneg(path[-1])
    # Only origins from `start` on are read (the calibration of the last one), so only they are
    # combined and compared: the same errors, the same order statistics.
    y = grid.y[start:]
    q = quantile_path(path, y, hi, grid.step_s, levels, origins=np.array([len(y) - 1]))[:, -1]
    if value is None or np.isnan(q).any():
        return value, used, ()
    # Quantiles are monotone in the level (the order statistics are).
    return value, used, tuple((float(lv), float(v)) for lv, v in zip(levels, q, strict=True))


def _nonneg(x: float) -> float | None:
    return max(float(x), 0.0) if math.isfinite(x) else None
