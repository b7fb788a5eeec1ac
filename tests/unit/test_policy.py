"""The paper's policy and the baselines, as pure functions: properties and scenarios."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from models.values import Action, RoleCounts, ServicePolicyState
from tasks.core.policy import (
    bound_decode,
    heteroscale_paper,
    hpa_gpu_util,
    split_by_ratio,
    static_peak,
)
from tests.builders import NO_STATE, make_context, make_service

SVC = make_service()  # ratio 1:2, target 600 decode tok/s per decode instance, bounds [3, 60]
P = SVC.policy

loads = st.floats(min_value=0, max_value=60_000, allow_nan=False)
decodes = st.integers(min_value=bound_decode(SVC, 0), max_value=40)


def in_bounds(c: RoleCounts) -> bool:
    return P.min_instances <= c.total <= P.max_instances


def current_for(d: int) -> tuple[int, int]:
    c = split_by_ratio(SVC, d)
    return c.num_prefill, c.num_decode


@settings(max_examples=300, deadline=None)
@given(load=loads, d=decodes, tbt=st.none() | st.floats(0.01, 1.0))
def test_bounds_held_and_ratio_kept(load: float, d: int, tbt: float | None) -> None:
    ctx = make_context(SVC, current=current_for(d), decode_tps=load, tbt_p99_s=tbt)
    t, _ = heteroscale_paper(ctx, NO_STATE)
    assert in_bounds(t.counts)
    assert t.counts == split_by_ratio(SVC, t.num_decode)


@settings(max_examples=200, deadline=None)
@given(d=st.integers(0, 200))
def test_out_of_bounds_fleet_is_brought_back_even_in_cooldown(d: int) -> None:
    state = ServicePolicyState(last_scale_out_s=9_990.0, last_scale_in_s=9_990.0)
    ctx = make_context(SVC, current=(d, d), decode_tps=None)
    t, _ = heteroscale_paper(ctx, state)
    assert in_bounds(t.counts)


@settings(max_examples=300, deadline=None)
@given(a=loads, b=loads, d=decodes)
def test_monotone_in_load(a: float, b: float, d: int) -> None:
    lo, hi = sorted((a, b))
    t_lo, _ = heteroscale_paper(make_context(SVC, current=current_for(d), decode_tps=lo), NO_STATE)
    t_hi, _ = heteroscale_paper(make_context(SVC, current=current_for(d), decode_tps=hi), NO_STATE)
    assert t_hi.num_decode >= t_lo.num_decode
    assert t_hi.num_prefill >= t_lo.num_prefill


@settings(max_examples=150, deadline=None)
@given(
    d=decodes,
    ttft=st.none() | st.floats(0, 100),
    tbt=st.none() | st.floats(0, 1),
    metric=st.sampled_from(["missing", "stale", "nan", "inf"]),
)
def test_never_scale_in_without_a_usable_metric(d: int, ttft: float | None, tbt: float | None, metric: str) -> None:
    value = {"missing": None, "stale": 5000.0, "nan": math.nan, "inf": math.inf}[metric]
    age = 10 * P.max_signal_age_s if metric == "stale" else 30.0
    ctx = make_context(SVC, current=current_for(d), age_s=age, decode_tps=value, ttft_p99_s=ttft, tbt_p99_s=tbt)
    t, _ = heteroscale_paper(ctx, NO_STATE)
    assert t.action is not Action.SCALE_IN
    if tbt is None or tbt < SVC.slo.tbt_p99_s:
        assert t.action is Action.HOLD and t.counts == ctx.current
        assert "hold" in t.reason


def test_all_signals_missing_holds_with_reason() -> None:
    ctx = make_context(SVC, current=(5, 10))
    t, state = heteroscale_paper(ctx, NO_STATE)
    assert (t.action, t.counts, state) == (Action.HOLD, RoleCounts(5, 10), NO_STATE)
    assert "decode_tps missing" in t.reason


@settings(max_examples=60, deadline=None)
@given(seq=st.lists(loads, min_size=5, max_size=40), d=decodes)
def test_no_flapping_inside_cooldowns(seq: list[float], d: int) -> None:
    """Driving the policy with random load every 60 s: a scale-in never follows any change
    sooner than the scale-in cooldown, and scale-outs are spaced by the scale-out cooldown
    (latency-driven ones excepted, which have their own cooldown)."""
    cur = RoleCounts(*current_for(d))
    state = NO_STATE
    last_change: float | None = None
    last_out: float | None = None
    for i, load in enumerate(seq):
        now = 10_000.0 + 60.0 * i
        t, state = heteroscale_paper(
            make_context(SVC, now_s=now, current=(cur.num_prefill, cur.num_decode), decode_tps=load), state
        )
        if t.action is Action.SCALE_IN:
            assert last_change is None or now - last_change >= P.scale_in_cooldown_s
        if t.action is Action.SCALE_OUT and t.source == "proportional":
            assert last_out is None or now - last_out >= P.scale_out_cooldown_s
        if t.action is not Action.HOLD:
            last_change = now
            if t.action is Action.SCALE_OUT:
                last_out = now
        cur = t.counts


@settings(max_examples=200, deadline=None)
@given(load=loads, d=decodes, tbt=st.floats(0.0, 1.0))
def test_latency_feedback_only_adds(load: float, d: int, tbt: float) -> None:
    without, _ = heteroscale_paper(make_context(SVC, current=current_for(d), decode_tps=load), NO_STATE)
    with_lat, _ = heteroscale_paper(make_context(SVC, current=current_for(d), decode_tps=load, tbt_p99_s=tbt), NO_STATE)
    assert with_lat.num_decode >= without.num_decode


def test_proportional_scale_out_splits_by_ratio() -> None:
    # 12,000 decode tok/s at 600 per instance = 20 decode; ratio 1:2 -> 10 prefill. Damping
    # allows +50% of 10 per run = 15.
    t, state = heteroscale_paper(make_context(SVC, current=(5, 10), decode_tps=12_000), NO_STATE)
    assert (t.action, t.num_decode, t.num_prefill) == (Action.SCALE_OUT, 15, 8)
    assert state.last_scale_out_s == 10_000.0
    assert "12000" in t.reason and "damped" in t.reason


def test_hysteresis_band_holds() -> None:
    t, _ = heteroscale_paper(make_context(SVC, current=(5, 10), decode_tps=6_300), NO_STATE)  # 10.5 decode
    assert t.action is Action.HOLD and "band" in t.reason


def test_tiered_latency_feedback() -> None:
    moderate, _ = heteroscale_paper(make_context(SVC, current=(5, 10), decode_tps=6_000, tbt_p99_s=0.11), NO_STATE)
    severe, _ = heteroscale_paper(make_context(SVC, current=(5, 10), decode_tps=6_000, tbt_p99_s=0.16), NO_STATE)
    assert (moderate.num_decode, moderate.source) == (11, "latency")
    assert (severe.num_decode, severe.source) == (12, "latency")


def test_scale_in_waits_for_cooldown_and_latency() -> None:
    recent = ServicePolicyState(last_scale_out_s=10_000.0 - 100)
    t, _ = heteroscale_paper(make_context(SVC, current=(5, 10), decode_tps=1_000), recent)
    assert t.action is Action.HOLD and "scale-in cooldown" in t.reason
    t, _ = heteroscale_paper(make_context(SVC, current=(5, 10), decode_tps=1_000, tbt_p99_s=0.1), NO_STATE)
    assert t.action is not Action.SCALE_IN
    t, _ = heteroscale_paper(make_context(SVC, current=(5, 10), decode_tps=1_000), NO_STATE)
    assert t.action is Action.SCALE_IN and t.num_decode == 5


def test_periodic_schedule_fixes_counts() -> None:
    svc = make_service(
        schedule=[{"days": ["thu"], "start": "00:00", "end": "12:00", "num_prefill": 4, "num_decode": 7}]
    )
    # 1970-01-01 was a Thursday; 10,000 s = 02:46 UTC.
    t, _ = heteroscale_paper(make_context(svc, current=(5, 10), decode_tps=50_000), NO_STATE)
    assert (t.num_prefill, t.num_decode, t.source) == (4, 7, "schedule")
    t, _ = heteroscale_paper(make_context(svc, now_s=86_400.0 + 10_000, current=(5, 10), decode_tps=6_000), NO_STATE)
    assert t.source != "schedule"


def test_hpa_never_scales_decode_in_at_high_decode_utilisation() -> None:
    svc = make_service()
    t, _ = hpa_gpu_util(make_context(svc, current=(5, 10), gpu_util_prefill=0.2, gpu_util_decode=0.87), NO_STATE)
    assert t.num_decode >= 10 and t.num_prefill < 5


def test_hpa_scale_down_is_stabilised() -> None:
    svc = make_service()
    _, state = hpa_gpu_util(
        make_context(svc, now_s=1000.0, current=(5, 10), gpu_util_prefill=1.0, gpu_util_decode=0.8), NO_STATE
    )
    t, state = hpa_gpu_util(
        make_context(svc, now_s=1060.0, current=(5, 10), gpu_util_prefill=0.2, gpu_util_decode=0.8), state
    )
    assert t.num_prefill >= 5  # the high recommendation 60 s ago still holds
    t, _ = hpa_gpu_util(
        make_context(svc, now_s=1400.0, current=(5, 10), gpu_util_prefill=0.2, gpu_util_decode=0.8), state
    )
    assert t.num_prefill < 5


def test_static_peak_sizes_once() -> None:
    ctx = make_context(SVC, current=(1, 2))
    ctx = type(ctx)(**{**{f: getattr(ctx, f) for f in ctx.__dataclass_fields__}, "peak_metric": 9_000.0})
    t, _ = static_peak(ctx, NO_STATE)
    assert t.counts == split_by_ratio(SVC, 15)
