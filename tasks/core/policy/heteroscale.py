"""`heteroscale`, ours: each role sized for its own demand at the capacity that meets its SLO for
the request sizes seen now, P and D moving together with the curated ratio as a prior, a safety
net in instances per role, scale-in only to what the load asked for a whole window. Pure."""

from __future__ import annotations

import math

from models.config import Metric, Service
from models.enums import TargetSource
from models.values import Action, RoleCounts, ServicePolicyState
from tasks.core.policy.base import (
    EPS,
    Decision,
    PolicyContext,
    action_of,
    decode_target,
    finish,
    fit_bounds,
    forecast_factor,
    fresh,
    hold,
    net_step,
    scale_out_wait,
    schedule_counts,
    since,
)
from tasks.core.policy.demand import role_capacity, role_demand
from tasks.core.stepprofile import step_factor

# --- demand and capacity per role (heteroscale, dynamo-sla) ----------------------------------

# The measured P/D mix may move the ratio this far (either way) from the curated prior; beyond it
# the measurement, not the service, is the likelier culprit.
_RATIO_RANGE = 32.0


# With a queue reported (`waiting_requests` > 0), served decode TPS above this share of the
# fleet's capacity at the SLO is read as censored: the pool serves what it can, not what is asked.
_SATURATION_SHARE = 0.9


def _headroom_share(svc: Service) -> float:
    """The share of capacity at the SLO the curated target runs instances at (the headroom the
    service was curated with), from the config's one target."""
    return decode_target(svc) / svc.decode.capacity_tokens_per_s[svc.decode.reference_gpu_type]


def _tier_step(ctx: PolicyContext, name: str, slo_s: float) -> tuple[float, str]:
    """The highest latency tier `name` is in (0 when within its SLO), and why."""
    value, _ = fresh(ctx, name)
    best, why = 0.0, ""
    if value is None:
        return best, why
    for tier in ctx.service.policy.latency_tiers:
        if value >= tier.ratio * slo_s - EPS and tier.step > best:
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
    served, _ = fresh(ctx, "decode_tps")
    cap = cur.num_decode * svc.decode.capacity_tokens_per_s[svc.decode.reference_gpu_type]
    if served is None or cap <= 0:
        return ""
    if served >= cap - EPS:
        return f"decode served {served:.0f} >= capacity {cap:.0f} (metric censored)"
    waiting, _ = fresh(ctx, "waiting_requests")
    if waiting is not None and waiting > 0 and served >= _SATURATION_SHARE * cap:
        return f"{waiting:.0f} waiting at decode served {served:.0f} >= {_SATURATION_SHARE:.0%} of capacity"
    return ""


def _stabilised_ask(
    ctx: PolicyContext, state: ServicePolicyState, want: RoleCounts
) -> tuple[RoleCounts, ServicePolicyState]:
    """The highest ask of the last max(cold start, scale-in cooldown, `scale_in_window_s`) (now
    included), per role.

    Scale-in follows this trailing maximum: what is shed now cannot be back before a cold start,
    so a count is shed only once the load has asked for less for that long; a dip shorter than
    that sheds nothing it would need back, and no scale-in right after a scale-out. Asks are
    kept in `state.recommendations` as (time, prefill, decode).
    """
    p = ctx.service.policy
    window = max(ctx.service.cold_start_s, p.scale_in_cooldown_s, p.scale_in_window_s)
    # A first run knows no asks: the running fleet stands for them, so nothing is shed before the
    # load has been watched for a whole window.
    past = state.recommendations or ((ctx.now_s, ctx.current.num_prefill, ctx.current.num_decode),)
    recs = (
        *tuple(r for r in past if ctx.now_s - r[0] < window),
        (ctx.now_s, want.num_prefill, want.num_decode),
    )
    keep = RoleCounts(max(r[1] for r in recs), max(r[2] for r in recs))
    return keep, state.with_(recommendations=recs)


