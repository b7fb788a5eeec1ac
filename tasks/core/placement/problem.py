"""The placement problem: sets, parameters and the rules every placement is judged by (pure).

Contract: `build_problem(config, view, targets)` returns a frozen `Problem` holding everything the
model (`model.py`), the constructive start (`start.py`), the polish (`polish.py`) and the score
(`score.py`) share: the moving services and their targets, GPUs per instance, $/GPU-hour,
subgroup priority per S1, the group domain of each (service, S1), free and fixed GPUs per
(GPU type, S1), the current placement, the unmet penalties, the GPU budget left and whether each
(service, role) grows. The rule helpers (`weight`, `prefill_band`, `ratio_ok`, `move_coef`) are
the one definition of a cell's capacity, a group's P/D band and a relocation's charge; no other
module restates them. No clock, no I/O.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from models.config import AffinityLevel, ClusterConfig, PlacementSettings, Role, Service
from models.values import CellKey, RoleCounts
from tasks.core.topology import ClusterView, gpus_per_instance_map

# Tolerance of the placement's float comparisons (capacity units, objective).
EPS = 1e-6
# Unmet demand costs this many times the dearest way to serve one reference instance, so the
# solver leaves demand unmet only when no placement can serve it.
_UNMET_FACTOR = 100.0


class GroupOf(Mapping[tuple[str, str], str]):
    """(service, S1) -> the service's group domain there: the S1, its S2, or "*" (no affinity).

    A mapping over every moving service and S1, read through one S1 -> domain table per affinity
    level instead of a dict of every pair (1.5M pairs, ~0.6 s to build, at 100k GPUs / 500
    services, and `build_problem` runs up to three times a placement).
    """

    __slots__ = ("_level", "_table")

    def __init__(self, level: Mapping[str, AffinityLevel], s2_of: Mapping[str, str]) -> None:
        self._level = dict(level)
        self._table: dict[AffinityLevel, dict[str, str]] = {
            AffinityLevel.S1: {s1: s1 for s1 in s2_of},
            AffinityLevel.S2: dict(s2_of),
            AffinityLevel.NONE: dict.fromkeys(s2_of, "*"),
        }

    def __getitem__(self, key: tuple[str, str]) -> str:
        return self._table[self._level[key[0]]][key[1]]

    def __iter__(self) -> Iterator[tuple[str, str]]:
        s1s = self._table[AffinityLevel.S1]
        return ((name, s1) for name in self._level for s1 in s1s)

    def __len__(self) -> int:
        return len(self._level) * len(self._table[AffinityLevel.S1])


@dataclass(frozen=True, slots=True)
class Problem:
    """Sets and parameters shared by the model, the start, the polish and `evaluate`."""

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


def build_problem(config: ClusterConfig, view: ClusterView, targets: Mapping[str, RoleCounts]) -> Problem:
    """The `Problem` of moving the services in `targets` from `view.placement` (pure)."""
    services = tuple(s for s in config.services if s.name in targets)
    moving = {s.name for s in services}
    gpi = gpus_per_instance_map(config)
    s2_of = view.s2_of()
    p1, p2 = view.priorities(AffinityLevel.S1), view.priorities(AffinityLevel.S2)
    prio = {s1: max(p1.get(s1, 0), p2.get(s2, 0)) for s1, s2 in s2_of.items()}

    group_of = GroupOf({s.name: s.affinity for s in services}, s2_of)
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
        running[(k.service, k.role)] += n * weight(by_name[k.service], k.role, k.gpu_type)
    growing = {
        (s.name, role): targets[s.name].of(role) >= running[(s.name, role)] - 1e-9 for s in services for role in Role
    }
    return Problem(
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


def move_coef(pb: Problem, st: PlacementSettings, k: CellKey, *, start: bool) -> float:
    """Relocation charge of starting (`start`) or stopping one instance of cell `k`."""
    if st.move_weight_h <= 0 or pb.growing[(k.service, k.role)] == start:
        return 0.0
    return st.move_weight_h * pb.gpi[(k.service, k.role.value)] * pb.cost[k.gpu_type]


def change_coefs(pb: Problem, st: PlacementSettings, k: CellKey) -> tuple[float, float]:
    """Objective coefficients of starting (up) and stopping (down) one instance of a current cell:
    the churn charge plus the relocation charge of that direction."""
    churn = st.churn_weight_h * pb.gpi[(k.service, k.role.value)] * pb.cost[k.gpu_type]
    return churn + move_coef(pb, st, k, start=True), churn + move_coef(pb, st, k, start=False)


def weight(svc: Service, role: Role, gpu_type: str) -> float:
    """Reference instances one instance of `svc`'s `role` on `gpu_type` is worth (0: not allowed)."""
    spec = svc.role(role)
    return spec.weight(gpu_type) if gpu_type in spec.capacity_tokens_per_s else 0.0


def prefill_band(svc: Service, d_units: float, tolerance: float) -> tuple[float, float]:
    """The prefill units a group with `d_units` of decode may hold: pd_ratio +- tolerance, plus one
    instance of rounding either way."""
    rho = svc.pd_ratio.prefill_per_decode
    return rho * (1 - tolerance) * d_units - 1, rho * (1 + tolerance) * d_units + 1


def ratio_ok(svc: Service, p_units: float, d_units: float, tolerance: float) -> bool:
    """Whether a group's prefill units lie in its band (`prefill_band`)."""
    lo, hi = prefill_band(svc, d_units, tolerance)
    return lo - EPS <= p_units <= hi + EPS
