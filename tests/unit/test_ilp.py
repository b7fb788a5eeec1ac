"""The placement ILP: affinity, ratio and capacity kept, unmet reported, no churn at rest, fallback."""

from __future__ import annotations

import math
import threading
import time
from collections import defaultdict
from dataclasses import replace

import numpy as np
import pulp
import pytest

from models.config import Role
from models.values import Action, CellKey, Placement, RoleCounts, Targets
from tasks import steps
from tasks.core.placement import Deadline, build_problem, evaluate, highs, large, lp_bound, place_ilp
from tasks.core.placement.arrays import build_arrays, columns_of, subset
from tasks.core.placement.highs import Runner
from tasks.core.placement.model import build_model, to_arrays
from tasks.core.placement.repair import whole_groups
from tasks.core.placement.start import Start
from tasks.core.synth import synth_cluster
from tasks.core.topology import gpus_per_instance_map, view_from_config
from tasks.placement_runner import run_ilp
from tests.builders import make_config, service_dict


def _used_gpus(config, placement: Placement) -> dict[tuple[str, str], int]:
    gpi = gpus_per_instance_map(config)
    used: dict[tuple[str, str], int] = defaultdict(int)
    for k, n in placement.cells.items():
        used[(k.gpu_type, k.s1)] += n * gpi[(k.service, k.role.value)]
    return used


def _two_service_config():
    return make_config(
        services=[
            service_dict("chat", affinity="S2", priority=1),
            service_dict("code", affinity="S1", pd_ratio={"prefill": 1, "decode": 1}),
        ]
    )


def test_affinity_and_ratio_kept_in_every_group() -> None:
    config = _two_service_config()
    view = view_from_config(config)
    targets = {"chat": RoleCounts(4, 8), "code": RoleCounts(3, 3)}
    plan = run_ilp(config, view, targets)
    assert plan.method == "ilp"
    score = evaluate(config, view, targets, plan.placement)
    assert score.affinity_violations == 0
    assert score.ratio_violations == 0
    assert score.unmet == 0
    # Independently of evaluate(): each (service, domain) group holds both roles or neither.
    groups: dict[tuple[str, str], set[Role]] = defaultdict(set)
    for k in plan.placement.cells:
        svc = config.service(k.service)
        groups[(k.service, view.domain_of(k.s1, svc.affinity))].add(k.role)
    assert groups and all(roles == {Role.PREFILL, Role.DECODE} for roles in groups.values())


def test_usable_score_counts_only_what_working_groups_serve() -> None:
    # "code" (S1 affinity, P:D 1:1, ratio tolerance 10 %). In a1: 4 h100 prefill beside 1 h100
    # decode (w reference units), out of ratio: only up to the band's edge (1.1 w + 1 rounding)
    # of prefill serves. In b1: 2 a100 decode with no prefill: an orphan group, serves nothing.
    config = _two_service_config()
    view = view_from_config(config)
    targets = {"code": RoleCounts(4, 3)}
    placement = Placement.of(
        [
            (CellKey("code", Role.PREFILL, "h100", "a1"), 4),
            (CellKey("code", Role.DECODE, "h100", "a1"), 1),
            (CellKey("code", Role.DECODE, "a100", "b1"), 2),
        ]
    )
    score = evaluate(config, view, targets, placement)
    assert (score.affinity_violations, score.ratio_violations) == (1, 1)
    decode = config.service("code").decode
    w = decode.weight("h100")
    assert score.unmet == pytest.approx(max(0.0, 3 - w - 2 * decode.weight("a100")))  # prefill covered
    assert score.usable_unmet == pytest.approx((4 - (1.1 * w + 1)) + (3 - w))
    assert score.usable_cost > score.cost
    # Every ILP answer keeps its groups, so both scores agree there.
    plan = run_ilp(config, view, {"code": RoleCounts(3, 3)})
    ok = evaluate(config, view, {"code": RoleCounts(3, 3)}, plan.placement)
    assert ok.usable_cost == pytest.approx(ok.cost) and ok.usable_unmet == pytest.approx(ok.unmet)


