"""Forecasters: the filter form of Holt equals its recursion, gaps are gaps, selection is honest."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.core.forecast import (
    FORECASTERS,
    forecast_with,
    holt_states,
    select_forecaster,
    to_grid,
)
from tasks.core.forecast_eval import backtest_series


def _holt_loop(y: list[float], alpha: float, beta: float, phi: float) -> tuple[list[float], list[float]]:
    level, trend = [y[0]], [0.0]
    for v in y[1:]:
        lp, bp = level[-1], trend[-1]
        l_new = alpha * v + (1 - alpha) * (lp + phi * bp)
        trend.append(beta * (l_new - lp) + (1 - beta) * phi * bp)
        level.append(l_new)
    return level, trend


@given(st.lists(st.floats(0, 1e4), min_size=2, max_size=200), st.floats(0.05, 0.95), st.floats(0.05, 0.9))
@settings(max_examples=50, deadline=None)
def test_holt_filter_equals_recursion(y: list[float], alpha: float, beta: float) -> None:
    level, trend = holt_states(np.array(y), alpha=alpha, beta=beta, phi=0.9)
    want_l, want_b = _holt_loop(y, alpha, beta, 0.9)
    np.testing.assert_allclose(level, want_l, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(trend, want_b, rtol=1e-6, atol=1e-6)


def test_missing_history_forecasts_none_never_zero() -> None:
    for name, fn in FORECASTERS.items():
        assert fn([], 300.0) is None, name
        assert fn([(0.0, None), (60.0, math.nan)], 300.0) is None, name


def test_gap_is_not_zero_load() -> None:
    history = [(i * 60.0, 1000.0) for i in range(100)] + [(6000.0 + i * 60, None) for i in range(5)]
    for name in FORECASTERS:
        value = FORECASTERS[name](history, 240.0)
        assert value is not None and abs(value - 1000.0) < 1.0, (name, value)


def test_grid_keeps_gaps_as_nan() -> None:
    grid = to_grid([(0.0, 1.0), (60.0, None), (120.0, 3.0)])
    assert grid is not None and grid.step_s == 60.0
    assert grid.y[0] == 1.0 and math.isnan(grid.y[1]) and grid.y[2] == 3.0


def _diurnal(days: int, step_s: float, noise: float, seed: int = 0) -> np.ndarray:
    t = np.arange(int(days * 86400 / step_s)) * step_s
    rng = np.random.default_rng(seed)
    return 1000 + 600 * np.sin(2 * np.pi * t / 86400) + rng.normal(0, noise, len(t))


def test_trend_and_season_beat_last_value_on_a_smooth_diurnal_series() -> None:
    y = _diurnal(6, 600.0, noise=5.0)
    scores, _ = backtest_series(y, 600.0, 1800.0)
    assert scores["auto"].mape is not None and scores["last-value"].mape is not None
    assert scores["auto"].mape < 0.5 * scores["last-value"].mape


def test_selection_keeps_last_value_without_enough_history() -> None:
    grid = to_grid([(i * 60.0, 100.0 + i) for i in range(5)])
    assert grid is not None
    assert select_forecaster(grid, 240.0)[0] == "last-value"


def test_auto_reports_its_choice() -> None:
    y = _diurnal(3, 600.0, noise=5.0)
    value, method = forecast_with("auto", [(i * 600.0, float(v)) for i, v in enumerate(y)], 1800.0)
    assert value is not None and method.startswith("auto:") and method != "auto:last-value"


def test_seasonal_ar_is_last_value_without_pairs_and_learns_a_daily_shape() -> None:
    from tasks.core.forecast import path_last_value, path_seasonal_ar

    short = np.array([100.0, 120.0, 90.0])  # no (origin, target) pair known yet for h = 3
    np.testing.assert_allclose(path_seasonal_ar(short, 3, 600.0), path_last_value(short, 3, 600.0))
    y = _diurnal(6, 600.0, noise=5.0)
    scores, _ = backtest_series(y, 600.0, 1800.0, candidates=("last-value", "seasonal-ar"))
    lv, ar = scores["last-value"].mape, scores["seasonal-ar"].mape
    assert lv is not None and ar is not None and ar < 0.5 * lv


def test_seasonal_ar_path_uses_only_the_past() -> None:
    from tasks.core.forecast import path_seasonal_ar

    y = _diurnal(3, 600.0, noise=50.0, seed=3)
    full = path_seasonal_ar(y, 3, 600.0)
    cut = 300
    changed = y.copy()
    changed[cut + 1 :] *= 3.0  # the future changes; forecasts from origins <= cut must not
    np.testing.assert_allclose(path_seasonal_ar(changed, 3, 600.0)[: cut + 1], full[: cut + 1])


def test_near_zero_dropout_does_not_collapse_seasonal_ar() -> None:
    from tasks.core.forecast import path_seasonal_ar

    y = _diurnal(3, 600.0, noise=20.0, seed=1)
    y[-2] = 1.0  # one near-zero window (unflagged drop-out) just before the origin
    f = path_seasonal_ar(y, 3, 600.0)
    # Clipped log changes: the recovered last sample is followed, the drop-out is a bounded move.
    assert 0.3 * y[-1] < f[-1] < 3.0 * y[-1]


def _noisy_profile(days: int, seed: int, phi: float = 0.3, sd: float = 0.15) -> np.ndarray:
    """A daily profile times AR(1) log deviations that revert toward it within a few windows."""
    n = days * 144
    rng = np.random.default_rng(seed)
    u = np.zeros(n)
    for i in range(1, n):
        u[i] = phi * u[i - 1] + rng.normal(0.0, sd)
    return 1000.0 * np.exp(0.5 * np.sin(2 * np.pi * np.arange(n) / 144) + u)


def test_profile_ar_reverts_toward_the_daily_profile() -> None:
    y = _noisy_profile(5, seed=0)
    scores, _ = backtest_series(
        y, 600.0, 1800.0, candidates=("last-value", "seasonal-ar", "profile-ar"), warmup_s=3 * 86400.0
    )
    lv, ar, pa = (scores[m].mape for m in ("last-value", "seasonal-ar", "profile-ar"))
    assert lv is not None and ar is not None and pa is not None
    assert pa < 0.97 * ar and pa < 0.9 * lv


def test_profile_ar_is_last_value_without_pairs_and_uses_only_the_past() -> None:
    from tasks.core.forecast import path_last_value, path_profile_ar

    short = np.array([100.0, 120.0, 90.0])
    np.testing.assert_allclose(path_profile_ar(short, 3, 600.0), path_last_value(short, 3, 600.0))
    y = _noisy_profile(3, seed=3)
    full = path_profile_ar(y, 3, 600.0)
    cut = 300
    changed = y.copy()
    changed[cut + 1 :] *= 3.0
    np.testing.assert_allclose(path_profile_ar(changed, 3, 600.0)[: cut + 1], full[: cut + 1])


def test_ridge_paths_solved_from_start_equal_the_full_path() -> None:
    from tasks.core.forecast import path_profile_ar, path_seasonal_ar

    y = _noisy_profile(3, seed=2)
    for fn in (path_seasonal_ar, path_profile_ar):
        full, tail = fn(y, 3, 600.0), fn(y, 3, 600.0, start=400)
        assert np.isnan(tail[:400]).all()
        np.testing.assert_allclose(tail[400:], full[400:])


def test_combine_paths_geometric_mean_with_fallbacks() -> None:
    from tasks.core.forecast import combine_paths

    got = combine_paths(
        [np.array([100.0, 100.0, -10.0, np.nan, np.nan]), np.array([400.0, np.nan, 30.0, 50.0, np.nan])]
    )
    np.testing.assert_allclose(got[:4], [200.0, 100.0, 10.0, 50.0])  # geometric; NaN skipped; arithmetic if <= 0
    assert math.isnan(got[4])


def test_auto_records_a_combination_that_resolves_to_the_same_forecast() -> None:
    from tasks.core.forecast import get_forecaster

    y = _noisy_profile(4, seed=1)
    history = [(i * 600.0, float(v)) for i, v in enumerate(y)]
    value, method = forecast_with("auto", history, 1800.0)
    chosen = method.removeprefix("auto:")
    assert value is not None and "+" in chosen  # the best two by median error
    again = get_forecaster(chosen)(history, 1800.0)  # what a replay re-uses between selections
    assert again is not None and abs(again - value) < 1e-9 * value


def test_backtest_auto_scores_the_combination_it_chose() -> None:
    from tasks.core.forecast import PATHS, abs_pct_errors, combine_paths
    from tasks.core.forecast_eval import backtest_errors

    y = _noisy_profile(4, seed=4)
    errs, choice = backtest_errors(y, 600.0, 1800.0)
    names = tuple(PATHS)
    i = len(y) - 10
    members = [names[k] for k in choice[:, i] if k >= 0]
    assert len(members) == 2 and members[0] != members[1]
    f = combine_paths([PATHS[m](y, 3.0, 600.0) for m in members])
    np.testing.assert_allclose(errs["auto"][i], abs_pct_errors(f, y, 3)[i])
    assert choice[0, 10] == 0 and choice[1, 10] == -1  # no history yet: last-value alone
