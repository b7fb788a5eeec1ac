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
`hpa-tps` is the same algorithm on per-instance tokens/s (decode TPS for decode, cache-missed
prefill TPS for prefill), each role on its own;
`dynamo-sla` follows NVIDIA Dynamo's SLA planner (public docs): predicted load / per-engine
capacity at the TTFT and ITL targets, prefill and decode sized separately on the same tick;
`heteroscale` is ours: sized for the load when new instances are Ready (max of observed and
forecast), P and D together at the curated ratio, a safety net that fires once per cold start
(TBT tiers, TTFT on prefill, and the served-metric ceiling only on evidence: served >= capacity
or a queue near it), scale-in only to the highest ask of the last cold start;
`oracle` sizes for the true peak load of the next cold start + period (`ctx.peak_metric`,
supplied by the replay from the trace) at the service's target per instance: the floor for
policies with that headroom;
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
    # Oracle only: the true peak while instances started now would serve before the next run
    # can act ([now + cold start, + one period]); `peak_metric` is then the peak from now to there.
    ready_peak_metric: float | None = None


Decision = tuple[Targets, ServicePolicyState]
Policy = Callable[[PolicyContext, ServicePolicyState], Decision]


# --- shared small steps -------------------------------------------------------------------


def split_by_ratio(service: Service, num_decode: int) -> RoleCounts:
    """Prefill count that keeps the service's fixed P/D ratio for `num_decode` decode instances."""
    if num_decode <= 0:
        return RoleCounts(0, 0)
    num_prefill = max(1, math.ceil(num_decode * service.pd_ratio.prefill_per_decode - _EPS))
    return RoleCounts(num_prefill, num_decode)


def max_decode(service: Service, max_total: int) -> int:
    """Largest decode count whose ratio-kept total is at most `max_total` (0 if none is).

    O(1): `split_by_ratio(d).total` is d + max(1, ceil(d x P/D)), strictly increasing in d, so
    the answer is within a couple of steps of max_total / (1 + P/D)."""
    if max_total < 2:
        return 0
    r = service.pd_ratio.prefill_per_decode
    d = max(0, min(max_total, math.floor(max_total / (1.0 + r))))
    # Each loop runs at most a few times: the estimate is off by the two roundings only.
    while split_by_ratio(service, d + 1).total <= max_total:
        d += 1
    while d > 0 and split_by_ratio(service, d).total > max_total:
        d -= 1
    return d


def min_decode(service: Service, min_total: int) -> int:
    """Smallest decode count whose ratio-kept total is at least `min_total` (O(1), as max_decode)."""
    if min_total <= 0:
        return 0
    d = max_decode(service, min_total)
    while split_by_ratio(service, d).total < min_total:
        d += 1
    return d


def bound_decode(service: Service, num_decode: int | float) -> int:
    """Nearest decode count whose ratio-kept total lies within [min_instances, max_instances].

    O(1) whatever `num_decode` is (1e15, inf: an outlier in a trace must not hang a replay): it
    is clamped to the largest count within max_instances first. NaN reads as 0 (the bounds decide).
    """
    p = service.policy
    hi = max_decode(service, p.max_instances)
    if isinstance(num_decode, float):
        num_decode = hi if num_decode > hi else 0 if not num_decode > 0 else math.ceil(num_decode)
    d = min(max(0, num_decode), hi)
    return max(d, min_decode(service, p.min_instances))


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


def _scale_out_wait(ctx: PolicyContext, state: ServicePolicyState) -> float:
    """Seconds left of the scale-out cooldown (<= 0: a scale-out may go ahead)."""
    return ctx.service.policy.scale_out_cooldown_s - _since(ctx.now_s, state.last_scale_out_s)


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
        wait = _scale_out_wait(ctx, state)
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


def _prefill_target(svc: Service) -> float:
    """Cache-missed prefill tokens/s per reference prefill instance at the same share of its
    capacity as the decode target is of decode capacity (the config holds one target)."""
    share = svc.policy.target_per_instance / svc.decode.capacity_tokens_per_s[svc.decode.reference_gpu_type]
    if svc.policy.metric is Metric.PREFILL_TPS:
        share = svc.policy.target_per_instance / svc.prefill.capacity_tokens_per_s[svc.prefill.reference_gpu_type]
    return share * svc.prefill.capacity_tokens_per_s[svc.prefill.reference_gpu_type]


