"""Placement for the control loop, incrementally: a small MIP per period, the full one now and then.

Contract: `place_incremental(config, view, moving, *, held, deadline, full, ...)` returns a
`PlacementPlan` with `place_ilp`'s meaning for the services in `moving` (their new counts; the
services in `held` keep their capacity), never raises for a solver problem, and reports as unmet
only shortfalls above a `SLIVER` that no stage placed (among the answers it has, the one
`score.evaluate` scores lowest on `usable_cost`, the ILP's second-opinion rule). Deterministic:
the same input gives the same plan. In order:

  1. Unless `full`: the **small MIP**: the model of `model.build_model` over the services in
     `moving` only, every other service's cells fixed (capacity taken, as in every placement
     call), warm-started from the current placement, and *locked* (`lock_running`): a role whose
     target is at or above what runs keeps every running instance (its cells may only grow), a
     role that shrinks may only stop instances (no new cell). It places the change and nothing
     else: no relocation of what already runs.
  2. The **full re-optimisation** when `full` (the caller's slower cadence, `full_due`), or when the
     small MIP has no answer or leaves demand unmet: the same model, unlocked, churn and
     relocations priced (`churn_weight_h`, `move_weight_h`), over every service in `moving` and
     `held` (a held one demanding exactly the reference units it runs now, `hold_capacity`: it may
     be moved, not shrunk or grown). On clusters above `restrict_above_cells` cells it is
     `ilp.place_ilp` (its LP, start and RINS path, `parallel` as given) over `moving` only: that
     path has no row that keeps a held service's capacity.
  3. The **greedy**, scored against the answer so far whenever that answer leaves demand unmet,
     and used outright when neither MIP found an answer in its time limit.

Slivers (`add_sliver`): with capacity weights such as 0.333 (an A100 prefill in H100 units) the
plain model leaves 0.002-0.007 of an instance unmet rather than start one more instance, and the
loop counted that period as one "with unplaced demand" (8 of 360 periods in a 6-hour ServeGen
replay, each such a sliver: docs/placement.md, "ILP in the loop"). Both MIPs here give each demand
row a cheap slack of at most `SLIVER`; beyond it the full per-unit penalty applies. A sliver is
reported in `stats["sliver_unmet"]`, not as unmet. The churn polish (`polish.polish`) runs on the
answer and is kept only when it opens no shortfall beyond a sliver that the answer did not have.

Time: the small MIP and the full one each get `settings.time_limit_s`, on `deadline`'s clock (a
fresh `Deadline` for the full one). No clock of its own, no thread, no I/O: the runner
(`tasks/placement_runner.py: run_incremental`) injects both.
"""

from __future__ import annotations

from collections.abc import Mapping

import pulp

from models.config import ClusterConfig, PlacementSettings, Role
from models.values import CellKey, Placement, PlacementPlan, RoleCounts
from tasks.core.placement.deadline import Deadline
from tasks.core.placement.greedy import place_greedy
from tasks.core.placement.ilp import place_ilp
from tasks.core.placement.model import Model, build_model, make_solvers, solve
from tasks.core.placement.polish import polish
from tasks.core.placement.problem import EPS, Problem, build_problem, weight
from tasks.core.placement.score import evaluate
from tasks.core.placement.search import Parallel
from tasks.core.topology import ClusterView

# The incremental method's stages, as `PlacementPlan.stats["stage"]` names them.
SMALL, FULL, GREEDY = "small", "full", "greedy"
# A shortfall up to this many reference instances per (service, role) is a *sliver*: the capacity
# weights are measured throughput ratios (3 A100 prefills are 0.9975 of an H100 one in the
# ServeGen config), so meeting an integer target exactly can take one more whole instance for
# 0.25 % of one. A sliver is reported in `stats["sliver_unmet"]`, not as unmet: covering slivers
# with whole instances was measured to cost 7 % more $ in the loop (docs/placement.md).
SLIVER = 0.02


