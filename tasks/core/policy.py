"""Scaling policies: pure functions from what was observed to how many instances to run.

A policy is `decide(ctx, state) -> (Targets, state)`. It reads nothing but its arguments: the
clock is `ctx.now_s`, memory between runs is the `ServicePolicyState` passed in and returned.
Counts are in reference-GPU instances (the first GPU type of each role, see `RoleSpec.weight`).

`heteroscale-paper` follows HeteroScale (arXiv 2508.19559, section 4):
  1. a periodic schedule window, when one covers `now`, fixes the counts;
  2. proportional control on one linear metric (decode TPS by default): decode instances =
     metric / target per instance, prefill = decode x the fixed P/D ratio: P and D move together;
  3. hysteresis band, damping (max step), separate scale-out and scale-in cooldowns;
  4. tiered negative feedback on p99 TBT (TTFT optional) that only ever adds capacity;
  5. bounds; and a hold whenever the driving signal is missing or stale (never read as zero).
`hpa-gpu-util` is the Kubernetes HPA algorithm on GPU utilisation, each role on its own;
`static-peak` provisions the peak once and never moves.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from models.config import Metric, Service
from models.values import (
    Action,
    Forecast,
    RoleCounts,
    ServicePolicyState,
    ServiceSignals,
    Targets,
)

_EPS = 1e-9


@dataclass(frozen=True, slots=True)
class PolicyContext:
    service: Service
    now_s: float
    signals: ServiceSignals
    current: RoleCounts
    forecast: Forecast | None = None
    timezone: str = "UTC"
    # The metric value the fleet is provisioned for (static-peak only; replay supplies it).
    peak_metric: float | None = None


Decision = tuple[Targets, ServicePolicyState]
Policy = Callable[[PolicyContext, ServicePolicyState], Decision]


# --- shared small steps -------------------------------------------------------------------


def split_by_ratio(service: Service, num_decode: int) -> RoleCounts:
    """Prefill count that keeps the service's fixed P/D ratio for `num_decode` decode instances."""
    if num_decode <= 0:
        return RoleCounts(0, 0)
    num_prefill = max(1, math.ceil(num_decode * service.pd_ratio.prefill_per_decode - _EPS))
    return RoleCounts(num_prefill, num_decode)


def bound_decode(service: Service, num_decode: int) -> int:
    """Nearest decode count whose ratio-kept total lies within [min_instances, max_instances]."""
    p = service.policy
    d = max(0, num_decode)
    while d > 0 and split_by_ratio(service, d).total > p.max_instances:
        d -= 1
    while split_by_ratio(service, d).total < p.min_instances:
        d += 1
    return d


def _hold(ctx: PolicyContext, state: ServicePolicyState, reason: str, source: str = "hold") -> Decision:
    return (
        Targets(
            service=ctx.service.name,
            num_prefill=ctx.current.num_prefill,
            num_decode=ctx.current.num_decode,
            action=Action.HOLD,
            reason=reason,
            source=source,
        ),
        state,
    )


def _since(now_s: float, then_s: float | None) -> float:
    return math.inf if then_s is None else now_s - then_s


def _action(current: RoleCounts, new: RoleCounts) -> Action:
    if new == current:
        return Action.HOLD
    if new.num_prefill >= current.num_prefill and new.num_decode >= current.num_decode:
        return Action.SCALE_OUT
    if new.num_prefill <= current.num_prefill and new.num_decode <= current.num_decode:
        return Action.SCALE_IN
    # Mixed (one role up, one down): count it by total capacity.
    return Action.SCALE_OUT if new.total > current.total else Action.SCALE_IN


def _finish(
    ctx: PolicyContext,
    state: ServicePolicyState,
    new: RoleCounts,
    reason: str,
    source: str,
) -> Decision:
    action = _action(ctx.current, new)
    if action is Action.SCALE_OUT:
        state = state.with_(last_scale_out_s=ctx.now_s)
    elif action is Action.SCALE_IN:
        state = state.with_(last_scale_in_s=ctx.now_s)
    return (
        Targets(ctx.service.name, new.num_prefill, new.num_decode, action, reason, source),
        state,
    )


def _fresh(ctx: PolicyContext, name: str) -> tuple[float | None, str]:
    """A signal's value if present, finite and recent; else None and why."""
    sig = ctx.signals
    value = sig.get(name)
    age = sig.age_s(ctx.now_s)
    if value is None or age is None:
        return None, f"{name} missing"
    if not math.isfinite(value):
        return None, f"{name} not finite ({value})"
    if value < 0:
        # Rates and latencies are never negative; a negative one is a counter reset or a bug.
        return None, f"{name} negative ({value:g}); counter reset?"
    if age > ctx.service.policy.max_signal_age_s:
        return None, f"{name} stale ({age:.0f}s old > {ctx.service.policy.max_signal_age_s:.0f}s)"
    return value, ""


