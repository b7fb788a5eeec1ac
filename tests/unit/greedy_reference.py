"""The greedy placement as it was before issue 18 (O(domains x cells) per instance), kept only here.

`test_greedy_fast.py` checks that `tasks.core.placement.place_greedy` (indexed) places exactly what
this does. The view's domain and priority maps are the old ones too, so a change in
`ClusterView.domains` / `priorities` cannot hide behind both sides.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping

from models.config import AffinityLevel, ClusterConfig, Role, Service
from models.values import CellKey, Placement, PlacementPlan, RoleCounts
from tasks.core.topology import ANY_DOMAIN, ClusterView, gpus_per_instance_map


def _domain_of(view: ClusterView, s1: str, level: AffinityLevel) -> str:
    if level is AffinityLevel.S1:
        return s1
    if level is AffinityLevel.S2:
        return {c.s1: c.s2 for c in view.capacities}[s1]
    return ANY_DOMAIN


def _domains(view: ClusterView, level: AffinityLevel) -> dict[str, tuple[str, ...]]:
    out: dict[str, list[str]] = defaultdict(list)
    for c in view.capacities:
        d = _domain_of(view, c.s1, level)
        if c.s1 not in out[d]:
            out[d].append(c.s1)
    return {d: tuple(s1s) for d, s1s in out.items()}


def _priorities(view: ClusterView, level: AffinityLevel) -> dict[str, int]:
    types_of: dict[str, set[str]] = defaultdict(set)
    for c in view.capacities:
        types_of[_domain_of(view, c.s1, level)].add(c.gpu_type)
    prio: dict[str, int] = {}
    for d, types in types_of.items():
        mixed = len(types) > 1
        if level is AffinityLevel.S1:
            prio[d] = 2 if mixed else 0
        elif level is AffinityLevel.S2:
            prio[d] = 1 if mixed else 0
        else:
            prio[d] = 0
    for lvl, d, p in view.priority_override:
        if lvl == level.value and d in prio:
            prio[d] = p
    return prio


_EPS = 1e-9


def _have(cells: Mapping[CellKey, int], svc: Service, role: Role) -> float:
    spec = svc.role(role)
    return sum(
        n * spec.weight(k.gpu_type)
        for k, n in cells.items()
        if k.service == svc.name and k.role is role and k.gpu_type in spec.capacity_tokens_per_s
    )


def place_greedy_reference(
    config: ClusterConfig, view: ClusterView, targets: Mapping[str, RoleCounts]
) -> PlacementPlan:
    gpi = gpus_per_instance_map(config)
    cells: dict[CellKey, int] = dict(view.placement.cells)
    free = view.free_gpus(view.placement, gpi)
    used = sum(n * gpi[(k.service, k.role.value)] for k, n in cells.items())
    budget_left = math.inf if view.gpu_budget is None else view.gpu_budget - used
    s2_of = {c.s1: c.s2 for c in view.capacities}
    levels = {svc.affinity for svc in config.services}
    domains = {lvl: _domains(view, lvl) for lvl in levels}
    prios = {lvl: _priorities(view, lvl) for lvl in levels}

    def domain(svc: Service, s1: str) -> str:
        if svc.affinity is AffinityLevel.S1:
            return s1
        return s2_of[s1] if svc.affinity is AffinityLevel.S2 else ANY_DOMAIN

    services = [svc for svc in config.services if svc.name in targets]

    # Phase 1: scale-in.
    for svc in sorted(services, key=lambda s: s.priority):
        prio = prios[svc.affinity]
        for role in Role:
            spec = svc.role(role)
            target = targets[svc.name].of(role)
            have = _have(cells, svc, role)
            while have > target + _EPS:
                mine = [k for k, n in cells.items() if n > 0 and k.service == svc.name and k.role is role]
                mine.sort(
                    key=lambda k: (
                        -prio.get(domain(svc, k.s1), 0),
                        -(spec.gpu_types.index(k.gpu_type) if k.gpu_type in spec.gpu_types else 99),
                        cells[k],
                    )
                )
                for k in mine:
                    w = spec.weight(k.gpu_type) if k.gpu_type in spec.capacity_tokens_per_s else 0.0
                    if have - w >= target - _EPS:
                        cells[k] -= 1
                        free[(k.gpu_type, k.s1)] = free.get((k.gpu_type, k.s1), 0) + spec.gpus_per_instance
                        budget_left += spec.gpus_per_instance
                        have -= w
                        break
                else:
                    break

    # Phase 2: scale-out.
    unmet: dict[tuple[str, Role], float] = {}
    for svc in sorted(services, key=lambda s: -s.priority):
        doms = domains[svc.affinity]
        prio = prios[svc.affinity]
        deficit = {r: targets[svc.name].of(r) - _have(cells, svc, r) for r in Role}
        blocked: set[Role] = set()

        def fits(svc: Service, role: Role, dom: str) -> tuple[str, str] | None:
            spec = svc.role(role)
            if spec.gpus_per_instance > budget_left:
                return None
            group_s1 = {k.s1 for k, n in cells.items() if n > 0 and k.service == svc.name}
            for g in spec.gpu_types:
                options = [s1 for s1 in doms[dom] if free.get((g, s1), 0) >= spec.gpus_per_instance]
                if options:
                    options.sort(key=lambda s1: (s1 not in group_s1, free[(g, s1)], s1))
                    return g, options[0]
            return None

        while True:
            open_roles = [r for r in Role if deficit[r] > _EPS and r not in blocked]
            if not open_roles:
                break
            role = max(
                open_roles,
                key=lambda r: (deficit[r] / max(targets[svc.name].of(r), 1), r is Role.DECODE),
            )
            has_group = {domain(svc, k.s1) for k, n in cells.items() if n > 0 and k.service == svc.name}
            spec = svc.role(role)
            other = Role.DECODE if role is Role.PREFILL else Role.PREFILL
            spots = {d: fits(svc, role, d) for d in doms}

            def rank(d: str) -> int:
                # GPU-type preference rank this pod gets in `d`, plus, for a new group, the rank
                # its counterpart role would get there.
                own = spec.gpu_types.index(spots[d][0])  # type: ignore[index]
                if d in has_group:
                    return own
                spot = fits(svc, other, d)
                return own + (svc.role(other).gpu_types.index(spot[0]) if spot else 99)

            order = sorted(
                (d for d in doms if spots[d] is not None),
                key=lambda d: (prio.get(d, 0), d not in has_group, rank(d), d),
            )
            chosen: tuple[str, str] | None = None
            for dom in order:
                spot = spots[dom]
                if dom not in has_group:
                    # A new group must be able to host the other role too.
                    if targets[svc.name].of(other) > 0 and fits(svc, other, dom) is None:
                        continue
                chosen = spot
                break
            if chosen is None:
                blocked.add(role)
                continue
            g, s1 = chosen
            key = CellKey(svc.name, role, g, s1)
            cells[key] = cells.get(key, 0) + 1
            free[(g, s1)] -= spec.gpus_per_instance
            budget_left -= spec.gpus_per_instance
            deficit[role] -= spec.weight(g)
        for r in Role:
            if deficit[r] > _EPS:
                unmet[(svc.name, r)] = deficit[r]

    placement = Placement.of(cells.items())
    reason = "greedy (HeteroScale Algorithm 4)"
    if unmet:
        short = ", ".join(f"{s}/{r.value} {v:.1f}" for (s, r), v in sorted(unmet.items()))
        reason += f"; not enough free GPUs for: {short}"
    return PlacementPlan(placement=placement, method="greedy", reason=reason, unmet=unmet)
