"""Placement as an integer program: heterogeneous, topology-aware, ratio-keeping (the entry).

Contract: `place_ilp(config, view, targets, deadline=...)` returns a `PlacementPlan` with the same
meaning as `place_greedy`: every service in `targets` gets at least its target (reference-GPU
instances per role) where the free GPUs allow, the shortfall is reported in `unmet`, and services
not in `targets` keep their cells. It never raises for a solver problem: on a solver failure, or
a time limit hit before any feasible solution, it returns the greedy plan with `method="greedy"`
and the reason in `reason` and `stats["fallback"]`. It raises `ValueError` for an unknown
`mip_start`.

Small clusters: the whole model (`model.py`) to HiGHS, then CBC. Large ones (more cells than
`restrict_above_cells`): `large.solve_large` (LP, constructive start, RINS, the MIP on the LP's
cells). Every answer is then polished (`polish.py`) and scored by `score.evaluate`. The time
limit is `deadline` (built by the caller from `time_limit_s` on its clock); the RINS search runs
beside the MIP only on the second core the caller injects (`parallel`). This module reads no
clock and starts no thread: the adapter `tasks/placement_runner.py` supplies both.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence

import pulp

from models.config import ClusterConfig, PlacementSettings, Role
from models.values import CellKey, Placement, PlacementPlan, RoleCounts
from tasks.core.placement.arrays import build_arrays
from tasks.core.placement.deadline import Deadline
from tasks.core.placement.greedy import place_greedy
from tasks.core.placement.large import solve_large
from tasks.core.placement.model import MIN_SOLVE_S, Model, build_model, make_solvers, solve
from tasks.core.placement.polish import polish
from tasks.core.placement.problem import EPS, Problem, build_problem, weight
from tasks.core.placement.repair import whole_groups
from tasks.core.placement.score import evaluate
from tasks.core.placement.search import Parallel
from tasks.core.topology import ClusterView

MIP_STARTS = ("ratio", "none")
# Share of the time limit kept for what follows the solve (polish, scoring, the greedy second
# opinion): 0.1-0.25 s at 20k GPUs, where a 1.9 s limit took up to 2.7 s before (docs/placement.md).
FINISH_SHARE = 0.05
# ... plus this long per model column: 1.3 s of such work at 100k GPUs / 500 services (336k columns).
FINISH_S_PER_COLUMN = 3e-6


def place_ilp(
    config: ClusterConfig,
    view: ClusterView,
    targets: Mapping[str, RoleCounts],
    *,
    deadline: Deadline,
    settings: PlacementSettings | None = None,
    solvers: Sequence[pulp.LpSolver] | None = None,
    mip_start: str = "ratio",
    parallel: Parallel | None = None,
    lagrange_s: float = 0.0,
) -> PlacementPlan:
    """Optimal placement of `targets` by `deadline`; the greedy plan (with the reason) on failure.

    On large clusters (`restrict_above_cells`) the MIP is solved on the LP's cells
    (`large.solve_large`). When the solver stops at its time limit without a proven gap, the
    greedy is also run and kept if `evaluate()` scores it lower (it may break groups:
    `stats["kept"]` says which was kept); this can overrun the deadline by the greedy's time
    (0.7-3.4 s at 20k GPUs). `mip_start` ("ratio" | "none") chooses whether the large-cluster MIP
    starts from the constructive start + RINS (docs/placement.md) or from nothing. `parallel`
    runs the RINS search beside the MIP (two cores); None runs it before the MIP (one core).
    `lagrange_s` > 0 (large path) spends up to that long of the main core, while RINS runs, on the
    proven bound of `lagrange.global_bound` (`stats["global_bound"]`), and stops the MIP once the
    best placement is within `mip_gap` of it; 0 (default): `stats["global_bound"]` is the LP bound.
    `solvers` replaces the solver list (and the large path) with exactly those solvers.
    """
    if mip_start not in MIP_STARTS:
        raise ValueError(f"mip_start must be one of {MIP_STARTS}, got {mip_start!r}")
    st = settings or config.cluster.placement
    started = deadline.now_s()
    left = deadline.left_s()
    pb = build_problem(config, view, targets)
    # The large path needs only the HiGHS arrays, built without PuLP objects (`arrays.py`: ~6x
    # faster at 50k-100k GPUs); the PuLP model is built only when a PuLP solve is needed.
    columns = build_arrays(pb, st) if solvers is None and pulp.HiGHS().available() else None
    if columns is not None and len(columns.x_col) <= st.restrict_above_cells:
        columns = None
    model: Model | None = None
    if columns is not None:
        size = (columns.arr.n_cols, len(columns.arr.row_lo))
    else:
        model = build_model(pb, st)
        size = (model.prob.numVariables(), model.prob.numConstraints())
    built = deadline.now_s()
    # The solve phases end a little before `deadline`, so that what follows them (polish, scoring,
    # the greedy second opinion, HiGHS's last root-cut round) fits in the time limit too: a share
    # of the limit plus a time per column (docs/placement.md).
    reserve = FINISH_SHARE * left + FINISH_S_PER_COLUMN * size[0]
    solve_by = deadline.earlier(reserve) if math.isfinite(left) and left > 0 else deadline
    stats: dict[str, float | int | str] = {
        "variables": size[0],
        "constraints": size[1],
        "build_s": round(built - started, 4),
        "phases": 1,
    }
    name = sol = ""
    failures: list[str] = []
    values: dict[CellKey, int] | None = None
    if columns is not None:
        name, sol, failures, values = solve_large(
            pb,
            st,
            columns,
            stats,
            solve_by,
            started_s=started,
            mip_start=mip_start,
            parallel=parallel,
            lagrange_s=lagrange_s,
        )
    if not name:
        time_left = solve_by.left_s()
        if solvers is not None or not failures or time_left >= MIN_SOLVE_S:
            model = model or build_model(pb, st)
        if solvers is not None and model is not None:
            name, sol, more = solve(model.prob, solvers)
        elif model is not None:
            # The full model once more (small clusters: the only solve), within what is left.
            name, sol, more = solve(model.prob, make_solvers(st, max(0.1, solve_by.left_s())), solve_by)
        else:
            # The large path failed with too little time left for the full model (passing it to
            # HiGHS alone takes ~0.8 s at 20k GPUs): the greedy, not an overrun.
            more = [f"full model: skipped, {max(0.0, time_left):.2f} s left of the time limit"]
        failures += more
        values = model.values() if name and model is not None else None
    stats["solve_s"] = round(deadline.now_s() - built, 4)
    if not name or values is None:
        why = "; ".join(failures) or "no solver available"
        if any(f.startswith("LP: Time limit") for f in failures):
            # An operator's fix, not a solver fault: the LP alone needs more than the limit left.
            why += (
                f"; cluster.placement.time_limit_s ({st.time_limit_s:g} s) is too short for this cluster "
                f"({size[0]} columns): raise it (docs/placement.md: ~5 s at 50k GPUs, ~10 s at 100k)"
            )
        plan = _whole_greedy(config, view, targets, pb, st, stats)
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
    values, stats["polish_steps"] = polish(pb, st, values, deadline=deadline)
    solver_model = getattr(model.prob, "solverModel", None) if model is not None else None
    if solver_model is not None and "bound" not in stats:
        info = solver_model.getInfo()
        stats["gap"] = float(info.mip_gap)
        stats["bound"] = float(info.mip_dual_bound)
        # The whole model was solved here (no restriction): its dual bound holds for every placement.
        stats["global_bound"] = stats["bound"]

    cells = {k: n for k, n in view.placement.cells.items() if k.service not in targets}
    cells.update(values)
    placement = Placement.of(cells.items())
    obj = evaluate(config, view, targets, placement, st).cost
    stats["objective"] = round(obj, 4)
    if "lp_bound" in stats:
        stats["gap_to_lp_bound"] = round((obj - float(stats["lp_bound"])) / max(abs(obj), EPS), 6)
    stats["kept"] = "ilp"
    if solvers is None and sol != pulp.LpSolution[pulp.LpSolutionOptimal]:
        # Stopped at the time limit without a proven gap: the incumbent can be poor (docs: 20k/200
        # once left 99 instances unmet); the greedy, its broken groups trimmed (`_whole_greedy`),
        # is a second opinion on the same objective (`Score.usable_cost`, equal to `cost` for a
        # placement without violations, as both are now).
        greedy = _whole_greedy(config, view, targets, pb, st, stats)
        greedy_obj = evaluate(config, view, targets, greedy.placement, st).usable_cost
        stats["greedy_objective"] = round(greedy_obj, 4)
        if greedy_obj < obj:
            stats["kept"] = "greedy"
            stats["solve_s"] = round(deadline.now_s() - built, 4)
            return PlacementPlan(
                placement=greedy.placement,
                method="greedy",
                reason=f"ILP ({name}, {sol}) stopped at its time limit at {obj:.0f}; greedy scores {greedy_obj:.0f}; "
                f"{greedy.reason}",
                unmet=greedy.unmet,
                stats=stats,
            )
        stats["solve_s"] = round(deadline.now_s() - built, 4)
    unmet = _unmet(pb, targets, cells)
    reason = f"ILP ({name}, {sol}, {stats['variables']} vars, {stats['solve_s']:.2f}s)"
    if failures:
        reason += f" after {'; '.join(failures)}"
    if unmet:
        short = ", ".join(f"{s}/{r.value} {v:.1f}" for (s, r), v in sorted(unmet.items()))
        reason += f"; not enough free GPUs for: {short}"
    return PlacementPlan(placement=placement, method="ilp", reason=reason, unmet=unmet, stats=stats)


def _unmet(
    pb: Problem, targets: Mapping[str, RoleCounts], cells: Mapping[CellKey, int]
) -> dict[tuple[str, Role], float]:
    """Reference instances short per (service, role) of `targets` in `cells`."""
    have: dict[tuple[str, Role], float] = defaultdict(float)
    by_name = {s.name: s for s in pb.services}
    for k, n in cells.items():
        if k.service in targets:
            have[(k.service, k.role)] += n * weight(by_name[k.service], k.role, k.gpu_type)
    return {
        (s_name, role): counts.of(role) - have[(s_name, role)]
        for s_name, counts in targets.items()
        for role in Role
        if counts.of(role) - have[(s_name, role)] > EPS
    }


def _whole_greedy(
    config: ClusterConfig,
    view: ClusterView,
    targets: Mapping[str, RoleCounts],
    pb: Problem,
    st: PlacementSettings,
    stats: dict[str, float | int | str],
) -> PlacementPlan:
    """The greedy plan with its broken groups trimmed (`repair.whole_groups`): no violations.

    The ILP's fallback and second opinion must keep the rules the ILP keeps; the greedy alone
    breaks groups (docs/placement.md). `stats["greedy_violations"]`: the groups trimmed.
    """
    plan = place_greedy(config, view, targets)
    cells, repaired, removed = whole_groups(pb, st, plan.placement.cells)
    stats["greedy_violations"] = repaired
    stats["greedy_removed"] = removed
    reason = plan.reason
    if repaired:
        reason += f"; {repaired} broken groups trimmed ({removed} instances removed)"
    return PlacementPlan(
        placement=Placement.of(cells.items()),
        method="greedy",
        reason=reason,
        unmet=_unmet(pb, targets, cells),
        stats=plan.stats,
    )
