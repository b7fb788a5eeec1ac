"""Churn polish: undo the instance changes a solved placement does not need (pure).

Contract: `polish(pb, st, cells)` takes the moving services' instances per cell from a solver
(or any placement that keeps the model's constraints) and returns a placement that keeps every
constraint the model has (per-pool capacity, GPU budget, `max_instances`, each group holding both
roles or neither, each group's P/D ratio within tolerance plus rounding) and scores no worse on
`score.evaluate`'s objective, plus the number of steps taken. Every step moves cells back toward
the current placement, so churn never rises; a step is taken only when the objective falls.

Why: the MIP stops at a relative gap (1 % of an objective of tens of thousands of $/h), which
leaves room for dozens of starts and stops that buy nothing (an instance stopped in one S1 and
started in another of the same group, a surplus start the ratio band did not need). Each is a
disrupted instance in production. Reverting them is cheap: a few hundred candidate steps of one
to four cells, each checked on the pools and groups it touches.

Steps, per service, repeated until none improves:
  1. one cell one instance back toward what runs now;
  2. one instance moved back within a role: a cell above current -1, a cell below current +1;
  3. the same for both roles at once (a whole P+D relocation of a group, which one role alone
     cannot undo without breaking the ratio of both groups on the way).
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Mapping, Sequence

from models.config import PlacementSettings, Role, Service
from models.values import CellKey
from tasks.core.placement.deadline import Deadline
from tasks.core.placement.problem import Problem, move_coef, ratio_ok, weight

_EPS = 1e-9
_MAX_ROUNDS = 50
# Services with more P x D pair combinations than this get singles and pairs only (time).
_MAX_QUADS = 400


class _State:
    def __init__(self, pb: Problem, st: PlacementSettings, cells: Mapping[CellKey, int]) -> None:
        self.pb, self.st = pb, st
        self.by_name: dict[str, Service] = {s.name: s for s in pb.services}
        self.cells: dict[CellKey, int] = {k: n for k, n in cells.items() if k.service in self.by_name}
        self.used: dict[tuple[str, str], int] = defaultdict(int)
        self.units: dict[tuple[str, Role], float] = defaultdict(float)
        self.g_units: dict[tuple[str, str, Role], float] = defaultdict(float)
        self.g_count: dict[tuple[str, str, Role], int] = defaultdict(int)
        self.total: dict[str, int] = defaultdict(int)
        self.gpus = 0
        self.keys: dict[str, set[CellKey]] = defaultdict(set)  # service -> cells it has or had
        for k in set(self.cells) | set(pb.current):
            self.keys[k.service].add(k)
        for k, n in self.cells.items():
            self._apply(k, n)

    def _gpi(self, k: CellKey) -> int:
        return self.pb.gpi[(k.service, k.role.value)]

    def _apply(self, k: CellKey, d: int) -> None:
        svc = self.by_name[k.service]
        dom = self.pb.group_of[(k.service, k.s1)]
        w = weight(svc, k.role, k.gpu_type)
        self.used[(k.gpu_type, k.s1)] += d * self._gpi(k)
        self.units[(k.service, k.role)] += d * w
        self.g_units[(k.service, dom, k.role)] += d * w
        self.g_count[(k.service, dom, k.role)] += d
        self.total[k.service] += d
        self.gpus += d * self._gpi(k)

    def delta(self, changes: Sequence[tuple[CellKey, int]]) -> float:
        """Objective change of applying `changes` (cell, +-instances), in evaluate()'s terms."""
        pb, st = self.pb, self.st
        total = 0.0
        short_before: dict[tuple[str, Role], float] = {}
        shift: dict[tuple[str, Role], float] = defaultdict(float)
        for k, d in changes:
            gpi, cost = self._gpi(k), pb.cost[k.gpu_type]
            total += d * gpi * (cost + st.priority_weight * pb.prio.get(k.s1, 0))
            cur, n = pb.current.get(k, 0), self.cells.get(k, 0)
            total += st.churn_weight_h * gpi * cost * (abs(n + d - cur) - abs(n - cur))
            if pb.growing[(k.service, k.role)]:
                total += move_coef(pb, st, k, start=False) * (max(0, cur - n - d) - max(0, cur - n))
            else:
                total += move_coef(pb, st, k, start=True) * (max(0, n + d - cur) - max(0, n - cur))
            key = (k.service, k.role)
            short_before.setdefault(key, max(0.0, pb.targets[k.service].of(k.role) - self.units[key]))
            shift[key] += d * weight(self.by_name[k.service], k.role, k.gpu_type)
        for key, before in short_before.items():
            after = max(0.0, pb.targets[key[0]].of(key[1]) - self.units[key] - shift[key])
            total += (after - before) * pb.unmet_penalty[key]
        return total

    def feasible_after(self, changes: Sequence[tuple[CellKey, int]]) -> bool:
        """Whether the placement keeps the model's constraints once `changes` are applied."""
        for k, d in changes:
            self.cells[k] = self.cells.get(k, 0) + d
            self._apply(k, d)
        try:
            return self._feasible(changes)
        finally:
            for k, d in changes:
                self.cells[k] -= d
                self._apply(k, -d)

    def _feasible(self, changes: Sequence[tuple[CellKey, int]]) -> bool:
        pb = self.pb
        for k, _ in changes:
            if self.cells[k] < 0 or self.used[(k.gpu_type, k.s1)] > pb.free.get((k.gpu_type, k.s1), 0):
                return False
            if self.total[k.service] > self.by_name[k.service].policy.max_instances:
                return False
        if pb.budget_left is not None and self.gpus > pb.budget_left:
            return False
        for name, dom in {(k.service, pb.group_of[(k.service, k.s1)]) for k, _ in changes}:
            t = pb.targets[name]
            if t.num_prefill == 0 or t.num_decode == 0:
                continue
            n_p, n_d = self.g_count[(name, dom, Role.PREFILL)], self.g_count[(name, dom, Role.DECODE)]
            if (n_p > 0) != (n_d > 0):
                return False
            if n_p and not ratio_ok(
                self.by_name[name],
                self.g_units[(name, dom, Role.PREFILL)],
                self.g_units[(name, dom, Role.DECODE)],
                self.st.ratio_tolerance,
            ):
                return False
        return True

    def commit(self, changes: Sequence[tuple[CellKey, int]]) -> None:
        for k, d in changes:
            self.cells[k] = self.cells.get(k, 0) + d
            self._apply(k, d)


