"""Greedy topology-aware placement: HeteroScale's Algorithm 4, pure.

Contract: `place_greedy(config, view, targets)` returns a `PlacementPlan` whose placement gives
each service in `targets` at least its target in reference-GPU instances per role where the free
GPUs allow, and reports the rest as `unmet`. Services not in `targets` keep their cells.

  * Scale-in first (it frees GPUs), services by ascending priority: shrink the cells on the
    highest-priority (scarcest) domains first, least-preferred GPU type first.
  * Scale-out by descending service priority, one instance at a time, the role furthest below
    its target first. Domains at the service's affinity level are walked from the lowest subgroup
    priority up, a domain already holding a group of the service first among equals, so a new
    group is opened in a common domain rather than spending a premium one. A new group is only
    opened where both roles can start, so a group's P and D share its network domain.
  * Within a domain: GPU types in the role's preference order; the S1 with a pod of the group
    first, then the tightest fit.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping

from models.config import AffinityLevel, ClusterConfig, Role, Service
from models.values import CellKey, Placement, PlacementPlan, RoleCounts
from tasks.core.topology import ANY_DOMAIN, ClusterView, gpus_per_instance_map

_EPS = 1e-9


def _have(cells: Mapping[CellKey, int], svc: Service, role: Role) -> float:
    spec = svc.role(role)
    return sum(
        n * spec.weight(k.gpu_type)
        for k, n in cells.items()
        if k.service == svc.name and k.role is role and k.gpu_type in spec.capacity_tokens_per_s
    )


def place_greedy(config: ClusterConfig, view: ClusterView, targets: Mapping[str, RoleCounts]) -> PlacementPlan:
    gpi = gpus_per_instance_map(config)
    cells: dict[CellKey, int] = dict(view.placement.cells)
    free = view.free_gpus(view.placement, gpi)
    used = sum(n * gpi[(k.service, k.role.value)] for k, n in cells.items())
    budget_left = math.inf if view.gpu_budget is None else view.gpu_budget - used
    s2_of = view.s2_of()
    levels = {svc.affinity for svc in config.services}
    domains = {lvl: view.domains(lvl) for lvl in levels}
    prios = {lvl: view.priorities(lvl) for lvl in levels}

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


def group_counts(
    view: ClusterView, config: ClusterConfig, placement: Placement
) -> dict[tuple[str, str], dict[Role, int]]:
    """Instances per deployment group (service, domain at its affinity level) and role."""
    out: dict[tuple[str, str], dict[Role, int]] = defaultdict(lambda: {r: 0 for r in Role})
    aff = {s.name: s.affinity for s in config.services}
    for k, n in placement.cells.items():
        out[(k.service, view.domain_of(k.s1, aff[k.service]))][k.role] += n
    return dict(out)
