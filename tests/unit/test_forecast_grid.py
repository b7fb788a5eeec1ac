"""SampleHistory keeps the forecasters' grid input as arrays: the same grid as from the pairs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tasks.core.forecast import forecast_with, to_grid
from tasks.core.forecast_grid import SampleHistory


def _samples(seed: int, n: int) -> list[tuple[float, float | None]]:
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.choice([60.0, 60.0, 60.0, 120.0, 30.0], n)) + 1.7e9
    out: list[tuple[float, float | None]] = []
    for ti in t:
        r = rng.random()
        value: float | None = float(rng.lognormal(5, 1))
        if r < 0.05:
            value = None
        elif r < 0.07:
            value = math.nan
        elif r < 0.08:
            value = math.inf
        out.append((float(ti), value))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_grid_from_arrays_equals_grid_from_pairs_while_sliding(seed: int) -> None:
    samples = _samples(seed, 3000)
    hist = SampleHistory()
    keep_s = 86400.0 * (0.5 + seed / 4)
    for k, (t, v) in enumerate(samples):
        hist.append((t, v))
        while hist[0][0] < t - keep_s:
            hist.popleft()
        if k % 97 == 0 or k == len(samples) - 1:
            pairs = list(hist)
            a, b = to_grid(hist), to_grid(pairs)
            assert (a is None) == (b is None)
            if a is not None and b is not None:
                assert a.step_s == b.step_s and a.t_end_s == b.t_end_s
                np.testing.assert_array_equal(a.y, b.y)
    assert forecast_with("auto", hist, 600.0) == forecast_with("auto", list(hist), 600.0)


def test_only_the_mirrored_operations_are_allowed() -> None:
    hist = SampleHistory([(1.0, 2.0), (2.0, None)])
    assert list(hist) == [(1.0, 2.0), (2.0, None)]
    t, v = hist.as_arrays()
    assert t.tolist() == [1.0, 2.0] and v[0] == 2.0 and math.isnan(v[1])
    with pytest.raises(NotImplementedError):
        hist.appendleft((0.0, 1.0))
    with pytest.raises(NotImplementedError):
        hist.pop()
    hist.clear()
    assert to_grid(hist) is None and hist.as_arrays()[0].size == 0


def test_all_missing_gives_no_grid() -> None:
    assert to_grid(SampleHistory([(1.0, None), (2.0, math.nan)])) is None


def _daily(seed: int, days: float) -> list[tuple[float, float | None]]:
    rng = np.random.default_rng(seed)
    t = np.arange(0.0, days * 86400.0, 60.0)
    v = 1000.0 * (1.2 + np.sin(2 * np.pi * t / 86400.0 + seed)) * rng.lognormal(0, 0.1, len(t))
    out: list[tuple[float, float | None]] = [(float(a), float(b)) for a, b in zip(t, v, strict=True)]
    for k in rng.choice(len(out), len(out) // 50, replace=False):
        out[int(k)] = (out[int(k)][0], None)
    return out


def test_memoised_smoothing_and_daily_shape_change_no_forecast(monkeypatch: pytest.MonkeyPatch) -> None:
    from tasks.core import forecast as fc

    histories = [_daily(seed, days) for seed, days in ((1, 3.0), (2, 8.0), (3, 1.5))]

    def run() -> list[tuple[str, dict[str, np.ndarray], float | None, str]]:
        out = []
        # Interleaved and repeated: a stale entry would show up as a wrong path.
        for hist in [*histories, histories[0], histories[1][:-7]]:
            grid = to_grid(hist)
            assert grid is not None
            choice, paths = fc.select_forecaster(grid, 660.0)
            value, method = forecast_with("auto", hist, 660.0)
            out.append((choice, paths, value, method))
        return out

    memo = run()
    monkeypatch.setattr(fc._SMOOTHED, "enabled", False)
    monkeypatch.setattr(fc._DAILY_SHAPE, "enabled", False)
    plain = run()
    for (c1, p1, v1, m1), (c2, p2, v2, m2) in zip(memo, plain, strict=True):
        assert (c1, v1, m1) == (c2, v2, m2)
        assert p1.keys() == p2.keys()
        for k in p1:
            np.testing.assert_array_equal(p1[k], p2[k])


@pytest.mark.parametrize(("t0", "step"), [(1.7e9, 60.0), (0.0, 0.1), (12.5, 7.3)])
def test_regular_samples_take_the_one_sample_per_slot_grid_with_the_same_floats(t0: float, step: float) -> None:
    rng = np.random.default_rng(int(step * 10))
    hist = SampleHistory()
    t, used = t0, 0
    for k in range(2500):
        # A late sample at k = 700 breaks the spacing until it slides out of the window.
        t += step * (1.5 if k == 700 else 1.0)
        r = rng.random()
        value: float | None = None if r < 0.05 else math.inf if r < 0.06 else float(rng.lognormal(3, 1))
        hist.append((t, value))
        while len(hist) > 600:
            hist.popleft()
        if k % 37 == 0 or 695 <= k <= 705 or 1295 <= k <= 1305:
            a, b = to_grid(hist), to_grid(list(hist))
            assert (a is None) == (b is None)
            if a is not None and b is not None:
                assert a.step_s == b.step_s and a.t_end_s == b.t_end_s
                np.testing.assert_array_equal(a.y, b.y)
            regular = hist.regular_step() is not None
            d = np.diff(hist.as_arrays()[0])
            assert regular == (len(d) >= 1 and bool(np.all(d == d[0])) and d[0] > 0), k
            if step == 60.0:  # integral times: the spacing is exact except around the late sample
                assert regular == (k >= 1 and not 700 <= k < 1299), k
            used += regular
    assert used > 10  # the fast path was exercised
    hist.clear()
    hist.append((1.0, 1.0))
    assert hist.regular_step() is None
    hist.append((2.0, 1.0))
    assert hist.regular_step() == 1.0
