"""Forecasts between two `auto` selections from the last origin only: an explicit approximation,
off by default (the replay's `pin_between_selections`). Pure.

Why: `forecast_quantiles` rebuilds every feature of its method over the whole history window (8
days, 11,520 one-minute points: rolling medians, daily shapes, a ridge refit per origin of the
last day) for one value and the calibration of its quantiles. Between two re-selections of `auto`
(hourly in the replay) that is ~20 % of a 14-day replay's CPU (docs/twin.md).

What is pinned at a selection (`pin`, from the selection's own `Forecast` and the same history):
the chosen combination; the ridge coefficients of its seasonal-ar / profile-ar parts fitted at the
last origin (the same pairs and features the path functions use); and the combination's conformal
log-error quantiles, log(q / value) of the selection's forecast. Between selections
(`forecast_pinned`): each part's forecast at the last origin only — last-value and holt from their
full paths (cheap, the same floats), ewma as its weighted mean over the last observations (equal to
rounding, without pandas), seasonal-blend and the ridge features from short slices around the
points they read (the same medians as over the whole series) — the ridge parts with the pinned
coefficients, combined as `combine_paths` does; the quantiles are that value times the pinned
exp(log-error quantiles). So the value differs from `forecast_quantiles` only through the ridge
coefficients (fitted up to one re-selection period earlier: ~60 of ~10,000 pairs per hour) and the
quantiles only through their calibration set (the same period older). Tests:
`tests/unit/test_forecast_pinned.py` (at the selection itself: equal to `forecast_quantiles`;
later: the measured drift).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tasks.core import forecast as F
from tasks.core.forecast_grid import nanmedian_rows, rolling_median_from

_RIDGE = ("seasonal-ar", "profile-ar")
_CHEAP = ("last-value", "ewma", "holt")


# The path functions' own defaults: one source for the parameters.
_AR = inspect.signature(F.path_profile_ar).parameters
_BLEND = inspect.signature(F.path_seasonal_blend).parameters
LAGS_S: tuple[float, ...] = _AR["lags_s"].default
AR_LEVEL_S: float = _AR["level_s"].default
AR_DAYS: int = _AR["days"].default
FIT_WINDOW_S: float = _AR["fit_window_s"].default
CLIP_LOG: float = _AR["clip_log"].default
RIDGE: float = _AR["ridge"].default
BLEND_LEVEL_S: float = _BLEND["level_s"].default
BLEND_DECAY: float = _BLEND["decay_per_10min"].default
BLEND_DAYS: int = _BLEND["days"].default


@dataclass(frozen=True)
class Pinned:
    """What a selection fixes until the next one (see the module docstring)."""

    method: str  # the chosen combination ("profile-ar+ewma"), or one PATHS name
    betas: Mapping[str, tuple[float, ...]]  # ridge part -> coefficients at the selection
    log_quantiles: tuple[tuple[float, float], ...]  # (level, log(q / value)) at the selection


def pin(
    method_used: str,
    value: float | None,
    quantiles: Sequence[tuple[float, float]],
    history: F.History,
    horizon_s: float,
) -> Pinned | None:
    """The pin of a selection's forecast (`forecast_quantiles("auto", history, horizon_s)`'s
    result); None when there is nothing to pin (not an `auto` choice, no grid)."""
    if not method_used.startswith(f"{F.AUTO}:"):
        return None
    method = method_used.removeprefix(f"{F.AUTO}:")
    grid = F.to_grid(history)
    if grid is None:
        return None
    h = F.h_steps(horizon_s, grid.step_s)
    betas = {m: _beta_at_last(m, grid.y, h, grid.step_s) for m in F._parts(method) if m in _RIDGE}
    logq: tuple[tuple[float, float], ...] = ()
    if value is not None and value > 0 and quantiles:
        logq = tuple((lv, math.log(q / value)) if q > 0 else (lv, -math.inf) for lv, q in quantiles)
    return Pinned(method, betas, logq)


def forecast_pinned(
    pinned: Pinned, history: F.History, horizon_s: float, levels: Sequence[float]
) -> tuple[float | None, str, tuple[tuple[float, float], ...]]:
    """(value, method used, quantiles) like `forecast_quantiles(pinned.method, ...)`, from the
    last origin only (see the module docstring). Quantiles only for the pinned levels."""
    used = pinned.method
    grid = F.to_grid(history)
    if grid is None:
        return None, used, ()
    h = F.h_steps(horizon_s, grid.step_s)
    parts = [_at_last(m, grid.y, h, grid.step_s, pinned.betas.get(m)) for m in F._parts(pinned.method)]
    f = float(F.combine_paths([np.array([p]) for p in parts])[0])
    value = F.last_value(history, horizon_s) if pinned.method == "last-value" else F._finite(f)
    have = dict(pinned.log_quantiles)
    if value is None or not (math.isfinite(f) and f > 0) or any(lv not in have for lv in levels):
        return value, used, ()
    return value, used, tuple((float(lv), f * math.exp(have[lv])) for lv in levels)


# --- one origin --------------------------------------------------------------------------


def _at_last(method: str, y: np.ndarray, h: float, step_s: float, beta: tuple[float, ...] | None) -> float:
    n = len(y)
    if method == "ewma":
        return _ewma_at_last(y)
    if method in _CHEAP or n < 2:
        return float(F.PATHS[method](y, h, step_s)[-1])
    hi = max(1, round(h))
    filled = F._ffill(y)
    logy = np.log(np.maximum(filled, 1e-9))
    if method == "seasonal-blend":
        k = max(1, round(BLEND_LEVEL_S / step_s))
        level = _trailing_median_at_last(y, k)
        fade = BLEND_DECAY ** (h * step_s / 600.0)
        base = level + fade * (float(filled[-1]) - level)
        delta = _SmoothedAt(logy, step_s).daily_shape(hi, BLEND_DAYS)
        return base * math.exp(float(np.nan_to_num(delta)))
    x = _features_at_last(method, y, filled, logy, hi, step_s)
    b = np.zeros(len(x)) if beta is None else np.asarray(beta)
    return float(filled[-1] * np.exp(np.sum(b * x)))


EWMA_ALPHA: float = inspect.signature(F.path_ewma).parameters["alpha"].default
# Observations an ewma at the last origin reads: older weights are below (1 - alpha)^400 ~ 1e-209.
EWMA_OBS = 400


def _ewma_at_last(y: np.ndarray) -> float:
    """`path_ewma(y)[-1]` without pandas: the mean of the observed values weighted (1 - alpha)^k
    by age in observations (pandas' `adjust=True, ignore_na=True` definition), over the last
    EWMA_OBS of them. Equal to the pandas value to rounding (~1e-15 relative), not bit for bit."""
    seen = y[~np.isnan(y)][-EWMA_OBS:]
    if not len(seen):
        return math.nan
    w = (1.0 - EWMA_ALPHA) ** np.arange(len(seen) - 1, -1, -1, dtype=float)
    return float(np.dot(w, seen) / w.sum())


class _SmoothedAt:
    """`forecast._smoothed_log(logy, step_s)` at the points one origin reads, from short slices:
    the centred window of point c is [c - w // 2, c + (w - 1) // 2] (pandas' centring), so a
    slice reaching w past both ends gives the same medians there."""

    def __init__(self, logy: np.ndarray, step_s: float) -> None:
        self.logy, self.step_s, self.n = logy, step_s, len(logy)
        self.w = max(1, round(F.SMOOTH_S / step_s))
        self.s = round(F.DAY_S / step_s)

    def range(self, a: int, b: int) -> np.ndarray:
        """sm[a..b] (inclusive; a >= 0)."""
        lo, hi = max(0, a - self.w // 2), min(self.n, b + (self.w - 1) // 2 + 1)
        seg = self.logy[lo:hi]
        if lo == a - self.w // 2 and hi == b + (self.w - 1) // 2 + 1 and not np.isnan(seg).any():
            # Whole windows, no gaps: numpy's median of each window (the same floats as pandas').
            return np.median(np.lib.stride_tricks.sliding_window_view(seg, self.w), axis=1)
        sm = pd.Series(seg).rolling(self.w, center=True, min_periods=1).median().to_numpy()
        return sm[a - lo : b - lo + 1]

    def rows(self, days: int) -> int:
        return min(days, (self.n - 1) // self.s)

    def daily_shape(self, hi: int, days: int) -> float:
        """`daily_shape_log_change(...)[-1]`."""
        i, s = self.n - 1, self.s
        if s <= hi or self.n <= s:
            return math.nan
        deltas = []
        for j in range(1, self.rows(days) + 1):
            seg = self.range(i - j * s, i + hi - j * s)
            deltas.append([seg[-1] - seg[0]])
        return float(nanmedian_rows(np.array(deltas))[0])


def _features_at_last(
    method: str, y: np.ndarray, filled: np.ndarray, logy: np.ndarray, hi: int, step_s: float
) -> np.ndarray:
    """The ridge features of `method` at the last origin (`path_seasonal_ar` / `path_profile_ar`'s
    columns there), clipped and NaN as 0 as `_direct_ridge` uses them."""
    i = len(y) - 1
    # log y[i - k] - log y[i] per lag; 0 where the lag reaches before the start (`_lag_changes`).
    cols = [float(logy[i - k] - logy[i]) if k <= i else 0.0 for k in (max(1, round(lag / step_s)) for lag in LAGS_S)]
    sm = _SmoothedAt(logy, step_s)
    cols.append(sm.daily_shape(hi, AR_DAYS))
    if method == "profile-ar":
        k = max(1, round(AR_LEVEL_S / step_s))
        raw = np.log(np.maximum(y, 1e-9))
        cols.append(_trailing_median_at_last(raw, k) - float(logy[-1]))
        cols.append(_profile_deviation_at_last(sm, hi, k, AR_DAYS))
    return np.clip(np.nan_to_num(np.array(cols)), -CLIP_LOG, CLIP_LOG)


def _trailing_median_at_last(y: np.ndarray, k: int) -> float:
    """`rolling_median_from(y, k, len(y) - 1)[-1]`: the median of the observed values among the
    last k (numpy's median of the same values: the same float), else the forward fill."""
    window = y[max(0, len(y) - k) :]
    seen = window[~np.isnan(window)]
    return float(np.median(seen)) if len(seen) else float(rolling_median_from(y, k, len(y) - 1)[-1])


def _profile_deviation_at_last(sm: _SmoothedAt, hi: int, level_n: int, days: int) -> float:
    """`profile_deviation(...)[-1]`: p_target(i) + mean of (logy - p_now) over the last level_n
    origins - logy[i] (the mean over the observed ones, as pandas' rolling mean; rounding may
    differ in the last bits)."""
    n, s, i = sm.n, sm.s, sm.n - 1
    if n <= s or s <= hi + max(1, round(F.SMOOTH_S / sm.step_s)):
        return math.nan
    rows = sm.rows(days)
    c0 = max(0, i - level_n + 1)
    now = np.full((rows, i - c0 + 1), np.nan)
    target = np.full((rows, 1), np.nan)
    for j in range(1, rows + 1):
        a = c0 - j * s  # columns c with c - j*s >= 0 only
        first = max(a, 0)
        seg = sm.range(first, i - j * s + hi)
        now[j - 1, first - a :] = seg[: i - j * s - first + 1]
        target[j - 1, 0] = seg[-1]
    p_now = nanmedian_rows(now)
    dev = sm.logy[c0 : i + 1] - p_now
    ok = ~np.isnan(dev)
    offset = float(np.mean(dev[ok])) if ok.any() else math.nan
    return float(nanmedian_rows(target)[0]) + offset - float(sm.logy[i])


def _beta_at_last(method: str, y: np.ndarray, h: float, step_s: float) -> tuple[float, ...]:
    """The ridge coefficients `path_seasonal_ar` / `path_profile_ar` fit at the last origin: the
    same features over the whole grid, the pairs j with i - w < j + hi <= i, summed directly."""
    hi = max(1, round(h))
    n, i = len(y), len(y) - 1
    filled = F._ffill(y)
    logy = np.log(np.maximum(filled, 1e-9))
    cols = F._lag_changes(logy, LAGS_S, step_s)
    sm = F._smoothed_log(logy, step_s)
    cols.append(F.daily_shape_log_change(filled, hi, step_s, days=AR_DAYS, smoothed=sm))
    if method == "profile-ar":
        k = max(1, round(AR_LEVEL_S / step_s))
        raw = np.log(np.maximum(y, 1e-9))
        cols.append(pd.Series(raw).rolling(k, min_periods=1).median().ffill().to_numpy() - logy)
        cols.append(F.profile_deviation(logy, hi, step_s, level_n=k, days=AR_DAYS, smoothed=sm))
    clip = CLIP_LOG
    x = np.clip(np.nan_to_num(np.column_stack(cols)), -clip, clip)
    p = x.shape[1]
    w = max(1, round(FIT_WINDOW_S / step_s))
    lo, end = max(0, i - hi + 1 - w), max(0, i - hi + 1)
    j = np.arange(lo, end)
    ok = (j + hi < n) & ~np.isnan(y[np.minimum(j + hi, n - 1)]) & ~np.isnan(filled[j])
    t = np.clip(np.nan_to_num(logy[np.minimum(j + hi, n - 1)] - logy[j]), -clip, clip) * ok
    xo = x[j] * ok[:, None]
    a = xo.T @ xo + RIDGE * np.eye(p)
    return tuple(float(b) for b in np.linalg.solve(a, xo.T @ t))