def _decode_target(svc: Service) -> float:
    if svc.policy.metric is Metric.DECODE_TPS:
        return svc.policy.target_per_instance
    share = svc.policy.target_per_instance / svc.prefill.capacity_tokens_per_s[svc.prefill.reference_gpu_type]
    return share * svc.decode.capacity_tokens_per_s[svc.decode.reference_gpu_type]


def _stabilised(
    ctx: PolicyContext, state: ServicePolicyState, want: RoleCounts
) -> tuple[RoleCounts, ServicePolicyState]:
    """HPA's scale-down stabilisation: a role only shrinks to the highest ask of the window."""
    p, cur = ctx.service.policy, ctx.current
    window = p.hpa_scale_down_stabilization_s
    recs = (
        *tuple(r for r in state.recommendations if ctx.now_s - r[0] < window),
        (ctx.now_s, want.num_prefill, want.num_decode),
    )
    state = state.with_(recommendations=recs)
    new_p = max(r[1] for r in recs) if want.num_prefill < cur.num_prefill else want.num_prefill
    new_d = max(r[2] for r in recs) if want.num_decode < cur.num_decode else want.num_decode
    cap = max(1, p.max_instances)
    return RoleCounts(min(max(1, new_p), cap), min(max(1, new_d), cap)), state


def hpa_tps(ctx: PolicyContext, state: ServicePolicyState) -> Decision:
    """HPA per role on per-instance tokens/s; prefill and decode scale independently (no ratio)."""
    svc, p, cur = ctx.service, ctx.service.policy, ctx.current
    tps_p, why_p = _fresh(ctx, "prefill_tps")
    tps_d, why_d = _fresh(ctx, "decode_tps")
    per_p = tps_p / cur.num_prefill if tps_p is not None and cur.num_prefill else None
    per_d = tps_d / cur.num_decode if tps_d is not None and cur.num_decode else None
    want = RoleCounts(
        _hpa_role(cur.num_prefill, per_p, _prefill_target(svc), p.hpa_tolerance),
        _hpa_role(cur.num_decode, per_d, _decode_target(svc), p.hpa_tolerance),
    )
    new, state = _stabilised(ctx, state, want)
    reason = (
        f"hpa-tps: prefill {per_p if per_p is not None else why_p} tok/s/inst "
        f"(target {_prefill_target(svc):.0f}), decode {per_d if per_d is not None else why_d} tok/s/inst "
        f"(target {_decode_target(svc):.0f})"
    )
    if new == cur:
        return _hold(ctx, state, reason, "hpa")
    return _finish(ctx, state, new, reason, "hpa")


def _demand(ctx: PolicyContext) -> tuple[float, float, str] | None:
    """(decode tok/s, cache-missed prefill tok/s) expected when new instances are Ready.

    The forecast is of the policy metric; the other role's load is scaled by the same factor."""
    dec, _ = _fresh(ctx, "decode_tps")
    pre, _ = _fresh(ctx, "prefill_tps")
    if dec is None or pre is None:
        return None
    factor, how = 1.0, "observed"
    fc = ctx.forecast
    observed_metric = dec if ctx.service.policy.metric is Metric.DECODE_TPS else pre
    if fc is not None and fc.value is not None and math.isfinite(fc.value) and observed_metric > 0:
        factor, how = max(fc.value, 0.0) / observed_metric, f"forecast x{fc.value / observed_metric:.2f} ({fc.method})"
    return dec * factor, pre * factor, how


def dynamo_sla(ctx: PolicyContext, state: ServicePolicyState) -> Decision:
    """NVIDIA Dynamo's SLA planner: replicas = predicted load / per-engine capacity at the SLOs
    (`capacity_tokens_per_s`: what one instance sustains within TTFT / ITL), prefill and decode
    sized separately each adjustment interval, no fixed ratio and no cooldown."""
    svc = ctx.service
    dem = _demand(ctx)
    if dem is None:
        return _hold(ctx, state, "dynamo-sla: decode_tps or prefill_tps missing/stale", "hold")
    dec, pre, how = dem
    cap_p = svc.prefill.capacity_tokens_per_s[svc.prefill.reference_gpu_type]
    cap_d = svc.decode.capacity_tokens_per_s[svc.decode.reference_gpu_type]
    cap = max(2, svc.policy.max_instances)
    n_p = min(max(1, math.ceil(pre / cap_p - _EPS)), cap - 1)
    n_d = min(max(1, math.ceil(dec / cap_d - _EPS)), cap - n_p)
    new = RoleCounts(n_p, n_d)
    reason = f"dynamo-sla ({how}): prefill {pre:.0f}/{cap_p:g} -> {n_p}, decode {dec:.0f}/{cap_d:g} -> {n_d}"
    if new == ctx.current:
        return _hold(ctx, state, reason, "proportional")
    return _finish(ctx, state, new, reason, "proportional")


