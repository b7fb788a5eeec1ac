"""`heteroscale-paper`: HeteroScale's policy as the paper describes it (arXiv 2508.19559, section 4):
a periodic schedule window; proportional control on one linear metric (decode TPS by default),
prefill at the fixed P/D ratio; hysteresis, damping and cooldowns; tiered negative feedback on
p99 TBT (TTFT optional) that only adds capacity, at least one instance a step; bounds; and a hold
whenever the driving signal is missing or stale (never read as zero). Pure."""

from __future__ import annotations

import math

from models.config import Metric
from models.enums import TargetSource
from models.values import Action, ServicePolicyState
from tasks.core.policy.base import (
    EPS,
    Decision,
    PolicyContext,
    action_of,
    bound_decode,
    finish,
    fresh,
    hold,
    net_step,
    scale_out_wait,
    schedule_counts,
    since,
    split_by_ratio,
)

# --- heteroscale-paper ---------------------------------------------------------------------


def _metric_value(ctx: PolicyContext) -> tuple[float | None, str]:
    metric = ctx.service.policy.metric.value
    observed, why = fresh(ctx, metric)
    if observed is None:
        return None, why
    fc = ctx.forecast
    if fc is not None and fc.value is not None and math.isfinite(fc.value):
        # Scale for the load expected when new instances are Ready, but never below what is
        # being served right now.
        return max(observed, fc.value), f"{metric} {observed:.0f}, forecast {fc.value:.0f} ({fc.method})"
    return observed, f"{metric} {observed:.0f}"


def proportional_decode(ctx: PolicyContext, value: float) -> float:
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
        value, _ = fresh(ctx, name)
        if value is None:
            continue
        for tier in svc.policy.latency_tiers:
            if value >= tier.ratio * slo - EPS and tier.step > best:
                best = tier.step
                why = f"{name} {value:.3f}s >= {tier.ratio:g}x SLO {slo:g}s: +{tier.step:.0%}"
    return best, why


def _latency_breached(ctx: PolicyContext) -> bool:
    value, _ = fresh(ctx, "tbt_p99_s")
    return value is not None and value >= ctx.service.slo.tbt_p99_s


def heteroscale_paper(ctx: PolicyContext, state: ServicePolicyState) -> Decision:
    svc, p, cur = ctx.service, ctx.service.policy, ctx.current

    fixed = schedule_counts(ctx)
    if fixed is not None:
        if fixed == cur:
            return hold(ctx, state, "periodic schedule window: counts already as scheduled", TargetSource.SCHEDULE)
        return finish(ctx, state, fixed, "periodic schedule window", TargetSource.SCHEDULE)

    value, metric_why = _metric_value(ctx)
    d_cur = cur.num_decode
    source = TargetSource.PROPORTIONAL
    if value is None:
        d_new, reason = d_cur, f"hold: {metric_why}"
        source = TargetSource.HOLD
    else:
        d_float = proportional_decode(ctx, value)
        d_prop = math.ceil(d_float - EPS)
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
            if since(ctx.now_s, state.last_latency_action_s) >= p.latency_cooldown_s:
                d_new, reason, source = d_lat, f"latency feedback: {lat_why}", TargetSource.LATENCY
                state = state.with_(last_latency_action_s=ctx.now_s)
            else:
                reason += f"; latency breach ({lat_why}) within latency cooldown"

    cur_in_bounds = p.min_instances <= cur.total <= p.max_instances
    if source == TargetSource.HOLD and cur_in_bounds:
        # Cannot see the load: keep the fleet exactly as it is (ratio repairs included).
        return hold(ctx, state, reason)

    # Damping: at most max_step_fraction of the current count per run (at least one instance).
    max_delta = max(1, math.ceil(p.max_step_fraction * d_cur - EPS))
    if d_cur > 0 and abs(d_new - d_cur) > max_delta:
        d_new = d_cur + max_delta if d_new > d_cur else d_cur - max_delta
        reason += f"; damped to ±{max_delta}"

    d_bounded = bound_decode(svc, d_new)
    if d_bounded != d_new:
        reason += f"; bounded to [{p.min_instances}, {p.max_instances}] instances"
        if source == TargetSource.HOLD:
            source = TargetSource.BOUNDS
    new = split_by_ratio(svc, d_bounded)

    action = action_of(cur, new)
    if not cur_in_bounds:
        # The fleet is outside its bounds (config changed, or a human scaled it): bounds are
        # hard limits and are restored at once, cooldowns notwithstanding.
        source = TargetSource.BOUNDS
    if action is Action.SCALE_OUT and source not in (TargetSource.LATENCY, TargetSource.BOUNDS):
        wait = scale_out_wait(ctx, state)
        if wait > 0:
            return hold(ctx, state, f"{reason}; scale-out cooldown ({wait:.0f}s left)")
    if action is Action.SCALE_IN and source != TargetSource.BOUNDS:
        if _latency_breached(ctx):
            return hold(ctx, state, f"{reason}; scale-in blocked: TBT at or above SLO")
        last_change = max(
            (t for t in (state.last_scale_in_s, state.last_scale_out_s) if t is not None),
            default=None,
        )
        wait = p.scale_in_cooldown_s - since(ctx.now_s, last_change)
        if wait > 0:
            return hold(ctx, state, f"{reason}; scale-in cooldown ({wait:.0f}s left)")
    if action is Action.HOLD:
        return hold(ctx, state, reason, source if source != TargetSource.PROPORTIONAL else TargetSource.HOLD)
    return finish(ctx, state, new, reason, source)