def schedule_counts(ctx: PolicyContext) -> RoleCounts | None:
    """Counts fixed by a periodic schedule window covering `now`, if any."""
    if not ctx.service.schedule:
        return None
    local = dt.datetime.fromtimestamp(ctx.now_s, tz=ZoneInfo(ctx.timezone))
    for window in ctx.service.schedule:
        if window.covers(local):
            return RoleCounts(window.num_prefill, window.num_decode)
    return None


# --- heteroscale-paper ---------------------------------------------------------------------


def _metric_value(ctx: PolicyContext) -> tuple[float | None, str]:
    metric = ctx.service.policy.metric.value
    observed, why = _fresh(ctx, metric)
    if observed is None:
        return None, why
    fc = ctx.forecast
    if fc is not None and fc.value is not None and math.isfinite(fc.value):
        # Scale for the load expected when new instances are Ready, but never below what is
        # being served right now.
        return max(observed, fc.value), f"{metric} {observed:.0f}, forecast {fc.value:.0f} ({fc.method})"
    return observed, f"{metric} {observed:.0f}"


def _proportional_decode(ctx: PolicyContext, value: float) -> float:
    """Decode instances (reference units, fractional) the metric asks for."""
    svc = ctx.service
    per = value / svc.policy.target_per_instance
    if svc.policy.metric is Metric.PREFILL_TPS:
        return per / svc.pd_ratio.prefill_per_decode
    return per


def _latency_step(ctx: PolicyContext) -> tuple[float, str]:
    """Scale-out fraction demanded by latency feedback (0 when within SLO) and why."""
    svc = ctx.service
    checks = [("tbt_p99_s", svc.slo.tbt_p99_s)]
    if svc.policy.use_ttft_feedback:
        checks.append(("ttft_p99_s", svc.slo.ttft_p99_s))
    best, why = 0.0, ""
    for name, slo in checks:
        value, _ = _fresh(ctx, name)
        if value is None:
            continue
        for tier in svc.policy.latency_tiers:
            if value >= tier.ratio * slo - _EPS and tier.step > best:
                best = tier.step
                why = f"{name} {value:.3f}s >= {tier.ratio:g}x SLO {slo:g}s: +{tier.step:.0%}"
    return best, why


def _latency_breached(ctx: PolicyContext) -> bool:
    value, _ = _fresh(ctx, "tbt_p99_s")
    return value is not None and value >= ctx.service.slo.tbt_p99_s


def heteroscale_paper(ctx: PolicyContext, state: ServicePolicyState) -> Decision:
    svc, p, cur = ctx.service, ctx.service.policy, ctx.current

    fixed = schedule_counts(ctx)
    if fixed is not None:
        if fixed == cur:
            return _hold(ctx, state, "periodic schedule window: counts already as scheduled", "schedule")
        return _finish(ctx, state, fixed, "periodic schedule window", "schedule")

    value, metric_why = _metric_value(ctx)
    d_cur = cur.num_decode
    source = "proportional"
    if value is None:
        d_new, reason = d_cur, f"hold: {metric_why}"
        source = "hold"
    else:
        d_float = _proportional_decode(ctx, value)
        d_prop = math.ceil(d_float - _EPS)
        if d_cur > 0 and abs(d_float / d_cur - 1) <= p.hysteresis:
            d_new = d_cur
            reason = f"{metric_why} asks {d_float:.2f} decode vs {d_cur}: inside ±{p.hysteresis:.0%} band"
        else:
            d_new = d_prop
            reason = f"{metric_why} / target {p.target_per_instance:g} = {d_float:.2f} decode"

    # Negative feedback on latency: adds capacity, never removes it.
    step, lat_why = _latency_step(ctx)
    if step > 0:
        d_lat = math.ceil(max(d_cur, 1) * (1 + step) - _EPS)
        if d_lat > d_new:
            if _since(ctx.now_s, state.last_latency_action_s) >= p.latency_cooldown_s:
                d_new, reason, source = d_lat, f"latency feedback: {lat_why}", "latency"
                state = state.with_(last_latency_action_s=ctx.now_s)
            else:
                reason += f"; latency breach ({lat_why}) within latency cooldown"

    cur_in_bounds = p.min_instances <= cur.total <= p.max_instances
    if source == "hold" and cur_in_bounds:
        # Cannot see the load: keep the fleet exactly as it is (ratio repairs included).
        return _hold(ctx, state, reason)

    # Damping: at most max_step_fraction of the current count per run (at least one instance).
    max_delta = max(1, math.ceil(p.max_step_fraction * d_cur - _EPS))
    if d_cur > 0 and abs(d_new - d_cur) > max_delta:
        d_new = d_cur + max_delta if d_new > d_cur else d_cur - max_delta
        reason += f"; damped to ±{max_delta}"

    d_bounded = bound_decode(svc, d_new)
    if d_bounded != d_new:
        reason += f"; bounded to [{p.min_instances}, {p.max_instances}] instances"
        if source == "hold":
            source = "bounds"
    new = split_by_ratio(svc, d_bounded)

    action = _action(cur, new)
    if not cur_in_bounds:
        # The fleet is outside its bounds (config changed, or a human scaled it): bounds are
        # hard limits and are restored at once, cooldowns notwithstanding.
        source = "bounds"
    if action is Action.SCALE_OUT and source not in ("latency", "bounds"):
        wait = p.scale_out_cooldown_s - _since(ctx.now_s, state.last_scale_out_s)
        if wait > 0:
            return _hold(ctx, state, f"{reason}; scale-out cooldown ({wait:.0f}s left)")
    if action is Action.SCALE_IN and source != "bounds":
        if _latency_breached(ctx):
            return _hold(ctx, state, f"{reason}; scale-in blocked: TBT at or above SLO")
        last_change = max(
            (t for t in (state.last_scale_in_s, state.last_scale_out_s) if t is not None),
            default=None,
        )
        wait = p.scale_in_cooldown_s - _since(ctx.now_s, last_change)
        if wait > 0:
            return _hold(ctx, state, f"{reason}; scale-in cooldown ({wait:.0f}s left)")
    if action is Action.HOLD:
        return _hold(ctx, state, reason, source if source != "proportional" else "hold")
    return _finish(ctx, state, new, reason, source)


