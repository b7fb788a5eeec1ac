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
`dynamo-sla` follows NVIDIA Dynamo's SLA planner (public docs): predicted arrival-side load /
per-engine capacity at the TTFT and ITL targets for the observed request sizes, prefill and
decode sized separately on the same tick;
`heteroscale` is ours: each role sized for its own demand (arrivals and queue, not only what was
served) at the capacity that meets its SLO for the request sizes seen now, P and D moving
together with the curated ratio as a prior, a safety net in instances per role, scale-in only to
the highest ask of the last cold start;
`oracle` is the hindsight floor: per role the fewest instances that meet the SLO for the true
load of every tick (`ctx.floor_need`, computed by the replay with the twin's latency model);
`static-peak` provisions the peak once and never moves.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from models.config import Metric, PlacementMethod, Role, Service
from models.enums import TargetSource
from models.values import (
    Action,
    Forecast,
    RoleCounts,
    ServicePolicyState,
    ServiceSignals,
    Targets,
)
from tasks.core import capacity as cm
from tasks.core.capacity import ServiceEngines

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
    control_period_s: float = 60.0
    # The capacity model of this service's engines by (role, GPU type); None: the config's
    # `capacity_tokens_per_s` only (curated at the sizes of its trace).
    engines: ServiceEngines | None = None
    # Oracle only (the replay's hindsight, `sim.floor`): the fewest reference instances per role
    # that meet the SLO for the true load from Ready time (now + cold start) to one period later,
    # and from now until then.
    floor_need: RoleCounts | None = None
    floor_keep: RoleCounts | None = None


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


def _hold(
    ctx: PolicyContext, state: ServicePolicyState, reason: str, source: TargetSource = TargetSource.HOLD
) -> Decision:
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
    source: TargetSource,
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
            return _hold(ctx, state, "periodic schedule window: counts already as scheduled", TargetSource.SCHEDULE)
        return _finish(ctx, state, fixed, "periodic schedule window", TargetSource.SCHEDULE)

    value, metric_why = _metric_value(ctx)
    d_cur = cur.num_decode
    source = TargetSource.PROPORTIONAL
    if value is None:
        d_new, reason = d_cur, f"hold: {metric_why}"
        source = TargetSource.HOLD
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
        d_lat = d_cur + net_step(d_cur, step)  # the tier's step, at least one instance
        if d_lat > d_new:
            if _since(ctx.now_s, state.last_latency_action_s) >= p.latency_cooldown_s:
                d_new, reason, source = d_lat, f"latency feedback: {lat_why}", TargetSource.LATENCY
                state = state.with_(last_latency_action_s=ctx.now_s)
            else:
                reason += f"; latency breach ({lat_why}) within latency cooldown"

    cur_in_bounds = p.min_instances <= cur.total <= p.max_instances
    if source == TargetSource.HOLD and cur_in_bounds:
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
        if source == TargetSource.HOLD:
            source = TargetSource.BOUNDS
    new = split_by_ratio(svc, d_bounded)

    action = _action(cur, new)
    if not cur_in_bounds:
        # The fleet is outside its bounds (config changed, or a human scaled it): bounds are
        # hard limits and are restored at once, cooldowns notwithstanding.
        source = TargetSource.BOUNDS
    if action is Action.SCALE_OUT and source not in (TargetSource.LATENCY, TargetSource.BOUNDS):
        wait = _scale_out_wait(ctx, state)
        if wait > 0:
            return _hold(ctx, state, f"{reason}; scale-out cooldown ({wait:.0f}s left)")
    if action is Action.SCALE_IN and source != TargetSource.BOUNDS:
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
        return _hold(ctx, state, reason, source if source != TargetSource.PROPORTIONAL else TargetSource.HOLD)
    return _finish(ctx, state, new, reason, source)


# --- baselines ----------------------------------------------------------------------------


def static_peak(ctx: PolicyContext, state: ServicePolicyState) -> Decision:
    """Provision once for the peak (`ctx.peak_metric`) and never move."""
    if ctx.peak_metric is None:
        return _hold(ctx, state, "static-peak: no peak given; holding", TargetSource.STATIC)
    d = bound_decode(ctx.service, math.ceil(_proportional_decode(ctx, ctx.peak_metric) - _EPS))
    new = split_by_ratio(ctx.service, d)
    if new == ctx.current:
        return _hold(ctx, state, f"static-peak: sized for peak {ctx.peak_metric:.0f}", TargetSource.STATIC)
    return _finish(ctx, state, new, f"static-peak: sized for peak {ctx.peak_metric:.0f}", TargetSource.STATIC)


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
        return _hold(ctx, state, reason, TargetSource.HPA)
    return _finish(ctx, state, new, reason, TargetSource.HPA)


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
        return _hold(ctx, state, reason, TargetSource.HPA)
    return _finish(ctx, state, new, reason, TargetSource.HPA)


# --- demand and capacity per role (heteroscale, dynamo-sla) ----------------------------------

# The measured P/D mix may move the ratio this far (either way) from the curated prior; beyond it
# the measurement, not the service, is the likelier culprit.
_RATIO_RANGE = 32.0
# With a queue reported (`waiting_requests` > 0), served decode TPS above this share of the
# fleet's capacity at the SLO is read as censored: the pool serves what it can, not what is asked.
_SATURATION_SHARE = 0.9


@dataclass(frozen=True, slots=True)
class RoleDemand:
    """Load asked of each role (tokens/s), not only what was served, and the request sizes."""

    prefill_tps: float | None  # cache-missed prompt tokens/s asked of prefill
    decode_tps: float  # output tokens/s asked of decode
    mean_input_tokens: float | None
    mean_output_tokens: float | None
    cache_hit: float
    why: str
    burst: float = 1.0  # peak short-interval arrival rate / the window's mean (>= 1)


def role_demand(ctx: PolicyContext) -> RoleDemand | None:
    """Demand per role from the signals; None when the driving metric (decode TPS) is unreadable.

    Prefill: the arrival-side prompt counter (router/frontend) x the cache-miss share when the
    stack has one; else served cache-missed prefill TPS + the growth of the queued prompt tokens.
    Either way a standing queue adds what drains it within one cold start. A saturated pool thus
    reads as demand >= capacity, never as load = capacity. Decode: arrivals x output tokens per
    request when both are counted (a prefill bottleneck starves decode, so served decode TPS
    understates what decode will be asked once prefill catches up), never below what it served.
    """
    svc = ctx.service
    served_d, _ = _fresh(ctx, "decode_tps")
    if served_d is None:
        return None
    hit, _ = _fresh(ctx, "prefix_cache_hit_rate")
    hit = min(max(svc.prefix_cache_hit if hit is None else hit, 0.0), 0.99)
    mean_in, _ = _fresh(ctx, "mean_input_tokens")
    mean_out, _ = _fresh(ctx, "mean_output_tokens")
    arr_prompt, _ = _fresh(ctx, "arrival_prompt_tps")
    arr_rps, _ = _fresh(ctx, "arrival_rps")
    served_p, _ = _fresh(ctx, "prefill_tps")
    queued, _ = _fresh(ctx, "queued_prompt_tokens")
    waiting, _ = _fresh(ctx, "waiting_requests")
    if queued is None and waiting is not None and mean_in is not None:
        queued = waiting * mean_in * (1.0 - hit)
    growth = ctx.signals.queue_growth_tps  # may be negative: a queue draining
    parts = []
    pre: float | None
    if arr_prompt is not None:
        pre = arr_prompt * (1.0 - hit)
        parts.append(f"prefill arrivals {pre:.0f}")
    elif served_p is not None:
        pre = served_p + max(0.0, growth or 0.0)
        parts.append(f"prefill served {served_p:.0f} + queue growth {max(0.0, growth or 0.0):.0f}")
    else:
        pre = None
    if pre is not None and queued:
        drain = queued / max(svc.cold_start_s, ctx.control_period_s)
        pre += drain
        parts.append(f"+ queue {queued:.0f} tok drained in a cold start")
    dec = served_d
    if arr_rps is not None and mean_out is not None:
        dec = max(served_d, arr_rps * mean_out)
        parts.append(f"decode arrivals {arr_rps:.2f} req/s x {mean_out:.0f} tok")
    else:
        parts.append(f"decode served {served_d:.0f}")
    # Bursts inside the window: latency is judged per short interval, so size for its peak.
    peak, _ = _fresh(ctx, "arrival_peak_rps")
    burst = peak / arr_rps if peak is not None and arr_rps else 1.0
    if burst > 1.0 + _EPS:
        parts.append(f"peak {burst:.2f}x the window's mean")
    return RoleDemand(pre, dec, mean_in, mean_out, hit, ", ".join(parts), max(burst, 1.0))


@dataclass(frozen=True, slots=True)
class RoleCapacity:
    """Tokens/s one reference instance of each role sustains within its SLO at the observed
    request sizes (before any headroom), and why a role's SLO cannot be met when it cannot."""

    prefill_tps: float
    decode_tps: float
    how: str
    ttft_infeasible: str = ""
    tbt_infeasible: str = ""


def role_capacity(ctx: PolicyContext, demand: RoleDemand, prefill_servers: int) -> RoleCapacity:
    """Per-instance capacity at the SLOs for the request sizes observed now (the capacity model,
    `ctx.engines`), or the config's `capacity_tokens_per_s` (curated at the sizes of its trace)
    when the model or the sizes are unknown. An SLO no instance meets even idle (its floor, see
    `tasks.core.capacity.slo_floor`) sizes that role for throughput and says so."""
    svc = ctx.service
    ref_p, ref_d = svc.prefill.reference_gpu_type, svc.decode.reference_gpu_type
    curated = RoleCapacity(svc.prefill.capacity_tokens_per_s[ref_p], svc.decode.capacity_tokens_per_s[ref_d], "curated")
    engines = ctx.engines
    if engines is None or demand.mean_input_tokens is None or demand.mean_output_tokens is None:
        return curated
    e_p, e_d = engines.get((Role.PREFILL, ref_p)), engines.get((Role.DECODE, ref_d))
    if e_p is None or e_d is None:
        return curated
    mean_in, mean_out = max(demand.mean_input_tokens, 1.0), max(demand.mean_output_tokens, 1.0)
    prompt = max(mean_in * (1.0 - demand.cache_hit), 1.0)
    ctx_len = mean_in + mean_out / 2.0
    ttft_budget = svc.slo.ttft_p99_s - cm.kv_transfer_s(e_d, cm.P99_INPUT_FACTOR * mean_in)
    cap_p = cm.prefill_capacity(e_p, prompt, ttft_budget, max(1, prefill_servers)) if ttft_budget > 0 else 0.0
    cap_d = cm.decode_capacity(e_d, ctx_len, svc.slo.tbt_p99_s)
    ttft_bad = tbt_bad = ""
    if cap_p <= 0:
        cap_p = cm.prefill_tokens_per_s(e_p, prompt)
        ttft_bad = f"TTFT SLO {svc.slo.ttft_p99_s:g}s infeasible for {mean_in:.0f}-token prompts (p99 x{cm.P99_INPUT_FACTOR:g})"
    if cap_d <= 0:
        cap_d = cm.decode_capacity(e_d, ctx_len)
        tbt_bad = f"TBT SLO {svc.slo.tbt_p99_s:g}s infeasible at {ctx_len:.0f}-token context"
    how = f"at {mean_in:.0f} in / {mean_out:.0f} out tokens: {cap_p:.0f} prefill, {cap_d:.0f} decode tok/s per instance"
    return RoleCapacity(cap_p, cap_d, how, ttft_bad, tbt_bad)


def _headroom_share(svc: Service) -> float:
    """The share of capacity at the SLO the curated target runs instances at (the headroom the
    service was curated with), from the config's one target."""
    return _decode_target(svc) / svc.decode.capacity_tokens_per_s[svc.decode.reference_gpu_type]


def _forecast_factor(ctx: PolicyContext, observed_metric: float) -> tuple[float, str]:
    """How much more load the forecast expects when new instances are Ready (>= 1)."""
    fc = ctx.forecast
    if fc is not None and fc.value is not None and math.isfinite(fc.value) and observed_metric > 0:
        return max(1.0, fc.value / observed_metric), f"forecast x{fc.value / observed_metric:.2f} ({fc.method})"
    return 1.0, "observed"


def dynamo_sla(ctx: PolicyContext, state: ServicePolicyState) -> Decision:
    """NVIDIA Dynamo's SLA planner: replicas = predicted load / per-engine capacity at the SLOs,
    prefill and decode sized separately each adjustment interval, no fixed ratio and no cooldown.
    Like the planner, it reads the frontend's arrival-side request rate and request sizes and
    interpolates per-engine throughput at those sizes from its profile (here the capacity model);
    without them, the served load and the config's capacities."""
    svc = ctx.service
    dem = role_demand(ctx)
    if dem is None or dem.prefill_tps is None:
        return _hold(ctx, state, "dynamo-sla: decode or prefill load missing/stale", TargetSource.HOLD)
    metric = dem.decode_tps if svc.policy.metric is Metric.DECODE_TPS else dem.prefill_tps
    factor, how = _forecast_factor(ctx, metric)
    caps = role_capacity(ctx, dem, ctx.current.num_prefill)
    pre, dec = dem.prefill_tps * factor, dem.decode_tps * factor
    cap = max(2, svc.policy.max_instances)
    n_p = min(max(1, math.ceil(pre / caps.prefill_tps - _EPS)), cap - 1)
    n_d = min(max(1, math.ceil(dec / caps.decode_tps - _EPS)), cap - n_p)
    new = RoleCounts(n_p, n_d)
    reason = (
        f"dynamo-sla ({how}; {dem.why}): prefill {pre:.0f}/{caps.prefill_tps:.0f} -> {n_p}, "
        f"decode {dec:.0f}/{caps.decode_tps:.0f} -> {n_d}"
    )
    if new == ctx.current:
        return _hold(ctx, state, reason, TargetSource.PROPORTIONAL)
    return _finish(ctx, state, new, reason, TargetSource.PROPORTIONAL)


# --- heteroscale (ours) --------------------------------------------------------------------


def net_step(count: int, step: float) -> int:
    """Instances a safety-net step adds to a role of `count`: the tier's percentage rounded up,
    and at least one (the paper's +10 % / +20 % must not round to +0 on a small pool)."""
    return max(1, math.ceil(max(count, 0) * step - _EPS))


def _tier_step(ctx: PolicyContext, name: str, slo_s: float) -> tuple[float, str]:
    """The highest latency tier `name` is in (0 when within its SLO), and why."""
    value, _ = _fresh(ctx, name)
    best, why = 0.0, ""
    if value is None:
        return best, why
    for tier in ctx.service.policy.latency_tiers:
        if value >= tier.ratio * slo_s - _EPS and tier.step > best:
            best, why = tier.step, f"{name} {value:.3f}s >= {tier.ratio:g}x SLO {slo_s:g}s: +{tier.step:.0%}"
    return best, why


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
    """The highest ask of the last max(cold start, scale-in cooldown) (now included), per role.

    Scale-in follows this trailing maximum: what is shed now cannot be back before a cold start,
    so a count is shed only once the load has asked for less for that long; a dip shorter than
    that sheds nothing it would need back, and no scale-in right after a scale-out. Asks are
    kept in `state.recommendations` as (time, prefill, decode).
    """
    window = max(ctx.service.cold_start_s, ctx.service.policy.scale_in_cooldown_s)
    # A first run knows no asks: the running fleet stands for them, so nothing is shed before the
    # load has been watched for a whole window.
    past = state.recommendations or ((ctx.now_s, ctx.current.num_prefill, ctx.current.num_decode),)
    recs = (
        *tuple(r for r in past if ctx.now_s - r[0] < window),
        (ctx.now_s, want.num_prefill, want.num_decode),
    )
    keep = RoleCounts(max(r[1] for r in recs), max(r[2] for r in recs))
    return keep, state.with_(recommendations=recs)


def _fit_bounds(svc: Service, p: int, d: int) -> RoleCounts:
    """At least one of each role and the total within [min_instances, max_instances]; over the
    cap both roles shrink in proportion (the mix the load asked for, at the size allowed)."""
    pol = svc.policy
    p, d = max(1, p), max(1, d)
    if p + d > pol.max_instances:
        d = min(max(1, math.floor(pol.max_instances * d / (p + d))), pol.max_instances - 1)
        p = pol.max_instances - d
    if p + d < pol.min_instances:
        d += pol.min_instances - (p + d)
    return RoleCounts(p, d)


def heteroscale(ctx: PolicyContext, state: ServicePolicyState) -> Decision:
    """Ours: each role sized for its own demand at the capacity that meets its SLO for the request
    sizes seen now, P and D moving together, a safety net in instances, scale-in only to what the
    load has asked for a whole cold start.

    Contract (same as every policy): pure in (ctx, state); missing or stale load of either role ->
    hold (never read as zero); bounds held (min/max total instances, at least one of each role);
    latency, the queue and the saturation guard only ever add capacity and block scale-in.

    1. Demand per role (`role_demand`): arrivals or served + queue, not only what was served;
       x the forecast's factor at cold start + period (never below 1).
    2. Per-instance target per role = `slo_headroom` x the capacity at the SLO at the observed
       request sizes (`role_capacity`, the capacity model), for the window's peak short-interval
       arrival rate; ask = demand / target. Without the capacity model or the sizes: the curated
       target's share of the curated capacity, for the mean (the paper's sizing). The curated P/D ratio is
       a prior that bounds the measured mix to within x/÷ `_RATIO_RANGE` of it; within that, the
       ratio follows the mix (its hysteresis is each role's band and the scale-in window).
    3. P and D move together: when either role's ask exceeds its count (sized at the SLO, the
       headroom is in the share; with curated targets, beyond the hysteresis band), both roles go
       to their asks (neither shrinks in that run); scale-out cooldown honoured.
    4. Safety net, once per max(latency cooldown, cold start), per role in instances: TBT tiers
       -> decode, TTFT tiers -> prefill, each +max(1, ceil(count x step)); a censored decode
       metric -> decode ask + first step. Skipped for a role whose SLO is infeasible at these
       sizes (no count can meet it; the reason says so). The cooldown starts only when the net
       added capacity.
    5. Scale-in per role only when its ask is below (1 - hysteresis) x current, to the highest
       ask (or count added) of the last max(cold start, scale-in cooldown), at most `max_step_fraction` per run, never while that role's
       SLO is breached or (prefill) its queue grows.
    """
    svc, p, cur = ctx.service, ctx.service.policy, ctx.current
    fixed = schedule_counts(ctx)
    if fixed is not None:
        if fixed == cur:
            return _hold(ctx, state, "periodic schedule window: counts already as scheduled", TargetSource.SCHEDULE)
        return _finish(ctx, state, fixed, "periodic schedule window", TargetSource.SCHEDULE)
    dem = role_demand(ctx)
    if dem is None or dem.prefill_tps is None:
        return _hold(ctx, state, "hold: decode_tps or prefill load missing/stale")
    metric = dem.decode_tps if p.metric is Metric.DECODE_TPS else dem.prefill_tps
    factor, fc_how = _forecast_factor(ctx, metric)
    caps = role_capacity(ctx, dem, cur.num_prefill)
    # SLO-grounded: a share of the capacity at the SLO for the recent peak; without the capacity
    # model, the curated target's share of the curated capacity for the mean.
    grounded = caps.how != "curated"
    share = p.slo_headroom if grounded else _headroom_share(svc)
    factor *= dem.burst if grounded else 1.0
    d_ask = dem.decode_tps * factor / (share * caps.decode_tps)
    prior = svc.pd_ratio.prefill_per_decode
    p_own = dem.prefill_tps * factor / (share * caps.prefill_tps)
    p_ask = min(max(p_own, d_ask * prior / _RATIO_RANGE), d_ask * prior * _RATIO_RANGE)
    mix = f"mix P/D {p_own / max(d_ask, _EPS):.2f} (curated {prior:.2f})"
    if p_ask != p_own:
        mix += f", bounded to x/÷{_RATIO_RANGE:g} of it"
    reason = (
        f"heteroscale ({fc_how}; {dem.why}; {caps.how}; share {share:.0%}): "
        f"prefill {p_ask:.2f}, decode {d_ask:.2f} instances; {mix}"
    )
    for bad in (caps.ttft_infeasible, caps.tbt_infeasible):
        if bad:
            reason += f"; {bad}"
    source = TargetSource.PROPORTIONAL
    want = RoleCounts(max(1, math.ceil(p_ask - _EPS)), max(1, math.ceil(d_ask - _EPS)))
    keep, state = _stabilised_ask(ctx, state, want)

    # 3. P and D together: an ask out of its band upwards re-sizes both roles.
    # Sized at the SLO, the headroom is in the share; the band is only for the curated target.
    band = 0.0 if grounded else p.hysteresis

    def up(ask: float, want_n: int, cur_n: int) -> bool:
        return want_n > cur_n and (cur_n == 0 or ask > cur_n * (1 + band))

    grow = up(p_ask, want.num_prefill, cur.num_prefill) or up(d_ask, want.num_decode, cur.num_decode)
    new_p = max(cur.num_prefill, want.num_prefill) if grow else cur.num_prefill
    new_d = max(cur.num_decode, want.num_decode) if grow else cur.num_decode

    # 4. Safety net per role, in instances.
    tbt_step, tbt_why = (0.0, "") if caps.tbt_infeasible else _tier_step(ctx, "tbt_p99_s", svc.slo.tbt_p99_s)
    ttft_step, ttft_why = (0.0, "") if caps.ttft_infeasible else _tier_step(ctx, "ttft_p99_s", svc.slo.ttft_p99_s)
    censored = _censored(ctx) if ctx.signals.arrival_rps is None else ""
    net_cooldown_s = max(p.latency_cooldown_s, svc.cold_start_s)
    if tbt_step > 0 or ttft_step > 0 or censored:
        if _since(ctx.now_s, state.last_latency_action_s) >= net_cooldown_s:
            first = p.latency_tiers[0].step if p.latency_tiers else 0.1
            d_net = cur.num_decode + net_step(cur.num_decode, tbt_step) if tbt_step > 0 else 0
            if censored:
                d_net = max(d_net, math.ceil(d_ask * (1 + first) - _EPS))
            p_net = cur.num_prefill + net_step(cur.num_prefill, ttft_step) if ttft_step > 0 else 0
            if d_net > new_d or p_net > new_p:
                new_d, new_p = max(new_d, d_net), max(new_p, p_net)
                why = "; ".join(w for w in (tbt_why, ttft_why, censored) if w)
                reason += f"; safety net: {why}"
                source = TargetSource.LATENCY
                state = state.with_(last_latency_action_s=ctx.now_s)
        else:
            reason += "; safety net within its cooldown (added capacity not Ready yet)"

    # 5. Scale-in per role.
    def shrink(ask: float, keep_n: int, cur_n: int, blocked: bool) -> int:
        if blocked or keep_n >= cur_n or ask >= cur_n * (1 - p.hysteresis):
            return cur_n
        return max(keep_n, cur_n - max(1, math.ceil(p.max_step_fraction * cur_n - _EPS)))

    if not grow and source != TargetSource.LATENCY:
        ttft_now, _ = _fresh(ctx, "ttft_p99_s")
        tbt_now, _ = _fresh(ctx, "tbt_p99_s")
        growing = (ctx.signals.queue_growth_tps or 0.0) > 0 and (ctx.signals.waiting_requests or 0.0) > 0
        p_blocked = growing or (not caps.ttft_infeasible and ttft_now is not None and ttft_now >= svc.slo.ttft_p99_s)
        d_blocked = not caps.tbt_infeasible and tbt_now is not None and tbt_now >= svc.slo.tbt_p99_s
        new_p = shrink(p_ask, keep.num_prefill, cur.num_prefill, p_blocked)
        new_d = shrink(d_ask, keep.num_decode, cur.num_decode, d_blocked)

    new = _fit_bounds(svc, new_p, new_d)
    if new != RoleCounts(new_p, new_d):
        reason += f"; bounded to [{p.min_instances}, {p.max_instances}] instances"
    action = _action(cur, new)
    in_bounds = p.min_instances <= cur.total <= p.max_instances
    if action is Action.SCALE_OUT and source == TargetSource.PROPORTIONAL and in_bounds:
        wait = _scale_out_wait(ctx, state)
        if wait > 0:
            return _hold(ctx, state, f"{reason}; scale-out cooldown ({wait:.0f}s left)")
    if action is Action.HOLD:
        return _hold(ctx, state, reason, source if source != TargetSource.PROPORTIONAL else TargetSource.HOLD)
    if new.num_prefill > want.num_prefill or new.num_decode > want.num_decode:
        # What the safety net (or the coupling) added is kept like an ask: not shed next run.
        t, ask_p, ask_d = state.recommendations[-1]
        recs = (*state.recommendations[:-1], (t, max(ask_p, new.num_prefill), max(ask_d, new.num_decode)))
        state = state.with_(recommendations=recs)
    return _finish(ctx, state, new, reason, source)


def oracle(ctx: PolicyContext, state: ServicePolicyState) -> Decision:
    """The hindsight floor: per role, the fewest reference instances that meet the SLO for the true
    load of every tick (`ctx.floor_need`: the most any tick needs from Ready time to one period
    later; `ctx.floor_keep`: the most any tick needs from now to then), computed by the replay
    with the twin's own latency model (`sim.floor`). Instances are started one cold start before
    they are needed and never shed while they will be needed before a replacement could be Ready.
    No online policy may use fewer GPU-hours at equal or better attainment."""
    need, keep = ctx.floor_need, ctx.floor_keep
    if need is None or keep is None:
        return _hold(ctx, state, "oracle: no future load given; holding", TargetSource.STATIC)
    cur = ctx.current

    def role(need_n: int, keep_n: int, cur_n: int) -> int:
        return need_n if need_n > cur_n else min(cur_n, keep_n)

    new = _fit_bounds(
        ctx.service,
        role(need.num_prefill, keep.num_prefill, cur.num_prefill),
        role(need.num_decode, keep.num_decode, cur.num_decode),
    )
    reason = (
        f"oracle: floor {need.num_prefill}P/{need.num_decode}D when ready, "
        f"{keep.num_prefill}P/{keep.num_decode}D until then"
    )
    if new == cur:
        return _hold(ctx, state, reason, TargetSource.STATIC)
    return _finish(ctx, state, new, reason, TargetSource.STATIC)


@dataclass(frozen=True, slots=True)
class PolicySpec:
    """A policy and what the drivers need to know about it, in one place (the replay, curation,
    the twin's starting fleet, the CLI and the config check all read this registry)."""

    name: str
    decide: Policy
    # Reads `forecast_load`'s output; for the others the replay skips the forecaster.
    uses_forecast: bool = False
    # Reads the hindsight floor (`ctx.floor_need`, `ctx.floor_keep`, from `sim.floor`): replay only.
    needs_foresight: bool = False
    # Runs the trace's peak fleet from the start (the replay's starting fleet is sized for the peak).
    sized_for_peak: bool = False
    # Placement in a replay: the baselines place as the paper does (greedy, Algorithm 4); our
    # own `heteroscale` uses the ILP (greedy as its fallback).
    placement: PlacementMethod = PlacementMethod.GREEDY
    # Tried by policy curation (flows/curate.py, HeteroScale's Algorithm 1).
    curation_candidate: bool = False


# In the order the league tables list them.
POLICIES: dict[str, PolicySpec] = {
    spec.name: spec
    for spec in (
        PolicySpec("static-peak", static_peak, sized_for_peak=True),
        PolicySpec("hpa-gpu-util", hpa_gpu_util),
        PolicySpec("hpa-tps", hpa_tps),
        PolicySpec("heteroscale-paper", heteroscale_paper, uses_forecast=True, curation_candidate=True),
        PolicySpec("dynamo-sla", dynamo_sla, uses_forecast=True),
        PolicySpec(
            "heteroscale", heteroscale, uses_forecast=True, placement=PlacementMethod.ILP, curation_candidate=True
        ),
        PolicySpec("oracle", oracle, needs_foresight=True),
    )
}


def get_policy(name: str) -> PolicySpec:
    try:
        return POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; choose one of {sorted(POLICIES)}") from None
