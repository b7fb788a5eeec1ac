"""The placement integer program (PuLP), its HiGHS arrays, and the solver calls (pure).

Contract: `build_model(pb, st, relax=False)` builds the model of a `Problem` in a fixed order
(sets, parameters, variables, objective, constraints), every constraint named from its indices;
the same problem gives the same model, byte for byte in LP format. The model works on S1 cells,
never on nodes or pods (node-level realisation: `realize.py`):

  sets        moving services; cells (service, role, GPU type, S1) for every allowed GPU type
              present in an S1; groups (service, domain at its affinity level); (GPU type, S1).
  parameters  GPUs per instance, capacity weight (reference instances), $/GPU-hour, subgroup
              priority of each S1 (max of its S1 and S2 priority), free GPUs after the GPUs not
              ours to move, the current placement.
  variables   x (integer instances per cell), up/down (churn on cells that run now), unmet
              (continuous slack per service and role), nodes (integer nodes touched per
              (GPU type, S1), for fragmentation).
  objective   GPU $/h + priority penalty + churn + stranded GPUs + heavily penalised unmet.
  constraints capacity per (GPU type, S1); demand per service and role (capacity-weighted);
              P/D ratio per group within tolerance plus one-instance rounding; a group has both
              roles or neither; max instances per service; the cluster GPU budget.

`solve(prob, solvers, deadline)` tries solvers in turn and reports failures instead of raising
(PuLP does not raise when a solve fails: the solution status is checked). `to_arrays` turns a
model into the CSR arrays `highs.Runner` and `WarmHiGHS` pass to HiGHS in one call. `lp_bound`
and `reference_solve` are the benchmark's bounds. Time limits come from a `Deadline`; no clock.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import highspy
import numpy as np
import pulp

from models.config import ClusterConfig, PlacementSettings, Role, Service
from models.values import CellKey, RoleCounts
from tasks.core.placement.deadline import Deadline
from tasks.core.placement.problem import Problem, build_problem, change_coefs, move_coef, weight
from tasks.core.topology import ClusterView

# A fallback solve (another solver, or the full model after the large path failed) is not started
# with less than this left of `time_limit_s`: it could not finish in it (the greedy is used).
MIN_SOLVE_S = 1.0


@dataclass(slots=True)
class Model:
    """A built placement model and its variables by key."""

    prob: pulp.LpProblem
    x: dict[CellKey, pulp.LpVariable]
    unmet: dict[tuple[str, Role], pulp.LpVariable]
    up: dict[CellKey, pulp.LpVariable]
    down: dict[CellKey, pulp.LpVariable]
    # Every variable in creation order (x, up, down, unmet, nodes): the column order of `Arrays`
    # and of the HiGHS model passed in bulk.
    cols: list[pulp.LpVariable] = field(default_factory=list)

    def values(self) -> dict[CellKey, int]:
        """Instances per cell of the solved model."""
        return {k: n for k, v in self.x.items() if (n := round(v.varValue or 0.0)) > 0}


def link_factors(svc: Service, tolerance: float) -> tuple[int, int]:
    """(K_P, K_D) with P_count <= K_P * D_count and D_count <= K_D * P_count.

    Chosen so the links only bite when one side is 0 (no orphan role in a group): any group
    inside the ratio band already satisfies them.
    """
    rho = svc.pd_ratio.prefill_per_decode
    wp = [svc.prefill.weight(g) for g in svc.prefill.gpu_types]
    wd = [svc.decode.weight(g) for g in svc.decode.gpu_types]
    k_p = math.ceil((rho * (1 + tolerance) * max(wd) + 1) / min(wp)) + 1
    k_d = math.ceil((max(wp) + 1) / (rho * (1 - tolerance) * min(wd))) + 1
    return k_p, k_d


def _add(prob: pulp.LpProblem, terms: list[tuple[pulp.LpVariable, float]], sense: int, rhs: float, name: str) -> None:
    """Add the named constraint sum(terms) <sense> rhs (terms on distinct variables)."""
    prob.addConstraint(pulp.LpConstraint(pulp.LpAffineExpression(terms), sense=sense, rhs=rhs), name)


def model_cells(pb: Problem) -> tuple[list[CellKey], list[CellKey]]:
    """The model's cells in column order, and which of them are stale (the last ones).

    Every allowed (service, role, GPU type, S1) cell, except where the service's group domain
    has no allowed GPU type for one of its roles (no group can live there: the pair rows would
    force such cells to 0, so they are not built); then the running cells on types the service
    no longer allows (stale: they can only go to zero). `build_model` and `arrays.build_arrays`
    share it, so both have the same columns in the same order.
    """
    types_at: dict[str, list[str]] = defaultdict(list)
    for g, s1 in pb.free:
        types_at[g].append(s1)
    for s1s in types_at.values():
        s1s.sort()
    all_s1 = sorted({s1 for s1s in types_at.values() for s1 in s1s})
    cells: list[CellKey] = []
    # (service, role, GPU type, S1) -> in the model; for telling the stale running cells apart.
    allowed: dict[tuple[str, Role, str], set[str]] = {}
    # The S1s a service may use depend only on its affinity level (its group domains), its GPU
    # types and whether it needs both roles: computed once per such kind.
    ok_of: dict[tuple[object, ...], set[str]] = {}
    for s in pb.services:
        both = pb.targets[s.name].num_prefill > 0 and pb.targets[s.name].num_decode > 0
        kind = (s.affinity, tuple(s.prefill.gpu_types), tuple(s.decode.gpu_types), both)
        if kind not in ok_of:
            dom_of = {s1: pb.group_of[(s.name, s1)] for s1 in all_s1}
            hosts: dict[str, set[Role]] = defaultdict(set)
            for role in Role:
                for g in s.role(role).gpu_types:
                    for s1 in types_at.get(g, ()):
                        hosts[dom_of[s1]].add(role)
            ok_of[kind] = {s1 for s1 in all_s1 if not both or len(hosts[dom_of[s1]]) == 2}
        ok = ok_of[kind]
        for role in Role:
            for g in s.role(role).gpu_types:
                s1s = [s1 for s1 in types_at.get(g, ()) if s1 in ok]
                allowed[(s.name, role, g)] = set(s1s)
                cells.extend([CellKey(s.name, role, g, s1) for s1 in s1s])
    stale = [k for k in pb.current if k.s1 not in allowed.get((k.service, k.role, k.gpu_type), ())]
    return cells + stale, stale


def build_model(
    pb: Problem,
    st: PlacementSettings,
    *,
    relax: bool = False,
) -> Model:
    """The PuLP model, built sets -> parameters -> variables -> objective -> constraints.

    `relax` makes every integer continuous (the LP bound). Expressions
    are built from (variable, coefficient) lists, not PuLP's operators (each of which copies the
    expression): the same model in about half the time at 20k GPUs.
    """
    cat = pulp.LpContinuous if relax else pulp.LpInteger
    le, ge, eq = pulp.LpConstraintLE, pulp.LpConstraintGE, pulp.LpConstraintEQ
    # Sets.
    cells, stale = model_cells(pb)
    stale_set = set(stale)
    by_name = {s.name: s for s in pb.services}

    # Parameters per cell, by position in `cells` (lists: CellKey hashes are not free).
    gpi = [pb.gpi[(k.service, k.role.value)] for k in cells]
    units = [weight(by_name[k.service], k.role, k.gpu_type) for k in cells]

    prob = pulp.LpProblem("placement", pulp.LpMinimize)
    cols: list[pulp.LpVariable] = []

    def var(name: str, lo: float, hi: float | None, kind: str) -> pulp.LpVariable:
        v = prob.add_variable(name, lo, hi, kind)
        cols.append(v)
        return v

    # Variables.
    xs: list[pulp.LpVariable] = []
    for i, k in enumerate(cells):
        ub = 0 if k in stale_set else max(0, pb.free.get((k.gpu_type, k.s1), 0) // gpi[i])
        v = var(f"x{i}", 0, ub, cat)
        v.varValue = min(pb.current.get(k, 0), ub)
        xs.append(v)
    x = dict(zip(cells, xs, strict=True))
    up: dict[CellKey, pulp.LpVariable] = {}
    down: dict[CellKey, pulp.LpVariable] = {}
    for i, k in enumerate(sorted(pb.current)):
        up[k] = var(f"up{i}", 0, None, pulp.LpContinuous)
        down[k] = var(f"down{i}", 0, None, pulp.LpContinuous)
    unmet = {
        (s.name, role): var(f"unmet__{s.name}__{role.value}", 0, None, pulp.LpContinuous)
        for s in pb.services
        for role in Role
    }
    nodes: dict[tuple[str, str], pulp.LpVariable] = {}
    if st.fragmentation_weight > 0:
        for g, s1 in sorted(pb.free):
            gpn = pb.gpus_per_node[(g, s1)]
            nodes[(g, s1)] = var(f"nodes__{g}__{s1}", 0, math.ceil(pb.gpus_total[(g, s1)] / gpn), cat)

    # Objective.
    coef: dict[pulp.LpVariable, float] = {}
    for i, k in enumerate(cells):
        c = gpi[i] * (pb.cost[k.gpu_type] + st.priority_weight * pb.prio.get(k.s1, 0))
        if k not in pb.current:
            c += st.churn_weight_h * gpi[i] * pb.cost[k.gpu_type] + move_coef(pb, st, k, start=True)
        coef[xs[i]] = c
    for k in pb.current:
        coef[up[k]], coef[down[k]] = change_coefs(pb, st, k)
    for key, v in unmet.items():
        coef[v] = pb.unmet_penalty[key]
    by_pool: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, k in enumerate(cells):
        by_pool[(k.gpu_type, k.s1)].append(i)
    for key, v in nodes.items():
        # Stranded GPUs = GPUs on touched nodes - GPUs used; the constant part is dropped.
        coef[v] = st.fragmentation_weight * pb.gpus_per_node[key]
        for i in by_pool[key]:
            coef[xs[i]] -= st.fragmentation_weight * gpi[i]
    prob += pulp.LpAffineExpression(list(coef.items())), "cost"

    # Constraints.
    for (g, s1), ks in sorted(by_pool.items()):
        if (g, s1) not in pb.free:
            continue
        usage = [(xs[i], float(gpi[i])) for i in ks]
        _add(prob, usage, le, max(0, pb.free[(g, s1)]), f"cap__{g}__{s1}")
        if (g, s1) in nodes:
            fixed = pb.fixed_used.get((g, s1), 0)
            _add(prob, [*usage, (nodes[(g, s1)], -pb.gpus_per_node[(g, s1)])], le, -fixed, f"nodes__{g}__{s1}")
    for k in pb.current:
        name = f"churn__{k.service}__{k.role.value}__{k.gpu_type}__{k.s1}"
        _add(prob, [(x[k], 1.0), (up[k], -1.0), (down[k], 1.0)], eq, pb.current[k], name)
    of_role: dict[tuple[str, Role], list[int]] = defaultdict(list)
    for i, k in enumerate(cells):
        of_role[(k.service, k.role)].append(i)
    for s in pb.services:
        for role in Role:
            have = [(xs[i], units[i]) for i in of_role[(s.name, role)]]
            have.append((unmet[(s.name, role)], 1.0))
            _add(prob, have, ge, pb.targets[s.name].of(role), f"demand__{s.name}__{role.value}")
        total = [(xs[i], 1.0) for role in Role for i in of_role[(s.name, role)]]
        _add(prob, total, le, s.policy.max_instances, f"max_instances__{s.name}")
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, k in enumerate(cells):
        groups[(k.service, pb.group_of[(k.service, k.s1)])].append(i)
    tol = st.ratio_tolerance
    links = {s.name: link_factors(s, tol) for s in pb.services}
    for (name, dom), ks in sorted(groups.items()):
        s = by_name[name]
        t = pb.targets[name]
        if t.num_prefill == 0 or t.num_decode == 0:
            continue
        p = [i for i in ks if cells[i].role is Role.PREFILL]
        d = [i for i in ks if cells[i].role is Role.DECODE]
        rho = s.pd_ratio.prefill_per_decode
        tag = f"{name}__{'all' if dom == '*' else dom}"
        p_units = [(xs[i], units[i]) for i in p]
        _add(prob, p_units + [(xs[i], -rho * (1 - tol) * units[i]) for i in d], ge, -1, f"ratio_lo__{tag}")
        _add(prob, p_units + [(xs[i], -rho * (1 + tol) * units[i]) for i in d], le, 1, f"ratio_hi__{tag}")
        k_p, k_d = links[name]
        _add(prob, [(xs[i], 1.0) for i in p] + [(xs[i], -float(k_p)) for i in d], le, 0, f"pair_p__{tag}")
        _add(prob, [(xs[i], 1.0) for i in d] + [(xs[i], -float(k_d)) for i in p], le, 0, f"pair_d__{tag}")
    if pb.budget_left is not None:
        _add(prob, [(xs[i], float(gpi[i])) for i in range(len(cells))], le, pb.budget_left, "gpu_budget")
    return Model(prob, x, unmet, up, down, cols)


@dataclass(slots=True)
class Arrays:
    """A model as HiGHS arrays: columns in creation order, rows in constraint order (CSR).

    From `to_arrays` (a PuLP model; `cols` its variables) or `arrays.build_arrays` (built
    directly, no PuLP objects; `cols` empty).
    """

    cost: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    integer: np.ndarray  # 1 for integer columns
    row_lo: np.ndarray
    row_hi: np.ndarray
    indptr: np.ndarray  # CSR, row-wise
    index: np.ndarray
    value: np.ndarray
    sense: int  # 1 minimise, -1 maximise (HiGHS's ObjSense)
    cols: list[pulp.LpVariable] = field(default_factory=list)

    @property
    def n_cols(self) -> int:
        return len(self.cost)

    def pass_to(self, h: Any, *, mip: bool = True) -> None:
        """Hand the whole model to `h` (a highspy.Highs) in one call."""
        integer = self.integer if mip else np.zeros_like(self.integer)
        h.passModel(
            self.n_cols, len(self.row_lo), len(self.value), 2, self.sense, 0.0,  # a_format 2: row-wise
            self.cost, self.lo, self.hi, self.row_lo, self.row_hi, self.indptr, self.index, self.value, integer,
        )  # fmt: skip

    def entry_rows(self) -> np.ndarray:
        """The row of every non-zero (the CSR's `indptr` spelled out)."""
        return np.repeat(np.arange(len(self.row_lo)), np.diff(self.indptr))

    def activity(self, v: np.ndarray) -> np.ndarray:
        """Every row's value at the columns `v`."""
        return np.bincount(self.entry_rows(), weights=self.value * v[self.index], minlength=len(self.row_lo))

    def feasible(self, v: np.ndarray, eps: float = 1e-6) -> bool:
        """True when `v` keeps every bound and row (integrality is the caller's business)."""
        if np.any(v < self.lo - eps) or np.any(v > self.hi + eps):
            return False
        act = self.activity(v)
        return bool(np.all(act >= self.row_lo - eps) and np.all(act <= self.row_hi + eps))


def to_arrays(prob: pulp.LpProblem, cols: Sequence[pulp.LpVariable]) -> Arrays:
    inf = math.inf
    col = {v.name: i for i, v in enumerate(cols)}
    obj = prob.objective if prob.objective is not None else {}
    cost = np.array([obj.get(v, 0.0) for v in cols], dtype=np.float64)
    lo = np.array([-inf if v.lowBound is None else v.lowBound for v in cols], dtype=np.float64)
    hi = np.array([inf if v.upBound is None else v.upBound for v in cols], dtype=np.float64)
    integer = np.array([v.cat == pulp.LpInteger for v in cols], dtype=np.int32)
    indptr, index, value, row_lo, row_hi = [0], [], [], [], []
    for c in prob.constraints():
        for v, a in c.items():
            if a != 0:
                index.append(col[v.name])
                value.append(a)
        indptr.append(len(index))
        lb, ub = c.getLb(), c.getUb()
        row_lo.append(-inf if lb is None else lb)
        row_hi.append(inf if ub is None else ub)
    sense = -1 if prob.sense == pulp.LpMaximize else 1
    return Arrays(
        cols=list(cols),
        cost=cost,
        lo=lo,
        hi=hi,
        integer=integer,
        row_lo=np.array(row_lo, dtype=np.float64),
        row_hi=np.array(row_hi, dtype=np.float64),
        indptr=np.array(indptr, dtype=np.int32),
        index=np.array(index, dtype=np.int32),
        value=np.array(value, dtype=np.float64),
        sense=sense,
    )


class WarmHiGHS(pulp.HiGHS):  # type: ignore[misc, name-defined]
    """PuLP's HiGHS API solver, with the model passed in bulk and a MIP start.

    PuLP's `HiGHS` adds the model one column and one row at a time (~0.3 s at 20k GPUs); here it
    goes in as arrays in one `passModel`. PuLP's `HiGHS` takes no warmStart; highspy accepts a
    (possibly partial) solution after the model is passed, and HiGHS ignores a start that is
    infeasible for the new targets. The variables' values are that start.
    """

    def buildSolverModel(self, lp: pulp.LpProblem) -> None:
        cols = lp.variables()
        for i, v in enumerate(cols):
            v.index = i
        for i, c in enumerate(lp.constraints()):
            c.index = i
        to_arrays(lp, cols).pass_to(lp.solverModel, mip=self.mip)
        sol = highspy.HighsSolution()
        sol.col_value = [float(v.varValue or 0.0) for v in cols]
        sol.value_valid = True
        lp.solverModel.setSolution(sol)


def make_solvers(st: PlacementSettings, time_limit_s: float) -> list[pulp.LpSolver]:
    """HiGHS (bulk-passed, warm-started) when available, then CBC: the order `solve` tries them."""
    out: list[pulp.LpSolver] = []
    if pulp.HiGHS().available():
        out.append(WarmHiGHS(msg=False, timeLimit=time_limit_s, gapRel=st.mip_gap, threads=1))
    out.append(pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit_s, gapRel=st.mip_gap, warmStart=True))
    return out


