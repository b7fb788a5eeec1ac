"""One HiGHS model for every phase of the large-cluster solve (LP, RINS sub-MIPs, the MIP).

Contract: `Runner(model, pb, st)` hands `model` (a PuLP `Model`, or `arrays.Columns` built
without PuLP by `arrays.build_arrays`) to a `highspy.Highs` once, as arrays;
each phase then changes column bounds only (cells that may not be used get upper bound 0, fixed
ones lo = hi), never rows. `lp()` and `mip()` return all column values or None when the phase
found nothing usable (the HiGHS status is kept in `status`); they never raise for a solver
outcome. `vector` and `cells` convert between instances per cell and column values; `write_back`
puts an answer into the PuLP variables (when there is a PuLP model). Time limits are seconds given by the caller; no clock.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping

import highspy
import numpy as np

from models.config import PlacementSettings, Role
from models.values import CellKey
from tasks.core.placement.arrays import Columns, columns_of
from tasks.core.placement.model import Arrays, Model
from tasks.core.placement.problem import Problem, weight

# `Runner.lp(relax_groups=True)`: rounds of putting back the group rows the LP answer breaks.
LP_ROW_ROUNDS = 2


class Runner:
    """The full model handed to HiGHS once; each phase changes column bounds, not the model.

    Phases (LP, RINS sub-MIPs, the restricted MIP) differ only in which cells may be non-zero
    (upper bound 0 elsewhere) and which are fixed, so one `highspy.Highs` holds the model for all
    of them: no PuLP rebuild of the restricted model, no second pass of rows to HiGHS. HiGHS's
    presolve drops the fixed columns in a few milliseconds.
    """

    def __init__(self, model: Model | Columns, pb: Problem, st: PlacementSettings, arr: Arrays | None = None) -> None:
        self.pb, self.st = pb, st
        # `arr`: the arrays of a PuLP `model` already made (skips `to_arrays`).
        self.columns = columns_of(model, arr) if isinstance(model, Model) else model
        self.model = self.columns.model
        self.arr = self.columns.arr
        self.x_col = self.columns.x_col
        self.up_col = self.columns.up_col
        self.down_col = self.columns.down_col
        self.unmet_col = self.columns.unmet_col
        # The x columns as arrays, for vector reads of a solution (336k cells at 100k GPUs).
        self.x_keys: list[CellKey] = list(self.x_col)
        self.x_idx = np.fromiter(self.x_col.values(), dtype=np.int64, count=len(self.x_keys))
        self.by_name = {s.name: s for s in pb.services}
        self.h = highspy.Highs()
        for key, value in (("output_flag", False), ("threads", 1), ("mip_rel_gap", st.mip_gap)):
            self.h.setOptionValue(key, value)
        self.arr.pass_to(self.h)
        self.status = ""
        self.optimal = False  # the last `mip` stopped at its gap
        self.row_dual: np.ndarray | None = None  # the last LP's row duals

    def lp(self, time_limit_s: float = math.inf, *, relax_groups: bool = False) -> np.ndarray | None:
        """The LP relaxation's column values, or None when it is not solved to optimality.

        `relax_groups`: without the group rows (`Columns.group_rows`: each group's ratio and
        pairing), a relaxation of the LP, so its objective is still a lower bound on every
        placement and its duals (0 on the rows left out) still price `lagrange.global_bound`.
        Why: at 100k GPUs / 500 services those rows are 216k of 221k, and the LP without them
        takes 1.4 s of CPU instead of 8.6 s, 0.02 % below the full LP (docs/placement.md).
        """
        rows = self.columns.group_rows if relax_groups else np.zeros(0, dtype=np.int64)
        if len(rows):
            free = np.full(len(rows), math.inf)
            self.h.changeRowsBounds(len(rows), rows.astype(np.int32), -free, free)
        self.h.setOptionValue("solve_relaxation", True)
        self.h.setOptionValue("time_limit", max(0.05, float(time_limit_s)))
        try:
            self.h.run()
            status = self.h.getModelStatus()
            sol = self.h.getSolution()  # read before the rows come back: a model change resets both
            for _ in range(LP_ROW_ROUNDS if len(rows) else 0):
                if status != highspy.HighsModelStatus.kOptimal:
                    break
                # Put back the group rows the answer breaks; the dual simplex goes on from its basis.
                back = self._broken(rows, np.array(sol.col_value))
                if not len(back):
                    break
                self.h.changeRowsBounds(len(back), back.astype(np.int32), self.arr.row_lo[back], self.arr.row_hi[back])
                rows = rows[~np.isin(rows, back)]
                self.h.run()
                status = self.h.getModelStatus()
                sol = self.h.getSolution()
        finally:
            self.h.setOptionValue("solve_relaxation", False)
            if len(rows):
                self.h.changeRowsBounds(len(rows), rows.astype(np.int32), self.arr.row_lo[rows], self.arr.row_hi[rows])
        if status != highspy.HighsModelStatus.kOptimal:
            self.status = self.h.modelStatusToString(status)
            return None
        # The LP's duals (what `lagrange.global_bound` prices the coupling rows with).
        self.row_dual = np.array(sol.row_dual) if sol.dual_valid else None
        return np.array(sol.col_value)

    def _broken(self, rows: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Those of `rows` that `x` breaks (by more than 1e-7)."""
        act = self.arr.activity(x)[rows]
        return rows[(act < self.arr.row_lo[rows] - 1e-7) | (act > self.arr.row_hi[rows] + 1e-7)]

    def vector(self, cells: Mapping[CellKey, int]) -> np.ndarray:
        """All columns for instances per cell: up/down and unmet derived."""
        v = np.zeros(self.arr.n_cols)
        for k, n in cells.items():
            v[self.x_col[k]] = n
        for k, c in self.up_col.items():
            v[c] = max(0, cells.get(k, 0) - self.pb.current[k])
            v[self.down_col[k]] = max(0, self.pb.current[k] - cells.get(k, 0))
        have: dict[tuple[str, Role], float] = defaultdict(float)
        for k, n in cells.items():
            have[(k.service, k.role)] += n * weight(self.by_name[k.service], k.role, k.gpu_type)
        for (name, role), c in self.unmet_col.items():
            v[c] = max(0.0, self.pb.targets[name].of(role) - have[(name, role)])
        return v

    def cells(self, v: np.ndarray) -> dict[CellKey, int]:
        n = np.round(v[self.x_idx])
        keys = self.x_keys
        return {keys[i]: int(n[i]) for i in np.flatnonzero(n > 0).tolist()}

    def objective(self, v: np.ndarray) -> float:
        return float(self.arr.cost @ v)

    def mip(
        self,
        lo: np.ndarray,
        hi: np.ndarray,
        start: np.ndarray | None,
        time_limit_s: float,
        gap: float,
        *,
        seed: int = 0,
    ) -> np.ndarray | None:
        """The MIP within [lo, hi] from `start`; the incumbent's columns, or None without one."""
        h = self.h
        self.optimal = False
        h.changeColsBounds(len(lo), np.arange(len(lo), dtype=np.int32), lo, hi)
        h.setOptionValue("time_limit", max(0.05, float(time_limit_s)))
        h.setOptionValue("mip_rel_gap", gap)
        h.setOptionValue("random_seed", seed)
        if start is not None:
            sol = highspy.HighsSolution()
            sol.col_value = start.tolist()
            sol.value_valid = True
            h.setSolution(sol)
        h.run()
        status = h.getModelStatus()
        self.status = h.modelStatusToString(status)
        if h.getInfo().primal_solution_status != 2:  # kSolutionStatusFeasible
            return None
        self.optimal = status == highspy.HighsModelStatus.kOptimal
        return np.array(h.getSolution().col_value)

    def write_back(self, v: np.ndarray) -> None:
        """Put `v` into the PuLP variables (what `Model.values` and `pulp.value` read), if any."""
        if self.model is None:
            return
        for var, value in zip(self.arr.cols, v.tolist(), strict=True):
            var.varValue = value
        self.model.prob.solverModel = self.h