def test_capacity_never_exceeded_and_unmet_reported_when_cluster_too_small() -> None:
    config = _two_service_config()
    view = view_from_config(config)
    # 48 GPUs in total; this asks for far more than fits.
    targets = {"chat": RoleCounts(20, 40), "code": RoleCounts(10, 10)}
    plan = run_ilp(config, view, targets)
    caps = {(c.gpu_type, c.s1): c.gpus_total for c in view.capacities}
    for key, used in _used_gpus(config, plan.placement).items():
        assert used <= caps[key], key
    assert plan.unmet, "a cluster too small must report unmet demand, not an infeasible model"
    assert set(plan.unmet) <= {(s, r) for s in targets for r in Role}
    assert all(v > 0 for v in plan.unmet.values())
    assert evaluate(config, view, targets, plan.placement).affinity_violations == 0


def test_other_workloads_and_fixed_services_keep_their_gpus() -> None:
    config = _two_service_config()
    base = view_from_config(config)
    # Another workload holds 14 of 16 GPUs of h100 in a1; "code" is not moving and keeps its cell.
    caps = tuple(replace(c, gpus_other=14) if (c.gpu_type, c.s1) == ("h100", "a1") else c for c in base.capacities)
    fixed = CellKey("code", Role.PREFILL, "h100", "c1")
    view = replace(
        base, capacities=caps, placement=Placement({fixed: 2, CellKey("code", Role.DECODE, "a100", "c1"): 2})
    )
    plan = run_ilp(config, view, {"chat": RoleCounts(3, 6)})
    assert plan.placement.cells[fixed] == 2
    used = _used_gpus(config, plan.placement)
    assert used.get(("h100", "a1"), 0) <= 2


def test_churn_zero_when_nothing_changes() -> None:
    case = synth_cluster(gpus=600, services=8, gpu_types=3, seed=3)
    first = run_ilp(case.config, case.view, case.targets)
    assert first.method == "ilp"
    again = run_ilp(case.config, replace(case.view, placement=first.placement), case.targets)
    assert again.placement.churn(first.placement) == 0
    # And through steps.place: services on hold are not even re-solved.
    hold = {n: Targets(n, t.num_prefill, t.num_decode, Action.HOLD, "test", "hold") for n, t in case.targets.items()}
    assert steps.place(case.config, replace(case.view, placement=first.placement), hold).placement == first.placement


def test_ilp_above_lp_bound_and_serves_at_least_what_greedy_serves() -> None:
    from tasks.core.placement import place_greedy

    case = synth_cluster(gpus=1500, services=12, gpu_types=3, seed=5)
    ilp = evaluate(case.config, case.view, case.targets, run_ilp(case.config, case.view, case.targets).placement)
    greedy = evaluate(
        case.config, case.view, case.targets, place_greedy(case.config, case.view, case.targets).placement
    )
    bound = lp_bound(case.config, case.view, case.targets)
    assert bound is not None
    assert bound - 1e-6 <= ilp.cost
    assert ilp.unmet <= greedy.unmet + 1e-6
    # The greedy may be cheaper only by breaking groups; the ILP never does.
    assert ilp.affinity_violations == ilp.ratio_violations == 0


class _BrokenSolver(pulp.LpSolver):
    """A solver that fails the way a crashed binary does."""

    def available(self) -> bool:
        return True

    def actualSolve(self, lp: pulp.LpProblem) -> int:
        raise pulp.PulpSolverError("solver crashed (test)")


def test_fallback_to_greedy_on_solver_failure() -> None:
    config = _two_service_config()
    view = view_from_config(config)
    targets = {"chat": RoleCounts(2, 4), "code": RoleCounts(1, 1)}
    plan = run_ilp(config, view, targets, solvers=[_BrokenSolver()])
    assert plan.method == "greedy"
    assert "solver crashed" in plan.reason and "solver crashed" in str(plan.stats["fallback"])
    assert plan.placement.count("chat", Role.DECODE) >= 1


def test_cbc_used_when_highs_fails() -> None:
    config = _two_service_config()
    view = view_from_config(config)
    targets = {"chat": RoleCounts(2, 4), "code": RoleCounts(1, 1)}
    plan = run_ilp(config, view, targets, solvers=[_BrokenSolver(), pulp.PULP_CBC_CMD(msg=False, timeLimit=20)])
    assert plan.method == "ilp"
    assert plan.stats["solver"] == "PULP_CBC_CMD"
    assert evaluate(config, view, targets, plan.placement).affinity_violations == 0