def solve(
    prob: pulp.LpProblem, solvers: Sequence[pulp.LpSolver], deadline: Deadline | None = None
) -> tuple[str, str, list[str]]:
    """Try each solver in turn; return (solver name, solution status, failures).

    With `deadline` each solver's `timeLimit` is what is left of
    it when its turn comes, and solvers whose turn comes with less than `MIN_SOLVE_S` left are
    skipped: a fallback solver must not start the time limit over.
    """
    failures: list[str] = []
    for i, solver in enumerate(solvers):
        name = type(solver).__name__.lstrip("_")
        if deadline is not None:
            left = deadline.left_s()
            if i > 0 and left < MIN_SOLVE_S:
                failures.append(f"{name}: skipped, {max(0.0, left):.2f} s left of the time limit")
                break
            solver.timeLimit = max(0.1, left)
        try:
            prob.solve(solver)
        except (pulp.PulpSolverError, OSError, RuntimeError) as exc:
            failures.append(f"{name}: {exc}")
            continue
        # PuLP reports "Optimal" when a solver stopped at its limit with a feasible point: the
        # solution status tells them apart.
        sol = pulp.LpSolution.get(prob.sol_status, str(prob.sol_status))
        if prob.sol_status in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible):
            return name, sol, failures
        failures.append(f"{name}: {pulp.LpStatus[prob.status]} / {sol}")
    return "", "", failures


