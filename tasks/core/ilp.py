"""Placement as an integer program (PuLP): heterogeneous, topology-aware, ratio-keeping.

Contract: `place_ilp(config, view, targets)` returns a `PlacementPlan` with the same meaning as
`place_greedy`: every service in `targets` gets at least its target (reference-GPU instances per
role) where the free GPUs allow, the shortfall is reported in `unmet`, and services not in
`targets` keep their cells. It never raises for a solver problem: on a solver failure, or a time
limit hit before any feasible solution, it returns the greedy plan with `method="greedy"` and the
reason in `reason` and `stats["fallback"]`.

The model works on S1 cells, never on nodes or pods (node-level realisation: `realize.py`):

  sets        moving services; cells (service, role, GPU type, S1) for every allowed GPU type
              present in an S1; groups (service, domain at its affinity level); (GPU type, S1).
  parameters  GPUs per instance, capacity weight (reference instances), $/GPU-hour, subgroup
              priority of each S1 (max of its S1 and S2 priority), free GPUs after the GPUs not
              ours to move, the current placement.
  variables   x (integer instances per cell), up/down (churn on cells that run now), unmet
              (continuous slack per service and role), nodes (integer nodes touched per
              (GPU type, S1), for fragmentation).
  objective   GPU $/h + priority penalty + churn + stranded GPUs + heavily penalised unmet.
  constraints capacity per (GPU type, S1); demand per service and role (capacity-weighted);
              P/D ratio per group within tolerance plus one-instance rounding; a group has both
              roles or neither; max instances per service; the cluster GPU budget.

On large clusters the MIP is solved on the LP's cells (`_solve_large`), from a MIP start:
`_Start`, a ratio-keeping constructive placement built from the LP rounded down, polished by RINS
(`_rins`: the MIP with the cells fixed where start and LP agree). The answer is never worse than
that start.

`evaluate()` scores any placement (ILP or greedy) with the same objective and counts affinity
and ratio violations with the same rules the model enforces, so the two can be compared.
"""

from __future__ import annotations

import math
import threading
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pulp

from models.config import AffinityLevel, ClusterConfig, PlacementSettings, Role, Service
from models.values import CellKey, Placement, PlacementPlan, RoleCounts
from tasks.core.greedy import place_greedy
from tasks.core.topology import ClusterView, gpus_per_instance_map

_EPS = 1e-6
# Unmet demand costs this many times the dearest way to serve one reference instance, so the
# solver leaves demand unmet only when no placement can serve it.
_UNMET_FACTOR = 100.0
# A fallback solve (another solver, or the full model after the large path failed) is not started
# with less than this left of `time_limit_s`: it could not finish in it (the greedy is used).
_MIN_SOLVE_S = 1.0
# The start's last repair (`_Start._relieve`): cells tried per domain, instances moved per cell.
_RELIEVE_CELLS = 4
_RELIEVE_MOVES = 8
# ... and at most this long in all (seconds).
_RELIEVE_S = 0.3
# RINS gets at most this long (and at most half the time left).
_RINS_CAP_S = 1.5
# RINS sub-MIPs stop at this relative gap (half the default `mip_gap`; 1 % and 2 % measured worse).
_RINS_GAP = 0.005
# RINS rounds beside the MIP, in turn: (wide, loose, time cap in s). Tight rounds (loose=False:
# only the short services and their pools free) first: 0.1-0.3 s each and most of the gain; then
# the loose ones (also the cells where start and LP disagree). Measured against loose-only rounds
# and against a 0.8 s cap on the tight wide round: docs/placement.md.
_ROUNDS: tuple[tuple[str, bool, float], ...] = (
    ("narrow", False, math.inf),
    ("near", False, math.inf),
    ("wide", False, math.inf),
    ("narrow", True, math.inf),
    ("wide", True, math.inf),
)
# On one core (RINS first, then the MIP): the loose rounds only, as before the second core was used
# (the tight ones measured worse there: seed 3 left at 33,957 when RINS's half of the time ran out).
_ROUNDS_SEQUENTIAL: tuple[tuple[str, bool, float], ...] = (("narrow", True, math.inf), ("wide", True, math.inf))


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


@dataclass(frozen=True, slots=True)
class _Problem:
    """Sets and parameters shared by the model and `evaluate`."""

    services: tuple[Service, ...]
    targets: Mapping[str, RoleCounts]
    gpi: Mapping[tuple[str, str], int]
    cost: Mapping[str, float]
    prio: Mapping[str, int]  # S1 -> subgroup priority of the cell
    group_of: Mapping[tuple[str, str], str]  # (service, S1) -> group domain
    free: Mapping[tuple[str, str], int]  # (gpu_type, S1) -> GPUs free for the moving services
    fixed_used: Mapping[tuple[str, str], int]  # (gpu_type, S1) -> GPUs held by others
    gpus_per_node: Mapping[tuple[str, str], int]
    gpus_total: Mapping[tuple[str, str], int]
    current: Mapping[CellKey, int]  # moving services' cells now
    unmet_penalty: Mapping[tuple[str, Role], float]
    budget_left: float | None
    # (service, role) -> True when the target is at or above what runs now (reference units):
    # then a stop is a relocation; otherwise a start is.
    growing: Mapping[tuple[str, Role], bool]


def _problem(config: ClusterConfig, view: ClusterView, targets: Mapping[str, RoleCounts]) -> _Problem:
    services = tuple(s for s in config.services if s.name in targets)
    moving = {s.name for s in services}
    gpi = gpus_per_instance_map(config)
    s2_of = view.s2_of()
    p1, p2 = view.priorities(AffinityLevel.S1), view.priorities(AffinityLevel.S2)
    prio = {s1: max(p1.get(s1, 0), p2.get(s2, 0)) for s1, s2 in s2_of.items()}

    def dom(s1: str, level: AffinityLevel) -> str:
        return s1 if level is AffinityLevel.S1 else s2_of[s1] if level is AffinityLevel.S2 else "*"

    group_of = {(s.name, s1): dom(s1, s.affinity) for s in services for s1 in s2_of}
    fixed_used: dict[tuple[str, str], int] = defaultdict(int)
    gpus_total: dict[tuple[str, str], int] = defaultdict(int)
    per_node: dict[tuple[str, str], int] = {}
    for c in view.capacities:
        fixed_used[(c.gpu_type, c.s1)] += c.gpus_other
        gpus_total[(c.gpu_type, c.s1)] += c.gpus_total
        per_node[(c.gpu_type, c.s1)] = c.gpus_per_node
    current: dict[CellKey, int] = {}
    for k, n in view.placement.cells.items():
        if k.service in moving:
            current[k] = n
        else:
            fixed_used[(k.gpu_type, k.s1)] += n * gpi[(k.service, k.role.value)]
    free = {key: gpus_total[key] - fixed_used[key] for key in gpus_total}
    budget_left: float | None = None
    if view.gpu_budget is not None:
        others = sum(
            n * gpi[(k.service, k.role.value)] for k, n in view.placement.cells.items() if k.service not in moving
        )
        budget_left = max(0, view.gpu_budget - others)
    cost = {g.name: g.cost_per_gpu_hour for g in config.gpu_types}
    # Services that matter more leave less unmet: the penalty grows with the priority rank.
    ranks = {p: i for i, p in enumerate(sorted({s.priority for s in services}))}
    top_prio = max(prio.values(), default=0)
    unmet_penalty: dict[tuple[str, Role], float] = {}
    for s in services:
        for role in Role:
            spec = s.role(role)
            dearest = max(spec.gpus_per_instance * (cost[g] + top_prio) / spec.weight(g) for g in spec.gpu_types)
            unmet_penalty[(s.name, role)] = _UNMET_FACTOR * (1 + ranks[s.priority]) * max(dearest, 1.0)
    running: dict[tuple[str, Role], float] = defaultdict(float)
    by_name = {s.name: s for s in services}
    for k, n in current.items():
        running[(k.service, k.role)] += n * _weight(by_name[k.service], k.role, k.gpu_type)
    growing = {
        (s.name, role): targets[s.name].of(role) >= running[(s.name, role)] - 1e-9 for s in services for role in Role
    }
    return _Problem(
        services=services,
        targets=targets,
        gpi=gpi,
        cost=cost,
        prio=prio,
        group_of=group_of,
        free=free,
        fixed_used=dict(fixed_used),
        gpus_per_node=per_node,
        gpus_total=dict(gpus_total),
        current=current,
        unmet_penalty=unmet_penalty,
        budget_left=budget_left,
        growing=growing,
    )


def _move_coef(pb: _Problem, st: PlacementSettings, k: CellKey, *, start: bool) -> float:
    """Relocation charge of starting (`start`) or stopping one instance of cell `k`."""
    if st.move_weight_h <= 0 or pb.growing[(k.service, k.role)] == start:
        return 0.0
    return st.move_weight_h * pb.gpi[(k.service, k.role.value)] * pb.cost[k.gpu_type]


def _weight(svc: Service, role: Role, gpu_type: str) -> float:
    spec = svc.role(role)
    return spec.weight(gpu_type) if gpu_type in spec.capacity_tokens_per_s else 0.0


def _prefill_band(svc: Service, d_units: float, tolerance: float) -> tuple[float, float]:
    """The prefill units a group with `d_units` of decode may hold: pd_ratio +- tolerance, plus one
    instance of rounding either way."""
    rho = svc.pd_ratio.prefill_per_decode
    return rho * (1 - tolerance) * d_units - 1, rho * (1 + tolerance) * d_units + 1


def _ratio_ok(svc: Service, p_units: float, d_units: float, tolerance: float) -> bool:
    lo, hi = _prefill_band(svc, d_units, tolerance)
    return lo - _EPS <= p_units <= hi + _EPS


def _link_factors(svc: Service, tolerance: float) -> tuple[int, int]:
    """(K_P, K_D) with P_count <= K_P * D_count and D_count <= K_D * P_count.

    Chosen so the links only bite when one side is 0 (no orphan role in a group): any group
    inside the ratio band already satisfies them.
    """
    rho = svc.pd_ratio.prefill_per_decode
    wp = [svc.prefill.weight(g) for g in svc.prefill.gpu_types]
    wd = [svc.decode.weight(g) for g in svc.decode.gpu_types]
    k_p = math.ceil((rho * (1 + tolerance) * max(wd) + 1) / min(wp)) + 1
    k_d = math.ceil((max(wp) + 1) / (rho * (1 - tolerance) * min(wd))) + 1
    return k_p, k_d


