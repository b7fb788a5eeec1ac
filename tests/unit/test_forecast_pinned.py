"""Pinned forecasts between `auto` selections (tasks/core/forecast_pinned.py, an approximation
that is off by default): what is exact and what is not.

Exact (to rounding): every method's forecast at the last origin computed from short slices equals
the full path's last value; at the selection itself the pinned forecast equals
`forecast_quantiles`; later, a combination without ridge parts keeps equal values (only its
quantile calibration is pinned). Not exact: ridge parts use the selection's coefficients.
"""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import tasks.core.forecast as F
from tasks.core.forecast_grid import SampleHistory
from tasks.core.forecast_pinned import _at_last, _beta_at_last, forecast_pinned, pin
from tasks.core.forecast_quantile import LEVELS, forecast_quantiles

ROOT = Path(__file__).resolve().parents[2]
SERIES = [
    ROOT / "data/traces/servegen/servegen_m-small_10min.csv",
    ROOT.parent / "shared/data/traces/servegen/servegen_m-mid_10min.csv",
]


def _series(k: int) -> np.ndarray:
    rng = np.random.default_rng(11 + k)
    if k < len(SERIES):
        if not SERIES[k].exists():
            pytest.skip("m-mid series not present")
        rate = pd.read_csv(SERIES[k])["total_req_per_s"].to_numpy()
        y = np.repeat(rate, 10) * (1 + 0.03 * rng.standard_normal(len(rate) * 10))
    else:  # steps, a daily wave, lost samples, a long gap, a drop-out
        t = np.arange(9 * 1440)
        y = 100.0 + 80.0 * (t // 700 % 3) + 30 * np.sin(2 * np.pi * t / 1440) + rng.normal(0, 3, len(t))
        y[3000:3400] = np.nan
        y[6000:6010] = 0.0
    y[rng.random(len(y)) < 0.03] = np.nan
    return y


def _history(y: np.ndarray) -> SampleHistory:
    return SampleHistory((60.0 * (i + 1), None if np.isnan(v) else float(v)) for i, v in enumerate(y))


@pytest.mark.parametrize("k", range(3))
@pytest.mark.parametrize("n", [200, 1500, 4000, 11520])
def test_each_method_at_the_last_origin_equals_its_full_path(k: int, n: int) -> None:
    y = _series(k)[-n:]
    for horizon_s in (120.0, 360.0, 1800.0):
        h = F.h_steps(horizon_s, 60.0)
        for m in F.PATHS:
            beta = _beta_at_last(m, y, h, 60.0) if m in ("seasonal-ar", "profile-ar") else None
            got = _at_last(m, y, h, 60.0, beta)
            want = float(F._path(m, y, h, 60.0, start=n - 1)[-1])
            assert got == pytest.approx(want, rel=1e-12, abs=1e-12), (m, horizon_s)


@pytest.mark.parametrize("k", range(3))
@pytest.mark.parametrize("n", [1500, 11520])
def test_pinned_equals_forecast_quantiles_at_the_selection(k: int, n: int) -> None:
    hist = _history(_series(k)[-n:])
    for horizon_s in (120.0, 360.0, 1800.0):
        value, used, quantiles = forecast_quantiles("auto", hist, horizon_s)
        p = pin(used, value, quantiles, hist, horizon_s)
        assert p is not None and used == f"auto:{p.method}"
        v2, used2, q2 = forecast_pinned(p, hist, horizon_s, LEVELS)
        assert used2 == p.method
        assert v2 == pytest.approx(value, rel=1e-12)
        assert len(q2) == len(quantiles)
        for (la, a), (lb, b) in zip(q2, quantiles, strict=True):
            assert la == lb and a == pytest.approx(b, rel=1e-12)


@pytest.mark.parametrize("k", range(3))
def test_later_values_equal_without_ridge_parts_and_drift_little_with_them(k: int) -> None:
    y = _series(k)
    n0, later = 11520, 50  # pinned at n0, forecast 50 samples later (before the next hourly selection)
    hist0, hist1 = _history(y[:n0]), _history(y[later : n0 + later])
    for method in ("ewma+seasonal-blend", "holt+last-value", "seasonal-blend", "profile-ar+ewma", "seasonal-ar"):
        value, _used, quantiles = forecast_quantiles(method, hist0, 360.0)
        p = pin(f"auto:{method}", value, quantiles, hist0, 360.0)
        assert p is not None
        got, _, q = forecast_pinned(p, hist1, 360.0, LEVELS)
        want, _, _ = forecast_quantiles(method, hist1, 360.0)
        assert got is not None and want is not None
        if not {"seasonal-ar", "profile-ar"} & set(method.split("+")):
            assert got == pytest.approx(want, rel=1e-12), method
        else:  # stale coefficients: close, not equal (fitted on ~10,000 pairs, 50 of them newer)
            assert got == pytest.approx(want, rel=0.02), method
        assert [lv for lv, _ in q] == list(LEVELS) and all(b >= a for (_, a), (_, b) in pairwise(q))


def test_nothing_to_pin_for_a_fixed_method() -> None:
    hist = _history(_series(2)[:3000])
    value, used, quantiles = forecast_quantiles("holt", hist, 360.0)
    assert pin(used, value, quantiles, hist, 360.0) is None


def test_forecast_load_uses_a_pin_only_for_its_method() -> None:
    from models.config import load_config
    from tasks import steps

    config = load_config(ROOT / "deployments/clusters/demo.yaml")
    names = [s.name for s in config.services]
    y = _series(0)
    history = {n: _history(y[300 * i : 300 * i + 11520]) for i, n in enumerate(names)}
    selected = steps.forecast_load(config, history)  # the services' own forecaster: auto
    pins = steps.pin_forecasts(config, history, selected)
    assert set(pins) == {n for n, f in selected.items() if f.method.startswith("auto:")} and pins
    chosen = {n: p.method for n, p in pins.items()}
    exact = steps.forecast_load(config, history, forecaster=chosen)
    pinned = steps.forecast_load(config, history, forecaster=chosen, pins=pins)
    for n in pins:  # at the selection's own history: the same forecasts
        assert pinned[n].method == exact[n].method
        assert pinned[n].value == pytest.approx(exact[n].value, rel=1e-12)
        assert [lv for lv, _ in pinned[n].quantiles] == [lv for lv, _ in exact[n].quantiles]
        for (_, a), (_, b) in zip(pinned[n].quantiles, exact[n].quantiles, strict=True):
            assert a == pytest.approx(b, rel=1e-12)
    other = steps.forecast_load(config, history, forecaster="holt", pins=pins)  # not the pinned method
    assert other == steps.forecast_load(config, history, forecaster="holt")
