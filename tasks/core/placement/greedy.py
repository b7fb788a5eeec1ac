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

import bisect
import math
from collections import defaultdict
from collections.abc import Mapping

from models.config import AffinityLevel, ClusterConfig, Role, Service
from models.values import CellKey, Placement, PlacementPlan, RoleCounts
from tasks.core.topology import ClusterView, gpus_per_instance_map

_EPS = 1e-9


class _Pools:
    """Free GPUs per (GPU type, S1), indexed per (affinity level, domain, GPU type) as a sorted list
    of (free, S1): whether a domain has room for an instance is its last entry, the tightest S1
    with room one bisection away. Kept up to date as instances are added (`take`)."""

    def __init__(
        self,
        free: dict[tuple[str, str], int],
        domains: Mapping[AffinityLevel, Mapping[str, tuple[str, ...]]],
    ) -> None:
        self.free = free
        types_of: dict[str, list[str]] = defaultdict(list)
        for g, s1 in free:
            types_of[s1].append(g)
        self._lists: dict[tuple[AffinityLevel, str, str], list[tuple[int, str]]] = {}
        self._of: dict[tuple[str, str], list[list[tuple[int, str]]]] = defaultdict(list)
        for lvl, doms in domains.items():
            for dom, s1s in doms.items():
                for s1 in s1s:
                    for g in types_of.get(s1, ()):
                        lst = self._lists.setdefault((lvl, dom, g), [])
                        lst.append((free[(g, s1)], s1))
                        self._of[(g, s1)].append(lst)
        for lst in self._lists.values():
            lst.sort()

    @property
    def lists(self) -> Mapping[tuple[AffinityLevel, str, str], list[tuple[int, str]]]:
        """(level, domain, GPU type) -> sorted (free, S1): room in a domain is its last entry."""
        return self._lists

    def tightest(self, lvl: AffinityLevel, dom: str, g: str, gpus: int, skip: set[str]) -> str | None:
        """The S1 of `dom` not in `skip` with the fewest free GPUs of type `g` that still holds
        `gpus` (ties: the smaller name)."""
        lst = self._lists.get((lvl, dom, g), [])
        for i in range(bisect.bisect_left(lst, (gpus,)), len(lst)):
            if lst[i][1] not in skip:
                return lst[i][1]
        return None

    def take(self, g: str, s1: str, gpus: int) -> None:
        old = self.free[(g, s1)]
        self.free[(g, s1)] = old - gpus
        for lst in self._of.get((g, s1), ()):
            del lst[bisect.bisect_left(lst, (old, s1))]
            bisect.insort(lst, (old - gpus, s1))


