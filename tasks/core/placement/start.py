"""The MIP start: a ratio-keeping constructive placement from the LP rounded down (pure).

Contract: `Start(pb, st, cells, prefer, clock=...).run(base)` returns instances per cell, all
within `cells` (the cells of the model that will receive it), with per-(GPU type, S1) capacity,
the GPU budget and `max_instances` kept, and every group (service x domain at its affinity level)
holding both roles in ratio (`problem.ratio_ok`) or neither. Demand may be left short where no
such group fits. Deterministic for a given input, except that the last repair (`_relieve`) stops
after `relieve_s` seconds on the injected `clock` (the caller's; this module reads none).
"""

from __future__ import annotations

import math
import operator
from collections import defaultdict
from collections.abc import Mapping, Sequence

from models.config import PlacementSettings, Role, Service
from models.values import CellKey
from tasks.core.placement.deadline import Clock, Deadline
from tasks.core.placement.problem import EPS, Problem, move_coef, ratio_ok, weight

# The start's last repair (`Start._relieve`): cells tried per domain, instances moved per cell.
_RELIEVE_CELLS = 4
_RELIEVE_MOVES = 8
# ... and at most this long in all (seconds).
_RELIEVE_S = 0.3
# CellKey's own order (its fields in turn) as a C-level key.
_CELL_ORDER = operator.attrgetter("service", "role", "gpu_type", "s1")