def evaluate(
    config: ClusterConfig,
    view: ClusterView,
    targets: Mapping[str, RoleCounts],
    placement: Placement,
    settings: PlacementSettings | None = None,
) -> Score:
    """Score `placement` for the services in `targets` against `view.placement` (pure)."""
    st = settings or config.cluster.placement
    pb = _problem(config, view, targets)
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
        w = _weight(svc, k.role, k.gpu_type)
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
            churn_cost += delta * _move_coef(pb, st, k, start=change > 0)
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
        if not _ratio_ok(svc, p_units, d_units, st.ratio_tolerance):
            ratio += 1
        # Each role up to the band's edge: P up to its upper edge at D, D up to where the lower
        # edge, rho (1 - tol) D - 1, reaches P.
        usable[(name, Role.PREFILL)] += min(p_units, _prefill_band(svc, d_units, st.ratio_tolerance)[1])
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


@dataclass(slots=True)
class _Model:
    prob: pulp.LpProblem
    x: dict[CellKey, pulp.LpVariable]
    unmet: dict[tuple[str, Role], pulp.LpVariable]
    up: dict[CellKey, pulp.LpVariable]
    down: dict[CellKey, pulp.LpVariable]
    # aggregate=True: integer instances per (service, role, GPU type, group domain) of services
    # whose group spans S1s; their per-S1 x are then continuous shares (split by `_split`).
    z: dict[tuple[str, Role, str, str], pulp.LpVariable] = field(default_factory=dict)
    # Every variable in creation order (x, z, up, down, unmet, nodes): the column order of
    # `_Arrays` and of the HiGHS model passed in bulk.
    cols: list[pulp.LpVariable] = field(default_factory=list)


def _add(prob: pulp.LpProblem, terms: list[tuple[pulp.LpVariable, float]], sense: int, rhs: float, name: str) -> None:
    """Add the named constraint sum(terms) <sense> rhs (terms on distinct variables)."""
    prob.addConstraint(pulp.LpConstraint(pulp.LpAffineExpression(terms), sense=sense, rhs=rhs), name)


def build_model(
    pb: _Problem,
    st: PlacementSettings,
    *,
    relax: bool = False,
    only: set[CellKey] | None = None,
    aggregate: bool = False,
) -> _Model:
    """The PuLP model, built sets -> parameters -> variables -> objective -> constraints.

    `relax` makes every integer continuous (the LP bound); `only` restricts the cells to that set
    (plus the running ones), for the second phase of `place_ilp` on large clusters. Expressions
    are built from (variable, coefficient) lists, not PuLP's operators (each of which copies the
    expression): the same model in about half the time at 20k GPUs.
    """
    cat = pulp.LpContinuous if relax else pulp.LpInteger
    le, ge, eq = pulp.LpConstraintLE, pulp.LpConstraintGE, pulp.LpConstraintEQ
    # Sets.
    types_at: dict[str, list[str]] = defaultdict(list)
    for g, s1 in pb.free:
        types_at[g].append(s1)
    for s1s in types_at.values():
        s1s.sort()
    cells: list[CellKey] = []
    for s in pb.services:
        both = pb.targets[s.name].num_prefill > 0 and pb.targets[s.name].num_decode > 0
        # A group domain where one role has no allowed GPU type can hold no group: its cells
        # would be forced to 0 by the pair constraints anyway, so they are not built at all.
        hosts: dict[str, set[Role]] = defaultdict(set)
        for role in Role:
            for g in s.role(role).gpu_types:
                for s1 in types_at.get(g, ()):
                    hosts[pb.group_of[(s.name, s1)]].add(role)
        for role in Role:
            for g in s.role(role).gpu_types:
                cells.extend(
                    CellKey(s.name, role, g, s1)
                    for s1 in types_at.get(g, ())
                    if not both or len(hosts[pb.group_of[(s.name, s1)]]) == 2
                )
    if only is not None:
        cells = [k for k in cells if k in only or k in pb.current]
    known = set(cells)
    # A running cell on a type the service no longer allows can only go to zero.
    stale = [k for k in pb.current if k not in known]
    cells.extend(stale)
    stale_set = set(stale)
    by_name = {s.name: s for s in pb.services}

    # Parameters per cell, by position in `cells` (lists: CellKey hashes are not free).
    gpi = [pb.gpi[(k.service, k.role.value)] for k in cells]
    weight = [_weight(by_name[k.service], k.role, k.gpu_type) for k in cells]

    prob = pulp.LpProblem("placement", pulp.LpMinimize)
    cols: list[pulp.LpVariable] = []

    def var(name: str, lo: float, hi: float | None, kind: str) -> pulp.LpVariable:
        v = prob.add_variable(name, lo, hi, kind)
        cols.append(v)
        return v

    # Variables.
    xs: list[pulp.LpVariable] = []
    for i, k in enumerate(cells):
        ub = 0 if k in stale_set else max(0, pb.free.get((k.gpu_type, k.s1), 0) // gpi[i])
        flexible = aggregate and pb.group_of[(k.service, k.s1)] != k.s1
        v = var(f"x{i}", 0, ub, pulp.LpContinuous if flexible else cat)
        v.varValue = min(pb.current.get(k, 0), ub)
        xs.append(v)
    x = dict(zip(cells, xs, strict=True))
    agg_cells: dict[tuple[str, Role, str, str], list[int]] = defaultdict(list)
    if aggregate:
        for i, k in enumerate(cells):
            dom = pb.group_of[(k.service, k.s1)]
            if dom != k.s1:
                agg_cells[(k.service, k.role, k.gpu_type, dom)].append(i)
    z = {
        key: var(f"z{j}", 0, sum(xs[i].upBound for i in ks), cat)
        for j, (key, ks) in enumerate(sorted(agg_cells.items()))
    }
    up: dict[CellKey, pulp.LpVariable] = {}
    down: dict[CellKey, pulp.LpVariable] = {}
    for i, k in enumerate(sorted(pb.current)):
        up[k] = var(f"up{i}", 0, None, pulp.LpContinuous)
        down[k] = var(f"down{i}", 0, None, pulp.LpContinuous)
    unmet = {
        (s.name, role): var(f"unmet__{s.name}__{role.value}", 0, None, pulp.LpContinuous)
        for s in pb.services
        for role in Role
    }
    nodes: dict[tuple[str, str], pulp.LpVariable] = {}
    if st.fragmentation_weight > 0:
        for g, s1 in sorted(pb.free):
            gpn = pb.gpus_per_node[(g, s1)]
            nodes[(g, s1)] = var(f"nodes__{g}__{s1}", 0, math.ceil(pb.gpus_total[(g, s1)] / gpn), cat)

    # Objective.
    coef: dict[pulp.LpVariable, float] = {}
    for i, k in enumerate(cells):
        c = gpi[i] * (pb.cost[k.gpu_type] + st.priority_weight * pb.prio.get(k.s1, 0))
        if k not in pb.current:
            c += st.churn_weight_h * gpi[i] * pb.cost[k.gpu_type] + _move_coef(pb, st, k, start=True)
        coef[xs[i]] = c
    for k in pb.current:
        c = st.churn_weight_h * pb.gpi[(k.service, k.role.value)] * pb.cost[k.gpu_type]
        coef[up[k]] = c + _move_coef(pb, st, k, start=True)
        coef[down[k]] = c + _move_coef(pb, st, k, start=False)
    for key, v in unmet.items():
        coef[v] = pb.unmet_penalty[key]
    by_pool: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, k in enumerate(cells):
        by_pool[(k.gpu_type, k.s1)].append(i)
    for key, v in nodes.items():
        # Stranded GPUs = GPUs on touched nodes - GPUs used; the constant part is dropped.
        coef[v] = st.fragmentation_weight * pb.gpus_per_node[key]
        for i in by_pool[key]:
            coef[xs[i]] -= st.fragmentation_weight * gpi[i]
    prob += pulp.LpAffineExpression(list(coef.items())), "cost"

    # Constraints.
    for (g, s1), ks in sorted(by_pool.items()):
        if (g, s1) not in pb.free:
            continue
        usage = [(xs[i], float(gpi[i])) for i in ks]
        _add(prob, usage, le, max(0, pb.free[(g, s1)]), f"cap__{g}__{s1}")
        if (g, s1) in nodes:
            fixed = pb.fixed_used.get((g, s1), 0)
            _add(prob, [*usage, (nodes[(g, s1)], -pb.gpus_per_node[(g, s1)])], le, -fixed, f"nodes__{g}__{s1}")
    for k in pb.current:
        name = f"churn__{k.service}__{k.role.value}__{k.gpu_type}__{k.s1}"
        _add(prob, [(x[k], 1.0), (up[k], -1.0), (down[k], 1.0)], eq, pb.current[k], name)
    of_role: dict[tuple[str, Role], list[int]] = defaultdict(list)
    for i, k in enumerate(cells):
        of_role[(k.service, k.role)].append(i)
    for s in pb.services:
        for role in Role:
            have = [(xs[i], weight[i]) for i in of_role[(s.name, role)]]
            have.append((unmet[(s.name, role)], 1.0))
            _add(prob, have, ge, pb.targets[s.name].of(role), f"demand__{s.name}__{role.value}")
        total = [(xs[i], 1.0) for role in Role for i in of_role[(s.name, role)]]
        _add(prob, total, le, s.policy.max_instances, f"max_instances__{s.name}")
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, k in enumerate(cells):
        groups[(k.service, pb.group_of[(k.service, k.s1)])].append(i)
    tol = st.ratio_tolerance
    links = {s.name: _link_factors(s, tol) for s in pb.services}
    for (name, dom), ks in sorted(groups.items()):
        s = by_name[name]
        t = pb.targets[name]
        if t.num_prefill == 0 or t.num_decode == 0:
            continue
        p = [i for i in ks if cells[i].role is Role.PREFILL]
        d = [i for i in ks if cells[i].role is Role.DECODE]
        rho = s.pd_ratio.prefill_per_decode
        tag = f"{name}__{'all' if dom == '*' else dom}"
        p_units = [(xs[i], weight[i]) for i in p]
        _add(prob, p_units + [(xs[i], -rho * (1 - tol) * weight[i]) for i in d], ge, -1, f"ratio_lo__{tag}")
        _add(prob, p_units + [(xs[i], -rho * (1 + tol) * weight[i]) for i in d], le, 1, f"ratio_hi__{tag}")
        k_p, k_d = links[name]
        _add(prob, [(xs[i], 1.0) for i in p] + [(xs[i], -float(k_p)) for i in d], le, 0, f"pair_p__{tag}")
        _add(prob, [(xs[i], 1.0) for i in d] + [(xs[i], -float(k_d)) for i in p], le, 0, f"pair_d__{tag}")
    if pb.budget_left is not None:
        _add(prob, [(xs[i], float(gpi[i])) for i in range(len(cells))], le, pb.budget_left, "gpu_budget")
    for (name, role, g, dom), ks in sorted(agg_cells.items()):
        tag = f"{name}__{role.value}__{g}__{'all' if dom == '*' else dom}"
        _add(prob, [(xs[i], 1.0) for i in ks] + [(z[(name, role, g, dom)], -1.0)], eq, 0, f"agg__{tag}")
    return _Model(prob, x, unmet, up, down, z, cols)


@dataclass(slots=True)
class _Arrays:
    """A PuLP model as HiGHS arrays: columns in `cols` order, rows in constraint order (CSR)."""

    cols: list[pulp.LpVariable]
    cost: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    integer: np.ndarray  # 1 for integer columns
    row_lo: np.ndarray
    row_hi: np.ndarray
    indptr: np.ndarray  # CSR, row-wise
    index: np.ndarray
    value: np.ndarray
    sense: int  # 1 minimise, -1 maximise (HiGHS's ObjSense)

    def pass_to(self, h: Any, *, mip: bool = True) -> None:
        """Hand the whole model to `h` (a highspy.Highs) in one call."""
        integer = self.integer if mip else np.zeros_like(self.integer)
        h.passModel(
            len(self.cols), len(self.row_lo), len(self.value), 2, self.sense, 0.0,  # a_format 2: row-wise
            self.cost, self.lo, self.hi, self.row_lo, self.row_hi, self.indptr, self.index, self.value, integer,
        )  # fmt: skip

    def feasible(self, v: np.ndarray, eps: float = 1e-6) -> bool:
        """True when `v` keeps every bound and row (integrality is the caller's business)."""
        if np.any(v < self.lo - eps) or np.any(v > self.hi + eps):
            return False
        rows = np.repeat(np.arange(len(self.row_lo)), np.diff(self.indptr))
        act = np.bincount(rows, weights=self.value * v[self.index], minlength=len(self.row_lo))
        return bool(np.all(act >= self.row_lo - eps) and np.all(act <= self.row_hi + eps))


def _arrays(prob: pulp.LpProblem, cols: Sequence[pulp.LpVariable]) -> _Arrays:
    inf = math.inf
    col = {v.name: i for i, v in enumerate(cols)}
    obj = prob.objective if prob.objective is not None else {}
    cost = np.array([obj.get(v, 0.0) for v in cols], dtype=np.float64)
    lo = np.array([-inf if v.lowBound is None else v.lowBound for v in cols], dtype=np.float64)
    hi = np.array([inf if v.upBound is None else v.upBound for v in cols], dtype=np.float64)
    integer = np.array([v.cat == pulp.LpInteger for v in cols], dtype=np.int32)
    indptr, index, value, row_lo, row_hi = [0], [], [], [], []
    for c in prob.constraints():
        for v, a in c.items():
            if a != 0:
                index.append(col[v.name])
                value.append(a)
        indptr.append(len(index))
        lb, ub = c.getLb(), c.getUb()
        row_lo.append(-inf if lb is None else lb)
        row_hi.append(inf if ub is None else ub)
    sense = -1 if prob.sense == pulp.LpMaximize else 1
    return _Arrays(
        cols=list(cols),
        cost=cost,
        lo=lo,
        hi=hi,
        integer=integer,
        row_lo=np.array(row_lo, dtype=np.float64),
        row_hi=np.array(row_hi, dtype=np.float64),
        indptr=np.array(indptr, dtype=np.int32),
        index=np.array(index, dtype=np.int32),
        value=np.array(value, dtype=np.float64),
        sense=sense,
    )


class _WarmHiGHS(pulp.HiGHS):  # type: ignore[misc, name-defined]
    """PuLP's HiGHS API solver, with the model passed in bulk and a MIP start.

    PuLP's `HiGHS` adds the model one column and one row at a time (~0.3 s at 20k GPUs); here it
    goes in as arrays in one `passModel`. PuLP's `HiGHS` takes no warmStart; highspy accepts a
    (possibly partial) solution after the model is passed, and HiGHS ignores a start that is
    infeasible for the new targets. The variables' values are that start.
    """

    def buildSolverModel(self, lp: pulp.LpProblem) -> None:
        import highspy

        cols = lp.variables()
        for i, v in enumerate(cols):
            v.index = i
        for i, c in enumerate(lp.constraints()):
            c.index = i
        _arrays(lp, cols).pass_to(lp.solverModel, mip=self.mip)
        sol = highspy.HighsSolution()
        sol.col_value = [float(v.varValue or 0.0) for v in cols]
        sol.value_valid = True
        lp.solverModel.setSolution(sol)


def _solvers(st: PlacementSettings, time_limit_s: float) -> list[pulp.LpSolver]:
    out: list[pulp.LpSolver] = []
    if pulp.HiGHS().available():
        out.append(_WarmHiGHS(msg=False, timeLimit=time_limit_s, gapRel=st.mip_gap, threads=1))
    out.append(pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit_s, gapRel=st.mip_gap, warmStart=True))
    return out


