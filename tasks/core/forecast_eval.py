"""Offline backtests of the forecasters over a whole series (`heteroscale bench forecast`).

Rolling-origin errors of every method and of `auto` as the live selection would have chosen it
(only targets already known at each origin), scores and the share of origins each method was used.
Pure: no clock, no I/O. The forecasters themselves and the live selection: `tasks.core.forecast`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from tasks.core.forecast import (
    AUTO,
    COMBINE_TOP,
    DAY_S,
    MIN_SCORED_ORIGINS,
    PATHS,
    SELECT_BY,
    SELECT_WINDOW_S,
    BacktestScore,
    abs_pct_errors,
    combine_paths,
    h_steps,
    score,
)


def backtest_errors(
    y: np.ndarray,
    step_s: float,
    horizon_s: float,
    *,
    candidates: Sequence[str] = tuple(PATHS),
    window_s: float = SELECT_WINDOW_S,
    select_by: str = SELECT_BY,
    combine: int = COMBINE_TOP,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per-origin absolute % errors of every method and of `auto` over a whole series.

    `errors[m][i]` scores the forecast from origin i against y[i + h] (NaN: target missing or not
    positive); the forecasts and `choice` are those of `backtest_paths`.
    """
    hi = max(1, round(h_steps(horizon_s, step_s)))
    paths, choice = backtest_paths(
        y, step_s, horizon_s, candidates=candidates, window_s=window_s, select_by=select_by, combine=combine
    )
    return {m: abs_pct_errors(p, y, hi) for m, p in paths.items()}, choice


def backtest_paths(
    y: np.ndarray,
    step_s: float,
    horizon_s: float,
    *,
    candidates: Sequence[str] = tuple(PATHS),
    window_s: float = SELECT_WINDOW_S,
    select_by: str = SELECT_BY,
    combine: int = COMBINE_TOP,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per-origin forecasts of every method and of `auto` over a whole series.

    `paths[m][i]` is the forecast of y[i + h] from origin i. `auto` at origin i combines
    (`combine_paths`) the `combine` methods with the lowest `select_by` error ("mean", or "median" for a burst-robust choice) over origins whose targets
    are known at i (target index <= i) within `window_s` — what the live selection sees — so its
    score is honest, not a best-in-hindsight. Also returns `choice`, shape (combine, n): the
    indices into `candidates` used at each origin, best first (-1: slot unused).
    """
    h = h_steps(horizon_s, step_s)
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
    k = max(1, min(combine, len(candidates)))
    cols = np.arange(n)
    choice = np.argsort(stack, axis=0, kind="stable")[:k]  # ties -> earlier candidate
    used = np.isfinite(stack[choice, cols])
    # Too little history for the first candidate (last-value): it alone, as in the live selection.
    alone = ~np.isfinite(stack[0])
    choice[0, alone], used[0, alone] = 0, True
    used[1:, alone] = False
    choice = np.where(used, choice, -1)
    path_stack = np.vstack([paths[m] for m in candidates])
    members = np.where(used, path_stack[np.maximum(choice, 0), cols], np.nan)
    paths[AUTO] = combine_paths(list(members))
    return paths, choice


def chosen_shares(choice: np.ndarray, candidates: Sequence[str]) -> dict[str, float]:
    """Share of origins at which `auto` used each candidate (alone or in its combination)."""
    if choice.shape[-1] == 0:
        return {m: 0.0 for m in candidates}
    return {m: float(np.mean(np.any(choice == i, axis=0))) for i, m in enumerate(candidates)}


def backtest_series(
    y: np.ndarray,
    step_s: float,
    horizon_s: float,
    *,
    warmup_s: float = 2 * DAY_S,
    candidates: Sequence[str] = tuple(PATHS),
    window_s: float = SELECT_WINDOW_S,
    combine: int = COMBINE_TOP,
) -> tuple[dict[str, BacktestScore], dict[str, float]]:
    """Rolling-origin backtest of every method and of `auto` (`backtest_errors`) over a whole series.

    Returns the scores over origins from `warmup_s` on and the share of those origins at which
    `auto` used each method.
    """
    errs, choice = backtest_errors(y, step_s, horizon_s, candidates=candidates, window_s=window_s, combine=combine)
    start = min(len(y), round(warmup_s / step_s))
    out = {m: score(m, e[start:]) for m, e in errs.items()}
    return out, chosen_shares(choice[:, start:], candidates)
