"""Near-term load forecasting: pure functions of a metric history and the horizon.

Contract: a forecaster maps `(history, horizon_s)` to the expected metric value `horizon_s`
after the last sample, or `None` when the history cannot support a forecast (empty, all NaN).
History is a sequence of `(t_s, value)` pairs in time order; NaN or None values are gaps,
never zeros. Forecasters are chosen by name from `FORECASTERS`; `auto` picks per call by a
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
  * `profile-ar`: seasonal-ar plus mean reversion: the last hour's median level and the daily
    profile shifted to the last hour's level, each relative to the last sample (`path_profile_ar`).
  * `auto`: the combination (geometric mean, `combine_paths`) of the two methods with the lowest
    *median* absolute % error over the trailing backtest, recorded as "auto:<best>+<second>";
    such a "+" name is itself a valid forecaster name for `get_forecaster`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd
from scipy.signal import lfilter, lfilter_zi

from tasks.core.forecast_grid import LastCall, one_per_slot, rolling_median_from
from tasks.core.forecast_grid import nanmedian_rows as _nanmedian_rows

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
# `auto` combines its best COMBINE_TOP methods (geometric mean of their forecasts), recorded as
# "auto:<best>+<second>": on ServeGen days 2-7 the top-2 combination beat the single best
# (summed train MAPE change vs last-value over both traces and horizons -21.5 vs -16.6 points).
COMBINE_TOP = 2
COMBINE_SEP = "+"
# A grid longer than this is coarsened (samples averaged) so one call stays in milliseconds.
MAX_GRID_POINTS = 20_000
# Seasonal features smooth the log series with a centred median over this span (bursts out).
SMOOTH_S = 1800.0


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
    as_arrays = getattr(history, "as_arrays", None)
    if as_arrays is not None:
        # A history that keeps its samples as arrays (tasks/core/forecast_grid.py): NaN = missing.
        t, v = as_arrays()
    else:
        # One C-level pass over the (t, value) pairs (numpy reads None as NaN for a float array).
        tv = np.array(history, dtype=float).reshape(-1, 2)
        t, v = tv[:, 0], tv[:, 1]
        v[~np.isfinite(v)] = np.nan
    if np.isnan(v).all():
        return None
    fast = one_per_slot(history, t, v, max_points)  # a regular SampleHistory: the values themselves
    if fast is not None:
        return Grid(y=fast[0], step_s=fast[1], t_end_s=float(t[-1]))
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


def h_steps(horizon_s: float, step_s: float) -> float:
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
    start: int = 0,
) -> np.ndarray:
    """Origins before `start` are NaN (their level, a rolling median, is not computed)."""
    k = max(1, round(level_s / step_s))
    last = _ffill(y)
    level = rolling_median_from(y, k, start)
    # Bursts above (or dips below) the level fade; the decay is per 10 minutes of horizon.
    fade = decay_per_10min ** (h * step_s / 600.0)
    base = level + fade * (last - level)
    delta = daily_shape_log_change(last, max(1, round(h)), step_s, days=days, season_s=season_s)
    return base * np.exp(np.nan_to_num(delta))


def daily_shape_log_change(
    filled: np.ndarray,
    hi: int,
    step_s: float,
    *,
    days: int = 7,
    season_s: float = DAY_S,
    smoothed: np.ndarray | None = None,
) -> np.ndarray:
    """The daily shape from every origin i: the median over the last `days` days of the smoothed
    log change from time-of-day(i) to time-of-day(i + hi), using only samples before i. NaN where
    no past day reaches (under a day of history, or a season not longer than the horizon).

    `filled` is the gap-filled series (`_ffill`); the 30-minute centred median smooths single
    windows (a burst, a near-zero drop-out) out of the shape (`smoothed`: precomputed
    `_smoothed_log` of the filled series).
    """
    n = len(filled)
    s = round(season_s / step_s)
    if s <= hi or n <= s:
        return np.full(n, np.nan)
    sm = _smoothed_log(np.log(np.maximum(filled, 1e-9)), step_s) if smoothed is None else smoothed
    idx = np.arange(n)
    # Only the days the history reaches back to (a day of history gives one row, not seven).
    rows = min(days, (n - 1) // s)
    hit = _DAILY_SHAPE.get(sm, (hi, s, rows))  # a function of sm, hi, s and rows only
    if hit is not None:
        return hit
    deltas = np.full((rows, n), np.nan)
    for j in range(1, rows + 1):
        src, dst = idx - j * s, idx + hi - j * s
        ok = src >= 0  # dst <= i - s + h < i: only the past is used
        deltas[j - 1, ok] = sm[dst[ok]] - sm[src[ok]]
    return _DAILY_SHAPE.put(sm, (hi, s, rows), _nanmedian_rows(deltas))


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
    start: int = 0,
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
    Origins before `start` are not solved (NaN): `select_forecaster` scores the last two days only.
    """
    hi = max(1, round(h))
    filled = _ffill(y)
    logy = np.log(np.maximum(filled, 1e-9))
    cols = _lag_changes(logy, lags_s, step_s)
    cols.append(daily_shape_log_change(filled, hi, step_s, days=days))
    return _direct_ridge(
        y, filled, logy, hi, cols, step_s, fit_window_s=fit_window_s, clip_log=clip_log, ridge=ridge, start=start
    )


