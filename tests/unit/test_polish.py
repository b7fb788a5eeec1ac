"""Churn polish and relocation pricing: unneeded moves undone, constraints kept, churn never up."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace

import pytest

from models.config import AffinityLevel
from models.values import CellKey, Placement
from tasks.core.placement import Deadline, build_problem, evaluate
from tasks.core.placement.polish import polish
from tasks.core.synth import synth_cluster
from tasks.core.topology import gpus_per_instance_map
from tasks.placement_runner import run_ilp


def _relocated(case, plan: Placement) -> tuple[Placement, CellKey, CellKey] | None:
    """`plan` with one instance of a multi-S1 group moved to another S1 of its domain that has room."""
    gpi = gpus_per_instance_map(case.config)
    used: dict[tuple[str, str], int] = defaultdict(int)
    for k, n in plan.cells.items():
        used[(k.gpu_type, k.s1)] += n * gpi[(k.service, k.role.value)]
    caps = {(c.gpu_type, c.s1): c.gpus_total - c.gpus_other for c in case.view.capacities}
    for k, n in sorted(plan.cells.items()):
        svc = case.config.service(k.service)
        if n == 0 or svc.affinity is AffinityLevel.S1 or k.service not in case.targets:
            continue
        dom = case.view.domain_of(k.s1, svc.affinity)
        for (g, s1), cap in sorted(caps.items()):
            if g == k.gpu_type and s1 != k.s1 and case.view.domain_of(s1, svc.affinity) == dom:
                if cap - used[(g, s1)] >= gpi[(k.service, k.role.value)]:
                    to = CellKey(k.service, k.role, g, s1)
                    cells = dict(plan.cells)
                    cells[k] -= 1
                    cells[to] = cells.get(to, 0) + 1
                    return Placement.of(cells.items()), k, to
    return None


def test_polish_undoes_an_unneeded_relocation() -> None:
    case = synth_cluster(gpus=1200, services=10, gpu_types=3, seed=4)
    solved = run_ilp(case.config, case.view, case.targets).placement
    view = replace(case.view, placement=solved)  # the solved fleet now runs; the targets stand
    moved = _relocated(case, solved)
    assert moved is not None, "the case must have a multi-S1 group with room elsewhere in its domain"
    wasteful, src, dst = moved
    pb = build_problem(case.config, view, case.targets)
    st = case.config.cluster.placement
    before = evaluate(case.config, view, case.targets, wasteful)
    assert before.churn == 2
    mine = {k: n for k, n in wasteful.cells.items() if k.service in case.targets}
    cells, steps = polish(pb, st, mine)
    assert steps >= 1
    assert cells.get(src, 0) == solved.cells[src] and cells.get(dst, 0) == solved.cells.get(dst, 0)
    after = evaluate(case.config, view, case.targets, Placement.of(cells.items()))
    assert after.churn == 0 and after.cost < before.cost
    # With a deadline that has passed, no step is taken (the answer is returned as it came).
    late = Deadline(end_s=1.0, clock=lambda: 2.0)
    assert polish(pb, st, mine, deadline=late) == ({k: n for k, n in mine.items() if n > 0}, 0)
    early = Deadline(end_s=2.0, clock=lambda: 1.0)
    assert polish(pb, st, mine, deadline=early) == (cells, steps)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_polish_never_raises_churn_or_cost_and_keeps_constraints(seed: int) -> None:
    case = synth_cluster(gpus=2000, services=20, gpu_types=3, seed=seed)
    st = case.config.cluster.placement
    pb = build_problem(case.config, case.view, case.targets)
    plan = run_ilp(case.config, case.view, case.targets, settings=st)
    # run_ilp already polished its result: polishing again is a fixed point; polishing a copy
    # with one needless relocation must not make churn, cost or the constraints worse.
    mine = {k: n for k, n in plan.placement.cells.items() if k.service in case.targets}
    again, steps = polish(pb, st, mine)
    assert steps == 0 and again == {k: n for k, n in mine.items() if n > 0}
    moved = _relocated(case, plan.placement)
    if moved is None:
        return
    wasteful = moved[0]
    base = evaluate(case.config, case.view, case.targets, wasteful)
    cells, _ = polish(pb, st, {k: n for k, n in wasteful.cells.items() if k.service in case.targets})
    others = {k: n for k, n in wasteful.cells.items() if k.service not in case.targets}
    result = evaluate(case.config, case.view, case.targets, Placement.of({**others, **cells}.items()))
    assert result.churn <= base.churn and result.cost <= base.cost + 1e-6
    assert result.affinity_violations == 0 and result.ratio_violations == 0
    gpi = gpus_per_instance_map(case.config)
    used: dict[tuple[str, str], int] = defaultdict(int)
    for k, n in {**others, **cells}.items():
        used[(k.gpu_type, k.s1)] += n * gpi[(k.service, k.role.value)]
    caps = {(c.gpu_type, c.s1): c.gpus_total - c.gpus_other for c in case.view.capacities}
    assert all(u <= caps[key] for key, u in used.items())


def test_relocation_is_counted_and_priced_only_against_the_direction_of_change() -> None:
    case = synth_cluster(gpus=1200, services=10, gpu_types=3, seed=4)
    solved = run_ilp(case.config, case.view, case.targets).placement
    view = replace(case.view, placement=solved)
    moved = _relocated(case, solved)
    assert moved is not None
    wasteful, src, _dst = moved
    priced = case.config.cluster.placement
    free = priced.model_copy(update={"move_weight_h": 0.0})
    with_moves = evaluate(case.config, view, case.targets, wasteful, priced)
    without = evaluate(case.config, view, case.targets, wasteful, free)
    # Targets equal what runs: the role "grows" by zero, so the stop is the relocation.
    assert with_moves.moves == 1 and with_moves.churn == 2
    gpi = gpus_per_instance_map(case.config)[(src.service, src.role.value)]
    cost = {g.name: g.cost_per_gpu_hour for g in case.config.gpu_types}[src.gpu_type]
    assert with_moves.cost - without.cost == pytest.approx(priced.move_weight_h * gpi * cost)
    # Once the role's target rises above what runs, one more instance is a scale step, not a
    # relocation, and stopping one is.
    t = case.targets[src.service]
    up = dict(case.targets)
    up[src.service] = replace(t, num_prefill=t.num_prefill + 10, num_decode=t.num_decode + 10)
    grown, shrunk = dict(solved.cells), dict(solved.cells)
    grown[src] += 1
    shrunk[src] -= 1
    assert evaluate(case.config, view, up, Placement.of(grown.items()), priced).moves == 0
    assert evaluate(case.config, view, up, Placement.of(shrunk.items()), priced).moves == 1