def lp_bound(
    config: ClusterConfig,
    view: ClusterView,
    targets: Mapping[str, RoleCounts],
    settings: PlacementSettings | None = None,
) -> float | None:
    """Objective of the LP relaxation: no integer placement can cost less."""
    st = settings or config.cluster.placement
    model = build_model(build_problem(config, view, targets), st, relax=True)
    model.prob.solve(pulp.HiGHS(msg=False) if pulp.HiGHS().available() else pulp.PULP_CBC_CMD(msg=False))
    if model.prob.status != pulp.LpStatusOptimal:
        return None
    return float(pulp.value(model.prob.objective))


def reference_solve(
    config: ClusterConfig,
    view: ClusterView,
    targets: Mapping[str, RoleCounts],
    *,
    time_limit_s: float,
    settings: PlacementSettings | None = None,
) -> tuple[float, float] | None:
    """(best objective, proven dual bound) of the full, unrestricted MIP within `time_limit_s`.

    For benchmarks only: the dual bound is a lower bound on every integer placement, tighter than
    the LP bound when integrality matters (unmet demand priced per reference instance).
    """
    st = settings or config.cluster.placement
    model = build_model(build_problem(config, view, targets), st)
    solver = WarmHiGHS(msg=False, timeLimit=time_limit_s, gapRel=1e-4, threads=1)
    name, _sol, _failures = solve(model.prob, [solver])
    if not name:
        return None
    info = model.prob.solverModel.getInfo()
    return float(pulp.value(model.prob.objective) or 0.0), float(info.mip_dual_bound)