class Start:
    """A ratio-keeping constructive placement, used as the MIP start (pure).

    Contract: `run()` returns instances per cell, all within `cells` (the cells of the model that
    will receive it), with per-(GPU type, S1) capacity, the GPU budget and `max_instances` kept,
    and every group (service x domain at its affinity level) holding both roles in ratio
    (`ratio_ok`) or neither. Demand may be left short where no such group fits.

    Why: HiGHS finds its incumbents at 20k GPUs only through sub-MIPs, slowly and by luck of the
    random seed (docs/placement.md); with a feasible, ratio-correct start close to the LP it can
    stop as soon as its root bound is within `mip_gap`.

    How: start from the LP solution rounded down (it already keeps the running instances the
    churn cost makes worth keeping); repair each group's ratio (add the short role, else drop
    the long one); then cover each service's deficit, most important first, one instance at a
    time on the cheapest cell (GPU $ + priority + churn per reference unit), in a domain that
    already holds a group first, re-balancing the group after every step and undoing steps the
    group cannot absorb.
    """

    def __init__(
        self,
        pb: Problem,
        st: PlacementSettings,
        cells: Sequence[CellKey],
        prefer: set[CellKey] | None = None,
        *,
        clock: Clock,
    ) -> None:
        self.pb, self.st = pb, st
        self.prefer = prefer or set()
        self.strict = False  # True: only cells in `prefer` may grow
        self.clock = clock
        self.deadline = Deadline(math.inf, clock)  # `_relieve` stops trying after this
        self.closed: set[tuple[str, str]] = set()  # (GPU type, S1) pools being emptied: nothing grows there
        self.by_name = {s.name: s for s in pb.services}
        self.cells: dict[CellKey, int] = defaultdict(int)
        # (GPU type, S1) -> every cell ever added there (count may be 0 now): no scan of all cells.
        self.in_pool: dict[tuple[str, str], set[CellKey]] = defaultdict(set)
        self.free: dict[tuple[str, str], int] = dict(pb.free)
        self.budget = math.inf if pb.budget_left is None else pb.budget_left
        self.units: dict[tuple[str, str, Role], float] = defaultdict(float)
        self.count: dict[tuple[str, str, Role], int] = defaultdict(int)
        self.total: dict[str, int] = defaultdict(int)
        # (service, role, domain) -> cells; each service's domains in a fixed order.
        self.options: dict[tuple[str, Role, str], list[CellKey]] = defaultdict(list)
        # Each service's domains in order of first appearance (a dict keeps it; no list scans).
        seen: dict[str, dict[str, None]] = defaultdict(dict)
        usable: dict[tuple[str, Role, str], bool] = {}
        # CellKey's own order (its fields in turn), compared as tuples: the same order, faster.
        for k in sorted(cells, key=_CELL_ORDER):
            block = (k.service, k.role, k.gpu_type)
            ok = usable.get(block)
            if ok is None:
                svc = self.by_name.get(k.service)
                ok = usable[block] = svc is not None and weight(svc, k.role, k.gpu_type) > 0
            if not ok:
                continue
            dom = pb.group_of[(k.service, k.s1)]
            self.options[(k.service, k.role, dom)].append(k)
            seen[k.service][dom] = None
        self.domains: dict[str, list[str]] = defaultdict(list, {name: list(d) for name, d in seen.items()})

    def _gpi(self, k: CellKey) -> int:
        return self.pb.gpi[(k.service, k.role.value)]

    def _add(self, k: CellKey, n: int, log: list[tuple[CellKey, int]]) -> None:
        svc = self.by_name[k.service]
        dom = self.pb.group_of[(k.service, k.s1)]
        self.cells[k] += n
        self.in_pool[(k.gpu_type, k.s1)].add(k)
        self.free[(k.gpu_type, k.s1)] -= n * self._gpi(k)
        self.budget -= n * self._gpi(k)
        self.units[(k.service, dom, k.role)] += n * weight(svc, k.role, k.gpu_type)
        self.count[(k.service, dom, k.role)] += n
        self.total[k.service] += n
        log.append((k, n))

    def _undo(self, log: list[tuple[CellKey, int]], mark: int) -> None:
        while len(log) > mark:
            k, n = log.pop()
            self._add(k, -n, [])

    def _step_cost(self, k: CellKey) -> float:
        """Objective change of adding one instance to `k`, per reference unit."""
        gpi = self._gpi(k)
        own = gpi * (self.pb.cost[k.gpu_type] + self.st.priority_weight * self.pb.prio.get(k.s1, 0))
        churn = self.st.churn_weight_h * gpi * self.pb.cost[k.gpu_type]
        above = self.cells[k] >= self.pb.current.get(k, 0)
        step = (
            own + churn + move_coef(self.pb, self.st, k, start=True)
            if above
            else (own - churn - move_coef(self.pb, self.st, k, start=False))
        )
        return step / weight(self.by_name[k.service], k.role, k.gpu_type)

    def _saving(self, k: CellKey) -> float:
        """Objective saved by removing one instance of `k`, per reference unit."""
        gpi = self._gpi(k)
        own = gpi * (self.pb.cost[k.gpu_type] + self.st.priority_weight * self.pb.prio.get(k.s1, 0))
        churn = self.st.churn_weight_h * gpi * self.pb.cost[k.gpu_type]
        below = self.cells[k] <= self.pb.current.get(k, 0)
        step = (
            own - churn - move_coef(self.pb, self.st, k, start=False)
            if below
            else (own + churn + move_coef(self.pb, self.st, k, start=True))
        )
        return step / weight(self.by_name[k.service], k.role, k.gpu_type)

    def _cheapest(
        self, name: str, role: Role, dom: str, log: list[tuple[CellKey, int]] | None = None
    ) -> CellKey | None:
        """The cheapest cell of (service, role, domain) one more instance fits in, or None.

        With `log`, when none fits, room is made on the cheapest cell by moving instances of
        S2- and none-affinity services to other S1s of their own group domain (their groups are
        unchanged: same units, same domain), logged so they can be undone.
        """
        svc = self.by_name[name]
        if self.total[name] + 1 > svc.policy.max_instances:
            return None
        allowed = [k for k in self.options.get((name, role, dom), ()) if not self.strict or k in self.prefer]
        if not allowed or self.budget < self._gpi(allowed[0]):
            return None
        fits = [
            k
            for k in allowed
            if self.free.get((k.gpu_type, k.s1), 0) >= self._gpi(k) and (k.gpu_type, k.s1) not in self.closed
        ]
        best = min(fits, key=lambda k: (k not in self.prefer, self._step_cost(k), k), default=None)
        if best is not None or log is None:
            return best
        for k in sorted(allowed, key=lambda k: (self._step_cost(k), k)):
            if (k.gpu_type, k.s1) not in self.closed and self._make_room(k.gpu_type, k.s1, self._gpi(k), log):
                return k
        return None

    def _make_room(self, gpu_type: str, s1: str, gpus: int, log: list[tuple[CellKey, int]]) -> bool:
        """Move flexible instances off (gpu_type, s1) until `gpus` GPUs are free there."""
        mark = len(log)
        movable = [
            k for k in self.in_pool[(gpu_type, s1)] if self.cells[k] > 0 and self.pb.group_of[(k.service, s1)] != s1
        ]
        for k in sorted(movable, key=lambda k: (self._gpi(k), k)):
            dom = self.pb.group_of[(k.service, s1)]
            while self.cells[k] > 0 and self.free.get((gpu_type, s1), 0) < gpus:
                dest = [
                    k2
                    for k2 in self.options.get((k.service, k.role, dom), ())
                    if k2.gpu_type == gpu_type and k2.s1 != s1 and self.free.get((gpu_type, k2.s1), 0) >= self._gpi(k)
                ]
                if not dest:
                    break
                self._add(k, -1, log)
                self._add(min(dest, key=lambda k2: (self._step_cost(k2), k2)), 1, log)
            if self.free.get((gpu_type, s1), 0) >= gpus:
                return True
        self._undo(log, mark)
        return False

    def _paired(self, name: str) -> bool:
        t = self.pb.targets[name]
        return t.num_prefill > 0 and t.num_decode > 0

    def _in_ratio(self, name: str, dom: str) -> bool:
        n_p, n_d = self.count[(name, dom, Role.PREFILL)], self.count[(name, dom, Role.DECODE)]
        if not self._paired(name) or n_p == n_d == 0:
            return True
        p, d = self.units[(name, dom, Role.PREFILL)], self.units[(name, dom, Role.DECODE)]
        return n_p > 0 and n_d > 0 and ratio_ok(self.by_name[name], p, d, self.st.ratio_tolerance)

    def _short_role(self, name: str, dom: str) -> Role:
        n_p, n_d = self.count[(name, dom, Role.PREFILL)], self.count[(name, dom, Role.DECODE)]
        if n_p == 0 or n_d == 0:
            return Role.PREFILL if n_p == 0 else Role.DECODE
        rho = self.by_name[name].pd_ratio.prefill_per_decode
        p, d = self.units[(name, dom, Role.PREFILL)], self.units[(name, dom, Role.DECODE)]
        return Role.PREFILL if p < rho * d else Role.DECODE

    def _balance(self, name: str, dom: str, log: list[tuple[CellKey, int]], evict: bool = False) -> bool:
        """Add instances of the short role until the group is in ratio; False if it cannot be."""
        for _ in range(10_000):
            if self._in_ratio(name, dom):
                return True
            k = self._cheapest(name, self._short_role(name, dom), dom, log if evict else None)
            if k is None:
                return False
            self._add(k, 1, log)
        return False

    def _shrink(self, name: str, dom: str, log: list[tuple[CellKey, int]]) -> None:
        """Drop instances of the long role (dearest first) until the group is in ratio or empty."""
        while not self._in_ratio(name, dom):
            role = Role.DECODE if self._short_role(name, dom) is Role.PREFILL else Role.PREFILL
            mine = [k for k in self.options.get((name, role, dom), ()) if self.cells[k] > 0]
            if not mine:  # one role alone with nothing of it to drop: drop the other role too
                mine = [k for k in self.cells if k.service == name and self.cells[k] > 0]
                mine = [k for k in mine if self.pb.group_of[(name, k.s1)] == dom]
            k = max(mine, key=lambda k: (self._saving(k), k))
            self._add(k, -1, log)

    def _hosts(self, svc: Service) -> int:
        """How many domains can hold a group of `svc` (both roles have cells there)."""
        return sum(1 for d in self.domains[svc.name] if all((svc.name, r, d) in self.options for r in Role))

    def _place_base(self, base: Mapping[CellKey, int], log: list[tuple[CellKey, int]]) -> None:
        for k, n in sorted(base.items()):
            n = min(n, max(0, self.free.get((k.gpu_type, k.s1), 0)) // self._gpi(k))
            if n > 0 and (k.service, k.role, self.pb.group_of[(k.service, k.s1)]) in self.options:
                self._add(k, n, log)

    def _repair(self, services: Sequence[Service], log: list[tuple[CellKey, int]]) -> None:
        """Every group of `services` back in ratio: the short role added, else the long one cut."""
        for svc in services:
            for dom in self.domains[svc.name]:
                mark = len(log)
                if not self._balance(svc.name, dom, log):
                    self._undo(log, mark)
                    self._shrink(svc.name, dom, log)

    def run(
        self, base: Mapping[CellKey, int], *, relieve_s: float = _RELIEVE_S, one_by_one: bool = False
    ) -> dict[CellKey, int]:
        """The start from `base` (the LP rounded down); `_relieve` gets `relieve_s` seconds.

        `one_by_one`: each service whole (its base, its groups repaired, its deficit covered)
        before the next one's base is placed, fewest hosting domains first, instead of every
        service's base first. Neither order is better on every case (docs/placement.md: at 20k
        GPUs / 100 services, seeds 1-40, each is the better start on about half the seeds; the
        default leaves small S1-affinity services with no room in the few S1s that hold both their
        GPU types, one by one leaves a large service placed late short): `large.solve_large` runs
        both and keeps the cheaper.
        """
        log: list[tuple[CellKey, int]] = []
        order = sorted(self.pb.services, key=lambda s: (-s.priority, s.name))
        # Services with the fewest domains able to hold a group grow first: the others can go
        # elsewhere (small S1-affinity services otherwise find their only mixed S1s taken).
        by_hosts = sorted(order, key=lambda s: (self._hosts(s), -s.priority, s.name))
        if one_by_one:
            base_of: dict[str, dict[CellKey, int]] = defaultdict(dict)
            for k, n in base.items():
                base_of[k.service][k] = n
            for svc in by_hosts:
                self._place_base(base_of[svc.name], log)
                self._repair([svc], log)
                for self.strict in (True, False):
                    self._cover(svc, log)
        else:
            self._place_base(base, log)
            # Repair every service's groups before any service grows: a growing service would take
            # the few GPUs another's rounded-down group needs to get back in ratio.
            self._repair(order, log)
        # First on the LP's own cells only (where the LP left room for exactly this service), then
        # anywhere: a service that strays early takes the room another one's rounding-up needs.
        for self.strict in (True, False):
            for svc in by_hosts:
                self._cover(svc, log)
        self.deadline = Deadline.after(relieve_s, self.clock)
        for svc in by_hosts:
            self._relieve(svc, log)
        return {k: n for k, n in self.cells.items() if n > 0}

    def _have(self, name: str, role: Role) -> float:
        return sum(self.units[(name, d, role)] for d in self.domains[name])

    def _shortfall(self, name: str) -> dict[Role, float]:
        t = self.pb.targets[name]
        return {r: v for r in Role if (v := t.of(r) - self._have(name, r)) > EPS}

    def _relieve(self, svc: Service, log: list[tuple[CellKey, int]]) -> None:
        """Serve what `svc` still lacks by moving other services' instances out of the way.

        Why: the cover step only moves S2/none-affinity instances to other S1s on the same GPU
        type; a short S1-affinity service whose only domains are full stays short, and each
        unmet unit costs ~100x a served one. Here one instance at a time of another service
        leaves a pool the short service could use, and that service is covered again elsewhere
        (a whole P+D pair when its group needs it); a step is kept only when no other service
        ends up serving less, and undone otherwise.
        """
        name = svc.name
        for _ in range(svc.policy.max_instances):
            short = self._shortfall(name)
            if not short:
                return
            role = max(short, key=lambda r: (short[r] / max(self.pb.targets[name].of(r), 1), r is Role.DECODE))
            doms = [d for d in self.domains[name] if all((name, r, d) in self.options for r in Role)]
            doms.sort(key=lambda d: (self.count[(name, d, Role.PREFILL)] + self.count[(name, d, Role.DECODE)] == 0, d))
            if not any(self._relieve_in(name, role, dom, log) for dom in doms):
                return

    def _relieve_in(self, name: str, role: Role, dom: str, log: list[tuple[CellKey, int]]) -> bool:
        have = self._have(name, role)
        mark = len(log)
        k = self._cheapest(name, role, dom, log) or self._room_for(name, role, dom, log)
        if k is not None:
            self._add(k, 1, log)
            if self._balance_hard(name, dom, log) and self._have(name, role) > have + EPS:
                return True
        self._undo(log, mark)
        return False

    def _balance_hard(self, name: str, dom: str, log: list[tuple[CellKey, int]]) -> bool:
        """`_balance` that may also move other services out of the way (`_room_for`)."""
        for _ in range(_RELIEVE_MOVES):
            if self._in_ratio(name, dom):
                return True
            role = self._short_role(name, dom)
            k = self._cheapest(name, role, dom, log) or self._room_for(name, role, dom, log)
            if k is None:
                return False
            self._add(k, 1, log)
        return self._in_ratio(name, dom)

    def _room_for(self, name: str, role: Role, dom: str, log: list[tuple[CellKey, int]]) -> CellKey | None:
        """A cell of (service, role, domain) made room in by moving other services out, or None."""
        svc = self.by_name[name]
        if self.total[name] + 1 > svc.policy.max_instances or self.deadline.passed():
            return None
        cells = sorted(self.options.get((name, role, dom), ()), key=lambda k: (self._step_cost(k), k))
        for k in cells[:_RELIEVE_CELLS]:
            pool = (k.gpu_type, k.s1)
            if pool in self.closed or self.budget < self._gpi(k):
                continue
            self.closed.add(pool)
            try:
                if self._empty(pool, self._gpi(k), name, log):
                    return k
            finally:
                self.closed.discard(pool)
        return None

    def _empty(self, pool: tuple[str, str], gpus: int, keep: str, log: list[tuple[CellKey, int]]) -> bool:
        """Move other services' instances off `pool` until `gpus` GPUs are free there."""
        for _ in range(_RELIEVE_MOVES):
            if self.free.get(pool, 0) >= gpus:
                return True
            if self.deadline.passed():
                return False
            movable = [k for k in self.in_pool[pool] if self.cells[k] > 0 and k.service != keep]
            moved = False
            for k in sorted(movable, key=lambda k: (self._gpi(k), self.by_name[k.service].priority, k)):
                mark = len(log)
                before = {r: self._have(k.service, r) for r in Role}
                dom = self.pb.group_of[(k.service, k.s1)]
                self._add(k, -1, log)
                if not self._in_ratio(k.service, dom) and not self._balance(k.service, dom, log):
                    self._shrink(k.service, dom, log)
                self._cover(self.by_name[k.service], log)
                if all(self._have(k.service, r) >= before[r] - EPS for r in Role) and self._in_ratio(k.service, dom):
                    moved = True
                    break
                self._undo(log, mark)
            if not moved:
                return False
        return self.free.get(pool, 0) >= gpus

    def _cover(self, svc: Service, log: list[tuple[CellKey, int]]) -> None:
        name, target = svc.name, self.pb.targets[svc.name]
        blocked: set[Role] = set()
        while True:
            short = {
                r: target.of(r) - sum(self.units[(name, d, r)] for d in self.domains[name])
                for r in Role
                if r not in blocked
            }
            short = {r: v for r, v in short.items() if v > EPS}
            if not short:
                return
            role = max(short, key=lambda r: (short[r] / max(target.of(r), 1), r is Role.DECODE))
            # Domains that hold a group come first (a new group only when none of them can grow):
            # the new ones are only looked at when every held one failed (`_grow` undoes a failed
            # try, so they see the same state; ~3x faster for services with many domains).
            held = [
                d
                for d in self.domains[name]
                if self.count[(name, d, Role.PREFILL)] + self.count[(name, d, Role.DECODE)]
            ]
            fresh = [
                d
                for d in self.domains[name]
                if not self.count[(name, d, Role.PREFILL)] + self.count[(name, d, Role.DECODE)]
            ]
            grown = False
            for doms in (held, fresh):
                tries = []
                for dom in doms:
                    k = self._cheapest(name, role, dom)
                    if k is not None:
                        tries.append((k not in self.prefer, self._step_cost(k), k.s1, dom, k))
                if self._grow(name, role, [(dom, k) for *_, dom, k in sorted(tries)], log, evict=False):
                    grown = True
                    break
            if grown:
                continue
            # Nowhere to grow as is: make room by moving flexible services within their domains
            # (last resort: it adds churn), in domains that hold a group first.
            doms = sorted(
                (d for d in self.domains[name] if all((name, r, d) in self.options for r in Role)),
                key=lambda d: (self.count[(name, d, Role.PREFILL)] + self.count[(name, d, Role.DECODE)] == 0, d),
            )
            if self.strict or not self._grow(name, role, [(d, None) for d in doms], log, evict=True):
                blocked.add(role)

    def _grow(
        self,
        name: str,
        role: Role,
        tries: Sequence[tuple[str, CellKey | None]],
        log: list[tuple[CellKey, int]],
        *,
        evict: bool,
    ) -> bool:
        """Add one instance of `role` in the first (domain, cell) whose group stays in ratio."""
        for dom, cell in tries:
            mark = len(log)
            k = cell or self._cheapest(name, role, dom, log if evict else None)
            if k is None:
                self._undo(log, mark)
                continue
            self._add(k, 1, log)
            if self._balance(name, dom, log, evict):
                return True
            self._undo(log, mark)
        return False
