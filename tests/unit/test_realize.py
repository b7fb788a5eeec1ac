"""Node-level realisation: node capacity held, every instance on its own GPU type and S1, best fit,
fragmentation reported, running pods kept on their nodes, deterministic."""

from __future__ import annotations

from collections import defaultdict

from models.config import Role
from models.values import CellKey, Placement
from tasks.core.placement import NodeSlot, Realization, nodes_from_config, realize
from tasks.core.synth import synth_cluster
from tasks.core.topology import gpus_per_instance_map
from tasks.placement_runner import run_ilp

GPI = {("a", "prefill"): 4, ("a", "decode"): 2, ("b", "prefill"): 8, ("b", "decode"): 1}
P_A = CellKey("a", Role.PREFILL, "h100", "s1-1")
D_A = CellKey("a", Role.DECODE, "h100", "s1-1")
P_B = CellKey("b", Role.PREFILL, "h100", "s1-1")


def _used(nodes: tuple[NodeSlot, ...], r: Realization, gpi: dict[tuple[str, str], int]) -> dict[str, int]:
    used: dict[str, int] = defaultdict(int)
    for node, key, n in r.assignments():
        used[node] += n * gpi[(key.service, key.role.value)]
    return used


def test_best_fit_uses_the_tightest_node_and_keeps_whole_nodes_free() -> None:
    nodes = (
        NodeSlot("n1", "h100", "s1-1", 8),
        NodeSlot("n2", "h100", "s1-1", 4),  # another tenant holds 4 GPUs here
        NodeSlot("n3", "h100", "s1-1", 8),
    )
    r = realize(nodes, Placement({P_A: 1, D_A: 2}), gpus_per_instance=GPI)
    assert r.unplaced == {}
    # The 4-GPU prefill fits n2 exactly; the two 2-GPU decodes go on one node, not spread.
    assert r.by_node["n2"] == {P_A: 1}
    assert sorted(r.by_node) == ["n1", "n2"] and r.by_node["n1"] == {D_A: 2}


def test_fragmented_domain_reports_unplaced_instead_of_overfilling() -> None:
    # 8 GPUs free in the S1 in total, but no node has 8: an 8-GPU instance cannot be pinned.
    nodes = (NodeSlot("n1", "h100", "s1-1", 4), NodeSlot("n2", "h100", "s1-1", 4))
    r = realize(nodes, Placement({P_B: 1, D_A: 2}), gpus_per_instance=GPI)
    assert r.unplaced == {P_B: 1}
    assert r.count(D_A) == 2
    assert all(used <= 4 for used in _used(nodes, r, GPI).values())


def test_only_nodes_of_the_cells_type_and_s1_are_used() -> None:
    nodes = (
        NodeSlot("other-type", "a100", "s1-1", 8),
        NodeSlot("other-s1", "h100", "s1-2", 8),
        NodeSlot("mine", "h100", "s1-1", 8),
    )
    r = realize(nodes, Placement({D_A: 6}), gpus_per_instance=GPI)
    assert set(r.by_node) == {"mine"}
    assert r.by_node["mine"] == {D_A: 4} and r.unplaced == {D_A: 2}


def test_running_instances_keep_their_nodes() -> None:
    nodes = tuple(NodeSlot(f"n{i}", "h100", "s1-1", 8) for i in range(4))
    before = Realization(by_node={"n3": {D_A: 3}, "n0": {P_A: 1}})
    r = realize(nodes, Placement({D_A: 4, P_A: 1}), gpus_per_instance=GPI, current=before)
    assert r.by_node["n3"][D_A] >= 3 and r.by_node["n0"][P_A] == 1
    assert r.moved == 1  # only the new decode instance is placed afresh
    # Scale-in: the surviving instances stay where they were.
    smaller = realize(nodes, Placement({D_A: 2}), gpus_per_instance=GPI, current=r)
    assert smaller.by_node == {"n3": {D_A: 2}} and smaller.moved == 0


def test_ilp_placement_on_a_synthetic_cluster_realises_completely_and_deterministically() -> None:
    case = synth_cluster(gpus=800, services=8, gpu_types=3, seed=2)
    plan = run_ilp(case.config, case.view, case.targets)
    gpi = gpus_per_instance_map(case.config)
    nodes = nodes_from_config(case.config)
    r = realize(nodes, plan.placement, gpus_per_instance=gpi)
    # Instance sizes 1/2/4/8 on empty 8-GPU nodes: S1-level capacity is enough, nothing unplaced.
    assert r.unplaced == {}
    assert all(r.count(k) == n for k, n in plan.placement.cells.items())
    cap = {n.name: n.gpus_free for n in nodes}
    assert all(used <= cap[node] for node, used in _used(nodes, r, gpi).items())
    where = {n.name: (n.gpu_type, n.s1) for n in nodes}
    assert all(where[node] == (k.gpu_type, k.s1) for node, k, _ in r.assignments())
    assert realize(nodes, plan.placement, gpus_per_instance=gpi) == r