@pytest.mark.parametrize("method", ["ilp", "greedy"])
def test_steps_place_chooses_method(method: str) -> None:
    config = _two_service_config()
    view = view_from_config(config)
    targets = {"chat": Targets("chat", 2, 4, Action.SCALE_OUT, "test", "proportional")}
    assert steps.place(config, view, targets, method=method).method == method


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_whole_groups_trims_the_greedys_broken_groups_by_removals_only(seed: int) -> None:
    # The ILP's greedy fallback: its broken groups (one role alone, or out of ratio) are trimmed.
    # Only removals; every group whole and in ratio afterwards; groups that were fine, and the
    # services not being placed, untouched.
    from tasks.core.placement import place_greedy

    case = synth_cluster(gpus=4000, services=30, gpu_types=3, seed=seed)
    st = case.config.cluster.placement
    pb = build_problem(case.config, case.view, case.targets)
    raw = place_greedy(case.config, case.view, case.targets).placement
    before = evaluate(case.config, case.view, case.targets, raw, st)
    assert before.affinity_violations + before.ratio_violations > 0  # the case exercises the repair
    cells, groups, removed = whole_groups(pb, st, raw.cells)
    after = evaluate(case.config, case.view, case.targets, Placement.of(cells.items()), st)
    assert after.affinity_violations == after.ratio_violations == 0
    assert 0 < groups <= before.affinity_violations + before.ratio_violations
    assert all(n <= raw.cells.get(k, 0) for k, n in cells.items())
    assert sum(raw.cells.values()) - sum(cells.values()) == removed
    touched = {(k.service, pb.group_of[(k.service, k.s1)]) for k in raw.cells if cells.get(k, 0) != raw.cells[k]}
    assert len(touched) == groups
    for k, n in raw.cells.items():
        if k.service not in case.targets:
            assert cells[k] == n


@pytest.mark.parametrize("incumbent", ["poor", "solved"])
def test_time_limit_hit_keeps_the_lower_scoring_of_ilp_and_greedy(incumbent: str, monkeypatch) -> None:
    # The MIP stops at its time limit without a proven gap: the greedy is consulted, and whichever
    # placement is kept must score no worse than the other by evaluate(), counting only what
    # working groups serve (usable_cost; equal to cost for the ILP's placements). The time-limit
    # outcome is injected (the MIP reports "not optimal" with a given incumbent) and the deadline
    # is on a frozen clock, so the test does not depend on the machine's speed: "poor" hands back
    # an incumbent that serves nothing (the greedy must win), "solved" the MIP's own answer.
    from tasks.core.placement import place_greedy

    mip = Runner.mip

    def stopped(self, lo, hi, start, time_limit_s, gap, *, seed=0):  # type: ignore[no-untyped-def]
        sol = self.vector({}) if incumbent == "poor" else mip(self, lo, hi, start, time_limit_s, gap, seed=seed)
        self.optimal, self.status = False, "Time limit reached"
        return sol

    monkeypatch.setattr(Runner, "mip", stopped)
    case = synth_cluster(gpus=4000, services=30, gpu_types=3, seed=2)
    settings = case.config.cluster.placement.model_copy(update={"restrict_above_cells": 0})
    plan = place_ilp(
        case.config, case.view, case.targets, deadline=Deadline(1e9, lambda: 0.0), settings=settings, mip_start="none"
    )
    assert plan.stats["status"] != pulp.LpSolution[pulp.LpSolutionOptimal]
    raw = place_greedy(case.config, case.view, case.targets).placement
    trimmed, _groups, _removed = whole_groups(build_problem(case.config, case.view, case.targets), settings, raw.cells)
    greedy = evaluate(case.config, case.view, case.targets, Placement.of(trimmed.items()), settings)
    assert greedy.affinity_violations == greedy.ratio_violations == 0
    assert float(plan.stats["greedy_objective"]) == pytest.approx(greedy.usable_cost, rel=1e-9)
    kept = evaluate(case.config, case.view, case.targets, plan.placement, settings)
    assert kept.usable_cost <= greedy.usable_cost + 1e-6
    assert plan.method == plan.stats["kept"]
    ilp_obj = float(plan.stats["objective"])
    assert plan.stats["kept"] == ("ilp" if ilp_obj <= greedy.usable_cost else "greedy")
    if incumbent == "poor":
        assert plan.stats["kept"] == "greedy" and ilp_obj > greedy.usable_cost