def full_due(now_s: float, period_s: float, every_s: float) -> bool:
    """Whether the control period ending at `now_s` crosses a multiple of `every_s` (the slower
    cadence of the full re-optimisation; `every_s` <= 0: never). Stateless: the same periods in
    the flow and the replay, however many runs were skipped."""
    if every_s <= 0:
        return False
    return int(now_s // every_s) != int((now_s - period_s) // every_s)


def lock_running(model: Model, pb: Problem) -> int:
    """Bound the model to changes only: a growing role keeps its running instances (lower bound =
    running), a shrinking role may only stop instances (upper bound = running, 0 on new cells).
    Returns the number of cells whose bounds were changed."""
    changed = 0
    for k, v in model.x.items():
        now = pb.current.get(k, 0)
        if pb.growing[(k.service, k.role)]:
            if now > 0:
                v.lowBound = min(now, v.upBound if v.upBound is not None else now)
                changed += 1
        elif v.upBound is None or v.upBound > now:
            v.upBound = now
            changed += 1
        v.varValue = pb.current.get(k, 0)
    return changed


def running_units(pb: Problem, services: frozenset[str]) -> dict[tuple[str, Role], float]:
    """Reference instances each of `services` runs now, per role (every role, 0 included)."""
    by_name = {s.name: s for s in pb.services}
    out = {(name, role): 0.0 for name in services for role in Role if name in by_name}
    for k, n in pb.current.items():
        if k.service in services:
            out[(k.service, k.role)] += n * weight(by_name[k.service], k.role, k.gpu_type)
    return out


def hold_capacity(model: Model, units: Mapping[tuple[str, Role], float]) -> None:
    """Make each (service, role) of `units` demand exactly what it runs now (the held services in
    the full stage): the demand row's right-hand side becomes the running units, not the rounded
    count, so the full MIP may move a held service (at the churn price) but neither shrink it nor
    grow it to reach a rounded count."""
    for (name, role), u in units.items():
        # PuLP stores the name with its illegal characters ("-" in "chat-eu") replaced.
        model.prob.constraints[pulp.LpElement(f"demand__{name}__{role.value}").name].constant = -u


def add_sliver(model: Model, pb: Problem, demand: Mapping[tuple[str, Role], float] | None = None) -> None:
    """A continuous slack of at most `SLIVER` reference instances in each demand row, priced at 1 %
    of the unmet penalty: a shortfall beyond a sliver pays the full per-unit penalty (so the model
    starts an instance for it whenever one fits), a sliver almost nothing (no whole instance for
    0.25 % of one). Linear: no binaries, the LP bound stays as tight as the plain model's."""
    prob = model.prob
    terms = []
    for (name, role), _unmet in sorted(model.unmet.items(), key=lambda kv: (kv[0][0], kv[0][1].value)):
        if float((demand or {}).get((name, role), pb.targets[name].of(role))) <= 0:
            continue
        sliver = prob.add_variable(f"sliver__{name}__{role.value}", 0, SLIVER, pulp.LpContinuous)
        sliver.varValue = 0
        model.cols.append(sliver)
        prob.constraints[pulp.LpElement(f"demand__{name}__{role.value}").name].expr[sliver] = 1.0
        terms.append((sliver, 0.01 * pb.unmet_penalty[(name, role)]))
    prob.objective = prob.objective + pulp.LpAffineExpression(terms)


def shortfall(
    pb: Problem,
    cells: Mapping[CellKey, int],
    demand: Mapping[tuple[str, Role], float] | None = None,
    *,
    above: float = EPS,
) -> dict[tuple[str, Role], float]:
    """Reference instances short per (service, role) of `pb`'s targets (or `demand` where it has
    the key) with `cells`, where more than `above`."""
    by_name = {s.name: s for s in pb.services}
    have: dict[tuple[str, Role], float] = {}
    for k, n in cells.items():
        if k.service in by_name:
            key = (k.service, k.role)
            have[key] = have.get(key, 0.0) + n * weight(by_name[k.service], k.role, k.gpu_type)
    out: dict[tuple[str, Role], float] = {}
    for s in pb.services:
        for role in Role:
            want = (demand or {}).get((s.name, role), pb.targets[s.name].of(role))
            short = want - have.get((s.name, role), 0.0)
            if short > above:
                out[(s.name, role)] = short
    return out


def _mip_plan(
    config: ClusterConfig,
    view: ClusterView,
    targets: Mapping[str, RoleCounts],
    *,
    deadline: Deadline,
    settings: PlacementSettings,
    lock: bool,
    stage: str,
    exact: frozenset[str] = frozenset(),
) -> PlacementPlan:
    """The model over `targets` (locked or not; the services in `exact` at what they run now,
    `hold_capacity`) with sliver slacks, solved, polished; `method="none"` with the solvers' failures in the
    reason when none found an answer by `deadline`."""
    st = settings
    started = deadline.now_s()
    pb = build_problem(config, view, targets)
    model = build_model(pb, st)
    locked = lock_running(model, pb) if lock else 0
    demand = running_units(pb, exact)
    hold_capacity(model, demand)
    add_sliver(model, pb, demand)
    built = deadline.now_s()
    name, sol, failures = solve(model.prob, make_solvers(st, max(0.1, deadline.left_s())), deadline)
    stats: dict[str, float | int | str] = {
        "stage": stage,
        "variables": model.prob.numVariables(),
        "constraints": model.prob.numConstraints(),
        "locked_cells": locked,
        "build_s": round(built - started, 4),
        "solve_s": round(deadline.now_s() - built, 4),
    }
    if not name:
        stats["failures"] = "; ".join(failures) or "no solver available"
        return PlacementPlan(placement=view.placement, method="none", reason=str(stats["failures"]), stats=stats)
    values = model.values()
    polished, steps = polish(pb, st, values)
    if set(shortfall(pb, polished, demand, above=SLIVER)) <= set(shortfall(pb, values, demand, above=SLIVER)):
        values, stats["polish_steps"] = polished, steps
    else:
        stats["polish_steps"] = 0
        stats["polish"] = "rejected: it opened a shortfall"
    cells = {k: n for k, n in view.placement.cells.items() if k.service not in targets}
    cells.update(values)
    unmet = shortfall(pb, values, demand, above=SLIVER)
    slivers = sum(v for k, v in shortfall(pb, values, demand).items() if k not in unmet)
    if slivers:
        stats["sliver_unmet"] = round(slivers, 6)
    stats["solver"], stats["status"] = name, sol
    reason = f"ILP {stage} ({name}, {sol}, {stats['variables']} vars, {stats['solve_s']:.2f}s)"
    if unmet:
        short = ", ".join(f"{s}/{r.value} {v:.2f}" for (s, r), v in sorted(unmet.items()))
        reason += f"; not enough free GPUs for: {short}"
    return PlacementPlan(placement=Placement.of(cells.items()), method="ilp", reason=reason, unmet=unmet, stats=stats)


def place_incremental(
    config: ClusterConfig,
    view: ClusterView,
    moving: Mapping[str, RoleCounts],
    *,
    held: Mapping[str, RoleCounts],
    deadline: Deadline,
    full: bool = False,
    settings: PlacementSettings | None = None,
    parallel: Parallel | None = None,
) -> PlacementPlan:
    """Placement of `moving` (the module doc's stages); `held` enters only the full stage."""
    st = settings or config.cluster.placement
    tried: list[str] = []
    plan: PlacementPlan | None = None
    if not full:
        small = _mip_plan(config, view, moving, deadline=deadline, settings=st, lock=True, stage=SMALL)
        if small.method == "ilp":
            plan = small
            if not small.unmet:
                return small
            tried.append(f"small MIP left {sum(small.unmet.values()):.2f} unmet")
        else:
            tried.append(f"small MIP: {small.reason}")
    # The full re-optimisation, unlocked, churn priced: the whole fleet on clusters the small
    # model path solves; above `restrict_above_cells`, `place_ilp` (its LP/start/RINS path) on the
    # moving services, as the loop's plain ILP (it has no row that keeps a held service's capacity).
    full_deadline = Deadline.after(st.time_limit_s, deadline.clock)
    full_plan: PlacementPlan | None
    if len(_cells_estimate(config, {**held, **moving})) > st.restrict_above_cells:
        full_plan = place_ilp(config, view, moving, deadline=full_deadline, settings=st, parallel=parallel)
        full_plan = PlacementPlan(
            placement=full_plan.placement,
            method=full_plan.method,
            reason=full_plan.reason,
            unmet=full_plan.unmet,
            stats={**full_plan.stats, "stage": FULL},
        )
    else:
        everyone = {**held, **moving}
        full_plan = _mip_plan(
            config, view, everyone, deadline=full_deadline, settings=st, lock=False, stage=FULL, exact=frozenset(held)
        )
    if full_plan.method != "ilp":
        tried.append(f"full MIP: {full_plan.reason}")
        full_plan = None
    if full_plan is not None:
        if plan is None or _score(config, view, moving, full_plan, st) <= _score(config, view, moving, plan, st):
            plan = full_plan
        if not plan.unmet:
            return _with(plan, tried)
        tried.append(f"{plan.stats.get('stage', FULL)} answer left {sum(plan.unmet.values()):.2f} unmet")
    # The greedy: the answer when no MIP found one, else a second opinion on the same score.
    greedy = place_greedy(config, view, moving)
    if plan is None or _score(config, view, moving, greedy, st) < _score(config, view, moving, plan, st):
        stats = {"stage": GREEDY, **({} if plan is None else {"beaten": str(plan.stats.get("stage", ""))})}
        return _with(
            PlacementPlan(
                placement=greedy.placement, method="greedy", reason=greedy.reason, unmet=greedy.unmet, stats=stats
            ),
            tried,
        )
    return _with(plan, tried)


def _cells_estimate(config: ClusterConfig, targets: Mapping[str, RoleCounts]) -> list[tuple[str, Role, str, str]]:
    """An upper bound on the model's cells (every allowed type in every S1 that has it)."""
    s1s_of: dict[str, set[str]] = {}
    for pool in config.topology.node_pools:
        s1s_of.setdefault(pool.gpu_type, set()).add(pool.s1)
    return [
        (s.name, role, g, s1)
        for s in config.services
        if s.name in targets
        for role in Role
        for g in s.role(role).gpu_types
        for s1 in sorted(s1s_of.get(g, ()))
    ]


def _score(
    config: ClusterConfig,
    view: ClusterView,
    moving: Mapping[str, RoleCounts],
    plan: PlacementPlan,
    st: PlacementSettings,
) -> float:
    return evaluate(config, view, moving, plan.placement, st).usable_cost


def _with(plan: PlacementPlan, tried: list[str]) -> PlacementPlan:
    if not tried:
        return plan
    stats = {**plan.stats, "fallback": "; ".join(tried)}
    return PlacementPlan(
        placement=plan.placement,
        method=plan.method,
        reason=f"{plan.reason} (after: {'; '.join(tried)})",
        unmet=plan.unmet,
        stats=stats,
    )