def solve(
    prob: pulp.LpProblem, solvers: Sequence[pulp.LpSolver], deadline: float | None = None
) -> tuple[str, str, list[str]]:
    """Try each solver in turn; return (solver name, solution status, failures).

    With `deadline` (a `time.perf_counter()` value) each solver's `timeLimit` is what is left of
    it when its turn comes, and solvers whose turn comes with less than `_MIN_SOLVE_S` left are
    skipped: a fallback solver must not start the time limit over.
    """
    failures: list[str] = []
    for i, solver in enumerate(solvers):
        name = type(solver).__name__.lstrip("_")
        if deadline is not None:
            left = deadline - time.perf_counter()
            if i > 0 and left < _MIN_SOLVE_S:
                failures.append(f"{name}: skipped, {max(0.0, left):.2f} s left of the time limit")
                break
            solver.timeLimit = max(0.1, left)
        try:
            prob.solve(solver)
        except (pulp.PulpSolverError, OSError, RuntimeError) as exc:
            failures.append(f"{name}: {exc}")
            continue
        # PuLP reports "Optimal" when a solver stopped at its limit with a feasible point: the
        # solution status tells them apart.
        sol = pulp.LpSolution.get(prob.sol_status, str(prob.sol_status))
        if prob.sol_status in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible):
            return name, sol, failures
        failures.append(f"{name}: {pulp.LpStatus[prob.status]} / {sol}")
    return "", "", failures


def lp_bound(
    config: ClusterConfig,
    view: ClusterView,
    targets: Mapping[str, RoleCounts],
    settings: PlacementSettings | None = None,
) -> float | None:
    """Objective of the LP relaxation: no integer placement can cost less."""
    st = settings or config.cluster.placement
    model = build_model(_problem(config, view, targets), st, relax=True)
    model.prob.solve(pulp.HiGHS(msg=False) if pulp.HiGHS().available() else pulp.PULP_CBC_CMD(msg=False))
    if model.prob.status != pulp.LpStatusOptimal:
        return None
    return float(pulp.value(model.prob.objective))


