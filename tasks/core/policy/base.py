"""What every policy shares: the context it decides from, the decision it returns, and the small
steps (hold, finish, freshness of a signal, the ratio split, bounds, cooldowns, the safety net's
step in whole instances). Pure: the clock is `ctx.now_s`."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from models.config import Metric, ScheduleMode, Service
from models.enums import TargetSource
from models.values import Action, Forecast, RoleCounts, ServicePolicyState, ServiceSignals, Targets
from tasks.core.capacity import ServiceEngines

EPS = 1e-9


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
    num_prefill = max(1, math.ceil(num_decode * service.pd_ratio.prefill_per_decode - EPS))
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


def hold(
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


def since(now_s: float, then_s: float | None) -> float:
    return math.inf if then_s is None else now_s - then_s


def scale_out_wait(ctx: PolicyContext, state: ServicePolicyState) -> float:
    """Seconds left of the scale-out cooldown (<= 0: a scale-out may go ahead)."""
    return ctx.service.policy.scale_out_cooldown_s - since(ctx.now_s, state.last_scale_out_s)


def action_of(current: RoleCounts, new: RoleCounts) -> Action:
    if new == current:
        return Action.HOLD
    if new.num_prefill >= current.num_prefill and new.num_decode >= current.num_decode:
        return Action.SCALE_OUT
    if new.num_prefill <= current.num_prefill and new.num_decode <= current.num_decode:
        return Action.SCALE_IN
    # Mixed (one role up, one down): count it by total capacity.
    return Action.SCALE_OUT if new.total > current.total else Action.SCALE_IN


def finish(
    ctx: PolicyContext,
    state: ServicePolicyState,
    new: RoleCounts,
    reason: str,
    source: TargetSource,
) -> Decision:
    action = action_of(ctx.current, new)
    if action is Action.SCALE_OUT:
        state = state.with_(last_scale_out_s=ctx.now_s)
    elif action is Action.SCALE_IN:
        state = state.with_(last_scale_in_s=ctx.now_s)
    return (
        Targets(ctx.service.name, new.num_prefill, new.num_decode, action, reason, source),
        state,
    )


def fresh(ctx: PolicyContext, name: str) -> tuple[float | None, str]:
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


def _window_counts(ctx: PolicyContext) -> RoleCounts | None:
    if not ctx.service.schedule:
        return None
    local = dt.datetime.fromtimestamp(ctx.now_s, tz=ZoneInfo(ctx.timezone))
    for window in ctx.service.schedule:
        if window.covers(local):
            return RoleCounts(window.num_prefill, window.num_decode)
    return None


def schedule_counts(ctx: PolicyContext) -> RoleCounts | None:
    """Counts fixed by a periodic schedule window covering `now`, if any (`schedule_mode:
    override`; in `floor` mode the policy decides and `with_schedule_floor` applies the window)."""
    if ctx.service.policy.schedule_mode is not ScheduleMode.OVERRIDE:
        return None
    return _window_counts(ctx)


def with_schedule_floor(ctx: PolicyContext, before: ServicePolicyState, decision: Decision) -> Decision:
    """`schedule_mode: floor`: the policy's counts raised per role to a schedule window covering
    `now` (within the bounds); the decision unchanged otherwise. When the floor changes the
    action, the scale times are those of the floored action, not the policy's."""
    if ctx.service.policy.schedule_mode is not ScheduleMode.FLOOR:
        return decision
    window = _window_counts(ctx)
    targets, state = decision
    if window is None:
        return decision
    floored = fit_bounds(
        ctx.service, max(targets.num_prefill, window.num_prefill), max(targets.num_decode, window.num_decode)
    )
    if floored == targets.counts:
        return decision
    reason = f"{targets.reason}; schedule floor {window.num_prefill}P/{window.num_decode}D"
    state = state.with_(last_scale_out_s=before.last_scale_out_s, last_scale_in_s=before.last_scale_in_s)
    if floored == ctx.current:
        return hold(ctx, state, reason, TargetSource.SCHEDULE)
    return finish(ctx, state, floored, reason, TargetSource.SCHEDULE)


# --- heteroscale (ours) --------------------------------------------------------------------


def net_step(count: int, step: float) -> int:
    """Instances a safety-net step adds to a role of `count`: the tier's percentage rounded up,
    and at least one (the paper's +10 % / +20 % must not round to +0 on a small pool)."""
    return max(1, math.ceil(max(count, 0) * step - EPS))


def fit_bounds(svc: Service, p: int, d: int) -> RoleCounts:
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


def prefill_target(svc: Service) -> float:
    """Cache-missed prefill tokens/s per reference prefill instance at the same share of its
    capacity as the decode target is of decode capacity (the config holds one target)."""
    share = svc.policy.target_per_instance / svc.decode.capacity_tokens_per_s[svc.decode.reference_gpu_type]
    if svc.policy.metric is Metric.PREFILL_TPS:
        share = svc.policy.target_per_instance / svc.prefill.capacity_tokens_per_s[svc.prefill.reference_gpu_type]
    return share * svc.prefill.capacity_tokens_per_s[svc.prefill.reference_gpu_type]


def decode_target(svc: Service) -> float:
    if svc.policy.metric is Metric.DECODE_TPS:
        return svc.policy.target_per_instance
    share = svc.policy.target_per_instance / svc.prefill.capacity_tokens_per_s[svc.prefill.reference_gpu_type]
    return share * svc.decode.capacity_tokens_per_s[svc.decode.reference_gpu_type]


def forecast_factor(ctx: PolicyContext, observed_metric: float, *, risk: float | None = None) -> tuple[float, str]:
    """How much more load the forecast expects when new instances are Ready (>= 1).

    With `risk` (a quantile level) and a forecast carrying quantiles: the `risk`-quantile of the
    load at Ready time over the observed value, so the margin follows how uncertain the load is
    there; else the point forecast (a short history carries no quantiles)."""
    fc = ctx.forecast
    if fc is not None and risk is not None and observed_metric > 0:
        q = fc.quantile(risk)
        if q is not None and math.isfinite(q):
            return max(1.0, q / observed_metric), f"p{risk * 100:g} x{q / observed_metric:.2f} ({fc.method})"
    if fc is not None and fc.value is not None and math.isfinite(fc.value) and observed_metric > 0:
        return max(1.0, fc.value / observed_metric), f"forecast x{fc.value / observed_metric:.2f} ({fc.method})"
    return 1.0, "observed"