# --- heteroscale (ours) --------------------------------------------------------------------

# With a queue reported (`waiting_requests` > 0), served decode TPS above this share of the
# fleet's capacity at the SLO is read as censored: the pool serves what it can, not what is asked.
_SATURATION_SHARE = 0.9
# The TTFT safety net may raise prefill this far above the curated ratio x decode, no further.
_RATIO_BAND = 0.25
# Prefill step on a TTFT breach (TTFT is prefill's SLO; the tiers are for TBT).
_TTFT_STEP = 0.2


@dataclass(frozen=True, slots=True)
class _Ask:
    """Instances (fractional, reference units) the load asks for when new ones would be Ready."""

    prefill: float
    decode: float
    why: str


def _ready_ask(ctx: PolicyContext) -> _Ask | None:
    """Prefill and decode instances for the load expected when instances started now are Ready.

    The forecast (`ctx.forecast`, horizon = cold start + one period) is of the policy metric; both
    roles' observed loads are scaled by its ratio to the observed metric, and never below 1: the
    ask covers the served load now *and* at the horizon, i.e. the whole window [now, Ready] for a
    load that moves monotonically within it. None when either role's load is unreadable (hold).
    """
    svc = ctx.service
    dec, _ = _fresh(ctx, "decode_tps")
    pre, _ = _fresh(ctx, "prefill_tps")
    if dec is None or pre is None:
        return None
    observed_metric = dec if svc.policy.metric is Metric.DECODE_TPS else pre
    factor, how = 1.0, "observed"
    fc = ctx.forecast
    if fc is not None and fc.value is not None and math.isfinite(fc.value) and observed_metric > 0:
        factor = max(1.0, fc.value / observed_metric)
        how = f"max(observed, forecast x{fc.value / observed_metric:.2f} ({fc.method}))"
    d_ask = dec * factor / _decode_target(svc)
    p_ask = pre * factor / _prefill_target(svc)
    return _Ask(
        p_ask, d_ask, f"{how}: decode {dec * factor:.0f} -> {d_ask:.2f}, prefill {pre * factor:.0f} -> {p_ask:.2f}"
    )


def _censored(ctx: PolicyContext) -> str:
    """Why the served decode metric understates demand ("" when it does not).

    Served decode TPS cannot exceed the pool's capacity, so at capacity it reads "enough" however
    long the queue. Evidence, not utilisation: served >= the capacity at the SLO of every decode
    instance counted (starting ones included, so this never fires early), or a queue reported while
    served is near that capacity. High utilisation alone is the normal state at a 70-90% target.
    """
    svc, cur = ctx.service, ctx.current
    served, _ = _fresh(ctx, "decode_tps")
    cap = cur.num_decode * svc.decode.capacity_tokens_per_s[svc.decode.reference_gpu_type]
    if served is None or cap <= 0:
        return ""
    if served >= cap - _EPS:
        return f"decode served {served:.0f} >= capacity {cap:.0f} (metric censored)"
    waiting, _ = _fresh(ctx, "waiting_requests")
    if waiting is not None and waiting > 0 and served >= _SATURATION_SHARE * cap:
        return f"{waiting:.0f} waiting at decode served {served:.0f} >= {_SATURATION_SHARE:.0%} of capacity"
    return ""