@pytest.mark.parametrize("one_by_one", [False, True])
def test_constructive_start_keeps_capacity_groups_and_ratio(one_by_one: bool) -> None:
    # The MIP start must be a placement the model accepts: capacity per pool, every group in
    # ratio with both roles, only cells the model has; in either order (`one_by_one`).
    case = synth_cluster(gpus=4000, services=30, gpu_types=3, seed=2)
    st = case.config.cluster.placement
    pb = build_problem(case.config, case.view, case.targets)
    full = build_model(pb, st, relax=True)
    full.prob.solve(pulp.HiGHS(msg=False) if pulp.HiGHS().available() else pulp.PULP_CBC_CMD(msg=False))
    lp_floor = {k: math.floor((v.varValue or 0.0) + 1e-6) for k, v in full.x.items()}
    start = Start(pb, st, list(full.x), prefer=set(), clock=time.perf_counter).run(
        {k: n for k, n in lp_floor.items() if n > 0}, one_by_one=one_by_one
    )
    assert start and set(start) <= set(full.x)
    cells = {k: n for k, n in case.view.placement.cells.items() if k.service not in case.targets}
    cells.update(start)
    placement = Placement.of(cells.items())
    score = evaluate(case.config, case.view, case.targets, placement)
    assert score.affinity_violations == score.ratio_violations == 0
    caps = {(c.gpu_type, c.s1): c.gpus_total - c.gpus_other for c in case.view.capacities}
    for key, used in _used_gpus(case.config, placement).items():
        assert used <= caps[key], key
    # Better than leaving everything unmet, and deterministic.
    assert score.unmet < sum(t.num_prefill + t.num_decode for t in case.targets.values()) / 10
    assert (
        Start(pb, st, list(full.x), prefer=set(), clock=time.perf_counter).run(
            {k: n for k, n in lp_floor.items() if n > 0}, one_by_one=one_by_one
        )
        == start
    )


def test_start_relieve_serves_more_by_moving_others_out_of_the_way() -> None:
    # The start's last repair (`Start._relieve`): on this case the cover step leaves 6 reference
    # instances unmet; moving other services out of the pools the short ones could use serves 2
    # of them, and the placement stays valid (capacity, every group whole and in ratio).
    case = synth_cluster(gpus=4000, services=30, gpu_types=3, seed=2)
    st = case.config.cluster.placement
    pb = build_problem(case.config, case.view, case.targets)
    full = build_model(pb, st, relax=True)
    full.prob.solve(pulp.HiGHS(msg=False) if pulp.HiGHS().available() else pulp.PULP_CBC_CMD(msg=False))
    base = {k: n for k, v in full.x.items() if (n := math.floor((v.varValue or 0.0) + 1e-6)) > 0}
    fixed = {k: n for k, n in case.view.placement.cells.items() if k.service not in case.targets}

    def score(cap_s: float):
        start = Start(pb, st, list(full.x), prefer=set(), clock=time.perf_counter).run(base, relieve_s=cap_s)
        return evaluate(case.config, case.view, case.targets, Placement.of({**fixed, **start}.items())), start

    without, _ = score(0.0)
    relieved, start = score(30.0)  # no time cap in play: the result is the repair's, not the clock's
    assert relieved.unmet < without.unmet - 1
    assert relieved.cost < without.cost
    assert relieved.affinity_violations == relieved.ratio_violations == 0
    caps = {(c.gpu_type, c.s1): c.gpus_total - c.gpus_other for c in case.view.capacities}
    for key, used in _used_gpus(case.config, Placement.of({**fixed, **start}.items())).items():
        assert used <= caps[key], key


def test_mip_start_used_on_large_path_and_placement_valid() -> None:
    case = synth_cluster(gpus=4000, services=30, gpu_types=3, seed=2)
    settings = case.config.cluster.placement.model_copy(update={"restrict_above_cells": 0})
    plan = run_ilp(case.config, case.view, case.targets, settings=settings)
    assert plan.stats["phases"] == 2 and "start_objective" in plan.stats
    # The answer is never worse than the start it was given.
    assert float(plan.stats["objective"]) <= float(plan.stats["start_objective"]) + 1e-6
    score = evaluate(case.config, case.view, case.targets, plan.placement, settings)
    assert score.affinity_violations == score.ratio_violations == 0
    with pytest.raises(ValueError, match="mip_start"):
        run_ilp(case.config, case.view, case.targets, mip_start="psychic")