def place_greedy(config: ClusterConfig, view: ClusterView, targets: Mapping[str, RoleCounts]) -> PlacementPlan:
    gpi = gpus_per_instance_map(config)
    cells: dict[CellKey, int] = dict(view.placement.cells)
    free = view.free_gpus(view.placement, gpi)
    used = sum(n * gpi[(k.service, k.role.value)] for k, n in cells.items())
    budget_left = math.inf if view.gpu_budget is None else view.gpu_budget - used
    levels = {svc.affinity for svc in config.services}
    domains = {lvl: view.domains(lvl) for lvl in levels}
    prios = {lvl: view.priorities(lvl) for lvl in levels}
    s1_sets = {lvl: {d: set(s1s) for d, s1s in doms.items()} for lvl, doms in domains.items()}
    # Each (service, role)'s cells in the order of `cells` (dict order breaks the sorts' ties).
    mine_all: dict[tuple[str, Role], list[CellKey]] = defaultdict(list)
    for k in cells:
        mine_all[(k.service, k.role)].append(k)

    def domain(svc: Service, s1: str) -> str:
        return view.domain_of(s1, svc.affinity)

    def have_of(svc: Service, role: Role) -> float:
        spec = svc.role(role)
        return sum(
            cells[k] * spec.weight(k.gpu_type)
            for k in mine_all[(svc.name, role)]
            if k.gpu_type in spec.capacity_tokens_per_s
        )

    services = [svc for svc in config.services if svc.name in targets]

    # Phase 1: scale-in.
    for svc in sorted(services, key=lambda s: s.priority):
        prio = prios[svc.affinity]
        for role in Role:
            spec = svc.role(role)
            target = targets[svc.name].of(role)
            have = have_of(svc, role)
            while have > target + _EPS:
                mine = [k for k in mine_all[(svc.name, role)] if cells[k] > 0]
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
    pools = _Pools(free, domains)
    unmet: dict[tuple[str, Role], float] = {}
    for svc in sorted(services, key=lambda s: -s.priority):
        lvl = svc.affinity
        doms = domains[lvl]
        prio = prios[lvl]
        deficit = {r: targets[svc.name].of(r) - have_of(svc, r) for r in Role}
        blocked: set[Role] = set()
        # The S1s holding a pod of the service, and its groups' domains (only grow in this phase).
        group_s1 = {k.s1 for r in Role for k in mine_all[(svc.name, r)] if cells[k] > 0}
        has_group = {domain(svc, s1) for s1 in group_s1}

        need = {r: svc.role(r).gpus_per_instance for r in Role}
        kinds = {r: tuple(enumerate(svc.role(r).gpu_types)) for r in Role}
        lists = pools.lists

        def type_rank(role: Role, dom: str) -> int | None:
            """Index of the first of the role's GPU types with room in `dom` (None: no room or budget)."""
            gpus = need[role]
            if gpus > budget_left:
                return None
            for i, g in kinds[role]:
                lst = lists.get((lvl, dom, g))
                if lst and lst[-1][0] >= gpus:
                    return i
            return None

        def spot(role: Role, dom: str, g: str) -> str:
            """The S1 of `dom` for an instance on `g`: one holding a pod of the group, then the tightest fit."""
            need = svc.role(role).gpus_per_instance
            mine = [s1 for s1 in group_s1 if s1 in s1_sets[lvl][dom] and free.get((g, s1), 0) >= need]
            if mine:
                return min(mine, key=lambda s1: (free[(g, s1)], s1))
            found = pools.tightest(lvl, dom, g, need, group_s1)
            assert found is not None  # type_rank found room of this type in dom
            return found

        while True:
            open_roles = [r for r in Role if deficit[r] > _EPS and r not in blocked]
            if not open_roles:
                break
            role = max(
                open_roles,
                key=lambda r: (deficit[r] / max(targets[svc.name].of(r), 1), r is Role.DECODE),
            )
            spec = svc.role(role)
            other = Role.DECODE if role is Role.PREFILL else Role.PREFILL
            other_needed = targets[svc.name].of(other) > 0
            # The first domain by (subgroup priority, holds a group first, GPU-type rank of this pod
            # plus, for a new group, its counterpart's (99: none), name); a new group only where
            # both roles can start.
            best: tuple[int, bool, int, str] | None = None
            for dom in doms:
                own = type_rank(role, dom)
                if own is None:
                    continue
                if dom in has_group:
                    key = (prio.get(dom, 0), False, own, dom)
                else:
                    counterpart = type_rank(other, dom)
                    if counterpart is None and other_needed:
                        continue
                    key = (prio.get(dom, 0), True, own + (99 if counterpart is None else counterpart), dom)
                if best is None or key < best:
                    best = key
            if best is None:
                blocked.add(role)
                continue
            dom = best[3]
            g = spec.gpu_types[type_rank(role, dom)]  # type: ignore[index]
            s1 = spot(role, dom, g)
            key = CellKey(svc.name, role, g, s1)
            if key not in cells:
                mine_all[(svc.name, role)].append(key)
            cells[key] = cells.get(key, 0) + 1
            pools.take(g, s1, spec.gpus_per_instance)
            budget_left -= spec.gpus_per_instance
            deficit[role] -= spec.weight(g)
            group_s1.add(s1)
            has_group.add(dom)
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