# --- baselines ----------------------------------------------------------------------------


def static_peak(ctx: PolicyContext, state: ServicePolicyState) -> Decision:
    """Provision once for the peak (`ctx.peak_metric`) and never move."""
    if ctx.peak_metric is None:
        return _hold(ctx, state, "static-peak: no peak given; holding", "static")
    d = bound_decode(ctx.service, math.ceil(_proportional_decode(ctx, ctx.peak_metric) - _EPS))
    new = split_by_ratio(ctx.service, d)
    if new == ctx.current:
        return _hold(ctx, state, f"static-peak: sized for peak {ctx.peak_metric:.0f}", "static")
    return _finish(ctx, state, new, f"static-peak: sized for peak {ctx.peak_metric:.0f}", "static")


def _hpa_role(current: int, util: float | None, target: float, tolerance: float) -> int:
    """Kubernetes HPA: desired = ceil(current x metric / target), skipped inside the tolerance."""
    if util is None or current == 0:
        return current
    ratio = util / target
    if abs(ratio - 1) <= tolerance:
        return current
    return math.ceil(current * ratio - _EPS)


def hpa_gpu_util(ctx: PolicyContext, state: ServicePolicyState) -> Decision:
    """HPA per role on GPU utilisation; prefill and decode scale independently (no ratio)."""
    p, cur = ctx.service.policy, ctx.current
    util_p, why_p = _fresh(ctx, "gpu_util_prefill")
    util_d, why_d = _fresh(ctx, "gpu_util_decode")
    want_p = _hpa_role(cur.num_prefill, util_p, p.hpa_target_gpu_util, p.hpa_tolerance)
    want_d = _hpa_role(cur.num_decode, util_d, p.hpa_target_gpu_util, p.hpa_tolerance)
    # Scale-down stabilisation: use the highest recommendation of the window.
    window = p.hpa_scale_down_stabilization_s
    recs = (*tuple(r for r in state.recommendations if ctx.now_s - r[0] < window), (ctx.now_s, want_p, want_d))
    state = state.with_(recommendations=recs)
    new_p = max(r[1] for r in recs) if want_p < cur.num_prefill else want_p
    new_d = max(r[2] for r in recs) if want_d < cur.num_decode else want_d
    cap = max(1, p.max_instances)
    new = RoleCounts(min(max(1, new_p), cap), min(max(1, new_d), cap))
    reason = (
        f"hpa: prefill util {util_p if util_p is not None else why_p}, "
        f"decode util {util_d if util_d is not None else why_d}, target {p.hpa_target_gpu_util:g}"
    )
    if new == cur:
        return _hold(ctx, state, reason, "hpa")
    return _finish(ctx, state, new, reason, "hpa")


POLICIES: dict[str, Policy] = {
    "heteroscale-paper": heteroscale_paper,
    "hpa-gpu-util": hpa_gpu_util,
    "static-peak": static_peak,
}


def get_policy(name: str) -> Policy:
    try:
        return POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; choose one of {sorted(POLICIES)}") from None