def test_bulk_pass_to_highs_solves_the_same_lp_as_pulp() -> None:
    # `to_arrays` hands the PuLP model to HiGHS as CSR arrays: the same LP optimum as PuLP's own
    # HiGHS interface, and the solution keeps every row by `Arrays.feasible`.
    highspy = pytest.importorskip("highspy")

    case = synth_cluster(gpus=2000, services=12, gpu_types=3, seed=4)
    st = case.config.cluster.placement
    model = build_model(build_problem(case.config, case.view, case.targets), st, relax=True)
    model.prob.solve(pulp.HiGHS(msg=False))
    arr = to_arrays(model.prob, model.cols)
    assert len(arr.cols) == model.prob.numVariables() and len(arr.row_lo) == model.prob.numConstraints()
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    arr.pass_to(h)
    h.run()
    v = np.array(h.getSolution().col_value)
    assert float(arr.cost @ v) == pytest.approx(float(pulp.value(model.prob.objective)), rel=1e-7)
    assert arr.feasible(v)
    v[0] = arr.hi[0] + 1  # out of bounds
    assert not arr.feasible(v)


@pytest.mark.parametrize("parallel", [True, False])
def test_large_path_parallel_and_sequential_keep_rules_and_beat_start(parallel: bool) -> None:
    # The large-cluster path on one HiGHS model, with RINS beside the MIP (parallel) or before it:
    # a valid placement (capacity, groups, ratio), never worse than the start, gap and bound set.
    case = synth_cluster(gpus=4000, services=30, gpu_types=3, seed=2)
    settings = case.config.cluster.placement.model_copy(update={"restrict_above_cells": 0})
    plan = run_ilp(case.config, case.view, case.targets, settings=settings, parallel=parallel)
    assert plan.method == "ilp" and plan.stats["phases"] == 2
    assert "search_error" not in plan.stats
    assert float(plan.stats["objective"]) <= float(plan.stats["start_objective"]) + 1e-6
    assert float(plan.stats["bound"]) <= float(plan.stats["objective"]) + 1e-6
    score = evaluate(case.config, case.view, case.targets, plan.placement, settings)
    assert score.affinity_violations == score.ratio_violations == 0
    caps = {(c.gpu_type, c.s1): c.gpus_total - c.gpus_other for c in case.view.capacities}
    for key, used in _used_gpus(case.config, plan.placement).items():
        assert used <= caps[key], key
    if plan.stats["status"] == pulp.LpSolution[pulp.LpSolutionOptimal]:
        assert float(plan.stats["gap"]) <= settings.mip_gap + 1e-9
    # The RINS thread is stopped before the call returns.
    assert not any(t.name == "placement-rins" and t.is_alive() for t in threading.enumerate())


@pytest.mark.parametrize("parallel", [True, False])
def test_rins_only_mode_above_the_relax_threshold_keeps_rules_and_the_lp_bound(parallel: bool, monkeypatch) -> None:
    # Above `RELAX_GROUPS_ABOVE_COLUMNS` and `RINS_ONLY_ABOVE_COLUMNS` (50k GPUs and more in
    # production; 0 here) the LP drops the group rows (putting back those its answer breaks) and
    # phase 2 is RINS only: a valid placement, never worse than the start, scored against the
    # relaxed LP's bound, which is at most the full LP's.
    monkeypatch.setattr(large, "RELAX_GROUPS_ABOVE_COLUMNS", 0)
    monkeypatch.setattr(large, "RINS_ONLY_ABOVE_COLUMNS", 0)
    case = synth_cluster(gpus=4000, services=30, gpu_types=3, seed=2)
    settings = case.config.cluster.placement.model_copy(update={"restrict_above_cells": 0})
    plan = run_ilp(case.config, case.view, case.targets, settings=settings, parallel=parallel)
    assert plan.method == "ilp" and plan.stats["rins_only"] == 1 and plan.stats["lp_groups_relaxed"] == 1
    assert "search_error" not in plan.stats
    assert float(plan.stats["objective"]) <= float(plan.stats["start_objective"]) + 1e-6
    full = lp_bound(case.config, case.view, case.targets, settings)
    assert float(plan.stats["bound"]) <= full + 1e-6 and float(plan.stats["bound"]) <= float(plan.stats["objective"])
    score = evaluate(case.config, case.view, case.targets, plan.placement, settings)
    assert score.affinity_violations == score.ratio_violations == 0
    caps = {(c.gpu_type, c.s1): c.gpus_total - c.gpus_other for c in case.view.capacities}
    for key, used in _used_gpus(case.config, plan.placement).items():
        assert used <= caps[key], key
    assert not any(t.name == "placement-rins" and t.is_alive() for t in threading.enumerate())


