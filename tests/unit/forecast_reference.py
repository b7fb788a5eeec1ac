"""The forecasting code as it was before the performance pass of issue 18 (wt-fcast), kept only
so tests can check that the faster code computes the same floats. Not used by the package."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from tasks.core import forecast as F
from tasks.core.forecast_quantile import BAND_S, LEVELS, RECENT_S, WINDOW_S, Quantiles, quantile_path


def direct_ridge(
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
    n = len(y)
    x = np.clip(np.nan_to_num(np.column_stack(cols)), -clip_log, clip_log)
    p = x.shape[1]
    target = np.full(n, np.nan)
    if hi < n:
        target[: n - hi] = np.where(np.isnan(y[hi:]), np.nan, logy[hi:] - logy[: n - hi])
    ok = ~np.isnan(target) & ~np.isnan(filled)
    t = np.where(ok, np.clip(np.nan_to_num(target), -clip_log, clip_log), 0.0)
    xo = x * ok[:, None]
    iu, il = np.triu_indices(p)
    xtx = np.concatenate([np.zeros((1, len(iu))), np.cumsum(xo[:, iu] * xo[:, il], axis=0)])
    xty = np.concatenate([np.zeros((1, p)), np.cumsum(xo * t[:, None], axis=0)])
    w = max(1, round(fit_window_s / step_s))
    i = np.arange(min(max(start, 0), n), n)
    hi_end = np.clip(i - hi + 1, 0, n)
    lo_end = np.clip(i - hi + 1 - w, 0, n)
    tri = xtx[hi_end] - xtx[lo_end]
    a = np.empty((len(i), p, p))
    a[:, iu, il] = tri
    a[:, il, iu] = tri
    b = xty[hi_end] - xty[lo_end]
    a = a + ridge * np.eye(p)
    beta = np.linalg.solve(a, b[:, :, None])[:, :, 0]
    out = np.full(n, np.nan)
    out[i] = filled[i] * np.exp(np.sum(beta * x[i], axis=1))
    return out


def nanmedian_rows(x: np.ndarray) -> np.ndarray:
    srt = np.sort(x, axis=0)
    cnt = np.sum(~np.isnan(x), axis=0)
    cols = np.arange(x.shape[1])
    lo, hi = np.maximum(cnt - 1, 0) // 2, np.maximum(cnt, 1) // 2
    with np.errstate(invalid="ignore"):
        med = (srt[lo, cols] + srt[hi, cols]) / 2.0
    return np.where(cnt > 0, med, np.nan)


def path_seasonal_blend(
    y: np.ndarray,
    h: float,
    step_s: float,
    *,
    level_s: float = 3600.0,
    decay_per_10min: float = 0.7,
    days: int = 7,
    season_s: float = F.DAY_S,
    start: int = 0,
) -> np.ndarray:
    k = max(1, round(level_s / step_s))
    last = F._ffill(y)
    level = pd.Series(y).rolling(k, min_periods=1).median().ffill().to_numpy()
    fade = decay_per_10min ** (h * step_s / 600.0)
    base = level + fade * (last - level)
    delta = F.daily_shape_log_change(last, max(1, round(h)), step_s, days=days, season_s=season_s)
    return base * np.exp(np.nan_to_num(delta))


def forecast_quantiles(
    method: str, history: F.History, horizon_s: float, levels: Sequence[float] = LEVELS
) -> tuple[float | None, str, Quantiles]:
    grid = F.to_grid(history)
    if grid is None:
        return None, method, ()
    h = F.h_steps(horizon_s, grid.step_s)
    hi = max(1, round(h))
    n = len(grid.y)
    start = max(0, n - 1 - hi - round((RECENT_S if BAND_S is None else WINDOW_S) / grid.step_s))
    if method == F.AUTO:
        chosen, paths = F.select_forecaster(grid, horizon_s)
        parts = chosen.split(F.COMBINE_SEP)
        first = np.flatnonzero(~np.isnan(paths[parts[0]]))
        if len(first) and first[0] <= start:
            path = F.combine_paths([paths[m] for m in parts])
        else:
            path = F._path(chosen, grid.y, h, grid.step_s, start=start)
        used, method = f"{F.AUTO}:{chosen}", chosen
    else:
        used, path = method, F._path(method, grid.y, h, grid.step_s, start=start)
    value = F.last_value(history, horizon_s) if method == "last-value" else _nonneg(path[-1])
    q = quantile_path(path, grid.y, hi, grid.step_s, levels, origins=np.array([n - 1]))[:, -1]
    if value is None or np.isnan(q).any():
        return value, used, ()
    return value, used, tuple((float(lv), float(v)) for lv, v in zip(levels, q, strict=True))


def _nonneg(x: float) -> float | None:
    return max(float(x), 0.0) if math.isfinite(x) else None
