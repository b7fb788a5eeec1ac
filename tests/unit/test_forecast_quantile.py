"""Quantiles of the load at the horizon from the forecasters' own rolling-origin errors
(tasks/core/forecast_quantile.py), the `Forecast.quantile` read, the `policy.risk` knob and the
`heteroscale` policy sizing from the quantile."""

from __future__ import annotations

import numpy as np
import pytest

from models.config import ConfigError
from models.values import Action, Forecast
from tasks.core.forecast import forecast_with, path_last_value
from tasks.core.forecast_quantile import (
    LEVELS,
    conformal_quantile,
    forecast_quantiles,
    log_errors,
    quantile_path,
)
from tasks.core.policy import PolicyContext, heteroscale
from tests.builders import NO_STATE, make_context, make_service

STEP = 600.0


def _iid_series(n: int, sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 100.0 * np.exp(rng.normal(0.0, sigma, n))


def test_conformal_rank() -> None:
    e = np.arange(1.0, 10.0)  # 9 errors: the 0.9 level is rank ceil(10 x 0.9) = 9, the largest
    assert conformal_quantile(e, 0.9) == 9.0
    assert conformal_quantile(e, 0.5) == 5.0
    assert conformal_quantile(e, 0.99) == 9.0  # beyond n: the worst one seen


def test_log_errors_skip_missing_and_non_positive() -> None:
    y = np.array([1.0, 2.0, np.nan, 0.0, 4.0])
    r = log_errors(y, y, 1)
    assert r[0] == pytest.approx(np.log(2.0))
    assert np.isnan(r[1]) and np.isnan(r[2]) and np.isnan(r[3]) and np.isnan(r[4])


def test_quantiles_read_the_past_only() -> None:
    y = _iid_series(600, 0.1, 1)
    hi = 3
    q = quantile_path(path_last_value(y, hi, STEP), y, hi, STEP)
    y2 = y.copy()
    y2[400:] *= 3.0
    q2 = quantile_path(path_last_value(y2, hi, STEP), y2, hi, STEP)
    np.testing.assert_array_equal(q[:, :400], q2[:, :400])
    assert not np.allclose(q[:, 450:], q2[:, 450:])


def test_calibrated_on_stationary_noise() -> None:
    # iid log-normal load: the held-out coverage of each level is within 3 points of nominal.
    y = _iid_series(3000, 0.15, 7)
    hi = 1
    q = quantile_path(path_last_value(y, hi, STEP), y, hi, STEP)
    target = np.full(len(y), np.nan)
    target[:-hi] = y[hi:]
    ok = ~np.isnan(target) & ~np.isnan(q).any(axis=0)
    assert ok.sum() > 2500
    for k, lv in enumerate(LEVELS):
        assert abs(np.mean(target[ok] <= q[k, ok]) - lv) < 0.03, lv


def test_interval_widens_where_the_load_is_uncertain() -> None:
    # Calm for two days, then ten times noisier: the p90 margin over the forecast grows.
    calm, noisy = _iid_series(288, 0.02, 3), _iid_series(288, 0.2, 4)
    y = np.concatenate([calm, noisy])
    path = path_last_value(y, 1, STEP)
    q = quantile_path(path, y, 1, STEP)
    margin = q[LEVELS.index(0.9)] / path
    assert np.nanmedian(margin[200:288]) < 1.1 < np.nanmedian(margin[500:])


def test_levels_are_monotone() -> None:
    y = _iid_series(800, 0.2, 5)
    q = quantile_path(path_last_value(y, 2, STEP), y, 2, STEP)
    ok = ~np.isnan(q).any(axis=0)
    assert ok.sum() > 0 and np.all(np.diff(q[:, ok], axis=0) >= 0)


@pytest.mark.parametrize("method", ["last-value", "holt", "auto"])
def test_forecast_quantiles_match_the_point_forecast_and_need_history(method: str) -> None:
    y = _iid_series(400, 0.1, 11)
    history = [(i * STEP, float(v)) for i, v in enumerate(y)]
    value, used, qs = forecast_quantiles(method, history, 1800.0)
    ref, ref_used = forecast_with(method, history, 1800.0)
    assert value == pytest.approx(ref) and used == ref_used
    assert [lv for lv, _ in qs] == list(LEVELS)
    assert qs[0][1] <= qs[1][1] <= qs[2][1]
    # Under MIN_ERRORS scored origins: no quantiles, the point forecast alone.
    value, _used, qs = forecast_quantiles(method, history[:20], 1800.0)
    assert value is not None and qs == ()


def test_forecast_quantile_read() -> None:
    fc = Forecast("s", "decode_tps", 100.0, 240.0, "m", ((0.5, 100.0), (0.9, 150.0), (0.99, 300.0)))
    assert fc.quantile(0.9) == 150.0
    mid = fc.quantile(0.7)
    assert mid is not None and 100.0 < mid < 150.0
    assert fc.quantile(0.3) is None and fc.quantile(0.999) is None
    assert Forecast("s", "decode_tps", 100.0, 240.0, "m").quantile(0.9) is None


@pytest.mark.parametrize("bad", [0.2, 1.0, 1.5])
def test_risk_validated_with_the_field_named(bad: float) -> None:
    with pytest.raises(ConfigError, match=r"policy\.risk: must be a quantile level"):
        make_service(policy={"risk": bad})


# --- heteroscale sizing from the quantile ------------------------------------------------------

SVC = make_service()
TARGET = SVC.policy.target_per_instance
PER_DECODE = SVC.prefill.capacity_tokens_per_s["h100"] / SVC.decode.capacity_tokens_per_s["a100"]
PREFILL = PER_DECODE * SVC.pd_ratio.prefill_per_decode


def _ctx(
    load: float,
    quantiles: tuple[tuple[float, float], ...],
    *,
    point: float | None = None,
    risk: float | None = 0.9,
    current: tuple[int, int] = (5, 10),
    now_s: float = 10_000.0,
    **signals: float | None,
) -> PolicyContext:
    svc = SVC if risk == SVC.policy.risk else make_service(policy={"risk": risk})
    ctx = make_context(svc, now_s=now_s, current=current, decode_tps=load, prefill_tps=load * PREFILL, **signals)
    fc = Forecast(svc.name, "decode_tps", load if point is None else point, svc.cold_start_s + 60.0, "t", quantiles)
    return PolicyContext(ctx.service, ctx.now_s, ctx.signals, ctx.current, forecast=fc)


UNCERTAIN = ((0.5, 10 * TARGET), (0.9, 15 * TARGET), (0.99, 20 * TARGET))


def test_sizes_for_the_risk_quantile() -> None:
    # Point forecast = observed (10 decode asked, at 10): hold; its p90 says 15: scale out to 15.
    t_point, _ = heteroscale(_ctx(10 * TARGET, UNCERTAIN, risk=None), NO_STATE)
    assert t_point.action is Action.HOLD and t_point.num_decode == 10
    t_q, _ = heteroscale(_ctx(10 * TARGET, UNCERTAIN), NO_STATE)
    assert t_q.action is Action.SCALE_OUT and t_q.num_decode == 15
    assert "p90" in t_q.reason


def test_without_quantiles_sizes_from_the_point_forecast() -> None:
    a, _ = heteroscale(_ctx(10 * TARGET, (), point=14 * TARGET), NO_STATE)
    b, _ = heteroscale(_ctx(10 * TARGET, (), point=14 * TARGET, risk=None), NO_STATE)
    assert a.counts == b.counts and a.num_decode == 14


def test_scale_in_waits_for_the_upper_quantile() -> None:
    # 20 decode running, load now worth 10 with a point forecast of 10, but p90 at Ready time 19:
    # what would remain after shedding must cover the upper quantile, so nothing is shed.
    high = ((0.5, 10 * TARGET), (0.9, 19 * TARGET), (0.99, 25 * TARGET))
    low = ((0.5, 10 * TARGET), (0.9, 10.5 * TARGET), (0.99, 12 * TARGET))
    state = NO_STATE
    window = max(SVC.cold_start_s, SVC.policy.scale_in_cooldown_s, SVC.policy.scale_in_window_s)
    now = 0.0
    while now <= window + 60.0:
        t, state = heteroscale(_ctx(10 * TARGET, high, current=(10, 20), now_s=now), state)
        assert t.action is Action.HOLD, now
        now += 60.0
    # Once the upper quantile has been low for a whole window, it sheds (damped).
    start = now
    while now <= start + window + 60.0:
        t, state = heteroscale(_ctx(10 * TARGET, low, current=(10, 20), now_s=now), state)
        now += 60.0
        if t.action is Action.SCALE_IN:
            break
    assert t.action is Action.SCALE_IN and t.counts.num_decode >= 11


def test_missing_load_holds_whatever_the_quantiles() -> None:
    ctx = _ctx(10 * TARGET, UNCERTAIN)
    bad = make_context(SVC, decode_tps=None, prefill_tps=None)
    t, _ = heteroscale(PolicyContext(bad.service, bad.now_s, bad.signals, bad.current, forecast=ctx.forecast), NO_STATE)
    assert t.action is Action.HOLD and t.counts == bad.current