def test_subset_model_is_the_restricted_model() -> None:
    # `arrays.subset` (phase 2's model: only the cells it may use) has the optimum of the full
    # model with every other cell's upper bound 0, and maps back to the same cells.
    highspy = pytest.importorskip("highspy")
    case = synth_cluster(gpus=1200, services=10, gpu_types=3, seed=5)
    st = case.config.cluster.placement
    pb = build_problem(case.config, case.view, case.targets)
    cols = build_arrays(pb, st)
    keys = list(cols.x_col)
    keep = np.ones(cols.arr.n_cols, dtype=bool)
    dropped = [cols.x_col[k] for i, k in enumerate(keys) if i % 3 == 0 and k not in pb.current]
    keep[dropped] = False
    sub = subset(cols, keep)
    assert sub.arr.n_cols == int(keep.sum()) and set(sub.x_col) == {k for k in keys if keep[cols.x_col[k]]}
    assert len(sub.arr.row_lo) < len(cols.arr.row_lo)  # rows left empty are dropped

    def optimum(columns, hi):
        h = highspy.Highs()
        h.setOptionValue("output_flag", False)
        h.setOptionValue("mip_rel_gap", 0.0)
        columns.arr.pass_to(h)
        h.changeColsBounds(columns.arr.n_cols, np.arange(columns.arr.n_cols, dtype=np.int32), columns.arr.lo, hi)
        h.run()
        v = np.array(h.getSolution().col_value)
        return float(columns.arr.cost @ v), Runner(columns, pb, st).cells(v)

    hi = cols.arr.hi.copy()
    hi[dropped] = 0.0
    want, _ = optimum(cols, hi)
    got, cells = optimum(sub, sub.arr.hi)
    assert got == pytest.approx(want, rel=1e-9)
    assert all(keep[cols.x_col[k]] for k in cells)


def test_model_build_is_unchanged_by_the_list_built_expressions(tmp_path) -> None:
    # Every constraint named, and the LP file stable for a fixed case (sets -> ... -> constraints).
    case = synth_cluster(gpus=2000, services=12, gpu_types=3, seed=4)
    st = case.config.cluster.placement
    pb = build_problem(case.config, case.view, case.targets)
    a, b = build_model(pb, st), build_model(pb, st)
    names = [c.name for c in a.prob.constraints()]
    assert all(names) and len(set(names)) == len(names)
    assert {n.split("__")[0] for n in names} >= {"cap", "demand", "max_instances", "ratio_lo", "ratio_hi", "pair_p"}
    a.prob.writeLP(str(tmp_path / "a.lp"))
    b.prob.writeLP(str(tmp_path / "b.lp"))
    assert (tmp_path / "a.lp").read_text() == (tmp_path / "b.lp").read_text()
    assert [v.name for v in a.cols][: len(a.x)] == [v.name for v in a.x.values()]