class _Start:
    """A ratio-keeping constructive placement, used as the MIP start (pure, deterministic).

    Contract: `run()` returns instances per cell, all within `cells` (the cells of the model that
    will receive it), with per-(GPU type, S1) capacity, the GPU budget and `max_instances` kept,
    and every group (service x domain at its affinity level) holding both roles in ratio
    (`_ratio_ok`) or neither. Demand may be left short where no such group fits.

    Why: HiGHS finds its incumbents at 20k GPUs only through sub-MIPs, slowly and by luck of the
    random seed (docs/placement.md); with a feasible, ratio-correct start close to the LP it can
    stop as soon as its root bound is within `mip_gap`.

    How: start from the LP solution rounded down (it already keeps the running instances the
    churn cost makes worth keeping); repair each group's ratio (add the short role, else drop
    the long one); then cover each service's deficit, most important first, one instance at a
    time on the cheapest cell (GPU $ + priority + churn per reference unit), in a domain that
    already holds a group first, re-balancing the group after every step and undoing steps the
    group cannot absorb.
    """

    def __init__(
        self, pb: _Problem, st: PlacementSettings, cells: Sequence[CellKey], prefer: set[CellKey] | None = None
    ) -> None:
        self.pb, self.st = pb, st
        self.prefer = prefer or set()
        self.strict = False  # True: only cells in `prefer` may grow
        self.deadline = math.inf  # `_relieve` stops trying after this (perf_counter)
        self.closed: set[tuple[str, str]] = set()  # (GPU type, S1) pools being emptied: nothing grows there
        self.by_name = {s.name: s for s in pb.services}
        self.cells: dict[CellKey, int] = defaultdict(int)
        self.free: dict[tuple[str, str], int] = dict(pb.free)
        self.budget = math.inf if pb.budget_left is None else pb.budget_left
        self.units: dict[tuple[str, str, Role], float] = defaultdict(float)
        self.count: dict[tuple[str, str, Role], int] = defaultdict(int)
        self.total: dict[str, int] = defaultdict(int)
        # (service, role, domain) -> cells; each service's domains in a fixed order.
        self.options: dict[tuple[str, Role, str], list[CellKey]] = defaultdict(list)
        self.domains: dict[str, list[str]] = defaultdict(list)
        for k in sorted(cells):
            if k.service not in self.by_name or _weight(self.by_name[k.service], k.role, k.gpu_type) <= 0:
                continue
            dom = pb.group_of[(k.service, k.s1)]
            self.options[(k.service, k.role, dom)].append(k)
            if dom not in self.domains[k.service]:
                self.domains[k.service].append(dom)

    def _gpi(self, k: CellKey) -> int:
        return self.pb.gpi[(k.service, k.role.value)]

    def _add(self, k: CellKey, n: int, log: list[tuple[CellKey, int]]) -> None:
        svc = self.by_name[k.service]
        dom = self.pb.group_of[(k.service, k.s1)]
        self.cells[k] += n
        self.free[(k.gpu_type, k.s1)] -= n * self._gpi(k)
        self.budget -= n * self._gpi(k)
        self.units[(k.service, dom, k.role)] += n * _weight(svc, k.role, k.gpu_type)
        self.count[(k.service, dom, k.role)] += n
        self.total[k.service] += n
        log.append((k, n))

    def _undo(self, log: list[tuple[CellKey, int]], mark: int) -> None:
        while len(log) > mark:
            k, n = log.pop()
            self._add(k, -n, [])

    def _step_cost(self, k: CellKey) -> float:
        """Objective change of adding one instance to `k`, per reference unit."""
        gpi = self._gpi(k)
        own = gpi * (self.pb.cost[k.gpu_type] + self.st.priority_weight * self.pb.prio.get(k.s1, 0))
        churn = self.st.churn_weight_h * gpi * self.pb.cost[k.gpu_type]
        above = self.cells[k] >= self.pb.current.get(k, 0)
        step = (
            own + churn + _move_coef(self.pb, self.st, k, start=True)
            if above
            else (own - churn - _move_coef(self.pb, self.st, k, start=False))
        )
        return step / _weight(self.by_name[k.service], k.role, k.gpu_type)

    def _saving(self, k: CellKey) -> float:
        """Objective saved by removing one instance of `k`, per reference unit."""
        gpi = self._gpi(k)
        own = gpi * (self.pb.cost[k.gpu_type] + self.st.priority_weight * self.pb.prio.get(k.s1, 0))
        churn = self.st.churn_weight_h * gpi * self.pb.cost[k.gpu_type]
        below = self.cells[k] <= self.pb.current.get(k, 0)
        step = (
            own - churn - _move_coef(self.pb, self.st, k, start=False)
            if below
            else (own + churn + _move_coef(self.pb, self.st, k, start=True))
        )
        return step / _weight(self.by_name[k.service], k.role, k.gpu_type)

    def _cheapest(
        self, name: str, role: Role, dom: str, log: list[tuple[CellKey, int]] | None = None
    ) -> CellKey | None:
        """The cheapest cell of (service, role, domain) one more instance fits in, or None.

        With `log`, when none fits, room is made on the cheapest cell by moving instances of
        S2- and none-affinity services to other S1s of their own group domain (their groups are
        unchanged: same units, same domain), logged so they can be undone.
        """
        svc = self.by_name[name]
        if self.total[name] + 1 > svc.policy.max_instances:
            return None
        allowed = [k for k in self.options.get((name, role, dom), ()) if not self.strict or k in self.prefer]
        if not allowed or self.budget < self._gpi(allowed[0]):
            return None
        fits = [
            k
            for k in allowed
            if self.free.get((k.gpu_type, k.s1), 0) >= self._gpi(k) and (k.gpu_type, k.s1) not in self.closed
        ]
        best = min(fits, key=lambda k: (k not in self.prefer, self._step_cost(k), k), default=None)
        if best is not None or log is None:
            return best
        for k in sorted(allowed, key=lambda k: (self._step_cost(k), k)):
            if (k.gpu_type, k.s1) not in self.closed and self._make_room(k.gpu_type, k.s1, self._gpi(k), log):
                return k
        return None

    def _make_room(self, gpu_type: str, s1: str, gpus: int, log: list[tuple[CellKey, int]]) -> bool:
        """Move flexible instances off (gpu_type, s1) until `gpus` GPUs are free there."""
        mark = len(log)
        movable = [
            k
            for k, n in self.cells.items()
            if n > 0 and k.gpu_type == gpu_type and k.s1 == s1 and self.pb.group_of[(k.service, s1)] != s1
        ]
        for k in sorted(movable, key=lambda k: (self._gpi(k), k)):
            dom = self.pb.group_of[(k.service, s1)]
            while self.cells[k] > 0 and self.free.get((gpu_type, s1), 0) < gpus:
                dest = [
                    k2
                    for k2 in self.options.get((k.service, k.role, dom), ())
                    if k2.gpu_type == gpu_type and k2.s1 != s1 and self.free.get((gpu_type, k2.s1), 0) >= self._gpi(k)
                ]
                if not dest:
                    break
                self._add(k, -1, log)
                self._add(min(dest, key=lambda k2: (self._step_cost(k2), k2)), 1, log)
            if self.free.get((gpu_type, s1), 0) >= gpus:
                return True
        self._undo(log, mark)
        return False

    def _paired(self, name: str) -> bool:
        t = self.pb.targets[name]
        return t.num_prefill > 0 and t.num_decode > 0

    def _in_ratio(self, name: str, dom: str) -> bool:
        n_p, n_d = self.count[(name, dom, Role.PREFILL)], self.count[(name, dom, Role.DECODE)]
        if not self._paired(name) or n_p == n_d == 0:
            return True
        p, d = self.units[(name, dom, Role.PREFILL)], self.units[(name, dom, Role.DECODE)]
        return n_p > 0 and n_d > 0 and _ratio_ok(self.by_name[name], p, d, self.st.ratio_tolerance)

    def _short_role(self, name: str, dom: str) -> Role:
        n_p, n_d = self.count[(name, dom, Role.PREFILL)], self.count[(name, dom, Role.DECODE)]
        if n_p == 0 or n_d == 0:
            return Role.PREFILL if n_p == 0 else Role.DECODE
        rho = self.by_name[name].pd_ratio.prefill_per_decode
        p, d = self.units[(name, dom, Role.PREFILL)], self.units[(name, dom, Role.DECODE)]
        return Role.PREFILL if p < rho * d else Role.DECODE

    def _balance(self, name: str, dom: str, log: list[tuple[CellKey, int]], evict: bool = False) -> bool:
        """Add instances of the short role until the group is in ratio; False if it cannot be."""
        for _ in range(10_000):
            if self._in_ratio(name, dom):
                return True
            k = self._cheapest(name, self._short_role(name, dom), dom, log if evict else None)
            if k is None:
                return False
            self._add(k, 1, log)
        return False

    def _shrink(self, name: str, dom: str, log: list[tuple[CellKey, int]]) -> None:
        """Drop instances of the long role (dearest first) until the group is in ratio or empty."""
        while not self._in_ratio(name, dom):
            role = Role.DECODE if self._short_role(name, dom) is Role.PREFILL else Role.PREFILL
            mine = [k for k in self.options.get((name, role, dom), ()) if self.cells[k] > 0]
            if not mine:  # one role alone with nothing of it to drop: drop the other role too
                mine = [k for k in self.cells if k.service == name and self.cells[k] > 0]
                mine = [k for k in mine if self.pb.group_of[(name, k.s1)] == dom]
            k = max(mine, key=lambda k: (self._saving(k), k))
            self._add(k, -1, log)

    def run(self, base: Mapping[CellKey, int]) -> dict[CellKey, int]:
        log: list[tuple[CellKey, int]] = []
        for k, n in sorted(base.items()):
            n = min(n, max(0, self.free.get((k.gpu_type, k.s1), 0)) // self._gpi(k))
            if n > 0 and (k.service, k.role, self.pb.group_of[(k.service, k.s1)]) in self.options:
                self._add(k, n, log)
        order = sorted(self.pb.services, key=lambda s: (-s.priority, s.name))
        # Repair every service's groups before any service grows: a growing service would take
        # the few GPUs another's rounded-down group needs to get back in ratio.
        for svc in order:
            for dom in self.domains[svc.name]:
                mark = len(log)
                if not self._balance(svc.name, dom, log):
                    self._undo(log, mark)
                    self._shrink(svc.name, dom, log)

        # Services with the fewest domains able to hold a group grow first: the others can go
        # elsewhere (small S1-affinity services otherwise find their only mixed S1s taken).
        def hosts(svc: Service) -> int:
            return sum(1 for d in self.domains[svc.name] if all((svc.name, r, d) in self.options for r in Role))

        # First on the LP's own cells only (where the LP left room for exactly this service), then
        # anywhere: a service that strays early takes the room another one's rounding-up needs.
        for self.strict in (True, False):
            for svc in sorted(order, key=lambda s: (hosts(s), -s.priority, s.name)):
                self._cover(svc, log)
        self.deadline = time.perf_counter() + _RELIEVE_S
        for svc in sorted(order, key=lambda s: (hosts(s), -s.priority, s.name)):
            self._relieve(svc, log)
        return {k: n for k, n in self.cells.items() if n > 0}

    def _have(self, name: str, role: Role) -> float:
        return sum(self.units[(name, d, role)] for d in self.domains[name])

    def _shortfall(self, name: str) -> dict[Role, float]:
        t = self.pb.targets[name]
        return {r: v for r in Role if (v := t.of(r) - self._have(name, r)) > _EPS}

    def _relieve(self, svc: Service, log: list[tuple[CellKey, int]]) -> None:
        """Serve what `svc` still lacks by moving other services' instances out of the way.

        Why: the cover step only moves S2/none-affinity instances to other S1s on the same GPU
        type; a short S1-affinity service whose only domains are full stays short, and each
        unmet unit costs ~100x a served one. Here one instance at a time of another service
        leaves a pool the short service could use, and that service is covered again elsewhere
        (a whole P+D pair when its group needs it); a step is kept only when no other service
        ends up serving less, and undone otherwise.
        """
        name = svc.name
        for _ in range(svc.policy.max_instances):
            short = self._shortfall(name)
            if not short:
                return
            role = max(short, key=lambda r: (short[r] / max(self.pb.targets[name].of(r), 1), r is Role.DECODE))
            doms = [d for d in self.domains[name] if all((name, r, d) in self.options for r in Role)]
            doms.sort(key=lambda d: (self.count[(name, d, Role.PREFILL)] + self.count[(name, d, Role.DECODE)] == 0, d))
            if not any(self._relieve_in(name, role, dom, log) for dom in doms):
                return

    def _relieve_in(self, name: str, role: Role, dom: str, log: list[tuple[CellKey, int]]) -> bool:
        have = self._have(name, role)
        mark = len(log)
        k = self._cheapest(name, role, dom, log) or self._room_for(name, role, dom, log)
        if k is not None:
            self._add(k, 1, log)
            if self._balance_hard(name, dom, log) and self._have(name, role) > have + _EPS:
                return True
        self._undo(log, mark)
        return False

    def _balance_hard(self, name: str, dom: str, log: list[tuple[CellKey, int]]) -> bool:
        """`_balance` that may also move other services out of the way (`_room_for`)."""
        for _ in range(_RELIEVE_MOVES):
            if self._in_ratio(name, dom):
                return True
            role = self._short_role(name, dom)
            k = self._cheapest(name, role, dom, log) or self._room_for(name, role, dom, log)
            if k is None:
                return False
            self._add(k, 1, log)
        return self._in_ratio(name, dom)

    def _room_for(self, name: str, role: Role, dom: str, log: list[tuple[CellKey, int]]) -> CellKey | None:
        """A cell of (service, role, domain) made room in by moving other services out, or None."""
        svc = self.by_name[name]
        if self.total[name] + 1 > svc.policy.max_instances or time.perf_counter() > self.deadline:
            return None
        cells = sorted(self.options.get((name, role, dom), ()), key=lambda k: (self._step_cost(k), k))
        for k in cells[:_RELIEVE_CELLS]:
            pool = (k.gpu_type, k.s1)
            if pool in self.closed or self.budget < self._gpi(k):
                continue
            self.closed.add(pool)
            try:
                if self._empty(pool, self._gpi(k), name, log):
                    return k
            finally:
                self.closed.discard(pool)
        return None

    def _empty(self, pool: tuple[str, str], gpus: int, keep: str, log: list[tuple[CellKey, int]]) -> bool:
        """Move other services' instances off `pool` until `gpus` GPUs are free there."""
        for _ in range(_RELIEVE_MOVES):
            if self.free.get(pool, 0) >= gpus:
                return True
            if time.perf_counter() > self.deadline:
                return False
            movable = [k for k, n in self.cells.items() if n > 0 and (k.gpu_type, k.s1) == pool and k.service != keep]
            moved = False
            for k in sorted(movable, key=lambda k: (self._gpi(k), self.by_name[k.service].priority, k)):
                mark = len(log)
                before = {r: self._have(k.service, r) for r in Role}
                dom = self.pb.group_of[(k.service, k.s1)]
                self._add(k, -1, log)
                if not self._in_ratio(k.service, dom) and not self._balance(k.service, dom, log):
                    self._shrink(k.service, dom, log)
                self._cover(self.by_name[k.service], log)
                if all(self._have(k.service, r) >= before[r] - _EPS for r in Role) and self._in_ratio(k.service, dom):
                    moved = True
                    break
                self._undo(log, mark)
            if not moved:
                return False
        return self.free.get(pool, 0) >= gpus

    def _cover(self, svc: Service, log: list[tuple[CellKey, int]]) -> None:
        name, target = svc.name, self.pb.targets[svc.name]
        blocked: set[Role] = set()
        while True:
            short = {
                r: target.of(r) - sum(self.units[(name, d, r)] for d in self.domains[name])
                for r in Role
                if r not in blocked
            }
            short = {r: v for r, v in short.items() if v > _EPS}
            if not short:
                return
            role = max(short, key=lambda r: (short[r] / max(target.of(r), 1), r is Role.DECODE))
            tries = []
            for dom in self.domains[name]:
                k = self._cheapest(name, role, dom)
                if k is not None:
                    opened = self.count[(name, dom, Role.PREFILL)] + self.count[(name, dom, Role.DECODE)] == 0
                    tries.append((opened, k not in self.prefer, self._step_cost(k), k.s1, dom, k))
            if self._grow(name, role, [(dom, k) for *_, dom, k in sorted(tries)], log, evict=False):
                continue
            # Nowhere to grow as is: make room by moving flexible services within their domains
            # (last resort: it adds churn), in domains that hold a group first.
            doms = sorted(
                (d for d in self.domains[name] if all((name, r, d) in self.options for r in Role)),
                key=lambda d: (self.count[(name, d, Role.PREFILL)] + self.count[(name, d, Role.DECODE)] == 0, d),
            )
            if self.strict or not self._grow(name, role, [(d, None) for d in doms], log, evict=True):
                blocked.add(role)

    def _grow(
        self,
        name: str,
        role: Role,
        tries: Sequence[tuple[str, CellKey | None]],
        log: list[tuple[CellKey, int]],
        *,
        evict: bool,
    ) -> bool:
        """Add one instance of `role` in the first (domain, cell) whose group stays in ratio."""
        for dom, cell in tries:
            mark = len(log)
            k = cell or self._cheapest(name, role, dom, log if evict else None)
            if k is None:
                self._undo(log, mark)
                continue
            self._add(k, 1, log)
            if self._balance(name, dom, log, evict):
                return True
            self._undo(log, mark)
        return False


def _left(st: PlacementSettings, started: float) -> float:
    return max(0.1, st.time_limit_s - (time.perf_counter() - started))


class _Runner:
    """The full model handed to HiGHS once; each phase changes column bounds, not the model.

    Phases (LP, RINS sub-MIPs, the restricted MIP) differ only in which cells may be non-zero
    (upper bound 0 elsewhere) and which are fixed, so one `highspy.Highs` holds the model for all
    of them: no PuLP rebuild of the restricted model, no second pass of rows to HiGHS. HiGHS's
    presolve drops the fixed columns in a few milliseconds.
    """

    def __init__(self, model: _Model, pb: _Problem, st: PlacementSettings, arr: _Arrays | None = None) -> None:
        import highspy

        self.model, self.pb, self.st = model, pb, st
        self.arr = arr if arr is not None else _arrays(model.prob, model.cols)
        col = {v.name: i for i, v in enumerate(self.arr.cols)}
        self.x_col = {k: col[v.name] for k, v in model.x.items()}
        self.up_col = {k: col[v.name] for k, v in model.up.items()}
        self.down_col = {k: col[v.name] for k, v in model.down.items()}
        self.unmet_col = {key: col[v.name] for key, v in model.unmet.items()}
        self.by_name = {s.name: s for s in pb.services}
        self.h = highspy.Highs()
        for key, value in (("output_flag", False), ("threads", 1), ("mip_rel_gap", st.mip_gap)):
            self.h.setOptionValue(key, value)
        self.arr.pass_to(self.h)
        self.status = ""
        self.optimal = False  # the last `mip` stopped at its gap

    def lp(self, time_limit_s: float = math.inf) -> np.ndarray | None:
        """The LP relaxation's column values, or None when it is not solved to optimality."""
        import highspy

        self.h.setOptionValue("solve_relaxation", True)
        self.h.setOptionValue("time_limit", max(0.05, float(time_limit_s)))
        try:
            self.h.run()
        finally:
            self.h.setOptionValue("solve_relaxation", False)
        if self.h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
            self.status = self.h.modelStatusToString(self.h.getModelStatus())
            return None
        return np.array(self.h.getSolution().col_value)

    def vector(self, cells: Mapping[CellKey, int]) -> np.ndarray:
        """All columns for instances per cell: up/down and unmet derived."""
        v = np.zeros(len(self.arr.cols))
        for k, n in cells.items():
            v[self.x_col[k]] = n
        for k, c in self.up_col.items():
            v[c] = max(0, cells.get(k, 0) - self.pb.current[k])
            v[self.down_col[k]] = max(0, self.pb.current[k] - cells.get(k, 0))
        have: dict[tuple[str, Role], float] = defaultdict(float)
        for k, n in cells.items():
            have[(k.service, k.role)] += n * _weight(self.by_name[k.service], k.role, k.gpu_type)
        for (name, role), c in self.unmet_col.items():
            v[c] = max(0.0, self.pb.targets[name].of(role) - have[(name, role)])
        return v

    def cells(self, v: np.ndarray) -> dict[CellKey, int]:
        return {k: n for k, c in self.x_col.items() if (n := round(v[c])) > 0}

    def objective(self, v: np.ndarray) -> float:
        return float(self.arr.cost @ v)

    def mip(
        self,
        lo: np.ndarray,
        hi: np.ndarray,
        start: np.ndarray | None,
        time_limit_s: float,
        gap: float,
        *,
        seed: int = 0,
    ) -> np.ndarray | None:
        """The MIP within [lo, hi] from `start`; the incumbent's columns, or None without one."""
        import highspy

        h = self.h
        self.optimal = False
        h.changeColsBounds(len(lo), np.arange(len(lo), dtype=np.int32), lo, hi)
        h.setOptionValue("time_limit", max(0.05, float(time_limit_s)))
        h.setOptionValue("mip_rel_gap", gap)
        h.setOptionValue("random_seed", seed)
        if start is not None:
            sol = highspy.HighsSolution()
            sol.col_value = start.tolist()
            sol.value_valid = True
            h.setSolution(sol)
        h.run()
        status = h.getModelStatus()
        self.status = h.modelStatusToString(status)
        if h.getInfo().primal_solution_status != 2:  # kSolutionStatusFeasible
            return None
        self.optimal = status == highspy.HighsModelStatus.kOptimal
        return np.array(h.getSolution().col_value)

    def write_back(self, v: np.ndarray) -> None:
        """Put `v` into the PuLP variables (what `_values` and `pulp.value` read)."""
        for var, value in zip(self.arr.cols, v.tolist(), strict=True):
            var.varValue = value
        self.model.prob.solverModel = self.h


def _solve_large(
    pb: _Problem,
    st: PlacementSettings,
    full: _Model,
    stats: dict[str, float | int | str],
    started: float,
    decompose: str = "none",
    mip_start: str = "ratio",
    aggregate: bool = False,
    parallel: bool = True,
) -> tuple[str, str, list[str], _Model, dict[CellKey, int] | None]:
    """LP relaxation, then the MIP on the cells the LP uses plus the start's and the running ones.

    Why: the full MIP (10k+ integer cells at 20k GPUs) is hard for HiGHS's primal heuristics, but
    its LP is solved in ~0.3 s and uses a few hundred cells. Returns (solver, status, failures,
    model, instances per cell); an empty solver name means "nothing usable: solve `full` the
    ordinary way".

    All phases run on one HiGHS model (`_Runner`): the LP; `_Start` from it (`mip_start="ratio"`);
    RINS rounds from the start (`_rins_arrays`); then the restricted MIP (every other cell's upper
    bound 0) from the best start, until `mip_gap` or the time limit. If the solver ends above the
    start, the start is the answer (solver name "start", `stats["kept_start"]`).
    `decompose="tiers"` and `aggregate=True` take the earlier PuLP-rebuild path
    (`_solve_large_pulp`).

    Tried and dropped (docs/placement.md): RENS, the MIP in a box of one instance around the LP
    solution, as a warm start; the plain [floor, ceil] box was infeasible on every 20k case and
    the widened one gave worse placements in the same time.
    """
    if decompose != "none" or aggregate:
        return _solve_large_pulp(pb, st, full, stats, started, decompose, mip_start, aggregate)
    try:
        run = _Runner(full, pb, st)
        lp = run.lp(_left(st, started))
    except (OSError, RuntimeError, ValueError) as exc:
        return "", "", [f"LP: {exc}"], full, None
    if lp is None:
        return "", "", [f"LP: {run.status}"], full, None
    stats["lp_bound"] = round(run.objective(lp), 4)
    lp_x = {k: float(lp[c]) for k, c in run.x_col.items()}
    support = {k for k, v in lp_x.items() if v > _EPS}
    stats["lp_fractional"] = sum(1 for v in lp_x.values() if abs(v - round(v)) > _EPS)
    stats["phases"] = 2
    start: dict[CellKey, int] = {}
    if mip_start == "ratio":
        lp_floor = {k: math.floor(v + _EPS) for k, v in lp_x.items()}
        start = _Start(pb, st, list(full.x), prefer=support).run({k: n for k, n in lp_floor.items() if n > 0})
    keep = support | set(start) | set(pb.current)
    lo, hi = run.arr.lo.copy(), run.arr.hi.copy()
    for k, c in run.x_col.items():
        if k not in keep:
            hi[c] = 0.0
    stats["phase2_variables"] = int(np.count_nonzero(hi > 0))
    stats["phase2_constraints"] = len(run.arr.row_lo)
    best: np.ndarray | None = None
    best_obj = math.inf
    if start:
        vec = run.vector(start)
        if run.arr.feasible(vec) and np.all(vec <= hi + _EPS):
            best, best_obj = vec, run.objective(vec)
            stats["start_objective"] = round(best_obj, 4)
    stats["start_s"] = round(time.perf_counter() - started, 4)
    search: _Search | None = None
    if best is not None:
        search = _Search(run, lo, hi, best, lp_x, started + st.time_limit_s)
        if parallel:
            search.start()
            search.attach(run)
        else:
            # One core: RINS first (at most half the time left), then the restricted MIP.
            search.until = time.perf_counter() + min(_left(st, started) / 2, _RINS_CAP_S)
            search.run()
            best = search.best
    sol: np.ndarray | None = None
    crash = ""
    try:
        sol = run.mip(lo, hi, best, _left(st, started), st.mip_gap)
    except (RuntimeError, ValueError, OSError) as exc:
        crash = f"WarmHiGHS: {exc}"
    finally:
        if search is not None:
            search.halt(run)
    if search is not None:
        best, best_obj = search.best, search.best_obj
        stats["rins_rounds"] = search.rounds
        stats["rins_s"] = round(search.last_s - started - float(stats["start_s"]), 4) if search.improved else 0.0
        stats["injected"] = search.injected
        if search.improved:
            stats["rins_objective"] = round(best_obj, 4)
        if search.error:
            stats["search_error"] = search.error
    proven = run.optimal or (search is not None and search.proven)
    name = "WarmHiGHS" if sol is not None or (search is not None and search.proven) else ""
    status = pulp.LpSolution[pulp.LpSolutionOptimal if proven else pulp.LpSolutionIntegerFeasible] if name else ""
    failures = [crash] if crash else [] if name else [f"WarmHiGHS: {run.status}"]
    if sol is not None and not run.arr.feasible(sol):
        sol, name, failures = None, "", [f"WarmHiGHS: infeasible solution ({run.status})"]
    answer = sol
    if best is not None and (sol is None or run.objective(sol) > best_obj + _EPS):
        # RINS's last find (or the MIP's, seen by the search) beats the solver's final answer; or
        # the solver found nothing better than the start in its time, or failed: keep that.
        answer = best
        if search is None or search.version == 0:
            stats["kept_start"] = 1
            name = "start"
            status = status or "start"
    if answer is None:
        return "", "", [f"restricted {f}" for f in failures], full, None
    run.write_back(answer)
    info = run.h.getInfo()
    bound = max(float(info.mip_dual_bound), search.bound if search is not None else -math.inf)
    obj = run.objective(answer)
    stats["bound"] = bound
    stats["gap"] = (obj - bound) / max(abs(obj), _EPS)
    return name, status, failures, full, run.cells(answer)


class _Search(threading.Thread):
    """RINS rounds from the best placement found so far, beside the MIP that proves the gap.

    Why: at 20k GPUs HiGHS spends its first second in root cuts, and its own incumbents come late
    and by luck of its random seed; RINS from the start finds good ones in 0.3-1.5 s but has no
    bound. On a second core both run at once: every RINS find is handed to the MIP
    (`cbMipUserSolution`), every MIP find comes back as the next round's start
    (`cbMipImprovingSolution`), and the MIP stops as soon as its bound is within `mip_gap`.
    Rounds alternate narrow and wide neighbourhoods and change HiGHS's random seed when one does
    not improve. `run()` on the calling thread is the sequential variant.
    """

    def __init__(
        self,
        main: _Runner,
        lo: np.ndarray,
        hi: np.ndarray,
        start: np.ndarray,
        lp_x: Mapping[CellKey, float],
        until: float,
    ) -> None:
        super().__init__(name="placement-rins", daemon=True)
        self.main, self.lo, self.hi, self.lp_x, self.until = main, lo, hi, lp_x, until
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.best, self.best_obj = start, main.objective(start)
        self.version = 0  # bumped on every improvement
        self.sent = 0  # last version handed to the MIP
        self.rounds = self.injected = 0
        self.improved = False
        self.last_s = time.perf_counter()
        self.error = ""
        self._subs: list[tuple[Any, Any]] = []
        self.gap = main.st.mip_gap
        self.bound = -math.inf  # the attached MIP's proven bound, as last seen
        self.proven = False  # the best is within `gap` of that bound: the MIP was stopped for it

    def offer(self, v: np.ndarray, *, own: bool) -> bool:
        """Keep `v` when it is feasible and better than the best so far."""
        obj = self.main.objective(v)
        if obj >= self.best_obj - _EPS or not self.main.arr.feasible(v):
            return False
        with self.lock:
            if obj >= self.best_obj - _EPS:
                return False
            self.best, self.best_obj = v, obj
            self.version += 1
            if own:
                self.improved = True
                self.last_s = time.perf_counter()
        return True

    def attach(self, run: _Runner) -> None:
        """Connect `run`'s next MIP to the search: finds go both ways."""

        def user_solution(e: Any) -> None:
            if self.version == self.sent or self.best_obj >= e.data_out.mip_primal_bound - _EPS:
                return
            with self.lock:
                best, self.sent = self.best, self.version
            e.data_in.setSolution(best)
            self.injected += 1

        def check(e: Any) -> None:
            # HiGHS takes user solutions only during its root cuts; later finds are checked here
            # against its proven bound, and the MIP is stopped once one is within the gap.
            self.bound = max(self.bound, float(e.data_out.mip_dual_bound))
            if self.best_obj - self.bound <= self.gap * max(abs(self.best_obj), _EPS):
                self.proven = True
                e.interrupt()

        self._subs = [
            (run.h.cbMipUserSolution, self._guard(user_solution)),
            (run.h.cbMipImprovingSolution, lambda e: self._offer_from(e, own=False)),
            (run.h.cbMipInterrupt, self._guard(check)),
        ]
        for hook, fn in self._subs:
            hook.subscribe(fn)

    def _guard(self, fn: Any) -> Any:
        """`fn` as a HiGHS callback that never raises into the solver (the error is kept)."""

        def safe(e: Any) -> None:
            try:
                fn(e)
            except Exception as exc:  # a failed hand-over must not fail the solve
                self.error = self.error or f"{type(exc).__name__}: {exc}"

        return safe

    def _offer_from(self, e: Any, *, own: bool) -> None:
        try:
            self.offer(np.array(e.data_out.mip_solution), own=own)
        except Exception as exc:  # as in `_guard`
            self.error = self.error or f"{type(exc).__name__}: {exc}"

    def halt(self, run: _Runner) -> None:
        self.stop.set()
        for hook, fn in self._subs:
            hook.unsubscribe(fn)
        self._subs = []
        if self.is_alive():
            self.join(timeout=1.0)

    def run(self) -> None:
        try:
            self._rounds()
        except Exception as exc:  # a failed search must not fail the placement
            self.error = f"{type(exc).__name__}: {exc}"

    def _rounds(self) -> None:
        threaded = threading.current_thread() is self
        runner = _Runner(self.main.model, self.main.pb, self.main.st, self.main.arr) if threaded else self.main
        if threaded:
            runner.h.cbMipInterrupt.subscribe(lambda e: e.interrupt() if self.stop.is_set() else None)
            # A sub-MIP's finds count at once (the proving MIP may stop on one), not at its end.
            runner.h.cbMipImprovingSolution.subscribe(lambda e: self._offer_from(e, own=True))
        rounds = _ROUNDS if threaded else _ROUNDS_SEQUENTIAL
        step = misses = 0
        while not self.stop.is_set() and time.perf_counter() < self.until - 0.05 and misses < len(rounds):
            with self.lock:
                start, start_obj = self.best, self.best_obj
            reach, loose, cap = rounds[step % len(rounds)]
            better = _rins_arrays(
                runner,
                self.lo,
                self.hi,
                start,
                self.lp_x,
                min(cap, self.until - time.perf_counter()),
                reach=reach,
                loose=loose,
                seed=self.rounds,
            )
            self.rounds += 1
            step += 1
            if better is not None:
                self.offer(better, own=True)  # usually offered already, by the callback
            if self.best_obj < start_obj - _EPS:
                misses = 0
            else:
                misses += 1
                if not threaded and step >= len(rounds):
                    break


def _rins_arrays(
    run: _Runner,
    lo: np.ndarray,
    hi: np.ndarray,
    start: np.ndarray,
    lp_x: Mapping[CellKey, float],
    time_limit_s: float,
    *,
    reach: str,
    loose: bool = True,
    seed: int = 0,
) -> np.ndarray | None:
    """RINS on `run`'s model: every cell fixed where the start and the LP agree, from the start.

    Why: what is left free are the cells the rounding had to decide (a few hundred of 10k+), a
    sub-MIP HiGHS usually closes in well under a second, where the whole MIP spends seconds in
    root cuts before its first sub-MIP incumbent. Pools where a service the start leaves short
    could go stay free too (the instances there may have to make room); with `wide`, so do all
    cells of the services running in those pools, so they can move out. With `loose=False` the
    cells where start and LP disagree are fixed too (a tight, fast round). Returns the sub-MIP's
    incumbent (all columns) or None.
    """
    short = {name for key, c in run.unmet_col.items() if start[c] > _EPS for name in (key[0],)}
    contested = {(k.gpu_type, k.s1) for k, c in run.x_col.items() if k.service in short and hi[c] > 0}
    occupants = {k.service for k, c in run.x_col.items() if start[c] > _EPS and (k.gpu_type, k.s1) in contested}
    movers = short | occupants if reach == "wide" else set(short)

    # "near": the services running in contested pools may move within the group domains they
    # hold there (none-affinity ones: among the S1s they already use), not everywhere.
    def home(k: CellKey) -> tuple[str, str]:  # the group domain of a cell; its S1 for none-affinity
        dom = run.pb.group_of[(k.service, k.s1)]
        return (k.service, k.s1 if dom == "*" else dom)

    near: set[tuple[str, str]] = set()
    if reach == "near":
        near = {
            home(k)
            for k, c in run.x_col.items()
            if start[c] > _EPS
            and k.service in occupants
            and (run.pb.group_of[(k.service, k.s1)] == "*" or (k.gpu_type, k.s1) in contested)
        }
    lo_f, hi_f = lo.copy(), hi.copy()
    for k, c in run.x_col.items():
        free = k.service in movers or (k.gpu_type, k.s1) in contested or (bool(near) and home(k) in near)
        if not free and (not loose or abs(lp_x.get(k, 0.0) - start[c]) < _EPS):
            lo_f[c] = hi_f[c] = start[c]
    return run.mip(lo_f, hi_f, start, time_limit_s, _RINS_GAP, seed=seed)


def _solve_large_pulp(
    pb: _Problem,
    st: PlacementSettings,
    full: _Model,
    stats: dict[str, float | int | str],
    started: float,
    decompose: str = "none",
    mip_start: str = "ratio",
    aggregate: bool = False,
) -> tuple[str, str, list[str], _Model, dict[CellKey, int] | None]:
    """LP relaxation, then the MIP on the cells the LP uses plus the running ones.

    Why: the full MIP (10k+ integer cells at 20k GPUs) is hard for HiGHS's primal heuristics, but
    its LP is solved in ~0.3 s and uses a few hundred cells. Measured cost of the restriction:
    0.2 % against the full MIP solved for 14 s (docs/placement.md). Returns (solver, status,
    failures, model, instances per cell); an empty solver name means "nothing usable: solve `full`
    the ordinary way". `decompose="tiers"` solves the restricted MIP tier by tier (`_solve_tiers`).

    Tried and dropped (docs/placement.md): RENS, the MIP in a box of one instance around the LP
    solution, as a warm start; the plain [floor, ceil] box was infeasible on every 20k case and
    the widened one gave worse placements in the same time.

    `mip_start="ratio"`: the restricted MIP also holds the cells of `_Start`'s placement and is
    solved from it after RINS; if the solver ends above the start (or fails), the start is the
    answer (solver name "start", `stats["kept_start"]`).
    """
    try:
        full.prob.solve(pulp.HiGHS(msg=False, mip=False))
    except (pulp.PulpSolverError, OSError, RuntimeError) as exc:
        return "", "", [f"LP: {exc}"], full, None
    if full.prob.status != pulp.LpStatusOptimal:
        return "", "", [f"LP: {pulp.LpStatus[full.prob.status]}"], full, None
    stats["lp_bound"] = round(float(pulp.value(full.prob.objective) or 0.0), 4)
    support = {k for k, v in full.x.items() if (v.varValue or 0.0) > _EPS}
    stats["lp_fractional"] = sum(
        1 for v in full.x.values() if abs((v.varValue or 0.0) - round(v.varValue or 0.0)) > _EPS
    )
    stats["phases"] = 2
    if decompose == "tiers":
        tiers = _solve_tiers(pb, st, support, stats, started + st.time_limit_s)
        if tiers is None:
            return "", "", ["tiers: a tier had no solution"], full, None
        return tiers[1][0], "tiers", [], full, tiers[0]
    start: dict[CellKey, int] = {}
    if mip_start == "ratio":
        lp_floor = {k: math.floor((v.varValue or 0.0) + _EPS) for k, v in full.x.items()}
        start = _Start(pb, st, list(full.x), prefer=support).run({k: n for k, n in lp_floor.items() if n > 0})
    restricted = build_model(pb, st, only=support | set(start), aggregate=aggregate)
    stats["phase2_variables"] = restricted.prob.numVariables()
    stats["phase2_constraints"] = restricted.prob.numConstraints()
    start_obj = _set_start(restricted, pb, start) if start else None
    if start_obj is not None:
        stats["start_objective"] = round(start_obj, 4)
        stats["start_s"] = round(time.perf_counter() - started, 4)
    if start_obj is not None:
        lp_x = {k: v.varValue or 0.0 for k, v in full.x.items()}
        # Repeated while it improves: each round frees the pools the new incumbent still leaves
        # short. At most half the time left goes here; the whole MIP gets the rest.
        rins_until = time.perf_counter() + min(_left(st, started) / 2, 1.5)
        rounds = 0
        while time.perf_counter() < rins_until - 0.05:
            # The first round is narrow (fast); later ones also free the services in the way.
            better = _rins(restricted, pb, start, lp_x, st, rins_until - time.perf_counter(), wide=rounds > 0)
            rounds += 1
            # Re-priced on whole instances: with `aggregate` the sub-MIP's S1 shares were continuous.
            better_obj = None if better is None else _set_start(restricted, pb, better[0])
            if better is None or better_obj is None or better_obj >= start_obj - _EPS:
                _set_start(restricted, pb, start)
                break
            start, start_obj = better[0], better_obj
            stats["rins_objective"] = round(start_obj, 4)
        stats["rins_rounds"] = rounds
        stats["rins_s"] = round(time.perf_counter() - started - float(stats["start_s"]), 4)
    name, sol, failures = solve(restricted.prob, _solvers(st, _left(st, started)), started + st.time_limit_s)
    values: dict[CellKey, int] | None = None
    if name:
        values = _split(restricted, pb) if restricted.z else _values(restricted)
        if values is None:
            values = _split_by_mip(restricted, st, _left(st, started))
            stats["split"] = "mip" if values is not None else "failed"
            if values is None:
                failures.append(f"{name}: aggregated counts do not split onto S1s")
    if start_obj is not None:
        obj = None if values is None else _set_start(restricted, pb, values)
        if obj is None or obj > start_obj + _EPS:
            # The solver found nothing better than the start in its time (or it failed): keep the start.
            stats["kept_start"] = 1
            return "start", sol or "start", failures, restricted, start
    if not name or values is None:
        return "", "", [f"restricted {f}" for f in failures], full, None
    return name, sol, failures, restricted, values


def _rins(
    model: _Model,
    pb: _Problem,
    start: Mapping[CellKey, int],
    lp_x: Mapping[CellKey, float],
    st: PlacementSettings,
    time_limit_s: float,
    *,
    wide: bool,
) -> tuple[dict[CellKey, int], float] | None:
    """RINS: the MIP with every cell fixed where the start and the LP agree, from the start.

    Why: what is left free are the cells the rounding had to decide (a few hundred of 10k+), a
    sub-MIP HiGHS usually closes in well under a second, where the whole MIP spends seconds in
    root cuts before its first sub-MIP incumbent. `model` must hold the start (`_set_start`);
    its bounds are restored before returning. Returns (instances per cell, objective) or None.
    """
    saved = {k: (v.lowBound, v.upBound) for k, v in model.x.items()}
    # Pools where a service the start leaves short could go stay free too: the instances already
    # there may have to make room for it.
    short = {name for (name, _role), v in model.unmet.items() if (v.varValue or 0.0) > _EPS}
    contested = {(k.gpu_type, k.s1) for k in model.x if k.service in short}
    # With `wide`, so do all cells of the services running there, so they can move out.
    movers = short | {k.service for k, n in start.items() if n > 0 and (k.gpu_type, k.s1) in contested and wide}
    for k, v in model.x.items():
        free = k.service in movers or (k.gpu_type, k.s1) in contested
        if not free and abs(lp_x.get(k, 0.0) - start.get(k, 0)) < _EPS:
            v.lowBound = v.upBound = start.get(k, 0)
    try:
        name, _sol, _failures = solve(
            model.prob, [_WarmHiGHS(msg=False, timeLimit=time_limit_s, gapRel=st.mip_gap / 2, threads=1)]
        )
    finally:
        for k, (lo, hi) in saved.items():
            model.x[k].lowBound, model.x[k].upBound = lo, hi
    if not name:
        return None
    values = _split(model, pb) if model.z else _values(model)
    return None if values is None else (values, float(pulp.value(model.prob.objective) or 0.0))


def _split_by_mip(model: _Model, st: PlacementSettings, time_limit_s: float) -> dict[CellKey, int] | None:
    """Whole instances per S1 for the solved aggregated counts, by a MIP with the counts fixed.

    For when `_split`'s best-fit does not fit them (instance sizes vs GPUs left per S1); None
    when no split exists or none is found in time. `model`'s bounds and types are restored.
    """
    fixed = {key: round(v.varValue or 0.0) for key, v in model.z.items()}
    saved = {key: (v.lowBound, v.upBound) for key, v in model.z.items()}
    flexible = [v for v in model.x.values() if v.cat == pulp.LpContinuous]
    for key, v in model.z.items():
        v.lowBound = v.upBound = fixed[key]
    for v in flexible:
        v.cat = pulp.LpInteger
    try:
        name, _sol, _failures = solve(
            model.prob, [_WarmHiGHS(msg=False, timeLimit=max(0.1, time_limit_s), gapRel=st.mip_gap, threads=1)]
        )
    finally:
        for key, (lo, hi) in saved.items():
            model.z[key].lowBound, model.z[key].upBound = lo, hi
        for v in flexible:
            v.cat = pulp.LpContinuous
    return _values(model) if name else None


def _set_start(model: _Model, pb: _Problem, start: Mapping[CellKey, int]) -> float | None:
    """Give every variable of `model` its value in `start` (up/down and unmet derived).

    Returns the start's objective, or None when the start breaks a constraint of `model` (then
    HiGHS would reject it; the solve goes on without it).
    """
    for k, var in model.x.items():
        var.setInitialValue(start.get(k, 0))
    agg: dict[tuple[str, Role, str, str], int] = defaultdict(int)
    for k in model.x:
        agg[(k.service, k.role, k.gpu_type, pb.group_of[(k.service, k.s1)])] += start.get(k, 0)
    for key, var in model.z.items():
        var.setInitialValue(agg[key])
    for k, var in model.up.items():
        var.setInitialValue(max(0, start.get(k, 0) - pb.current[k]))
        model.down[k].setInitialValue(max(0, pb.current[k] - start.get(k, 0)))
    by_name = {s.name: s for s in pb.services}
    have: dict[tuple[str, Role], float] = defaultdict(float)
    for k, n in start.items():
        have[(k.service, k.role)] += n * _weight(by_name[k.service], k.role, k.gpu_type)
    for (name, role), var in model.unmet.items():
        var.setInitialValue(max(0.0, pb.targets[name].of(role) - have[(name, role)]))
    for v in model.prob.variables():
        if v.varValue is None:  # e.g. integer node counts: left to the solver
            return None
    if not model.prob.valid(eps=1e-6):
        return None
    return float(pulp.value(model.prob.objective) or 0.0)


def _sub_problem(pb: _Problem, names: set[str], used: Mapping[tuple[str, str], int], used_total: int) -> _Problem:
    """`pb` for the services in `names` once other services hold `used` GPUs per (GPU type, S1).

    Penalties keep their global priority ranks, so a tier's trade-offs match the whole model's.
    """
    services = tuple(s for s in pb.services if s.name in names)
    return _Problem(
        services=services,
        targets={n: t for n, t in pb.targets.items() if n in names},
        gpi=pb.gpi,
        cost=pb.cost,
        prio=pb.prio,
        group_of=pb.group_of,
        free={key: v - used.get(key, 0) for key, v in pb.free.items()},
        fixed_used={key: pb.fixed_used.get(key, 0) + used.get(key, 0) for key in set(pb.fixed_used) | set(used)},
        gpus_per_node=pb.gpus_per_node,
        gpus_total=pb.gpus_total,
        current={k: n for k, n in pb.current.items() if k.service in names},
        unmet_penalty={key: v for key, v in pb.unmet_penalty.items() if key[0] in names},
        budget_left=None if pb.budget_left is None else max(0.0, pb.budget_left - used_total),
        growing={key: v for key, v in pb.growing.items() if key[0] in names},
    )


def _solve_tiers(
    pb: _Problem,
    st: PlacementSettings,
    support: set[CellKey],
    stats: dict[str, float | int | str],
    deadline: float,
) -> tuple[dict[CellKey, int], list[str]] | None:
    """Solve the restricted MIP one service-priority tier at a time, most important first.

    Each tier sees the GPUs the tiers before it took as used, and only the cells in `support`
    (the LP's cells) plus its running ones. Returns (instances per cell, solver names) or None
    when a tier has no solution. Measured worse than the whole restricted MIP (docs/placement.md):
    a tier does not see what its cells cost the tiers after it. Bounding each cell by the LP's
    ceiling (so tiers leave the LP's room to the next) was worse still on two of three seeds.
    """
    tiers = sorted({s.priority for s in pb.services}, reverse=True)
    used: dict[tuple[str, str], int] = defaultdict(int)
    used_total = 0
    values: dict[CellKey, int] = {}
    names_used: list[str] = []
    for i, tier in enumerate(tiers):
        names = {s.name for s in pb.services if s.priority == tier}
        sub = _sub_problem(pb, names, used, used_total)
        model = build_model(sub, st, only=support)
        left = max(0.05, (deadline - time.perf_counter()) / (len(tiers) - i))
        name, _sol, _failures = solve(model.prob, _solvers(st, left))
        if not name:
            return None
        names_used.append(name)
        for k, v in model.x.items():
            n = round(v.varValue or 0.0)
            if n > 0:
                values[k] = n
                g = n * pb.gpi[(k.service, k.role.value)]
                used[(k.gpu_type, k.s1)] += g
                used_total += g
    stats["tiers"] = len(tiers)
    return values, names_used


def reference_solve(
    config: ClusterConfig,
    view: ClusterView,
    targets: Mapping[str, RoleCounts],
    *,
    time_limit_s: float,
    settings: PlacementSettings | None = None,
) -> tuple[float, float] | None:
    """(best objective, proven dual bound) of the full, unrestricted MIP within `time_limit_s`.

    For benchmarks only: the dual bound is a lower bound on every integer placement, tighter than
    the LP bound when integrality matters (unmet demand priced per reference instance).
    """
    st = settings or config.cluster.placement
    model = build_model(_problem(config, view, targets), st)
    solver = _WarmHiGHS(msg=False, timeLimit=time_limit_s, gapRel=1e-4, threads=1)
    name, _sol, _failures = solve(model.prob, [solver])
    if not name:
        return None
    info = model.prob.solverModel.getInfo()
    return float(pulp.value(model.prob.objective) or 0.0), float(info.mip_dual_bound)


DECOMPOSITIONS = ("none", "tiers")
MIP_STARTS = ("ratio", "none")


def _values(model: _Model, pb: _Problem | None = None) -> dict[CellKey, int]:
    """Instances per cell of a solved model; aggregated models (`model.z`) go through `_split`."""
    if model.z and pb is not None:
        return _split(model, pb) or {}
    return {k: n for k, v in model.x.items() if (n := round(v.varValue or 0.0)) > 0}


def _split(model: _Model, pb: _Problem) -> dict[CellKey, int] | None:
    """Whole instances per S1 cell from a solved aggregated model; None if they do not fit.

    Each aggregated count z (service, role, GPU type, domain) goes onto the domain's S1s: first
    the whole part of each S1's continuous share (always fits: it uses no more GPUs than the
    share), then the remaining instances one by one, largest first over all counts, on running
    cells first, then the largest leftover share, then the tightest fit (best-fit).
    """
    values: dict[CellKey, int] = {}
    members: dict[tuple[str, Role, str, str], list[CellKey]] = defaultdict(list)
    for k, v in model.x.items():
        dom = pb.group_of[(k.service, k.s1)]
        key = (k.service, k.role, k.gpu_type, dom)
        if key in model.z:
            members[key].append(k)
            values[k] = math.floor((v.varValue or 0.0) + _EPS)
        else:
            values[k] = round(v.varValue or 0.0)
    free = dict(pb.free)
    for k, n in values.items():
        free[(k.gpu_type, k.s1)] = free.get((k.gpu_type, k.s1), 0) - n * pb.gpi[(k.service, k.role.value)]
    for key in sorted(members, key=lambda key: (-pb.gpi[(key[0], key[1].value)], key)):
        ks = members[key]
        gpi = pb.gpi[(key[0], key[1].value)]
        left = round(model.z[key].varValue or 0.0) - sum(values[k] for k in ks)
        for _ in range(max(0, left)):
            fits = [k for k in ks if free.get((k.gpu_type, k.s1), 0) >= gpi]
            if not fits:
                return None
            k = min(
                fits,
                key=lambda k: (
                    values[k] >= pb.current.get(k, 0),
                    -((model.x[k].varValue or 0.0) - values[k]),
                    free[(k.gpu_type, k.s1)],
                    k,
                ),
            )
            values[k] += 1
            free[(k.gpu_type, k.s1)] -= gpi
    return {k: n for k, n in values.items() if n > 0}


def place_ilp(
    config: ClusterConfig,
    view: ClusterView,
    targets: Mapping[str, RoleCounts],
    *,
    settings: PlacementSettings | None = None,
    solvers: Sequence[pulp.LpSolver] | None = None,
    decompose: str = "none",
    mip_start: str = "ratio",
    aggregate: bool = False,
    parallel: bool = True,
) -> PlacementPlan:
    """Optimal placement of `targets`; the greedy plan (with the reason) when the solve fails.

    On large clusters (`restrict_above_cells`) the MIP is solved on the LP's cells, whole
    (`decompose="none"`) or one service-priority tier at a time (`"tiers"`: measured worse, kept
    for the benchmark, docs/placement.md). When the solver stops at its time limit without a
    proven gap, the greedy is also run and kept if `evaluate()` scores it lower (it may break
    groups: `stats["kept"]` says which was kept); this can overrun `time_limit_s` by the greedy's
    time (0.7-3.4 s at 20k GPUs). `mip_start` ("ratio" | "none") chooses whether the large-cluster
    MIP starts from the constructive start + RINS (docs/placement.md) or from nothing.
    `aggregate=True` counts S2- and none-affinity services per (GPU type, domain) in that MIP and
    splits the counts onto S1s afterwards (`_split`, else `_split_by_mip`): measured worse, kept
    for the benchmark.
    """
    if decompose not in DECOMPOSITIONS:
        raise ValueError(f"decompose must be one of {DECOMPOSITIONS}, got {decompose!r}")
    if mip_start not in MIP_STARTS:
        raise ValueError(f"mip_start must be one of {MIP_STARTS}, got {mip_start!r}")
    st = settings or config.cluster.placement
    started = time.perf_counter()
    pb = _problem(config, view, targets)
    model = build_model(pb, st)
    built = time.perf_counter()
    stats: dict[str, float | int | str] = {
        "variables": model.prob.numVariables(),
        "constraints": model.prob.numConstraints(),
        "build_s": round(built - started, 4),
        "phases": 1,
    }
    name = sol = ""
    failures: list[str] = []
    values: dict[CellKey, int] | None = None
    if solvers is None and len(model.x) > st.restrict_above_cells and pulp.HiGHS().available():
        name, sol, failures, model, values = _solve_large(
            pb, st, model, stats, started, decompose, mip_start, aggregate, parallel
        )
    if not name:
        deadline = started + st.time_limit_s
        time_left = deadline - time.perf_counter()
        if solvers is not None:
            name, sol, more = solve(model.prob, solvers)
        elif not failures or time_left >= _MIN_SOLVE_S:
            # The full model once more (small clusters: the only solve), within what is left.
            name, sol, more = solve(model.prob, _solvers(st, max(0.1, time_left)), deadline)
        else:
            # The large path failed with too little time left for the full model (passing it to
            # HiGHS alone takes ~0.8 s at 20k GPUs): the greedy, not an overrun.
            more = [f"full model: skipped, {max(0.0, time_left):.2f} s left of the time limit"]
        failures += more
        values = _values(model) if name else None
    stats["solve_s"] = round(time.perf_counter() - built, 4)
    if not name or values is None:
        why = "; ".join(failures) or "no solver available"
        plan = place_greedy(config, view, targets)
        stats["fallback"] = why
        return PlacementPlan(
            placement=plan.placement,
            method="greedy",
            reason=f"ILP failed ({why}); {plan.reason}",
            unmet=plan.unmet,
            stats=stats,
        )
    stats["solver"] = name
    stats["status"] = sol
    from tasks.core.polish import polish  # polish builds on this module's problem and rules

    values, stats["polish_steps"] = polish(pb, st, values)
    solver_model = getattr(model.prob, "solverModel", None)
    if decompose == "none" and solver_model is not None and "bound" not in stats:
        info = solver_model.getInfo()
        stats["gap"] = float(info.mip_gap)
        stats["bound"] = float(info.mip_dual_bound)

    cells = {k: n for k, n in view.placement.cells.items() if k.service not in targets}
    cells.update(values)
    placement = Placement.of(cells.items())
    obj = evaluate(config, view, targets, placement, st).cost
    stats["objective"] = round(obj, 4)
    if "lp_bound" in stats:
        stats["gap_to_lp_bound"] = round((obj - float(stats["lp_bound"])) / max(abs(obj), _EPS), 6)
    stats["kept"] = "ilp"
    if solvers is None and sol != pulp.LpSolution[pulp.LpSolutionOptimal]:
        # Stopped at the time limit without a proven gap: the incumbent can be poor (docs: 20k/200
        # once left 99 instances unmet); the greedy is a second opinion on the same objective, with
        # only the demand its working groups can serve counted as served (`Score.usable_cost`: the
        # greedy may break groups, whose capacity serves nothing; the ILP's answer never does).
        greedy = place_greedy(config, view, targets)
        greedy_score = evaluate(config, view, targets, greedy.placement, st)
        greedy_obj = greedy_score.usable_cost
        stats["greedy_objective"] = round(greedy_obj, 4)
        stats["greedy_violations"] = greedy_score.affinity_violations + greedy_score.ratio_violations
        if greedy_obj < obj:
            stats["kept"] = "greedy"
            stats["solve_s"] = round(time.perf_counter() - built, 4)
            return PlacementPlan(
                placement=greedy.placement,
                method="greedy",
                reason=f"ILP ({name}, {sol}) stopped at its time limit at {obj:.0f}; greedy scores {greedy_obj:.0f}; "
                f"{greedy.reason}",
                unmet=greedy.unmet,
                stats=stats,
            )
        stats["solve_s"] = round(time.perf_counter() - built, 4)
    unmet: dict[tuple[str, Role], float] = {}
    by_name = {s.name: s for s in pb.services}
    for s_name, counts in targets.items():
        svc = by_name[s_name]
        for role in Role:
            have = sum(
                n * _weight(svc, role, k.gpu_type) for k, n in cells.items() if k.service == s_name and k.role is role
            )
            if counts.of(role) - have > _EPS:
                unmet[(s_name, role)] = counts.of(role) - have
    reason = f"ILP ({name}, {sol}, {stats['variables']} vars, {stats['solve_s']:.2f}s)"
    if failures:
        reason += f" after {'; '.join(failures)}"
    if unmet:
        short = ", ".join(f"{s}/{r.value} {v:.1f}" for (s, r), v in sorted(unmet.items()))
        reason += f"; not enough free GPUs for: {short}"
    return PlacementPlan(placement=placement, method="ilp", reason=reason, unmet=unmet, stats=stats)
