"""The league's other policies: `static-peak` (the peak, once), `hpa-gpu-util` and `hpa-tps` (the
Kubernetes HPA algorithm per role on GPU utilisation / tokens per instance), `dynamo-sla` (NVIDIA
Dynamo's SLA planner from its public docs) and `oracle` (the hindsight floor). Pure."""

from __future__ import annotations

import math

from models.config import Metric
from models.enums import TargetSource
from models.values import Action, RoleCounts, ServicePolicyState, Targets
from tasks.core.policy.base import (
    EPS,
    Decision,
    PolicyContext,
    bound_decode,
    decode_target,
    finish,
    fit_bounds,
    forecast_factor,
    fresh,
    hold,
    prefill_target,
    split_by_ratio,
)
from tasks.core.policy.demand import role_capacity, role_demand
from tasks.core.policy.paper import proportional_decode

# --- baselines ----------------------------------------------------------------------------


def static_peak(ctx: PolicyContext, state: ServicePolicyState) -> Decision:
    """Provision once for the peak (`ctx.peak_metric`) and never move."""
    if ctx.peak_metric is None:
        return hold(ctx, state, "static-peak: no peak given; holding", TargetSource.STATIC)
    d = bound_decode(ctx.service, math.ceil(proportional_decode(ctx, ctx.peak_metric) - EPS))
    new = split_by_ratio(ctx.service, d)
    if new == ctx.current:
        return hold(ctx, state, f"static-peak: sized for peak {ctx.peak_metric:.0f}", TargetSource.STATIC)
    return finish(ctx, state, new, f"static-peak: sized for peak {ctx.peak_metric:.0f}", TargetSource.STATIC)


def _hpa_role(current: int, util: float | None, target: float, tolerance: float) -> int:
    """Kubernetes HPA: desired = ceil(current x metric / target), skipped inside the tolerance."""
    if util is None or current == 0:
        return current
    ratio = util / target
    if abs(ratio - 1) <= tolerance:
        return current
    return math.ceil(current * ratio - EPS)


def hpa_gpu_util(ctx: PolicyContext, state: ServicePolicyState) -> Decision:
    """HPA per role on GPU utilisation; prefill and decode scale independently (no ratio)."""
    p, cur = ctx.service.policy, ctx.current
    util_p, why_p = fresh(ctx, "gpu_util_prefill")
    util_d, why_d = fresh(ctx, "gpu_util_decode")
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
        return hold(ctx, state, reason, TargetSource.HPA)
    return finish(ctx, state, new, reason, TargetSource.HPA)


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
    tps_p, why_p = fresh(ctx, "prefill_tps")
    tps_d, why_d = fresh(ctx, "decode_tps")
    per_p = tps_p / cur.num_prefill if tps_p is not None and cur.num_prefill else None
    per_d = tps_d / cur.num_decode if tps_d is not None and cur.num_decode else None
    want = RoleCounts(
        _hpa_role(cur.num_prefill, per_p, prefill_target(svc), p.hpa_tolerance),
        _hpa_role(cur.num_decode, per_d, decode_target(svc), p.hpa_tolerance),
    )
    new, state = _stabilised(ctx, state, want)
    reason = (
        f"hpa-tps: prefill {per_p if per_p is not None else why_p} tok/s/inst "
        f"(target {prefill_target(svc):.0f}), decode {per_d if per_d is not None else why_d} tok/s/inst "
        f"(target {decode_target(svc):.0f})"
    )
    if new == cur:
        return hold(ctx, state, reason, TargetSource.HPA)
    return finish(ctx, state, new, reason, TargetSource.HPA)


def dynamo_sla(ctx: PolicyContext, state: ServicePolicyState) -> Decision:
    """NVIDIA Dynamo's SLA planner: replicas = predicted load / per-engine capacity at the SLOs,
    prefill and decode sized separately each adjustment interval, no fixed ratio and no cooldown.
    Like the planner, it reads the frontend's arrival-side request rate and request sizes and
    interpolates per-engine throughput at those sizes from its profile (here the capacity model);
    without them, the served load and the config's capacities."""
    svc = ctx.service
    dem = role_demand(ctx)
    if dem is None or dem.prefill_tps is None:
        return hold(ctx, state, "dynamo-sla: decode or prefill load missing/stale", TargetSource.HOLD)
    metric = dem.decode_tps if svc.policy.metric is Metric.DECODE_TPS else dem.prefill_tps
    factor, how = forecast_factor(ctx, metric)
    caps = role_capacity(ctx, dem, ctx.current.num_prefill)
    pre, dec = dem.prefill_tps * factor, dem.decode_tps * factor
    cap = max(2, svc.policy.max_instances)
    n_p = min(max(1, math.ceil(pre / caps.prefill_tps - EPS)), cap - 1)
    n_d = min(max(1, math.ceil(dec / caps.decode_tps - EPS)), cap - n_p)
    new = RoleCounts(n_p, n_d)
    reason = (
        f"dynamo-sla ({how}; {dem.why}): prefill {pre:.0f}/{caps.prefill_tps:.0f} -> {n_p}, "
        f"decode {dec:.0f}/{caps.decode_tps:.0f} -> {n_d}"
    )
    if new == ctx.current:
        return hold(ctx, state, reason, TargetSource.PROPORTIONAL)
    return finish(ctx, state, new, reason, TargetSource.PROPORTIONAL)


def oracle(ctx: PolicyContext, state: ServicePolicyState) -> Decision:
    """The hindsight floor: per role, the fewest reference instances that meet the SLO for the true
    load of every tick (`ctx.floor_need`: the most any tick needs from Ready time to one period
    later; `ctx.floor_keep`: the most any tick needs from now to then), computed by the replay
    with the twin's own latency model (`sim.floor`). Instances are started one cold start before
    they are needed and never shed while they will be needed before a replacement could be Ready.
    No online policy may use fewer GPU-hours at equal or better attainment.

    `ctx.current` is the fleet in reference units *rounded* (`tasks.steps.current_counts`): four
    H100 decode instances at 1.92 A100-units each read as 8 while they hold 7.68. The floor must
    hold its counts exactly, so a count that reads as unchanged still goes to the placement, which
    compares the exact capacity held: it adds an instance where the role falls short of the count
    and sheds one only while what remains still holds it (a fraction the rounding hid). Where the
    count comes from `keep` (need below it), the rounding can still be off by one instance either
    way: for ticks before new instances could be Ready, which no decision now can change."""
    need, keep = ctx.floor_need, ctx.floor_keep
    if need is None or keep is None:
        return hold(ctx, state, "oracle: no future load given; holding", TargetSource.STATIC)
    cur = ctx.current

    def role(need_n: int, keep_n: int, cur_n: int) -> int:
        return need_n if need_n > cur_n else min(cur_n, keep_n)

    new = fit_bounds(
        ctx.service,
        role(need.num_prefill, keep.num_prefill, cur.num_prefill),
        role(need.num_decode, keep.num_decode, cur.num_decode),
    )
    reason = (
        f"oracle: floor {need.num_prefill}P/{need.num_decode}D when ready, "
        f"{keep.num_prefill}P/{keep.num_decode}D until then"
    )
    if new == cur:
        topping_up = need.num_prefill >= cur.num_prefill or need.num_decode >= cur.num_decode
        exact = Targets(
            ctx.service.name,
            new.num_prefill,
            new.num_decode,
            Action.SCALE_OUT if topping_up else Action.SCALE_IN,
            f"{reason}; held to the count exactly by the placement (the count read is rounded)",
            TargetSource.STATIC,
        )
        return exact, state
    return finish(ctx, state, new, reason, TargetSource.STATIC)