@pytest.mark.parametrize(
    ("gpus", "services", "seed", "fragmentation", "budget", "relax"),
    [(4000, 30, 2, 0.0, False, False), (2000, 12, 4, 0.3, True, False), (3000, 20, 5, 0.0, True, True)],
)
def test_arrays_built_without_pulp_equal_the_pulp_models_arrays(
    gpus: int, services: int, seed: int, fragmentation: float, budget: bool, relax: bool
) -> None:
    # `build_arrays` (the large path's model, no PuLP objects) must be exactly `to_arrays` of the
    # PuLP model: same columns, rows, order, coefficients, bounds and objective, also with the
    # nodes columns (fragmentation), the GPU budget row and a stale running cell (a GPU type the
    # service no longer allows, so its capacity weight is 0).
    case = synth_cluster(gpus=gpus, services=services, gpu_types=3, seed=seed)
    st = case.config.cluster.placement.model_copy(update={"fragmentation_weight": fragmentation})
    view = case.view
    svc, banned = next(
        (s, g.name)
        for s in case.config.services
        if s.name in case.targets
        for g in case.config.gpu_types
        if g.name not in s.decode.gpu_types
    )
    stale = CellKey(svc.name, Role.DECODE, banned, view.capacities[0].s1)
    view = replace(
        view,
        placement=Placement.of([*view.placement.cells.items(), (stale, 1)]),
        gpu_budget=sum(c.gpus_total for c in view.capacities) // 2 if budget else None,
    )
    pb = build_problem(case.config, view, case.targets)
    assert stale in pb.current
    model = build_model(pb, st, relax=relax)
    want = to_arrays(model.prob, model.cols)
    got = build_arrays(pb, st, relax=relax)
    for f in ("cost", "lo", "hi", "integer", "row_lo", "row_hi", "indptr", "index", "value"):
        assert np.array_equal(getattr(got.arr, f), getattr(want, f)), f
    names = [v.name for v in model.cols]
    assert [names[c] for c in got.x_col.values()] == [v.name for v in model.x.values()]
    assert {k: names[c] for k, c in got.up_col.items()} == {k: v.name for k, v in model.up.items()}
    assert {k: names[c] for k, c in got.unmet_col.items()} == {k: v.name for k, v in model.unmet.items()}
    assert got.arr.hi[got.x_col[stale]] == 0.0
    # The group rows (what `Runner.lp(relax_groups=True)` leaves out) are the same rows either way.
    assert np.array_equal(got.group_rows, columns_of(model).group_rows)
    names_of_rows = list(model.prob.constraints)
    assert len(got.group_rows) and {names_of_rows[r].split("__")[0] for r in got.group_rows} == {
        "ratio_lo",
        "ratio_hi",
        "pair_p",
        "pair_d",
    }


@pytest.mark.parametrize(("seed", "rounds"), [(1, 0), (2, 0), (1, 2)])
def test_lp_without_group_rows_is_a_lower_bound_and_leaves_the_model_whole(seed: int, rounds: int, monkeypatch) -> None:
    # The large path's LP above `RELAX_GROUPS_ABOVE_COLUMNS` drops each group's ratio and pairing
    # rows (then puts back, `LP_ROW_ROUNDS` times, those its answer breaks): a relaxation, so its
    # objective is at most the full LP's (a bound on every placement), and the rows are back
    # afterwards: the next full LP on the same model is the fresh one's.
    monkeypatch.setattr(highs, "LP_ROW_ROUNDS", rounds)
    case = synth_cluster(gpus=4000, services=30, gpu_types=4, seed=seed)
    st = case.config.cluster.placement
    pb = build_problem(case.config, case.view, case.targets)
    fresh = Runner(build_arrays(pb, st), pb, st)
    full_lp = fresh.lp()
    assert full_lp is not None
    run = Runner(build_arrays(pb, st), pb, st)
    relaxed = run.lp(relax_groups=True)
    assert relaxed is not None and run.row_dual is not None
    assert run.objective(relaxed) <= fresh.objective(full_lp) + 1e-6
    rows = run.columns.group_rows
    if rounds == 0:
        assert np.all(run.row_dual[rows] == 0.0)
    broken = run._broken(rows, relaxed)
    # With rounds, the rows it put back hold; the answer breaks fewer group rows than without.
    plain = Runner(build_arrays(pb, st), pb, st)
    monkeypatch.setattr(highs, "LP_ROW_ROUNDS", 0)
    first = plain.lp(relax_groups=True)
    assert len(broken) <= len(plain._broken(rows, first))
    again = run.lp()
    assert again is not None and run.objective(again) == pytest.approx(fresh.objective(full_lp), rel=1e-9)
    assert run.arr.feasible(again)


def test_group_of_maps_every_service_and_s1_to_its_affinity_domain() -> None:
    # `GroupOf` reads per-level tables instead of a dict of every (service, S1) pair: the same map.
    case = synth_cluster(gpus=4000, services=30, gpu_types=4, seed=3)
    pb = build_problem(case.config, case.view, case.targets)
    s2_of = case.view.s2_of()
    want = {
        (s.name, s1): s1 if s.affinity.value == "S1" else s2_of[s1] if s.affinity.value == "S2" else "*"
        for s in pb.services
        for s1 in s2_of
    }
    assert dict(pb.group_of) == want and len(pb.group_of) == len(want)
    assert {s.affinity.value for s in pb.services} == {"S1", "S2", "none"}