def _stabilised_ask(
    ctx: PolicyContext, state: ServicePolicyState, want: RoleCounts
) -> tuple[RoleCounts, ServicePolicyState]:
    """The highest ask of the last cold start (now included), per role.

    Scale-in follows this trailing maximum: what is shed now cannot be back before a cold start,
    so a count is shed only once the load has asked for less for that long; a dip shorter than a
    cold start sheds nothing it would need back, and no scale-in right after a scale-out. Asks are
    kept in `state.recommendations` as (time, prefill, decode).
    """
    window = ctx.service.cold_start_s
    recs = (
        *tuple(r for r in state.recommendations if ctx.now_s - r[0] < window),
        (ctx.now_s, want.num_prefill, want.num_decode),
    )
    keep = RoleCounts(max(r[1] for r in recs), max(r[2] for r in recs))
    return keep, state.with_(recommendations=recs)


def heteroscale(ctx: PolicyContext, state: ServicePolicyState) -> Decision:
    """Ours: size for the load when new instances are Ready, P and D together at the curated
    ratio, latency and queueing (not utilisation) as a safety net, scale-in only to what the load
    has asked for a whole cold start.

    Contract (same as every policy): pure in (ctx, state); missing or stale load -> hold; bounds
    held (min/max total instances, at least one of each role); latency and the saturation guard
    only ever add capacity and block scale-in.

    1. ask = max(observed, forecast at cold start + period) / target per instance (decode);
       prefill = the curated ratio x the chosen decode count (the paper's coupling).
    2. Scale out to ceil(ask) once the ask leaves the hysteresis band upwards (the band the curated
       target was accepted with); scale-out cooldown honoured for the proportional path.
    3. Safety net, each at most once per max(latency cooldown, cold start): capacity added less
       than a cold start ago is not Ready yet, so the same breach must not add again. TBT tiers
       -> decode +step from the running count; TTFT >= SLO -> prefill +20%; censored decode metric
       (served >= capacity, or a queue near it) -> the decode ask +first tier step.
    4. Scale in only when the ask is below (1 - hysteresis) x current, to the highest ask of the
       last cold start, at most `max_step_fraction` per run, never while TBT or TTFT >= its SLO.
    """
    svc, p, cur = ctx.service, ctx.service.policy, ctx.current
    fixed = schedule_counts(ctx)
    if fixed is not None:
        if fixed == cur:
            return _hold(ctx, state, "periodic schedule window: counts already as scheduled", "schedule")
        return _finish(ctx, state, fixed, "periodic schedule window", "schedule")
    ask = _ready_ask(ctx)
    if ask is None:
        return _hold(ctx, state, "hold: decode_tps or prefill_tps missing/stale")
    d_want, p_want = ask.decode, ask.prefill
    reason = f"heteroscale ({ask.why})"
    source = "proportional"

    # 3. Safety net, once per cold start (what it added earlier may still be starting).
    step, lat_why = _latency_step(ctx)
    censored = _censored(ctx)
    ttft, _ = _fresh(ctx, "ttft_p99_s")
    ttft_breach = ttft is not None and ttft >= svc.slo.ttft_p99_s
    net_cooldown_s = max(p.latency_cooldown_s, svc.cold_start_s)
    if step > 0 or censored or ttft_breach:
        if _since(ctx.now_s, state.last_latency_action_s) >= net_cooldown_s:
            first_step = p.latency_tiers[0].step if p.latency_tiers else 0.1
            # Latency tiers step from the running fleet (the paper's rule); a censored metric steps
            # from the proportional ask, which already reads the served load as at least capacity.
            d_net = max(cur.num_decode * (1 + step), d_want * (1 + first_step) if censored else 0.0)
            p_net = cur.num_prefill * (1 + max(step, _TTFT_STEP if ttft_breach else 0.0))
            why = "; ".join(w for w in (lat_why, censored, f"TTFT {ttft:.2f}s >= SLO" if ttft_breach else "") if w)
            if d_net > d_want + _EPS or p_net > p_want + _EPS:
                d_want, p_want = max(d_want, d_net), max(p_want, p_net)
                reason += f"; safety net: {why}"
                source = "latency"
                state = state.with_(last_latency_action_s=ctx.now_s)
        else:
            reason += "; safety net within its cooldown (added capacity not Ready yet)"

    # Prefill's own ask counts only through the TTFT net, at most _RATIO_BAND above the ratio.
    ratio = svc.pd_ratio.prefill_per_decode
    p_want = min(max(p_want, d_want * ratio * (1 - _RATIO_BAND)), d_want * ratio * (1 + _RATIO_BAND))
    want = RoleCounts(max(1, math.ceil(p_want - _EPS)), max(1, math.ceil(d_want - _EPS)))
    keep, state = _stabilised_ask(ctx, state, want)

    # 2 and 4 on decode; prefill follows the chosen decode count at the curated ratio (P and D move
    # together), raised to its own ask only by the TTFT safety net.
    blocked = _latency_breached(ctx) or ttft_breach
    d_cur = cur.num_decode
    # The safety net's step may equal the band's width: it is not subject to the band.
    if want.num_decode > d_cur and (source == "latency" or d_want > d_cur * (1 + p.hysteresis)):
        new_d = want.num_decode
    elif want.num_decode >= d_cur or blocked or d_want >= d_cur * (1 - p.hysteresis) or keep.num_decode >= d_cur:
        new_d = d_cur
    else:
        max_delta = max(1, math.ceil(p.max_step_fraction * d_cur - _EPS))
        new_d = max(keep.num_decode, d_cur - max_delta)
    new_p = split_by_ratio(svc, new_d).num_prefill
    if source == "latency" and ttft_breach:
        new_p = max(new_p, want.num_prefill)

    # Bounds: at least one of each role, total within [min_instances, max_instances]. Over the cap
    # the curated ratio decides the mix (the best-known split when capacity is the limit).
    if new_p + new_d > p.max_instances:
        new_p, new_d = split_by_ratio(svc, bound_decode(svc, new_d)).num_prefill, bound_decode(svc, new_d)
    new_p, new_d = max(1, new_p), max(1, new_d)
    new_d = max(new_d, p.min_instances - new_p)  # O(1): was a loop of +1 steps up to min_instances
    new = RoleCounts(new_p, new_d)

    action = _action(cur, new)
    in_bounds = p.min_instances <= cur.total <= p.max_instances
    if action is Action.SCALE_OUT and source == "proportional" and in_bounds:
        wait = _scale_out_wait(ctx, state)
        if wait > 0:
            return _hold(ctx, state, f"{reason}; scale-out cooldown ({wait:.0f}s left)")
    if action is Action.HOLD:
        return _hold(ctx, state, reason, source if source != "proportional" else "hold")
    return _finish(ctx, state, new, reason, source)


