"""The score of a placement: the ILP's objective and its rules, for any placement (pure).

Contract: `evaluate(config, view, targets, placement, settings=None)` scores `placement` for the
services in `targets` against `view.placement` with the same objective the model minimises
(`model.py`: GPU $/h, priority penalty, churn and relocation charges, stranded GPUs, priced
unmet demand) and counts affinity and ratio violations with the same rules the model enforces
(`problem.py`), so an ILP answer, a greedy plan and a start can be compared on one scale. It
never raises for a placement that breaks the rules: it counts the breaks. No clock, no I/O.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

from models.config import ClusterConfig, PlacementSettings, Role
from models.values import Placement, RoleCounts
from tasks.core.placement.problem import build_problem, move_coef, prefill_band, ratio_ok, weight
from tasks.core.topology import ClusterView


@dataclass(frozen=True, slots=True)
class Score:
    """A placement judged by the ILP's objective and rules (lower `cost` is better)."""

    cost: float  # objective value, $/h-equivalent, unmet penalty included
    gpu_cost_per_h: float
    unmet: float  # reference instances short, summed over services and roles
    affinity_violations: int  # groups holding one role without the other
    ratio_violations: int  # groups whose P/D is outside tolerance plus rounding
    churn: int  # instances started plus stopped vs the current placement
    moves: int = 0  # of those, relocations: stopped while the role grows, started while it shrinks
    # The same with only what working groups can serve: a group holding one role serves nothing,
    # an out-of-ratio group only up to the edge of the ratio band (its excess idles). Equal to
    # `unmet` / `cost` for any placement without violations (every ILP answer).
    usable_unmet: float = 0.0
    usable_cost: float = 0.0


def evaluate(
    config: ClusterConfig,
    view: ClusterView,
    targets: Mapping[str, RoleCounts],
    placement: Placement,
    settings: PlacementSettings | None = None,
) -> Score:
    """Score `placement` for the services in `targets` against `view.placement` (pure)."""
    st = settings or config.cluster.placement
    pb = build_problem(config, view, targets)
    by_name = {s.name: s for s in pb.services}
    mine = {k: n for k, n in placement.cells.items() if k.service in by_name}
    gpu_cost = prio_pen = churn_cost = unmet_cost = unmet_total = 0.0
    have: dict[tuple[str, Role], float] = defaultdict(float)
    groups: dict[tuple[str, str], dict[Role, float]] = defaultdict(lambda: {Role.PREFILL: 0.0, Role.DECODE: 0.0})
    counts: dict[tuple[str, str], dict[Role, int]] = defaultdict(lambda: {Role.PREFILL: 0, Role.DECODE: 0})
    used: dict[tuple[str, str], int] = defaultdict(int)
    for k, n in mine.items():
        svc = by_name[k.service]
        g = pb.gpi[(k.service, k.role.value)] * n
        gpu_cost += g * pb.cost[k.gpu_type]
        prio_pen += g * st.priority_weight * pb.prio.get(k.s1, 0)
        w = weight(svc, k.role, k.gpu_type)
        have[(k.service, k.role)] += n * w
        dom = pb.group_of[(k.service, k.s1)]
        groups[(k.service, dom)][k.role] += n * w
        counts[(k.service, dom)][k.role] += n
        used[(k.gpu_type, k.s1)] += g
    churn = moves = 0
    for k in set(mine) | set(pb.current):
        change = mine.get(k, 0) - pb.current.get(k, 0)
        delta = abs(change)
        churn += delta
        churn_cost += st.churn_weight_h * delta * pb.gpi[(k.service, k.role.value)] * pb.cost[k.gpu_type]
        if change and pb.growing[(k.service, k.role)] != (change > 0):
            moves += delta
            churn_cost += delta * move_coef(pb, st, k, start=change > 0)
    frag = 0.0
    for key, u in used.items():
        total = u + pb.fixed_used.get(key, 0)
        gpn = pb.gpus_per_node.get(key, 1)
        frag += st.fragmentation_weight * (math.ceil(total / gpn) * gpn - total)
    affinity = ratio = 0
    usable: dict[tuple[str, Role], float] = defaultdict(float)
    for (name, _dom), units in groups.items():
        svc = by_name[name]
        n = counts[(name, _dom)]
        p_units, d_units = units[Role.PREFILL], units[Role.DECODE]
        if (n[Role.PREFILL] > 0) != (n[Role.DECODE] > 0):
            affinity += 1
            continue
        if not ratio_ok(svc, p_units, d_units, st.ratio_tolerance):
            ratio += 1
        # Each role up to the band's edge: P up to its upper edge at D, D up to where the lower
        # edge, rho (1 - tol) D - 1, reaches P.
        usable[(name, Role.PREFILL)] += min(p_units, prefill_band(svc, d_units, st.ratio_tolerance)[1])
        rho_lo = svc.pd_ratio.prefill_per_decode * (1 - st.ratio_tolerance)
        usable[(name, Role.DECODE)] += min(d_units, (p_units + 1) / rho_lo)
    usable_total = usable_cost = 0.0
    for s in pb.services:
        for role in Role:
            short = max(0.0, targets[s.name].of(role) - have[(s.name, role)])
            unmet_total += short
            unmet_cost += short * pb.unmet_penalty[(s.name, role)]
            short = max(0.0, targets[s.name].of(role) - usable[(s.name, role)])
            usable_total += short
            usable_cost += short * pb.unmet_penalty[(s.name, role)]
    base = gpu_cost + prio_pen + churn_cost + frag
    return Score(
        cost=base + unmet_cost,
        gpu_cost_per_h=gpu_cost,
        unmet=unmet_total,
        affinity_violations=affinity,
        ratio_violations=ratio,
        churn=churn,
        moves=moves,
        usable_unmet=usable_total,
        usable_cost=base + usable_cost,
    )
