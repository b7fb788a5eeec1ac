"""Skip a service's policy call when its inputs have not changed and the result provably cannot.

A replay calls the policy for every service every control period; at steady load most calls see
exactly what the last one saw (83 % of `heteroscale-paper`'s calls on the 10-service synthetic
fleet over a day) and hold. `DecisionCache` sits in front of the one decision code path
(`tasks.steps.compute_targets` -> the policy's `decide`): it never decides anything itself, it
only hands back the decision the policy returned for the same inputs.

The rule. The last decision of a service, made at `t0`, is reused at `now > t0` when all hold:

1. Same inputs: the signals' values and their age (`now - sampled_at_s`: freshness is the only
   way a policy reads the sampling time), the current counts, the forecast, the policy state
   given, the oracle's `floor_need`/`floor_keep`, the static peak, and the same policy for the
   same `Service` object (one run, one config, the same engines).
2. The decision left the state as it was (`state_out == state_in`). Every policy that acts
   records the time (`finish`: `last_scale_*_s = now`; the safety net: `last_latency_action_s`),
   and the HPA baselines and `heteroscale` append `(now, ...)` asks to `recommendations` on every
   call, so for them this never holds and they are always called. What is reused is therefore a
   hold of a policy whose state did not move.
3. No clock outside the state: the service has no periodic schedule window (`schedule_counts`
   reads the time of day, the only use of `timezone`).
4. Clock comparisons saturated: the policies read the clock only as `now - t` for a `t` in the
   state, compared with a duration of the service (the cooldowns, `hpa_scale_down_stabilization_s`,
   `max(cold start, scale-in cooldown)`, `max(latency cooldown, cold start)`, the signal age
   limit, `heteroscale`'s `scale_in_window_s`). If every `t` in the state is None or at least
   `clock_horizon_s(service, policy)` (the largest of every `*_s` setting the policy reads and
   the cold start) before `t0`, each comparison already
   had its "long ago" outcome at `t0` and keeps it at any later `now`; a remaining-wait text
   ("cooldown (42s left)") only appears while a wait is positive, which this excludes.

Under 1-4 the policy function, pure in `(ctx, state)`, evaluates every branch as it did at `t0`
and returns the same `(Targets, state)`. `tests/unit/test_decision_cache.py` checks the claim
the direct way: every policy replayed with and without the cache on several traces, every
decision record (targets with reasons, states) compared period by period.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from operator import attrgetter

from models.config import Service
from models.values import Forecast, Placement, RoleCounts, ServicePolicyState, ServiceSignals, Targets

Decision = tuple[Targets, ServicePolicyState]

# Every signal value (not the name or the sampling time), read in one C call.
_signal_values = attrgetter(*(f.name for f in fields(ServiceSignals) if f.name not in ("service", "sampled_at_s")))


# `*_s` settings only one policy reads: the others' horizon leaves them out (a long one would
# otherwise keep every policy's holds from being reused for that long).
POLICY_ONLY_S = {"scale_in_window_s": frozenset({"heteroscale"})}


def clock_horizon_s(service: Service, policy: str | None = None) -> float:
    """The longest duration a policy compares `now - t` with for this service: every `*_s`
    setting of its policy section (those of `POLICY_ONLY_S` only for their policy; all of them
    when `policy` is None) and its cold start (an infinite one disables the cache)."""
    params = service.policy
    durations = [service.cold_start_s]
    for name in type(params).model_fields:
        only = POLICY_ONLY_S.get(name)
        if only is not None and policy is not None and policy not in only:
            continue
        value = getattr(params, name)
        if name.endswith("_s") and isinstance(value, int | float) and not isinstance(value, bool):
            durations.append(float(value))
    return max(durations)


def state_times(state: ServicePolicyState) -> list[float]:
    """Every clock reading the state holds."""
    times = [t for t in (state.last_scale_out_s, state.last_scale_in_s, state.last_latency_action_s) if t is not None]
    times += [r[0] for r in state.recommendations]
    return times


@dataclass(frozen=True, slots=True)
class DecisionKey:
    """What a policy call reads, minus the clock (rule 1)."""

    policy: str
    signal_values: tuple[float | None, ...]
    signal_age_s: float | None
    current: RoleCounts
    forecast: Forecast | None
    state: ServicePolicyState
    floor_need: RoleCounts | None
    floor_keep: RoleCounts | None
    peak_metric: float | None


def decision_key(
    policy: str,
    signals: ServiceSignals,
    now_s: float,
    current: RoleCounts,
    forecast: Forecast | None,
    state: ServicePolicyState,
    *,
    floor_need: RoleCounts | None = None,
    floor_keep: RoleCounts | None = None,
    peak_metric: float | None = None,
) -> DecisionKey:
    return DecisionKey(
        policy=policy,
        signal_values=_signal_values(signals),
        signal_age_s=signals.age_s(now_s),
        current=current,
        forecast=forecast,
        state=state,
        floor_need=floor_need,
        floor_keep=floor_keep,
        peak_metric=peak_metric,
    )


@dataclass(frozen=True, slots=True)
class _Entry:
    service: Service
    key: DecisionKey
    decision: Decision


class DecisionCache:
    """The last reusable decision per service name, for one run (one config). Counts its hits."""

    def __init__(self) -> None:
        self._last: dict[str, _Entry] = {}
        self._counts: tuple[Placement, dict[str, RoleCounts]] | None = None
        self._horizon_s: dict[tuple[str, str], tuple[Service, float]] = {}
        self.hits = 0
        self.misses = 0

    def current_counts(self, placement: Placement, count: Callable[[], dict[str, RoleCounts]]) -> dict[str, RoleCounts]:
        """`count()` (the counts of `placement`), recomputed only for another placement object: a
        backend that hands back the same immutable placement while nothing moved (the twin)
        skips a pass over every cell."""
        if self._counts is None or self._counts[0] is not placement:
            self._counts = (placement, count())
        return self._counts[1]

    def get(self, service: Service, key: DecisionKey) -> Decision | None:
        entry = self._last.get(service.name)
        if entry is not None and entry.service is service and entry.key == key:
            self.hits += 1
            return entry.decision
        self.misses += 1
        return None

    def put(self, service: Service, key: DecisionKey, decision: Decision, now_s: float) -> None:
        """Keep `decision` (made at `now_s` from `key`) if rules 2-4 make it reusable later."""
        targets, state_out = decision
        known = self._horizon_s.get((service.name, key.policy))
        if known is None or known[0] is not service:
            known = self._horizon_s[(service.name, key.policy)] = (service, clock_horizon_s(service, key.policy))
        horizon = known[1]
        reusable = (
            state_out == key.state
            and not service.schedule
            and math.isfinite(horizon)
            and all(t <= now_s - horizon for t in state_times(key.state))
        )
        if reusable:
            self._last[service.name] = _Entry(service, key, (targets, state_out))
        else:
            self._last.pop(service.name, None)
