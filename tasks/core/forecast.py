"""Near-term load forecasting: pure functions of a metric history and the horizon.

Contract: a forecaster maps `(history, horizon_s)` to the expected metric value `horizon_s`
after the last sample, or `None` when the history cannot support a forecast (empty, all NaN).
History is a sequence of `(t_s, value)` pairs in time order; NaN or None values are gaps,
never zeros. Forecasters are chosen by name from `FORECASTERS`; `auto` picks one per call by a
rolling-origin backtest on the same history (`select_forecaster`).

How it works: the history is laid on a regular grid (the median sample spacing); each method is
written as a *path* function `y -> f` where `f[i]` is the forecast of `y[i + h]` made with
`y[: i + 1]` only. One vectorised pass therefore yields the forecast from every origin, which is
both the live forecast (`f[-1]`) and a rolling-origin backtest (`f[:-h]` against `y[h:]`) — cheap
enough to re-select per service every control period (numpy/scipy, no Python loop over samples).

Methods (parameters tuned once on the ServeGen series, see docs/forecasting.md):
  * `last-value`: the last valid sample; the baseline.
  * `ewma`: exponentially weighted mean (alpha 0.7 per sample).
  * `holt`: Holt's linear trend with damping (alpha 0.8, beta 0.2, phi 0.9), as a linear filter.
  * `seasonal-blend`: robust recent level (median of the last hour) plus a decaying share of
    the last sample's excess over it (bursts fade), times the daily shape: the median over the
    last 7 days of the smoothed log change between time-of-day(now) and time-of-day(now + h).
    Falls back to no seasonal factor until a day of history exists.
  * `seasonal-ar`: direct h-step ridge regression of the log change on the last two log changes
    and the daily shape, refitted at every origin on the pairs known there (`path_seasonal_ar`).
  * `auto`: the method with the lowest *median* absolute % error over the trailing backtest.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd
from scipy.signal import lfilter, lfilter_zi

History = Sequence[tuple[float, float | None]]
Forecaster = Callable[[History, float], float | None]
# path(y, h_steps, step_s) -> forecast of y[i + h] from every origin i (NaN where unknown).
PathFn = Callable[[np.ndarray, float, float], np.ndarray]

DAY_S = 86400.0
AUTO = "auto"
# Selection: score origins whose target lies in the last `SELECT_WINDOW_S`; need this many.
SELECT_WINDOW_S = 2 * DAY_S
MIN_SCORED_ORIGINS = 12
# Selection statistic: the median error (chosen over the mean on ServeGen days 2-7: a few burst
# or drop-out targets with errors of 100%+ otherwise decide the choice).
SELECT_BY = "median"
# A grid longer than this is coarsened (samples averaged) so one call stays in milliseconds.
MAX_GRID_POINTS = 20_000


# --- grid --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Grid:
    """History on a regular grid: `y[i]` is the mean of samples in the slot ending at `t_end_s -
    (n - 1 - i) * step_s`; NaN = no valid sample."""

    y: np.ndarray
    step_s: float
    t_end_s: float


def to_grid(history: History, *, max_points: int = MAX_GRID_POINTS) -> Grid | None:
    """Lay `history` on a regular grid anchored at its last sample. None when no valid sample."""
    if not history:
        return None
    # One C-level pass over the (t, value) pairs (numpy reads None as NaN for a float array).
    tv = np.array(history, dtype=float).reshape(-1, 2)
    t, v = tv[:, 0], tv[:, 1]
    v[~np.isfinite(v)] = np.nan
    if np.isnan(v).all():
        return None
    diffs = np.diff(t)
    diffs = diffs[diffs > 0]
    step = float(np.median(diffs)) if len(diffs) else 1.0
    span = float(t[-1] - t[0])
    if span / step + 1 > max_points:
        step = span / (max_points - 1)
    # Slot k counts back from the last sample: slot 0 is the last one.
    back = np.rint((t[-1] - t) / step).astype(np.int64)
    n = int(back.max()) + 1
    ok = ~np.isnan(v)
    sums = np.bincount(back[ok], weights=v[ok], minlength=n)
    counts = np.bincount(back[ok], minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        y = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)[::-1]
    return Grid(y=y, step_s=step, t_end_s=float(t[-1]))


def _ffill(y: np.ndarray) -> np.ndarray:
    """Forward-fill NaNs (leading NaNs stay); numpy, as pandas' per-call overhead dominates here."""
    idx = np.where(np.isnan(y), 0, np.arange(len(y)))
    np.maximum.accumulate(idx, out=idx)
    return y[idx]  # leading NaNs map to y[0], itself NaN


