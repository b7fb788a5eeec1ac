"""Step awareness (issue 17 item 3): steps detected in the policy-metric history, the daily
profile's expected steps, `heteroscale` pre-provisioning one cold start ahead of them, and the
periodic schedule as a floor under the metric policy.

The fixed-time-step trace is the real ServeGen m-small rate series (10-minute windows, sampled
every 60 s as the replay's history is, 2% sample noise) with a batch job adding +40% from 09:00 to
17:00 every day; the flat trace is the same noise on a constant level.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from models.config import ConfigError, StepAwareness, load_config
from models.enums import TargetSource
from models.values import Action, ExpectedStep, Forecast, ServicePolicyState, ServiceSignals
from tasks import steps as step_fns
from tasks.core.policy import PolicyContext, heteroscale, heteroscale_paper, with_schedule_floor
from tasks.core.stepprofile import DAY_S, daily_profile, detect_steps, expected_steps, step_factor
from tasks.core.topology import view_from_config
from tests.builders import NO_STATE, config_dict, make_config, make_context, make_service, service_dict

SERVEGEN = Path(__file__).resolve().parents[2] / "data/traces/servegen/servegen_m-small_10min.csv"
PARAMS = StepAwareness(enabled=True)
STEP_AT_S = 9 * 3600.0  # the batch job starts at 09:00 every day ...
STEP_END_S = 17 * 3600.0  # ... and stops at 17:00
COLD_S, PERIOD_S = 180.0, 60.0


def _servegen_history(*, days: int, batch: float, seed: int = 0) -> list[tuple[float, float | None]]:
    df = pd.read_csv(SERVEGEN)
    df = df[df.window_start_s < days * DAY_S]
    rng = np.random.default_rng(seed)
    out: list[tuple[float, float | None]] = []
    for start, rate, gap in zip(df.window_start_s, df.total_req_per_s, df.all_zero_gap, strict=True):
        for j in range(10):
            t = float(start) + PERIOD_S * (j + 1)
            tod = t % DAY_S
            extra = batch if STEP_AT_S < tod <= STEP_END_S else 0.0
            out.append((t, None if gap else float(rate) * (1 + extra) * (1 + 0.02 * rng.standard_normal())))
    return out


def _flat_history(*, days: int, noise: float, seed: int) -> list[tuple[float, float | None]]:
    rng = np.random.default_rng(seed)
    n = int(days * DAY_S / PERIOD_S)
    return [(PERIOD_S * (i + 1), 1000.0 * (1 + noise * rng.standard_normal())) for i in range(n)]


def _until(history: list[tuple[float, float | None]], t_s: float) -> list[tuple[float, float | None]]:
    return [h for h in history if h[0] <= t_s]


STEPPED = _servegen_history(days=6, batch=0.4)


def test_a_step_is_found_at_its_time_with_its_size() -> None:
    found = detect_steps(STEPPED, min_step=0.1, window_s=180.0)
    at_nine = [s for s in found if abs(s.t_s % DAY_S - STEP_AT_S) <= PERIOD_S]
    # Every day's 09:00 step, timed at the last sample of the old level, sized about +40%.
    assert sorted(round(s.t_s // DAY_S) for s in at_nine) == [0, 1, 2, 3, 4, 5]
    assert all(s.t_s % DAY_S == STEP_AT_S for s in at_nine)
    # +40% on top of the real series' own move at that 10-minute boundary (-9% to +9% here).
    assert all(0.2 < s.size < 0.7 for s in at_nine)


def test_gaps_are_not_steps_from_zero() -> None:
    history = [(60.0 * i, None if 100 <= i < 130 else 1000.0) for i in range(300)]
    assert detect_steps(history, min_step=0.1, window_s=180.0) == []


MORNING_S = 9 * 3600.0 + 600.0  # the real m-small series steps up at 09:10 on 3 of its first 6 days


def test_the_profile_expects_the_recurring_step_and_the_policy_fires_one_cold_start_ahead() -> None:
    day5 = 5 * DAY_S
    origin = day5 + STEP_AT_S - 3600.0  # 08:00 on day 5
    expect = expected_steps(_until(STEPPED, origin), origin, 2 * 3600.0, PARAMS)
    # The batch job's step at 09:00 (5 of 5 days) and the series' own morning step at 09:10.
    assert [round(e.t_s - day5) for e in expect] == [STEP_AT_S, MORNING_S]
    nine = expect[0]
    assert (nine.days_with, nine.days_seen) == (5, 5) and 0.3 < nine.size < 0.6
    assert (expect[1].days_with, expect[1].days_seen) == (3, 5)
    horizon = COLD_S + PERIOD_S
    ticks = np.arange(origin, day5 + STEP_AT_S + 120, PERIOD_S)
    fired = [t for t in ticks if step_factor((nine,), t, horizon)[0] > 1]
    # Exactly the periods within a cold start + a period before 09:00, none after it.
    assert fired == [t for t in ticks if day5 + STEP_AT_S - horizon <= t < day5 + STEP_AT_S]
    factor, why = step_factor(expect, day5 + STEP_AT_S - COLD_S, horizon)
    assert factor == pytest.approx(1 + nine.size) and "step pre-provision" in why and "5 of 5" in why


def test_the_daily_profile_shows_the_step_slot() -> None:
    prof = {s.start_s: s for s in daily_profile(STEPPED, 600.0, PARAMS)}
    slot = prof[STEP_AT_S]
    assert (slot.days_with, slot.days_seen) == (6, 6) and slot.median_size is not None and slot.median_size > 0.3
    assert (prof[MORNING_S].days_with, prof[MORNING_S].days_seen) == (3, 6)
    # Elsewhere the real series' own 10-minute steps recur on at most 2 of the 6 days.
    assert max(s.days_with for t, s in prof.items() if t not in (STEP_AT_S, MORNING_S)) <= 2


def test_servegen_own_steps_fire_only_where_they_recur() -> None:
    plain = _servegen_history(days=6, batch=0.0)
    fired: set[float] = set()
    for origin in np.arange(2 * DAY_S, 6 * DAY_S, 3600.0):
        fired |= {e.t_s % DAY_S for e in expected_steps(_until(plain, origin), origin, 3600.0, PARAMS)}
    # Of 96 hours looked ahead, only the morning step recurs on >= 3 days and half the days seen.
    assert fired == {MORNING_S}


@settings(max_examples=25, deadline=None)
@given(noise=st.floats(0.0, 0.03), seed=st.integers(0, 10_000), hour=st.integers(0, 23))
def test_a_flat_noisy_trace_never_fires(noise: float, seed: int, hour: int) -> None:
    history = _flat_history(days=4, noise=noise, seed=seed)
    origin = 3 * DAY_S + hour * 3600.0
    expect = expected_steps(_until(history, origin), origin, 3600.0, PARAMS)
    assert expect == ()
    assert step_factor(expect, origin, 3600.0) == (1.0, "")


def test_too_little_history_expects_nothing() -> None:
    one_day = [h for h in STEPPED if h[0] <= 1.5 * DAY_S]
    assert expected_steps(one_day, 1.5 * DAY_S - 3600, 3600.0, PARAMS) == ()


# --- the policy and the forecast step ------------------------------------------------------------

SVC = make_service(cold_start_s=COLD_S)


def _ctx(steps: tuple[ExpectedStep, ...], now_s: float) -> PolicyContext:
    ctx = make_context(SVC, now_s=now_s, current=(5, 10), decode_tps=5_000.0, prefill_tps=5_000.0 * 6500 / 950 / 2)
    fc = Forecast(SVC.name, "decode_tps", 5_000.0, COLD_S + PERIOD_S, "test", steps=steps)
    return PolicyContext(ctx.service, ctx.now_s, ctx.signals, ctx.current, forecast=fc)


def test_heteroscale_scales_out_before_an_expected_step_and_says_so() -> None:
    step = (ExpectedStep(t_s=20_000.0, size=1.5, days_with=4, days_seen=5),)
    before, _ = heteroscale(_ctx((), 20_000.0 - COLD_S), NO_STATE)
    ahead, _ = heteroscale(_ctx(step, 20_000.0 - COLD_S), NO_STATE)
    assert ahead.action is Action.SCALE_OUT and ahead.num_decode > before.num_decode
    assert "step pre-provision: +150% step expected in 180s (on 4 of 5 past days" in ahead.reason
    # Sized for the load after the step at the capacity at the SLO (950 tok/s per decode instance).
    assert ahead.num_decode == math.ceil(2.5 * 5_000.0 / 950)
    # A step the headroom already holds (+50% at a 600-of-950 target) is not provisioned for.
    small = (ExpectedStep(t_s=20_000.0, size=0.5, days_with=4, days_seen=5),)
    held, _ = heteroscale(_ctx(small, 20_000.0 - COLD_S), NO_STATE)
    assert held.counts == before.counts and "step pre-provision" not in held.reason
    # Too early (beyond a cold start + a period) or after the step: the step is not sized for.
    early, _ = heteroscale(_ctx(step, 20_000.0 - COLD_S - PERIOD_S - 1), NO_STATE)
    late, _ = heteroscale(_ctx(step, 20_000.0), NO_STATE)
    assert early.counts == before.counts and late.counts == before.counts
    assert "step pre-provision" not in early.reason + late.reason


def test_forecast_load_lists_expected_steps_only_when_enabled() -> None:
    origin = 5 * DAY_S + STEP_AT_S - 1800.0
    history = {"chat": _until(STEPPED, origin)}
    off = step_fns.forecast_load(make_config(), history, forecaster="last-value")
    on_cfg = make_config(services=[service_dict(policy={"steps": {"enabled": True}})])
    on = step_fns.forecast_load(on_cfg, history, forecaster="last-value")
    assert off["chat"].steps == ()
    assert any(abs(s.t_s - (5 * DAY_S + STEP_AT_S)) <= 120 for s in on["chat"].steps)
    assert on["chat"].value == off["chat"].value


# --- the periodic schedule as a floor ----------------------------------------------------------------

WINDOW = {"days": ["thu"], "start": "00:00", "end": "12:00", "num_prefill": 4, "num_decode": 7}


def test_schedule_mode_floor_raises_each_role_to_the_window() -> None:
    svc = make_service(schedule=[WINDOW], policy={"schedule_mode": "floor"})
    # 1970-01-01 was a Thursday; 10,000 s = 02:46 UTC. Low load: the paper policy would shed to 3.
    ctx = make_context(svc, current=(5, 10), decode_tps=1_000.0)
    policy_alone = heteroscale_paper(ctx, NO_STATE)
    assert policy_alone[0].action is Action.SCALE_IN and policy_alone[0].num_decode < 7
    t, state = with_schedule_floor(ctx, NO_STATE, policy_alone)
    assert (t.num_prefill, t.num_decode) == (max(4, policy_alone[0].num_prefill), 7)
    assert t.source == TargetSource.SCHEDULE and "schedule floor 4P/7D" in t.reason
    assert state.last_scale_in_s == ctx.now_s  # still a scale-in (from 5P/10D), timed as one
    # High load: the metric policy is above the floor and decides alone.
    hot = make_context(svc, current=(5, 10), decode_tps=50_000.0)
    decided = heteroscale_paper(hot, NO_STATE)
    assert with_schedule_floor(hot, NO_STATE, decided) == decided and decided[0].num_decode > 7
    # Outside the window: no floor.
    friday = make_context(svc, now_s=DAY_S + 10_000.0, current=(5, 10), decode_tps=1_000.0)
    assert with_schedule_floor(friday, NO_STATE, heteroscale_paper(friday, NO_STATE)) == heteroscale_paper(
        friday, NO_STATE
    )


def test_floor_that_lands_on_the_current_counts_holds_and_keeps_the_scale_times() -> None:
    svc = make_service(schedule=[WINDOW], policy={"schedule_mode": "floor"})
    ctx = make_context(svc, current=(4, 7), decode_tps=1_000.0)
    before = ServicePolicyState(last_scale_in_s=1.0)
    t, state = with_schedule_floor(ctx, before, heteroscale_paper(ctx, before))
    assert t.action is Action.HOLD and t.counts == ctx.current and state.last_scale_in_s == 1.0


def test_schedule_mode_override_is_the_default_and_unchanged() -> None:
    svc = make_service(schedule=[WINDOW])
    ctx = make_context(svc, current=(5, 10), decode_tps=50_000.0)
    t, _ = heteroscale_paper(ctx, NO_STATE)
    assert (t.num_prefill, t.num_decode, t.source) == (4, 7, "schedule")
    assert with_schedule_floor(ctx, NO_STATE, (t, NO_STATE))[0] == t


def test_compute_targets_applies_the_floor_to_every_policy() -> None:
    cfg = make_config(services=[service_dict(schedule=[WINDOW], policy={"schedule_mode": "floor"})])
    signals = {"chat": ServiceSignals("chat", sampled_at_s=10_000.0 - 30, decode_tps=1_000.0, prefill_tps=1_000.0)}
    for policy in ("heteroscale-paper", "heteroscale", "hpa-tps"):
        targets, _ = step_fns.compute_targets(cfg, view_from_config(cfg), signals, {}, {}, 10_000.0, policy=policy)
        assert targets["chat"].num_prefill >= 4 and targets["chat"].num_decode >= 7, policy
        assert "schedule floor 4P/7D" in targets["chat"].reason


def test_an_unknown_schedule_mode_is_refused_naming_the_field(tmp_path: Path) -> None:
    d = config_dict(services=[service_dict(policy={"schedule_mode": "maximum"})])
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(d, sort_keys=False))
    with pytest.raises(
        ConfigError, match=r"services\[0\]\.policy\.schedule_mode: Input should be 'override' or 'floor'"
    ):
        load_config(p)