def heteroscale(ctx: PolicyContext, state: ServicePolicyState) -> Decision:
    """Ours: each role sized for its own demand at the capacity that meets its SLO for the request
    sizes seen now, P and D moving together, a safety net in instances, scale-in only to what the
    load has asked for a whole cold start.

    Contract (same as every policy): pure in (ctx, state); missing or stale load of either role ->
    hold (never read as zero); bounds held (min/max total instances, at least one of each role);
    latency, the queue and the saturation guard only ever add capacity and block scale-in.

    1. Demand per role (`role_demand`): arrivals or served + queue, not only what was served;
       x the forecast's factor at cold start + period (never below 1): the `policy.risk`
       quantile of the load at Ready time where the forecast carries quantiles, else the point
       forecast; or, when the daily step profile expects a step by then (`policy.steps`), enough
       for the load after it at the capacity at the SLO (pre-provision), if that is more.
       Scale-in (5.) follows the highest ask of the last cold start, so it waits for that upper
       quantile to fall below what would remain.
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
       ask (or count added) of the last max(cold start, scale-in cooldown, `scale_in_window_s`), at most `max_step_fraction` per run, never while that role's
       SLO is breached or (prefill) its queue grows.
    """
    svc, p, cur = ctx.service, ctx.service.policy, ctx.current
    fixed = schedule_counts(ctx)
    if fixed is not None:
        if fixed == cur:
            return hold(ctx, state, "periodic schedule window: counts already as scheduled", TargetSource.SCHEDULE)
        return finish(ctx, state, fixed, "periodic schedule window", TargetSource.SCHEDULE)
    dem = role_demand(ctx)
    if dem is None or dem.prefill_tps is None:
        return hold(ctx, state, "hold: decode_tps or prefill load missing/stale")
    metric = dem.decode_tps if p.metric is Metric.DECODE_TPS else dem.prefill_tps
    factor, fc_how = forecast_factor(ctx, metric, risk=p.risk)
    caps = role_capacity(ctx, dem, cur.num_prefill)
    # SLO-grounded: a share of the capacity at the SLO for the recent peak; without the capacity
    # model, the curated target's share of the curated capacity for the mean.
    grounded = caps.how != "curated"
    share = p.slo_headroom if grounded else _headroom_share(svc)
    factor *= dem.burst if grounded else 1.0
    # Step awareness: a recurring upward step due before instances started now are Ready. Sized
    # at the capacity at the SLO (x share): the headroom is for load moving within a period, a
    # step only has to be servable until the reactive sizing catches up. (Sized at the headroom
    # share instead, it cost +0.5% GPU-hours for +0.00 pp on ServeGen days 1-7.)
    step, step_why = step_factor(
        ctx.forecast.steps if ctx.forecast else (), ctx.now_s, svc.cold_start_s + ctx.control_period_s
    )
    if step * share > factor:
        factor, fc_how = step * share, f"{fc_how}; {step_why}, sized at the SLO capacity"
    d_ask = dem.decode_tps * factor / (share * caps.decode_tps)
    prior = svc.pd_ratio.prefill_per_decode
    p_own = dem.prefill_tps * factor / (share * caps.prefill_tps)
    p_ask = min(max(p_own, d_ask * prior / _RATIO_RANGE), d_ask * prior * _RATIO_RANGE)
    mix = f"mix P/D {p_own / max(d_ask, EPS):.2f} (curated {prior:.2f})"
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
    want = RoleCounts(max(1, math.ceil(p_ask - EPS)), max(1, math.ceil(d_ask - EPS)))
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
        if since(ctx.now_s, state.last_latency_action_s) >= net_cooldown_s:
            first = p.latency_tiers[0].step if p.latency_tiers else 0.1
            d_net = cur.num_decode + net_step(cur.num_decode, tbt_step) if tbt_step > 0 else 0
            if censored:
                d_net = max(d_net, math.ceil(d_ask * (1 + first) - EPS))
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
        return max(keep_n, cur_n - max(1, math.ceil(p.max_step_fraction * cur_n - EPS)))

    if not grow and source != TargetSource.LATENCY:
        ttft_now, _ = fresh(ctx, "ttft_p99_s")
        tbt_now, _ = fresh(ctx, "tbt_p99_s")
        growing = (ctx.signals.queue_growth_tps or 0.0) > 0 and (ctx.signals.waiting_requests or 0.0) > 0
        p_blocked = growing or (not caps.ttft_infeasible and ttft_now is not None and ttft_now >= svc.slo.ttft_p99_s)
        d_blocked = not caps.tbt_infeasible and tbt_now is not None and tbt_now >= svc.slo.tbt_p99_s
        new_p = shrink(p_ask, keep.num_prefill, cur.num_prefill, p_blocked)
        new_d = shrink(d_ask, keep.num_decode, cur.num_decode, d_blocked)

    new = fit_bounds(svc, new_p, new_d)
    if new != RoleCounts(new_p, new_d):
        reason += f"; bounded to [{p.min_instances}, {p.max_instances}] instances"
    action = action_of(cur, new)
    in_bounds = p.min_instances <= cur.total <= p.max_instances
    if action is Action.SCALE_OUT and source == TargetSource.PROPORTIONAL and in_bounds:
        wait = scale_out_wait(ctx, state)
        if wait > 0:
            return hold(ctx, state, f"{reason}; scale-out cooldown ({wait:.0f}s left)")
    if action is Action.HOLD:
        return hold(ctx, state, reason, source if source != TargetSource.PROPORTIONAL else TargetSource.HOLD)
    added = grow or source == TargetSource.LATENCY
    if added and (new.num_prefill > want.num_prefill or new.num_decode > want.num_decode):
        # What the safety net (or the coupling) added is kept like an ask: not shed next run.
        # Only what was added: a scale-in's count (bounded below by the trailing maximum) recorded
        # as an ask would re-arm that maximum every run, and a fleet that cannot shed to exactly
        # the count (reference-unit rounding) would then hold it for ever.
        t, ask_p, ask_d = state.recommendations[-1]
        recs = (*state.recommendations[:-1], (t, max(ask_p, new.num_prefill), max(ask_d, new.num_decode)))
        state = state.with_(recommendations=recs)
    return finish(ctx, state, new, reason, source)