@lru_cache(maxsize=64)
def _zi(num: tuple[float, ...], den: tuple[float, ...]) -> np.ndarray:
    # lfilter_zi solves a small linear system; the coefficients are constants of the method.
    return lfilter_zi(num, den)


def _h_steps(horizon_s: float, step_s: float) -> float:
    return max(horizon_s / step_s, 0.0)


# --- path functions (vectorised: the forecast from every origin) ----------------------------


def path_last_value(y: np.ndarray, h: float, step_s: float) -> np.ndarray:
    return _ffill(y)


def path_ewma(y: np.ndarray, h: float, step_s: float, *, alpha: float = 0.7) -> np.ndarray:
    # ignore_na: a gap does not decay the weights of the samples around it.
    return pd.Series(y).ewm(alpha=alpha, ignore_na=True).mean().to_numpy()


def holt_states(y: np.ndarray, *, alpha: float, beta: float, phi: float) -> tuple[np.ndarray, np.ndarray]:
    """Level and trend of damped Holt smoothing over a gap-filled series, as two IIR filters.

    Recursion: l_t = a*y_t + (1-a)(l_{t-1} + phi*b_{t-1}); b_t = b*(l_t - l_{t-1}) + (1-b)*phi*b_{t-1}.
    Eliminating b gives L(z) = a(1 - c z^-1) / (1 - (q + c + q phi b) z^-1 + (q c + q phi b) z^-2) Y(z)
    with q = 1 - a, c = (1 - b) phi; and B(z) = b(1 - z^-1) / (1 - c z^-1) L(z).
    Started in steady state at the first value (level = y_0, trend = 0).
    """
    x = _ffill(y)
    first = np.flatnonzero(~np.isnan(x))
    if len(first) == 0:
        nan = np.full_like(x, np.nan)
        return nan, nan
    i0 = int(first[0])
    x0 = x[i0:]
    q, c = 1.0 - alpha, (1.0 - beta) * phi
    num = [alpha, -alpha * c]
    den = [1.0, -(q + c + q * phi * beta), q * c + q * phi * beta]
    level, _ = lfilter(num, den, x0, zi=_zi(tuple(num), tuple(den)) * x0[0])
    tnum, tden = [beta, -beta], [1.0, -c]
    trend, _ = lfilter(tnum, tden, level, zi=_zi(tuple(tnum), tuple(tden)) * level[0])
    pad = np.full(i0, np.nan)
    return np.concatenate([pad, level]), np.concatenate([pad, trend])


def path_holt(
    y: np.ndarray, h: float, step_s: float, *, alpha: float = 0.8, beta: float = 0.2, phi: float = 0.9
) -> np.ndarray:
    level, trend = holt_states(y, alpha=alpha, beta=beta, phi=phi)
    # Damped trend: sum_{j=1..h} phi^j, continuous in h for fractional horizons.
    damp = phi * (1.0 - phi**h) / (1.0 - phi) if phi < 1.0 else h
    return level + damp * trend


def path_seasonal_blend(
    y: np.ndarray,
    h: float,
    step_s: float,
    *,
    level_s: float = 3600.0,
    decay_per_10min: float = 0.7,
    days: int = 7,
    season_s: float = DAY_S,
) -> np.ndarray:
    k = max(1, round(level_s / step_s))
    last = _ffill(y)
    level = pd.Series(y).rolling(k, min_periods=1).median().ffill().to_numpy()
    # Bursts above (or dips below) the level fade; the decay is per 10 minutes of horizon.
    fade = decay_per_10min ** (h * step_s / 600.0)
    base = level + fade * (last - level)
    delta = daily_shape_log_change(last, max(1, round(h)), step_s, days=days, season_s=season_s)
    return base * np.exp(np.nan_to_num(delta))