def _candidates(state: _State, name: str) -> list[list[tuple[CellKey, int]]]:
    """Steps back toward the current placement for one service: singles, role pairs, P+D quads."""
    pb = state.pb
    above: dict[Role, list[CellKey]] = defaultdict(list)
    below: dict[Role, list[CellKey]] = defaultdict(list)
    for k in sorted(state.keys[name]):
        n, cur = state.cells.get(k, 0), pb.current.get(k, 0)
        if n > cur:
            above[k.role].append(k)
        elif n < cur:
            below[k.role].append(k)
    out: list[list[tuple[CellKey, int]]] = []
    for role in Role:
        out += [[(k, -1)] for k in above[role]] + [[(k, 1)] for k in below[role]]
    pairs: dict[Role, list[list[tuple[CellKey, int]]]] = {
        role: [[(a, -1), (b, 1)] for a, b in itertools.product(above[role], below[role])] for role in Role
    }
    for role in Role:
        out += pairs[role]
    if len(pairs[Role.PREFILL]) * len(pairs[Role.DECODE]) <= _MAX_QUADS:
        out += [p + d for p, d in itertools.product(pairs[Role.PREFILL], pairs[Role.DECODE])]
    return out


def polish(
    pb: Problem,
    st: PlacementSettings,
    cells: Mapping[CellKey, int],
    *,
    max_candidates: int = 200_000,
    deadline: Deadline | None = None,
) -> tuple[dict[CellKey, int], int]:
    """`cells` with unneeded starts and stops undone (see the module doc), and the steps taken.

    With `deadline`, no step is started after it has passed (each step only lowers the
    objective, so stopping early keeps a valid, never worse answer).
    """
    state = _State(pb, st, cells)
    steps = tried = 0
    names = sorted(state.keys)
    for _ in range(_MAX_ROUNDS):
        improved = False
        for name in names:
            while deadline is None or not deadline.passed():
                best: tuple[float, list[tuple[CellKey, int]]] | None = None
                for cand in _candidates(state, name):
                    tried += 1
                    gain = state.delta(cand)
                    if gain < -_EPS and (best is None or gain < best[0]) and state.feasible_after(cand):
                        best = (gain, cand)
                if best is None or tried > max_candidates:
                    break
                state.commit(best[1])
                steps += 1
                improved = True
        if not improved or tried > max_candidates:
            break
    return {k: n for k, n in state.cells.items() if n > 0}, steps