def path_profile_ar(
    y: np.ndarray,
    h: float,
    step_s: float,
    *,
    lags_s: tuple[float, ...] = (600.0, 1200.0),
    level_s: float = 3600.0,
    days: int = 7,
    fit_window_s: float = 7 * DAY_S,
    clip_log: float = 1.0,
    ridge: float = 1.0,
    start: int = 0,
) -> np.ndarray:
    """`seasonal-ar` plus two mean-reversion features, same per-origin ridge refit:

    * recent level: log(median of the last `level_s`) - log y[i] (a burst above the last hour's
      median tends to fade; a dip tends to recover);
    * profile deviation (`profile_deviation`): where the daily profile, shifted to the level of
      the last `level_s`, puts the target, minus log y[i] — reversion toward the seasonal profile
      rather than toward a flat level.

    Chosen on ServeGen days 2-7 only (docs/forecasting.md): on m-small 30 min ahead it takes the
    train MAPE from -11.7% (seasonal-ar) to -19.6% vs last-value (on eval: -11.9% and -12.2%, the
    gain did not carry over). m-mid's day-to-day shape is not stable and the features add noise
    there; `auto` chooses per series. With no pairs yet (under a
    day of history, or h steps) the method is last-value, like seasonal-ar.
    """
    hi = max(1, round(h))
    filled = _ffill(y)
    logy = np.log(np.maximum(filled, 1e-9))
    k = max(1, round(level_s / step_s))
    cols = _lag_changes(logy, lags_s, step_s)
    sm = _smoothed_log(logy, step_s)
    cols.append(daily_shape_log_change(filled, hi, step_s, days=days, smoothed=sm))
    # The level uses observed samples only (a forward-filled gap is not a measurement).
    raw = np.log(np.maximum(y, 1e-9))
    level = pd.Series(raw).rolling(k, min_periods=1).median().ffill().to_numpy()
    cols.append(level - logy)
    cols.append(profile_deviation(logy, hi, step_s, level_n=k, days=days, smoothed=sm))
    return _direct_ridge(
        y, filled, logy, hi, cols, step_s, fit_window_s=fit_window_s, clip_log=clip_log, ridge=ridge, start=start
    )


