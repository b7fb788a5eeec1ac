"""Node-level realisation: turn per-(service, role, GPU type, S1) counts into pods per node.

Contract: `realize(nodes, placement, gpus_per_instance=..., current=None)` returns a `Realization`
that assigns every instance of `placement` to one node of its cell's GPU type and S1 domain, never
putting more GPUs on a node than its `gpus_free`, or lists it in `unplaced` when no node in the
domain has room left (the S1 total had room but it is fragmented across nodes). Pure and
deterministic: no I/O, no clock; same input, same output.

  * `NodeSlot.gpus_free` is what the managed placement may use on the node: allocatable GPUs minus
    GPUs requested by pods we do not manage. The managed pods themselves are *not* subtracted:
    `realize` places all of `placement`, running instances included.
  * Stability first: with `current` (the last realisation), an instance that still exists keeps
    its node (up to the new count of its cell), so a re-plan moves only what changed.
  * The rest is best-fit decreasing inside each (GPU type, S1): largest instances first, each on
    the node with the least free GPUs that still fits it. With instance sizes that divide each
    other and the node size (1, 2, 4, 8 GPUs on 8-GPU nodes) this packs every instance whenever
    the domain's GPU total allows, so the ILP's S1-level capacity is enough in that case.

The Kubernetes actuator pins Deployments to an S1 via node affinity today; a node-pinning actuator
would use `Realization.by_node` (docs/placement.md, "Node-level realisation").
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from models.config import ClusterConfig
from models.values import CellKey, Placement


@dataclass(frozen=True, slots=True)
class NodeSlot:
    """One node as realisation sees it."""

    name: str
    gpu_type: str
    s1: str
    gpus_free: int  # allocatable GPUs minus GPUs of pods we do not manage


@dataclass(frozen=True, slots=True)
class Realization:
    """Instances per (node, cell); what did not fit any node of its domain; why."""

    by_node: Mapping[str, Mapping[CellKey, int]] = field(default_factory=dict)
    unplaced: Mapping[CellKey, int] = field(default_factory=dict)
    moved: int = 0  # instances placed on a node other than the one `current` had them on, or new

    def count(self, key: CellKey) -> int:
        return sum(cells.get(key, 0) for cells in self.by_node.values())

    def assignments(self) -> Iterable[tuple[str, CellKey, int]]:
        """(node, cell, instances), sorted: the rows a node-pinning actuator applies."""
        for node in sorted(self.by_node):
            for key, n in sorted(self.by_node[node].items(), key=lambda kv: _order(kv[0])):
                yield node, key, n


def _order(k: CellKey) -> tuple[str, str, str, str]:
    return (k.service, k.role.value, k.gpu_type, k.s1)


def nodes_from_config(config: ClusterConfig) -> tuple[NodeSlot, ...]:
    """The nodes of a config's declared topology (the twin's and the benchmark's cluster)."""
    return tuple(
        NodeSlot(name=f"{pool.name}-{i:03d}", gpu_type=pool.gpu_type, s1=pool.s1, gpus_free=pool.gpus_per_node)
        for pool in config.topology.node_pools
        for i in range(pool.nodes)
    )


def realize(
    nodes: Sequence[NodeSlot],
    placement: Placement,
    *,
    gpus_per_instance: Mapping[tuple[str, str], int],
    current: Realization | None = None,
) -> Realization:
    """Per-node assignment of `placement`; `gpus_per_instance[(service, role)]` (pure)."""
    free = {n.name: n.gpus_free for n in nodes}
    pool_of = {n.name: (n.gpu_type, n.s1) for n in nodes}
    pools: dict[tuple[str, str], list[str]] = defaultdict(list)
    for n in sorted(nodes, key=lambda n: n.name):
        pools[(n.gpu_type, n.s1)].append(n.name)
    out: dict[str, dict[CellKey, int]] = defaultdict(dict)
    left = {k: n for k, n in placement.cells.items() if n > 0}

    def put(node: str, key: CellKey, n: int, size: int) -> None:
        out[node][key] = out[node].get(key, 0) + n
        free[node] -= n * size
        left[key] -= n

    # Keep what runs where it runs (biggest instances first, so they keep their scarce room).
    if current is not None:
        kept = sorted(
            ((node, k, n) for node, cells in current.by_node.items() for k, n in cells.items()),
            key=lambda r: (-gpus_per_instance[(r[1].service, r[1].role.value)], r[0], _order(r[1])),
        )
        for node, k, n in kept:
            size = gpus_per_instance[(k.service, k.role.value)]
            if node not in free or pool_of[node] != (k.gpu_type, k.s1):
                continue
            stay = min(n, left.get(k, 0), max(0, free[node]) // size)
            if stay > 0:
                put(node, k, stay, size)
    moved = sum(left.values())

    # Best-fit decreasing for the rest, one instance at a time inside its (GPU type, S1).
    unplaced: dict[CellKey, int] = {}
    order = sorted(left, key=lambda k: (-gpus_per_instance[(k.service, k.role.value)], _order(k)))
    for k in order:
        size = gpus_per_instance[(k.service, k.role.value)]
        names = pools.get((k.gpu_type, k.s1), [])
        while left[k] > 0:
            fits = [name for name in names if free[name] >= size]
            if not fits:
                unplaced[k] = left[k]
                moved -= left[k]
                break
            best = min(fits, key=lambda name: (free[name], name))
            # Fill the best node at once: one instance at a time would pick it again and again,
            # as its free GPUs only shrink and it stays the tightest fit while anything fits.
            put(best, k, min(left[k], free[best] // size), size)
    by_node = {node: dict(cells) for node, cells in out.items() if cells}
    return Realization(by_node=by_node, unplaced=unplaced, moved=moved)