def oracle(ctx: PolicyContext, state: ServicePolicyState) -> Decision:
    """Perfect foresight: sized for the true peak metric until new instances could be Ready
    (`ctx.peak_metric` from the replay) at the service's own target per instance, the headroom
    every metric-driven policy gets. (Sizing at 100% of `capacity_tokens_per_s` instead made the
    oracle fail the SLO on bursts inside a control period: not a floor at equal attainment.)
    With the same headroom it differs from `heteroscale-paper` only by knowing the load, so it
    is the floor for the paper's policy: no hysteresis, cooldown, damping or forecast error."""
    svc = ctx.service
    if ctx.peak_metric is None:
        return _hold(ctx, state, "oracle: no future load given; holding", "static")
    # Scale out just in time: instances started now serve only from now + cold start, so only
    # that window's peak can ask for more. Scale in no lower than the peak until then: what is
    # removed now cannot come back sooner.
    keep = bound_decode(svc, math.ceil(_proportional_decode(ctx, ctx.peak_metric) - _EPS))
    ready = ctx.ready_peak_metric if ctx.ready_peak_metric is not None else ctx.peak_metric
    need = bound_decode(svc, math.ceil(_proportional_decode(ctx, ready) - _EPS))
    d = need if need > ctx.current.num_decode else min(ctx.current.num_decode, keep)
    new = split_by_ratio(svc, d)
    reason = (
        f"oracle: peak {ready:.0f} when ready, {ctx.peak_metric:.0f} until then, "
        f"at target {svc.policy.target_per_instance:g}/instance"
    )
    if new == ctx.current:
        return _hold(ctx, state, reason, "static")
    return _finish(ctx, state, new, reason, "static")


POLICIES: dict[str, Policy] = {
    "heteroscale-paper": heteroscale_paper,
    "hpa-gpu-util": hpa_gpu_util,
    "static-peak": static_peak,
    "hpa-tps": hpa_tps,
    "dynamo-sla": dynamo_sla,
    "heteroscale": heteroscale,
    "oracle": oracle,
}


def get_policy(name: str) -> Policy:
    try:
        return POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; choose one of {sorted(POLICIES)}") from None
