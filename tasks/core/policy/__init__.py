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

A service's periodic schedule either overrides its policy (`policy.schedule_mode: override`, the
paper's periodic policy: step 1 above) or is a floor under it (`floor`: `with_schedule_floor`,
applied to every policy's decision by `tasks.steps.compute_targets`).
"""

from __future__ import annotations

from dataclasses import dataclass

from models.config import PlacementMethod
from tasks.core.policy.base import (
    Decision,
    Policy,
    PolicyContext,
    bound_decode,
    max_decode,
    min_decode,
    net_step,
    schedule_counts,
    split_by_ratio,
    with_schedule_floor,
)
from tasks.core.policy.baselines import dynamo_sla, hpa_gpu_util, hpa_tps, oracle, static_peak
from tasks.core.policy.demand import RoleCapacity, RoleDemand, role_capacity, role_demand
from tasks.core.policy.heteroscale import heteroscale
from tasks.core.policy.paper import heteroscale_paper

__all__ = [
    "POLICIES",
    "Decision",
    "Policy",
    "PolicyContext",
    "PolicySpec",
    "RoleCapacity",
    "RoleDemand",
    "bound_decode",
    "dynamo_sla",
    "get_policy",
    "heteroscale",
    "heteroscale_paper",
    "hpa_gpu_util",
    "hpa_tps",
    "max_decode",
    "min_decode",
    "net_step",
    "oracle",
    "role_capacity",
    "role_demand",
    "schedule_counts",
    "split_by_ratio",
    "static_peak",
    "with_schedule_floor",
]


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