def daily_shape_log_change(
    filled: np.ndarray, hi: int, step_s: float, *, days: int = 7, season_s: float = DAY_S
) -> np.ndarray:
    """The daily shape from every origin i: the median over the last `days` days of the smoothed
    log change from time-of-day(i) to time-of-day(i + hi), using only samples before i. NaN where
    no past day reaches (under a day of history, or a season not longer than the horizon).

    `filled` is the gap-filled series (`_ffill`); the 30-minute centred median smooths single
    windows (a burst, a near-zero drop-out) out of the shape.
    """
    n = len(filled)
    s = round(season_s / step_s)
    if s <= hi or n <= s:
        return np.full(n, np.nan)
    smooth_w = max(1, round(1800.0 / step_s))
    logy = np.log(np.maximum(filled, 1e-9))
    sm = pd.Series(logy).rolling(smooth_w, center=True, min_periods=1).median().to_numpy()
    idx = np.arange(n)
    # Only the days the history reaches back to (a day of history gives one row, not seven).
    rows = min(days, (n - 1) // s)
    deltas = np.full((rows, n), np.nan)
    for j in range(1, rows + 1):
        src, dst = idx - j * s, idx + hi - j * s
        ok = src >= 0  # dst <= i - s + h < i: only the past is used
        deltas[j - 1, ok] = sm[dst[ok]] - sm[src[ok]]
    return _nanmedian_rows(deltas)


def path_seasonal_ar(
    y: np.ndarray,
    h: float,
    step_s: float,
    *,
    lags_s: tuple[float, ...] = (600.0, 1200.0),
    days: int = 7,
    fit_window_s: float = 7 * DAY_S,
    clip_log: float = 1.0,
    ridge: float = 1.0,
) -> np.ndarray:
    """Direct h-step regression of the log change: log y[i+h] - log y[i] = beta . x_i, where x_i
    holds the recent log changes (log y[i-k] - log y[i] per lag) and the daily shape
    (`daily_shape_log_change`). beta is refitted at *every* origin by ridge least squares on the
    pairs whose targets are known there (target index <= i, within `fit_window_s`), so the path is
    an honest rolling-origin forecast and the coefficients are horizon-specific.

    Why these choices: on ServeGen the 30-minute change is mostly noise (its correlation with the
    daily shape is 0.2 on m-small, ~0 on m-mid), so how much to trust the shape and the recent
    moves is fitted per series rather than fixed. Log changes are clipped to +-`clip_log` so a
    near-zero drop-out or a 3x burst counts as a large move, not an unbounded one. The ridge term
    shrinks toward beta = 0, i.e. last-value: with no pairs yet the method *is* last-value.
    Defaults (lags, ridge, clip, window) were chosen on ServeGen days 2-7 only (docs/forecasting.md).
    """
    n = len(y)
    hi = max(1, round(h))
    filled = _ffill(y)
    logy = np.log(np.maximum(filled, 1e-9))
    cols = []
    for lag_s in lags_s:
        k = max(1, round(lag_s / step_s))
        c = np.zeros(n)
        if k < n:
            c[k:] = logy[:-k] - logy[k:]
        cols.append(c)
    cols.append(daily_shape_log_change(filled, hi, step_s, days=days))
    x = np.clip(np.nan_to_num(np.column_stack(cols)), -clip_log, clip_log)  # no data = no move
    p = x.shape[1]
    target = np.full(n, np.nan)
    if hi < n:
        # Only observed targets: a forward-filled gap is not a measured change.
        target[: n - hi] = np.where(np.isnan(y[hi:]), np.nan, logy[hi:] - logy[: n - hi])
    ok = ~np.isnan(target) & ~np.isnan(filled)
    t = np.where(ok, np.clip(np.nan_to_num(target), -clip_log, clip_log), 0.0)
    xo = x * ok[:, None]
    # Running sums of X'X, X't and the pair count; origin i sums pairs j with i - w < j + hi <= i.
    xtx = np.concatenate([np.zeros((1, p, p)), np.cumsum(xo[:, :, None] * xo[:, None, :], axis=0)])
    xty = np.concatenate([np.zeros((1, p)), np.cumsum(xo * t[:, None], axis=0)])
    w = max(1, round(fit_window_s / step_s))
    i = np.arange(n)
    hi_end = np.clip(i - hi + 1, 0, n)  # exclusive end of pair indices j <= i - hi
    lo_end = np.clip(i - hi + 1 - w, 0, n)
    a = xtx[hi_end] - xtx[lo_end]
    b = xty[hi_end] - xty[lo_end]
    # A fixed ridge: log changes are ~0.1, so 1.0 weighs like a few dozen pairs early on and is
    # negligible after a day; it also makes the system solvable with no pairs (beta = 0).
    a = a + ridge * np.eye(p)
    beta = np.linalg.solve(a, b[:, :, None])[:, :, 0]
    return filled * np.exp(np.sum(beta * x, axis=1))


def _nanmedian_rows(x: np.ndarray) -> np.ndarray:
    """`np.nanmedian(x, axis=0)` without its per-column warnings for all-NaN columns (most
    columns are, early in a history; the warnings cost more than the median)."""
    srt = np.sort(x, axis=0)  # NaNs sort last
    cnt = np.sum(~np.isnan(x), axis=0)
    cols = np.arange(x.shape[1])
    lo, hi = np.maximum(cnt - 1, 0) // 2, np.maximum(cnt, 1) // 2
    with np.errstate(invalid="ignore"):
        med = (srt[lo, cols] + srt[hi, cols]) / 2.0
    return np.where(cnt > 0, med, np.nan)


PATHS: dict[str, PathFn] = {
    "last-value": path_last_value,
    "ewma": path_ewma,
    "holt": path_holt,
    "seasonal-blend": path_seasonal_blend,
    "seasonal-ar": path_seasonal_ar,
}


# --- backtest and selection --------------------------------------------------------------


@dataclass(frozen=True)
class BacktestScore:
    """Absolute percentage errors of one method over the scored origins."""

    method: str
    n: int
    mape: float | None
    p90_abs_pct_err: float | None


def abs_pct_errors(forecast: np.ndarray, y: np.ndarray, h_steps: int) -> np.ndarray:
    """|f[i] - y[i+h]| / y[i+h] for every origin i whose target is observed and positive (else NaN)."""
    n = len(y)
    err = np.full(n, np.nan)
    if h_steps >= n:
        return err
    actual = y[h_steps:]
    f = forecast[: n - h_steps]
    with np.errstate(invalid="ignore", divide="ignore"):
        e = np.abs(f - actual) / actual
    e[~(actual > 0) | np.isnan(f)] = np.nan
    err[: n - h_steps] = e
    return err


def score(method: str, errors: np.ndarray) -> BacktestScore:
    e = errors[~np.isnan(errors)]
    if len(e) == 0:
        return BacktestScore(method, 0, None, None)
    return BacktestScore(method, len(e), float(np.mean(e)), float(np.percentile(e, 90)))


def select_forecaster(
    grid: Grid,
    horizon_s: float,
    *,
    candidates: Sequence[str] = tuple(PATHS),
    window_s: float = SELECT_WINDOW_S,
    select_by: str = SELECT_BY,
) -> tuple[str, dict[str, np.ndarray]]:
    """The candidate with the lowest `select_by` error ("median" or "mean" absolute % error) over
    origins whose target falls in the last `window_s`.

    Ties and too little history (fewer than MIN_SCORED_ORIGINS scored origins) go to the first
    candidate (last-value). Returns the choice and every candidate's forecast path.
    """
    h = _h_steps(horizon_s, grid.step_s)
    hi = max(1, round(h))
    paths = {m: PATHS[m](grid.y, h, grid.step_s) for m in candidates}
    first_origin = max(0, len(grid.y) - hi - round(window_s / grid.step_s))
    best, best_err = candidates[0], math.inf
    for m in candidates:
        err = abs_pct_errors(paths[m], grid.y, hi)[first_origin:]
        err = err[~np.isnan(err)]
        if len(err) < MIN_SCORED_ORIGINS:
            if m == candidates[0]:
                return best, paths
            continue
        err_stat = float(np.median(err) if select_by == "median" else np.mean(err))
        if err_stat < best_err - 1e-12:
            best, best_err = m, err_stat
    return best, paths


def forecast_with(method: str, history: History, horizon_s: float) -> tuple[float | None, str]:
    """Forecast `horizon_s` ahead with `method` (or `auto`); returns (value, method used)."""
    if method == "last-value":
        return last_value(history, horizon_s), method
    grid = to_grid(history)
    if grid is None:
        return None, method
    if method == AUTO:
        chosen, paths = select_forecaster(grid, horizon_s)
        if chosen == "last-value":
            return last_value(history, horizon_s), f"{AUTO}:{chosen}"
        return _finite(paths[chosen][-1]), f"{AUTO}:{chosen}"
    path = PATHS[method](grid.y, _h_steps(horizon_s, grid.step_s), grid.step_s)
    return _finite(path[-1]), method


def _finite(x: float) -> float | None:
    # Load is never negative; a trend extrapolated below zero means "about none".
    return max(float(x), 0.0) if math.isfinite(x) else None


# --- the registry ------------------------------------------------------------------------


def last_value(history: History, horizon_s: float) -> float | None:
    """The most recent valid sample: the baseline every forecaster is judged against."""
    # From the end: a replay calls this every period on a day of history.
    for _t, v in reversed(history):
        if v is not None and math.isfinite(v):
            return v
    return None


def _named(method: str) -> Forecaster:
    def fn(history: History, horizon_s: float) -> float | None:
        return forecast_with(method, history, horizon_s)[0]

    fn.__name__ = method.replace("-", "_")
    return fn


FORECASTERS: dict[str, Forecaster] = {
    "last-value": last_value,
    "ewma": _named("ewma"),
    "holt": _named("holt"),
    "seasonal-blend": _named("seasonal-blend"),
    "seasonal-ar": _named("seasonal-ar"),
    AUTO: _named(AUTO),
}


def get_forecaster(name: str) -> Forecaster:
    try:
        return FORECASTERS[name]
    except KeyError:
        raise ValueError(f"unknown forecaster {name!r}; choose one of {sorted(FORECASTERS)}") from None


# --- offline backtest over a whole series (bench) -------------------------------------------


def backtest_errors(
    y: np.ndarray,
    step_s: float,
    horizon_s: float,
    *,
    candidates: Sequence[str] = tuple(PATHS),
    window_s: float = SELECT_WINDOW_S,
    select_by: str = SELECT_BY,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per-origin absolute % errors of every method and of `auto` over a whole series.

    `errors[m][i]` scores the forecast from origin i against y[i + h] (NaN: target missing or not
    positive). `auto` at origin i uses the method with the lowest `select_by` error ("mean", or
    "median" for a burst-robust choice) over origins whose targets are known at i (target index
    <= i) within `window_s` — what the live selection sees — so its score is honest, not a
    best-in-hindsight. Also returns the index into `candidates` chosen at each origin.
    """
    h = _h_steps(horizon_s, step_s)
    hi = max(1, round(h))
    n = len(y)
    paths = {m: PATHS[m](y, h, step_s) for m in candidates}
    errs = {m: abs_pct_errors(paths[m], y, hi) for m in candidates}
    w = max(1, round(window_s / step_s))
    known: dict[str, np.ndarray] = {}
    for m in candidates:
        roll = pd.Series(errs[m]).rolling(w, min_periods=MIN_SCORED_ORIGINS)
        s = (roll.median() if select_by == "median" else roll.mean()).to_numpy()
        known[m] = np.concatenate([np.full(hi, np.nan), s[: n - hi]])
    stack = np.vstack([np.where(np.isnan(known[m]), np.inf, known[m]) for m in candidates])
    choice = np.argmin(stack, axis=0)  # ties and no data -> first candidate (last-value)
    err_stack = np.vstack([errs[m] for m in candidates])
    errs[AUTO] = err_stack[choice, np.arange(n)]
    return errs, choice


def backtest_series(
    y: np.ndarray,
    step_s: float,
    horizon_s: float,
    *,
    warmup_s: float = 2 * DAY_S,
    candidates: Sequence[str] = tuple(PATHS),
    window_s: float = SELECT_WINDOW_S,
) -> tuple[dict[str, BacktestScore], dict[str, float]]:
    """Rolling-origin backtest of every method and of `auto` (`backtest_errors`) over a whole series.

    Returns the scores over origins from `warmup_s` on and the share of those origins at which
    `auto` chose each method.
    """
    errs, choice = backtest_errors(y, step_s, horizon_s, candidates=candidates, window_s=window_s)
    start = min(len(y), round(warmup_s / step_s))
    out = {m: score(m, e[start:]) for m, e in errs.items()}
    picked = choice[start:]
    shares = {m: float(np.mean(picked == i)) if len(picked) else 0.0 for i, m in enumerate(candidates)}
    return out, shares
