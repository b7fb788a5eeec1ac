"""The large-cluster solve: LP, constructive start, RINS beside the MIP, on the LP's cells.

Contract: `solve_large(pb, st, full, stats, deadline, started_s=..., mip_start=..., parallel=...)`
returns (solver name, solution status, failures, instances per cell). An empty solver name
means "nothing usable: solve `full` the ordinary way" (`ilp.place_ilp` does). The answer is
never worse than the constructive start (`start.Start`), which it falls back to (solver name
"start", `stats["kept_start"]`) when the MIP ends above it or fails. It records its phases'
objectives and times in `stats`. Every time limit is what is left of `deadline`; the RINS
search runs beside the MIP only on the second core `parallel` injects, else before it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pulp

from models.config import PlacementSettings
from models.values import CellKey
from tasks.core.placement.arrays import Columns, subset
from tasks.core.placement.deadline import Deadline
from tasks.core.placement.highs import Runner
from tasks.core.placement.lagrange import global_bound
from tasks.core.placement.model import Model
from tasks.core.placement.problem import EPS, Problem
from tasks.core.placement.search import RINS_CAP_S, Parallel, Search
from tasks.core.placement.start import Start

# Above this many columns the LP is solved without the group rows (`Runner.lp(relax_groups=True)`):
# 50k GPUs / 300 services has 101k columns, 20k / 100 has 14k-16k (docs/placement.md).
RELAX_GROUPS_ABOVE_COLUMNS = 60_000
# ... and above this many, phase 2 is RINS on both cores with no proving MIP (`_rins_only`): at
# 100k GPUs (310k-350k columns) the MIP's root cuts overran the limit by seconds; at 50k it gave
# the same costs as RINS alone and overran on one seed in five (docs/placement.md).
RINS_ONLY_ABOVE_COLUMNS = 60_000


def _left(deadline: Deadline) -> float:
    return max(0.1, deadline.left_s())


def _global_bound(
    run: Runner, lp: np.ndarray, stats: dict[str, float | int | str], deadline: Deadline, cap_s: float
) -> float:
    """The proven bound on every placement (`lagrange.global_bound`), its figures in `stats`."""
    lp_bound = float(stats["lp_bound"])
    if run.row_dual is None:
        return lp_bound
    until = Deadline.after(min(cap_s, _left(deadline) / 4), deadline.clock)
    began = deadline.now_s()
    b = global_bound(run, lp, run.row_dual, deadline=until)
    stats["lagrange_s"] = round(deadline.now_s() - began, 4)
    stats["lagrange_solved"] = b.solved
    stats["lagrange_skipped"] = b.skipped
    stats["lagrange_bound"] = round(b.value, 4)
    return max(lp_bound, b.value)


def solve_large(
    pb: Problem,
    st: PlacementSettings,
    full: Model | Columns,
    stats: dict[str, float | int | str],
    deadline: Deadline,
    *,
    started_s: float,
    mip_start: str = "ratio",
    parallel: Parallel | None = None,
    lagrange_s: float = 0.0,
) -> tuple[str, str, list[str], dict[CellKey, int] | None]:
    """LP relaxation, then the MIP on the cells the LP uses plus the start's and the running ones.

    Why: the full MIP (10k+ integer cells at 20k GPUs) is hard for HiGHS's primal heuristics, but
    its LP is solved in ~0.3 s and uses a few hundred cells. `started_s` is when the placement
    began on `deadline`'s clock (for the times in `stats`).

    All phases run on one HiGHS model (`highs.Runner`): the LP; `Start` from it
    (`mip_start="ratio"`); RINS rounds from the start (`search.Search`, beside the MIP with
    `parallel`, else before it for at most half the time left); then the restricted MIP (every
    other cell's upper bound 0) from the best start, until `mip_gap` or the time limit. If the
    solver ends above the start, the start is the answer (solver name "start",
    `stats["kept_start"]`).

    Tried and dropped (docs/placement.md): RENS, the MIP in a box of one instance around the LP
    solution, as a warm start; the plain [floor, ceil] box was infeasible on every 20k case and
    the widened one gave worse placements in the same time.
    """
    try:
        run = Runner(full, pb, st)
        relax = run.arr.n_cols > RELAX_GROUPS_ABOVE_COLUMNS
        lp = run.lp(_left(deadline), relax_groups=relax)
    except (OSError, RuntimeError, ValueError) as exc:
        return "", "", [f"LP: {exc}"], None
    if lp is None:
        return "", "", [f"LP: {run.status}"], None
    stats["lp_bound"] = round(run.objective(lp), 4)
    if relax:
        stats["lp_groups_relaxed"] = 1
    keys, xv = run.x_keys, lp[run.x_idx]
    lp_x = dict(zip(keys, xv.tolist(), strict=True))
    support = {keys[i] for i in np.flatnonzero(xv > EPS).tolist()}
    stats["lp_fractional"] = int(np.count_nonzero(np.abs(xv - np.round(xv)) > EPS))
    stats["phases"] = 2
    start: dict[CellKey, int] = {}
    if mip_start == "ratio":
        floor = np.floor(xv + EPS)
        base = {keys[i]: int(floor[i]) for i in np.flatnonzero(floor > 0).tolist()}
        cells = list(keys)
        # Two orders of the constructive start (`Start.run`), the cheaper kept: each is the
        # better one on about half the 20k-GPU seeds (docs/placement.md). The second only when
        # the first took less than a quarter of the time left (at 50k GPUs one takes ~4 s).
        began = deadline.now_s()
        starts = [Start(pb, st, cells, prefer=support, clock=deadline.clock).run(base)]
        if deadline.now_s() - began < deadline.left_s() / 4:
            starts.append(Start(pb, st, cells, prefer=support, clock=deadline.clock).run(base, one_by_one=True))
        scored = [(run.objective(run.vector(c)), i) for i, c in enumerate(starts) if run.arr.feasible(run.vector(c))]
        if scored:
            start = starts[min(scored)[1]]
            stats["start_order"] = "one_by_one" if min(scored)[1] else "base_first"
        stats["starts"] = len(starts)
    keep = support | set(start) | set(pb.current)
    # Phase 2 on a model of only the cells it may use (and the other columns): the restricted MIP
    # with no presolve of the other ~97 % of the cells on every solve (`arrays.subset`).
    mask = np.ones(run.arr.n_cols, dtype=bool)
    mask[[c for k, c in run.x_col.items() if k not in keep]] = False
    lp_run = run
    run = Runner(subset(run.columns, mask), pb, st)
    lo, hi = run.arr.lo.copy(), run.arr.hi.copy()
    stats["phase2_variables"] = int(np.count_nonzero(hi > 0))
    stats["phase2_constraints"] = len(run.arr.row_lo)
    best: np.ndarray | None = None
    best_obj = math.inf
    if start:
        vec = run.vector(start)
        if run.arr.feasible(vec) and np.all(vec <= hi + EPS):
            best, best_obj = vec, run.objective(vec)
            stats["start_objective"] = round(best_obj, 4)
    stats["start_s"] = round(deadline.now_s() - started_s, 4)
    search: Search | None = None
    # The LP bound holds for every placement; `lagrange.global_bound` tightens it but costs 1-3 s
    # of a core at 20k GPUs under load (docs/placement.md): only with `lagrange_s` > 0.
    proven_lb = float(stats["lp_bound"])
    if lp_run.arr.n_cols > RINS_ONLY_ABOVE_COLUMNS and best is not None:
        bound_of = (lambda: _global_bound(lp_run, lp, stats, deadline, lagrange_s)) if lagrange_s > 0 else None
        return _rins_only(run, lo, hi, best, lp_x, stats, deadline, started_s, parallel, proven_lb, bound_of)
    if best is not None and parallel is not None:
        search = Search(run, lo, hi, best, lp_x, deadline)
        search.start(parallel)
    if lagrange_s > 0:
        proven_lb = _global_bound(lp_run, lp, stats, deadline, lagrange_s)
    if best is not None:
        if search is not None:
            search.global_bound = proven_lb
            search.attach(run)
        else:
            # One core: RINS first (at most half the time left), then the restricted MIP.
            until = Deadline.after(min(_left(deadline) / 2, RINS_CAP_S), deadline.clock)
            search = Search(run, lo, hi, best, lp_x, until)
            search.run()
            best = search.best
    sol: np.ndarray | None = None
    crash = ""
    try:
        sol = run.mip(lo, hi, best, _left(deadline), st.mip_gap)
    except (RuntimeError, ValueError, OSError) as exc:
        crash = f"WarmHiGHS: {exc}"
    finally:
        if search is not None:
            search.halt()
    if search is not None:
        best, best_obj = search.best, search.best_obj
        _search_stats(search, stats, started_s)
        stats["injected"] = search.injected
    proven = run.optimal or (search is not None and search.proven)
    name = "WarmHiGHS" if sol is not None or (search is not None and search.proven) else ""
    status = pulp.LpSolution[pulp.LpSolutionOptimal if proven else pulp.LpSolutionIntegerFeasible] if name else ""
    failures = [crash] if crash else [] if name else [f"WarmHiGHS: {run.status}"]
    if sol is not None and not run.arr.feasible(sol):
        sol, name, failures = None, "", [f"WarmHiGHS: infeasible solution ({run.status})"]
    answer = sol
    if best is not None and (sol is None or run.objective(sol) > best_obj + EPS):
        # RINS's last find (or the MIP's, seen by the search) beats the solver's final answer; or
        # the solver found nothing better than the start in its time, or failed: keep that.
        answer = best
        if search is None or search.version == 0:
            stats["kept_start"] = 1
            name = "start"
            status = status or "start"
    if answer is None:
        return "", "", [f"restricted {f}" for f in failures], None
    stats["global_bound"] = round(proven_lb, 4)
    if lp_run.model is not None:  # a PuLP model: its variables get the answer too
        lp_run.write_back(lp_run.vector(run.cells(answer)))
    info = run.h.getInfo()
    # The restricted MIP's bound, or the global one (a bound on every placement bounds these too).
    bound = max(float(info.mip_dual_bound), search.bound if search is not None else -math.inf, proven_lb)
    obj = run.objective(answer)
    stats["bound"] = bound
    stats["gap"] = (obj - bound) / max(abs(obj), EPS)
    return name, status, failures, run.cells(answer)


def _rins_only(
    run: Runner,
    lo: np.ndarray,
    hi: np.ndarray,
    best: np.ndarray,
    lp_x: dict[CellKey, float],
    stats: dict[str, float | int | str],
    deadline: Deadline,
    started_s: float,
    parallel: Parallel | None,
    proven_lb: float,
    bound_of: Callable[[], float] | None = None,
) -> tuple[str, str, list[str], dict[CellKey, int] | None]:
    """Phase 2 above `RINS_ONLY_ABOVE_COLUMNS`: RINS rounds on both cores, no proving MIP.

    Why: at 100k GPUs the restricted MIP's first root-cut round ran 3 s without returning to its
    time limit or to the interrupt callback (HiGHS has no option to cap it), overrunning a 10 s
    limit, while its bound never came within `mip_gap` in the time; RINS sub-MIPs are small and
    stop on time. The bound reported is the LP's (`proven_lb`), which holds for every placement,
    or the Lagrangian one from `bound_of` (`lagrange_s` > 0).
    """
    search = Search(run, lo, hi, best, lp_x, deadline)
    if parallel is not None:
        search.start(parallel)
    if bound_of is not None:  # `lagrange_s` > 0: the Lagrangian bound, on this core while RINS runs
        proven_lb = max(proven_lb, bound_of())
    search.run(full=True)
    search.halt()
    stats["rins_only"] = 1
    _search_stats(search, stats, started_s)
    answer, obj = search.best, search.best_obj
    name = "RINS" if search.version > 0 else "start"
    if search.version == 0:
        stats["kept_start"] = 1
    stats["global_bound"] = round(proven_lb, 4)
    stats["bound"] = proven_lb
    stats["gap"] = (obj - proven_lb) / max(abs(obj), EPS)
    return name, pulp.LpSolution[pulp.LpSolutionIntegerFeasible], [], run.cells(answer)


def _search_stats(search: Search, stats: dict[str, float | int | str], started_s: float) -> None:
    """The RINS search's figures in `stats`: rounds, time to its last find, its objective, error."""
    stats["rins_rounds"] = search.rounds
    stats["rins_s"] = round(search.last_s - started_s - float(stats["start_s"]), 4) if search.improved else 0.0
    if search.improved:
        stats["rins_objective"] = round(search.best_obj, 4)
    if search.error:
        stats["search_error"] = search.error
