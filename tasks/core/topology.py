"""The resource view placement works on: GPUs per (GPU type, S1 domain), domains, priorities.

Pure. Built from the cluster config (twin) or from discovered nodes (Kubernetes); both produce a
`ClusterView`. Placement aggregates by S1 domain and GPU type, never by node or pod, so the view
stays small at tens of thousands of GPUs.

RDMA-subgroup priority (HeteroScale section 5): homogeneous S2 domains are common (priority 0),
S2 domains mixing GPU types are medium (1), S1 domains mixing GPU types are scarce (2). Explicit
`rdma_subgroups` in the config override the derived priority of the domains they name.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from models.config import AffinityLevel, ClusterConfig
from models.values import Placement

ANY_DOMAIN = "*"


@dataclass(frozen=True, slots=True)
class DomainCapacity:
    """GPUs of one type under one S1 switch."""

    gpu_type: str
    s1: str
    s2: str
    gpus_total: int
    gpus_per_node: int
    gpus_other: int = 0  # requested by workloads we do not manage


@dataclass(frozen=True, slots=True)
class ClusterView:
    """What placement may use, and what we run now (`placement`, starting instances included)."""

    capacities: tuple[DomainCapacity, ...]
    placement: Placement = field(default_factory=Placement)
    priority_override: tuple[tuple[str, str, int], ...] = ()  # (level, domain, priority)
    gpu_budget: int | None = None
    # S1 -> S2, built once per view (domain_of is called per cell; rebuilding it there was quadratic).
    _s2: dict[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_s2", {c.s1: c.s2 for c in self.capacities})

    def s2_of(self) -> dict[str, str]:
        return dict(self._s2)

    def domain_of(self, s1: str, level: AffinityLevel) -> str:
        if level is AffinityLevel.S1:
            return s1
        if level is AffinityLevel.S2:
            return self._s2[s1]
        return ANY_DOMAIN

    def domains(self, level: AffinityLevel) -> dict[str, tuple[str, ...]]:
        """Domain name -> its S1 domains (in capacity order), at an affinity level."""
        out: dict[str, dict[str, None]] = {}  # dicts as ordered sets
        for c in self.capacities:
            out.setdefault(self.domain_of(c.s1, level), {})[c.s1] = None
        return {d: tuple(s1s) for d, s1s in out.items()}

    def priorities(self, level: AffinityLevel) -> dict[str, int]:
        """Priority of each domain at `level` (higher = scarcer, spent last, freed first)."""
        types_of: dict[str, set[str]] = defaultdict(set)
        for c in self.capacities:
            types_of[self.domain_of(c.s1, level)].add(c.gpu_type)
        prio: dict[str, int] = {}
        for d, types in types_of.items():
            mixed = len(types) > 1
            if level is AffinityLevel.S1:
                prio[d] = 2 if mixed else 0
            elif level is AffinityLevel.S2:
                prio[d] = 1 if mixed else 0
            else:
                prio[d] = 0
        for lvl, d, p in self.priority_override:
            if lvl == level.value and d in prio:
                prio[d] = p
        return prio

    def free_gpus(
        self, placement: Placement, gpus_per_instance: dict[tuple[str, str], int]
    ) -> dict[tuple[str, str], int]:
        """Free GPUs per (gpu_type, s1) once `placement` runs; `gpus_per_instance[(service, role)]`."""
        free = {(c.gpu_type, c.s1): c.gpus_total - c.gpus_other for c in self.capacities}
        for k, used in gpus_used(placement, gpus_per_instance).items():
            free[k] = free.get(k, 0) - used
        return free

    @property
    def total_gpus(self) -> int:
        return sum(c.gpus_total for c in self.capacities)


def gpus_used(placement: Placement, gpus_per_instance: dict[tuple[str, str], int]) -> dict[tuple[str, str], int]:
    """GPUs a placement holds per (gpu_type, s1); `gpus_per_instance[(service, role)]`."""
    used: dict[tuple[str, str], int] = {}
    for key, n in placement.cells.items():
        k = (key.gpu_type, key.s1)
        used[k] = used.get(k, 0) + n * gpus_per_instance[(key.service, key.role.value)]
    return used


def view_from_config(config: ClusterConfig, placement: Placement | None = None) -> ClusterView:
    """The resource view of a config's declared topology (the twin's cluster)."""
    agg: dict[tuple[str, str], list[int | str]] = {}
    for pool in config.topology.node_pools:
        key = (pool.gpu_type, pool.s1)
        if key in agg:
            agg[key][1] = int(agg[key][1]) + pool.nodes * pool.gpus_per_node
        else:
            agg[key] = [pool.s2, pool.nodes * pool.gpus_per_node, pool.gpus_per_node]
    caps = tuple(
        DomainCapacity(gpu_type=g, s1=s1, s2=str(v[0]), gpus_total=int(v[1]), gpus_per_node=int(v[2]))
        for (g, s1), v in sorted(agg.items())
    )
    override = tuple((sg.level.value, d, sg.priority) for sg in config.rdma_subgroups for d in sg.domains)
    return ClusterView(
        capacities=caps,
        placement=placement or Placement(),
        priority_override=override,
        gpu_budget=config.cluster.gpu_budget,
    )


def gpus_per_instance_map(config: ClusterConfig) -> dict[tuple[str, str], int]:
    return {
        (svc.name, role): getattr(svc, role).gpus_per_instance
        for svc in config.services
        for role in ("prefill", "decode")
    }
