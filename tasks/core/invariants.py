"""Safety invariants checked on every run before anything is applied (pure).

`plan_violations` returns what would make applying the plan unsafe; the flow refuses to apply a
plan with any (the run fails at step "check invariants" and is recorded). `group_warnings` lists
deployment groups whose P/D mix is off (recorded with the run, not fatal).

Invariants: never scale in on a missing, stale or invalid driving signal; never leave a service
outside [min_instances, max_instances] (schedules aside); never use more GPUs of a type in a
domain than are free, nor more than the cluster's GPU budget.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from models.config import ClusterConfig, Role
from models.enums import TargetSource
from models.errors import PermanentError
from models.values import Action, PlacementPlan, ServiceSignals, Targets
from tasks.core.placement import group_counts
from tasks.core.topology import ClusterView, gpus_per_instance_map, gpus_used


class InvariantViolation(PermanentError):
    """A plan that breaks a safety invariant: permanent, never retried, never applied."""


def _usable(sig: ServiceSignals | None, name: str, now_s: float, max_age_s: float) -> bool:
    if sig is None or sig.sampled_at_s is None:
        return False
    v = sig.get(name)
    return v is not None and math.isfinite(v) and v >= 0 and now_s - sig.sampled_at_s <= max_age_s


def plan_violations(
    config: ClusterConfig,
    view: ClusterView,
    signals: Mapping[str, ServiceSignals],
    targets: Mapping[str, Targets],
    plan: PlacementPlan,
    now_s: float,
) -> list[str]:
    out: list[str] = []
    for svc in config.services:
        t = targets.get(svc.name)
        if t is None:
            continue
        p = svc.policy
        if (
            t.action is Action.SCALE_IN
            and t.source not in (TargetSource.BOUNDS, TargetSource.SCHEDULE)
            and not _usable(signals.get(svc.name), p.metric.value, now_s, p.max_signal_age_s)
        ):
            out.append(f"{svc.name}: scale-in decided without a usable {p.metric.value} signal")
        if t.source != TargetSource.SCHEDULE and not p.min_instances <= t.counts.total <= p.max_instances:
            out.append(f"{svc.name}: target {t.counts.total} instances outside [{p.min_instances}, {p.max_instances}]")
    gpi = gpus_per_instance_map(config)
    before = gpus_used(view.placement, gpi)
    after = gpus_used(plan.placement, gpi)
    for c in view.capacities:
        key = (c.gpu_type, c.s1)
        free = c.gpus_total - c.gpus_other
        if after.get(key, 0) > free and after.get(key, 0) > before.get(key, 0):
            out.append(f"{c.gpu_type} in {c.s1}: plan uses {after[key]} GPUs, only {free} available")
    known = {(c.gpu_type, c.s1) for c in view.capacities}
    for key in after:
        if key not in known and after[key] > before.get(key, 0):
            out.append(f"plan places instances on {key[0]} in unknown domain {key[1]}")
    total_after, total_before = sum(after.values()), sum(before.values())
    if view.gpu_budget is not None and total_after > view.gpu_budget and total_after > total_before:
        out.append(f"plan uses {total_after} GPUs, above the budget of {view.gpu_budget}")
    return out


def group_warnings(config: ClusterConfig, view: ClusterView, plan: PlacementPlan) -> list[str]:
    """Deployment groups holding only one role (their P and D cannot share a network domain)."""
    out = []
    for (service, domain), roles in sorted(group_counts(view, config, plan.placement).items()):
        if (roles[Role.PREFILL] == 0) != (roles[Role.DECODE] == 0):
            only = "prefill" if roles[Role.PREFILL] else "decode"
            out.append(f"{service}: group in {domain} has {only} instances only")
    return out