def profile_deviation(
    logy: np.ndarray,
    hi: int,
    step_s: float,
    *,
    level_n: int,
    days: int = 7,
    season_s: float = DAY_S,
    smoothed: np.ndarray | None = None,
) -> np.ndarray:
    """From every origin i: P(i + hi) + mean_{last level_n}(log y - P) - log y[i], where P(t) is
    the median over the last `days` days of the (30-minute median smoothed) log level at the same
    time of day. Only samples up to i are read. NaN under a day of history. `smoothed`: a
    precomputed `_smoothed_log(logy, step_s)`."""
    n = len(logy)
    s = round(season_s / step_s)
    smooth_w = max(1, round(SMOOTH_S / step_s))
    if n <= s or s <= hi + smooth_w:
        return np.full(n, np.nan)
    sm = _smoothed_log(logy, step_s) if smoothed is None else smoothed
    idx = np.arange(n)
    rows = min(days, (n - 1) // s)
    at_target = np.full((rows, n), np.nan)
    at_now = np.full((rows, n), np.nan)
    for j in range(1, rows + 1):
        # sm[k] reads logy up to k + smooth_w // 2 <= i - s + hi + smooth_w // 2 < i.
        src = idx - j * s
        ok = src >= 0
        at_now[j - 1, ok] = sm[src[ok]]
        at_target[j - 1, ok] = sm[src[ok] + hi]
    p_target, p_now = _nanmedian_rows(at_target), _nanmedian_rows(at_now)
    offset = pd.Series(logy - p_now).rolling(level_n, min_periods=1).mean().to_numpy()
    return p_target + offset - logy


def _smoothed_log(logy: np.ndarray, step_s: float) -> np.ndarray:
    """The centred SMOOTH_S rolling median of the log series (the seasonal features' input)."""
    hit = _SMOOTHED.get(logy, (step_s,))
    if hit is not None:
        return hit
    w = max(1, round(SMOOTH_S / step_s))
    return _SMOOTHED.put(logy, (step_s,), pd.Series(logy).rolling(w, center=True, min_periods=1).median().to_numpy())


_SMOOTHED = LastCall()
_DAILY_SHAPE = LastCall()


def _lag_changes(logy: np.ndarray, lags_s: tuple[float, ...], step_s: float) -> list[np.ndarray]:
    """log y[i - k] - log y[i] per lag (0 where the lag reaches before the start)."""
    n = len(logy)
    cols = []
    for lag_s in lags_s:
        k = max(1, round(lag_s / step_s))
        c = np.zeros(n)
        if k < n:
            c[k:] = logy[:-k] - logy[k:]
        cols.append(c)
    return cols


def _direct_ridge(
    y: np.ndarray,
    filled: np.ndarray,
    logy: np.ndarray,
    hi: int,
    cols: list[np.ndarray],
    step_s: float,
    *,
    fit_window_s: float,
    clip_log: float,
    ridge: float,
    start: int = 0,
) -> np.ndarray:
    """filled[i] * exp(beta_i . x_i), beta_i the ridge fit of the clipped log change hi ahead on
    the feature columns `cols` over the pairs whose targets are known at origin i (see
    `path_seasonal_ar`). NaN features count as 0 (no move). Only origins >= `start` are solved
    (the rest are NaN): the live selection scores the last two days only."""
    n = len(y)
    x = np.clip(np.nan_to_num(np.column_stack(cols)), -clip_log, clip_log)  # no data = no move
    p = x.shape[1]
    target = np.full(n, np.nan)
    if hi < n:
        # Only observed targets: a forward-filled gap is not a measured change.
        target[: n - hi] = np.where(np.isnan(y[hi:]), np.nan, logy[hi:] - logy[: n - hi])
    ok = ~np.isnan(target) & ~np.isnan(filled)
    t = np.where(ok, np.clip(np.nan_to_num(target), -clip_log, clip_log), 0.0)
    i = np.arange(min(max(start, 0), n), n)  # only these origins are solved (the rest stay NaN)
    w = max(1, round(fit_window_s / step_s))
    hi_end = np.clip(i - hi + 1, 0, n)  # exclusive end of pair indices j <= i - hi
    lo_end = np.clip(i - hi + 1 - w, 0, n)
    # Running sums of X'X (upper triangle) and X't; origin i sums pairs j with i - w < j + hi <= i.
    # Laid out one row per sum (contiguous), and only as far as the last pair read: the same
    # sequential prefix sums as a column-wise cumsum over the whole grid, bit for bit.
    m = int(hi_end.max()) if len(i) else 0
    iu, il = np.triu_indices(p)
    xo = np.ascontiguousarray(x[:m].T) * ok[:m]
    cum = np.zeros((len(iu) + p, m + 1))
    np.cumsum(np.concatenate([xo[iu] * xo[il], xo * t[:m]]), axis=1, out=cum[:, 1:])
    sums = cum[:, hi_end] - cum[:, lo_end]
    # The symmetric matrix from its upper triangle in one gather.
    sym = np.empty((p, p), dtype=np.int64)
    sym[iu, il] = sym[il, iu] = np.arange(len(iu))
    a = sums[sym.ravel()].T.reshape(len(i), p, p)
    b = sums[len(iu) :].T
    # A fixed ridge: log changes are ~0.1, so 1.0 weighs like a few dozen pairs early on and is
    # negligible after a day; it also makes the system solvable with no pairs (beta = 0).
    a = a + ridge * np.eye(p)
    beta = np.linalg.solve(a, b[:, :, None])[:, :, 0]
    out = np.full(n, np.nan)
    out[i] = filled[i] * np.exp(np.sum(beta * x[i], axis=1))
    return out


PATHS: dict[str, PathFn] = {
    "last-value": path_last_value,
    "ewma": path_ewma,
    "holt": path_holt,
    "seasonal-blend": path_seasonal_blend,
    "seasonal-ar": path_seasonal_ar,
    "profile-ar": path_profile_ar,
}
# Paths whose cost grows with the origins computed: they accept `start` (origins before it stay NaN).
_START_AWARE: dict[str, Callable[..., np.ndarray]] = {
    "seasonal-blend": path_seasonal_blend,
    "seasonal-ar": path_seasonal_ar,
    "profile-ar": path_profile_ar,
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
    combine: int = COMBINE_TOP,
) -> tuple[str, dict[str, np.ndarray]]:
    """The `combine` candidates with the lowest `select_by` error ("median" or "mean" absolute %
    error) over origins whose target falls in the last `window_s`, best first, joined by "+" (the
    forecast is their combination, `combine_paths`); one name when `combine` is 1.

    Ties go to the earlier candidate; too little history (fewer than MIN_SCORED_ORIGINS scored
    origins for the first candidate, last-value) gives the first candidate alone. Returns the
    choice and every candidate's forecast path (solved only from the first scored origin on).
    """
    h = h_steps(horizon_s, grid.step_s)
    hi = max(1, round(h))
    first_origin = max(0, len(grid.y) - hi - round(window_s / grid.step_s))
    paths = {m: _path(m, grid.y, h, grid.step_s, start=first_origin) for m in candidates}
    ranked: list[tuple[float, int, str]] = []
    for k, m in enumerate(candidates):
        err = abs_pct_errors(paths[m], grid.y, hi)[first_origin:]
        err = err[~np.isnan(err)]
        if len(err) < MIN_SCORED_ORIGINS:
            if k == 0:
                return candidates[0], paths
            continue
        ranked.append((float(np.median(err) if select_by == "median" else np.mean(err)), k, m))
    ranked.sort()
    return COMBINE_SEP.join(m for _e, _k, m in ranked[: max(1, combine)]), paths


def combine_paths(paths: Sequence[np.ndarray]) -> np.ndarray:
    """Combination of forecasts: the geometric mean (load moves multiplicatively), or the plain
    mean where a member is not positive (a trend extrapolated below zero). NaN members are skipped."""
    stack = np.vstack(paths)
    ok = ~np.isnan(stack)
    cnt = ok.sum(axis=0)
    pos = np.all(~ok | (stack > 0), axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.where(ok & (stack > 0), np.log(np.where(stack > 0, stack, 1.0)), 0.0)
        geo = np.exp(logs.sum(axis=0) / cnt)
        arith = np.where(ok, stack, 0.0).sum(axis=0) / cnt
    return np.where(cnt == 0, np.nan, np.where(pos, geo, arith))


def _parts(method: str) -> list[str]:
    return method.split(COMBINE_SEP)


def _path(method: str, y: np.ndarray, h: float, step_s: float, *, start: int = 0) -> np.ndarray:
    """PATHS[method] (or a "+" combination of them, NaN before `start`), computing the
    `_START_AWARE` methods only from origin `start` on."""
    if COMBINE_SEP in method:
        out = np.full(len(y), np.nan)
        out[start:] = combine_paths([_path(m, y, h, step_s, start=start)[start:] for m in _parts(method)])
        return out
    if method in _START_AWARE:
        return _START_AWARE[method](y, h, step_s, start=start)
    return PATHS[method](y, h, step_s)


def forecast_with(method: str, history: History, horizon_s: float) -> tuple[float | None, str]:
    """Forecast `horizon_s` ahead with `method` (a name, a "+" combination of PATHS names, or
    `auto`); returns (value, method used: "auto:<choice>" for auto)."""
    if method == "last-value":
        return last_value(history, horizon_s), method
    grid = to_grid(history)
    if grid is None:
        return None, method
    if method == AUTO:
        chosen, paths = select_forecaster(grid, horizon_s)
        if chosen == "last-value":
            return last_value(history, horizon_s), f"{AUTO}:{chosen}"
        value = combine_paths([paths[m][-1:] for m in _parts(chosen)])[0]
        return _finite(value), f"{AUTO}:{chosen}"
    path = _path(method, grid.y, h_steps(horizon_s, grid.step_s), grid.step_s, start=len(grid.y) - 1)
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
    "profile-ar": _named("profile-ar"),
    AUTO: _named(AUTO),
}


def get_forecaster(name: str) -> Forecaster:
    """A forecaster by name; also a "+" combination of PATHS names (what `auto` records, e.g.
    "profile-ar+holt", so a replay can re-use the last selection between re-selections)."""
    if name in FORECASTERS:
        return FORECASTERS[name]
    parts = _parts(name)
    if len(parts) > 1 and all(m in PATHS for m in parts):
        return _named(name)
    raise ValueError(f"unknown forecaster {name!r}; choose one of {sorted(FORECASTERS)}")