@pytest.mark.parametrize("failure", ["start", "restricted", "lp"])
def test_failure_paths_end_near_the_time_limit_with_a_valid_placement(failure: str, monkeypatch) -> None:
    # The constructive start fails (then also the restricted MIP, or the LP): the call must still
    # end near `time_limit_s` (plus the greedy's time) with a valid placement. Generous bound
    # against a busy machine; the measured times at 20k GPUs are in docs/placement.md.
    monkeypatch.setattr(Start, "run", lambda self, base, **kw: {})
    if failure == "restricted":
        mip = Runner.mip

        def no_incumbent(self, lo, hi, start, time_limit_s, gap, *, seed=0):  # type: ignore[no-untyped-def]
            mip(self, lo, hi, start, time_limit_s, gap, seed=seed)
            return None

        monkeypatch.setattr(Runner, "mip", no_incumbent)
    if failure == "lp":
        monkeypatch.setattr(Runner, "lp", lambda self, time_limit_s=0.0, **_: None)
    case = synth_cluster(gpus=4000, services=30, gpu_types=3, seed=2)
    limit = 1.0
    settings = case.config.cluster.placement.model_copy(update={"time_limit_s": limit, "restrict_above_cells": 0})
    started = time.perf_counter()
    plan = run_ilp(case.config, case.view, case.targets, settings=settings)
    assert time.perf_counter() - started <= 3 * limit + 2.0
    # The greedy fallback's broken groups are trimmed: no violations whichever answer is kept.
    score = evaluate(case.config, case.view, case.targets, plan.placement, settings)
    assert score.affinity_violations == score.ratio_violations == 0
    caps = {(c.gpu_type, c.s1): c.gpus_total - c.gpus_other for c in case.view.capacities}
    for key, used in _used_gpus(case.config, plan.placement).items():
        assert used <= caps[key], key
    assert sum(plan.placement.cells.values()) > 0
    if failure == "restricted":
        assert plan.method == "greedy" and "skipped" in str(plan.stats["fallback"])
    assert not any(t.name == "placement-rins" and t.is_alive() for t in threading.enumerate())


def test_an_lp_out_of_time_tells_the_operator_to_raise_the_time_limit(monkeypatch) -> None:
    # An LP that does not finish in the limit is a configuration problem at that cluster size:
    # the reason names the setting to raise (with the trimmed greedy used meanwhile).
    def out_of_time(self, time_limit_s=0.0, **_):  # type: ignore[no-untyped-def]
        self.status = "Time limit reached"
        return None

    monkeypatch.setattr(Runner, "lp", out_of_time)
    case = synth_cluster(gpus=4000, services=30, gpu_types=3, seed=2)
    settings = case.config.cluster.placement.model_copy(update={"time_limit_s": 1.0, "restrict_above_cells": 0})
    plan = run_ilp(case.config, case.view, case.targets, settings=settings)
    assert plan.method == "greedy"
    assert "cluster.placement.time_limit_s (1 s) is too short for this cluster" in plan.reason


def test_place_ilp_reads_time_only_from_its_deadline() -> None:
    # The pure entry reads no clock of its own: on a frozen fake clock every elapsed time it
    # reports is 0, and the plan is the same placement the wall-clock adapter finds on one core.
    case = synth_cluster(gpus=2000, services=12, gpu_types=3, seed=4)
    calls = 0

    def frozen() -> float:
        nonlocal calls
        calls += 1
        return 100.0

    plan = place_ilp(case.config, case.view, case.targets, deadline=Deadline(110.0, frozen))
    assert calls > 0
    assert plan.method == "ilp" and plan.stats["build_s"] == 0.0 and plan.stats["solve_s"] == 0.0
    assert plan.placement == run_ilp(case.config, case.view, case.targets, parallel=False).placement


def test_placement_package_imports_no_clock_thread_or_private_names() -> None:
    # tasks/core/placement: no time/threading import, no private name imported across files,
    # and no import of the package itself from inside it (its modules form no cycle).
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "tasks" / "core" / "placement"
    for path in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
                assert not {n.split(".")[0] for n in names} & {"time", "threading"}, path.name
            elif isinstance(node, ast.ImportFrom):
                assert node.module is not None and node.module.split(".")[0] not in ("time", "threading"), path.name
                if node.module.startswith("tasks.core.placement"):
                    assert path.name == "__init__.py" or node.module != "tasks.core.placement", path.name
                    assert not any(a.name.startswith("_") for a in node.names), (path.name, node.module)
