"""RINS rounds: better placements near the best one found so far, beside or before the MIP.

Contract: `Search(main, lo, hi, start, lp_x, until)` holds the best placement (all columns of
`main`'s model) and its objective; `offer` keeps a vector only when it keeps every row and
bound and beats the best. `run(threaded=...)` runs RINS rounds (`rins`) from the best until
`until` passes, `halt()` is called, or a full cycle of rounds brings nothing; it never raises (an
error is kept in `error`). `attach(runner)` connects the MIP on `runner` to the search: finds go
both ways, and that MIP is interrupted once the best is proven within `mip_gap`.

This module starts no thread and reads no clock. To run the rounds beside the MIP, the caller
injects a `Parallel` (`spawn` a callable on a second core, a `lock` factory): the adapter
`tasks/placement_runner.py` passes a thread and `threading.Lock`; without one (`Search.start` not
called) `run()` goes on the calling thread, before the MIP. Time comes from the `Deadline`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from models.values import CellKey
from tasks.core.placement.deadline import Deadline
from tasks.core.placement.highs import Runner
from tasks.core.placement.problem import EPS

# RINS gets at most this long (and at most half the time left) on one core.
RINS_CAP_S = 1.5
# RINS sub-MIPs stop at this relative gap (half the default `mip_gap`; 1 % and 2 % measured worse).
_RINS_GAP = 0.005
# RINS rounds beside the MIP, in turn: (reach, loose, time cap in s). Tight rounds (loose=False:
# only the short services and their pools free) first: 0.1-0.3 s each and most of the gain; then
# the loose ones (also the cells where start and LP disagree). Measured against loose-only rounds
# and against a 0.8 s cap on the tight wide round: docs/placement.md.
_ROUNDS: tuple[tuple[str, bool, float], ...] = (
    ("narrow", False, math.inf),
    ("near", False, math.inf),
    ("wide", False, math.inf),
    ("narrow", True, math.inf),
    ("wide", True, math.inf),
)
# On one core (RINS first, then the MIP): the loose rounds only, as before the second core was used
# (the tight ones measured worse there: seed 3 left at 33,957 when RINS's half of the time ran out).
_ROUNDS_SEQUENTIAL: tuple[tuple[str, bool, float], ...] = (("narrow", True, math.inf), ("wide", True, math.inf))
# HiGHS seeds of the calling thread's rounds in the RINS-only mode start here.
_FULL_SEED_OFFSET = 1000
# A round starts only with at least this share of the last round's time left: a sub-MIP cut
# short in its root cuts overran the deadline by up to 1.6 s at 100k GPUs (HiGHS checks its time
# limit and the interrupt between cut rounds).
_MIN_ROUND_SHARE = 0.5
# `halt` waits this long at most for the search thread.
_JOIN_S = 10.0


class Joinable(Protocol):
    """What `Parallel.spawn` returns: the running work, to wait for."""

    def join(self, timeout: float | None = None) -> None: ...

    def is_alive(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class Parallel:
    """A second core for the search, injected by the caller (the adapter passes a thread).

    `spawn(work)` starts `work()` beside the caller and returns a handle to join; `lock()` makes a
    lock the two sides share when they hand the best placement to each other.
    """

    spawn: Callable[[Callable[[], None]], Joinable]
    lock: Callable[[], AbstractContextManager[Any]]


class Search:
    """RINS rounds from the best placement found so far, beside the MIP that proves the gap.

    Why: at 20k GPUs HiGHS spends its first second in root cuts, and its own incumbents come late
    and by luck of its random seed; RINS from the start finds good ones in 0.3-1.5 s but has no
    bound. On a second core both run at once: every RINS find is handed to the MIP
    (`cbMipUserSolution`), every MIP find comes back as the next round's start
    (`cbMipImprovingSolution`), and the MIP stops as soon as its bound is within `mip_gap`.
    Rounds alternate narrow and wide neighbourhoods and change HiGHS's random seed when one does
    not improve. `run()` on the calling thread is the sequential variant.
    """

    def __init__(
        self,
        main: Runner,
        lo: np.ndarray,
        hi: np.ndarray,
        start: np.ndarray,
        lp_x: Mapping[CellKey, float],
        until: Deadline,
    ) -> None:
        self.main, self.lo, self.hi, self.lp_x, self.until = main, lo, hi, lp_x, until
        self.lock: AbstractContextManager[Any] = contextlib.nullcontext()
        self.stopped = False  # set by `halt`; read by the rounds and the sub-MIPs' interrupt check
        self.worker: Joinable | None = None
        self.best, self.best_obj = start, main.objective(start)
        self.version = 0  # bumped on every improvement
        self.sent = 0  # last version handed to the MIP
        self.rounds = self.injected = 0
        self.improved = False
        self.last_s = until.now_s()
        self.error = ""
        self._subs: list[tuple[Any, Any]] = []
        self.gap = main.st.mip_gap
        self.bound = -math.inf  # the attached MIP's proven bound, as last seen
        self.global_bound = -math.inf  # a bound on every placement (`lagrange`), set by the caller
        self.proven = False  # the best is within `gap` of that bound: the MIP was stopped for it

    def start(self, parallel: Parallel) -> None:
        """Run the rounds beside the caller, on `parallel`'s second core."""
        self.lock = parallel.lock()
        self.worker = parallel.spawn(lambda: self.run(threaded=True))

    def offer(self, v: np.ndarray, *, own: bool) -> bool:
        """Keep `v` when it is feasible and better than the best so far."""
        obj = self.main.objective(v)
        if obj >= self.best_obj - EPS or not self.main.arr.feasible(v):
            return False
        with self.lock:
            if obj >= self.best_obj - EPS:
                return False
            self.best, self.best_obj = v, obj
            self.version += 1
            if own:
                self.improved = True
                self.last_s = self.until.now_s()
        return True

    def attach(self, run: Runner) -> None:
        """Connect `run`'s next MIP to the search: finds go both ways."""

        def user_solution(e: Any) -> None:
            if self.version == self.sent or self.best_obj >= e.data_out.mip_primal_bound - EPS:
                return
            with self.lock:
                best, self.sent = self.best, self.version
            e.data_in.setSolution(best)
            self.injected += 1

        def check(e: Any) -> None:
            # HiGHS takes user solutions only during its root cuts; later finds are checked here
            # against its proven bound, and the MIP is stopped once one is within the gap.
            self.bound = max(self.bound, float(e.data_out.mip_dual_bound))
            if self.best_obj - max(self.bound, self.global_bound) <= self.gap * max(abs(self.best_obj), EPS):
                self.proven = True
                e.interrupt()
            elif self.until.left_s() <= 0:
                # HiGHS checks its own time limit between root-cut rounds and nodes: at 20k GPUs
                # that let the MIP overrun the deadline by 0.2-0.5 s; this callback runs more often.
                e.interrupt()

        self._subs = [
            (run.h.cbMipUserSolution, self._guard(user_solution)),
            (run.h.cbMipImprovingSolution, lambda e: self._offer_from(e, own=False)),
            (run.h.cbMipInterrupt, self._guard(check)),
        ]
        for hook, fn in self._subs:
            hook.subscribe(fn)

    def _guard(self, fn: Callable[[Any], None]) -> Callable[[Any], None]:
        """`fn` as a HiGHS callback that never raises into the solver (the error is kept)."""

        def safe(e: Any) -> None:
            try:
                fn(e)
            except Exception as exc:  # a failed hand-over must not fail the solve
                self.error = self.error or f"{type(exc).__name__}: {exc}"

        return safe

    def _offer_from(self, e: Any, *, own: bool) -> None:
        try:
            self.offer(np.array(e.data_out.mip_solution), own=own)
        except Exception as exc:  # as in `_guard`
            self.error = self.error or f"{type(exc).__name__}: {exc}"

    def halt(self) -> None:
        """Stop the rounds, detach from the MIP, and wait (1 s at most) for a spawned worker."""
        self.stopped = True
        for hook, fn in self._subs:
            hook.unsubscribe(fn)
        self._subs = []
        if self.worker is not None and self.worker.is_alive():
            # Wait for its sub-MIP to stop: a HiGHS run left going on a daemon thread takes a core
            # from what follows and aborts the interpreter if it exits first. The rounds start no
            # sub-MIP they cannot end by the deadline (`_MIN_ROUND_SHARE`), so this is short.
            self.worker.join(timeout=_JOIN_S)
            if self.worker.is_alive():
                self.error = self.error or f"search thread still running {_JOIN_S:.0f} s after halt"

    def run(self, *, threaded: bool = False, full: bool = False) -> None:
        """The rounds; `threaded`: beside a MIP on its own HiGHS model, else on `main`'s.

        `full` (on `main`'s model): every round kind in turn until the deadline or a full turn
        without a find, as beside a MIP; the large path's RINS-only mode (`large.py`).
        """
        try:
            self._rounds(threaded, full)
        except Exception as exc:  # a failed search must not fail the placement
            self.error = f"{type(exc).__name__}: {exc}"

    def _rounds(self, threaded: bool, full: bool = False) -> None:
        runner = Runner(self.main.columns, self.main.pb, self.main.st) if threaded else self.main
        subs: list[tuple[Any, Callable[[Any], None]]] = []
        if threaded or full:
            subs = [
                (
                    runner.h.cbMipInterrupt,
                    lambda e: e.interrupt() if self.stopped or self.until.left_s() <= 0 else None,
                ),
                # A sub-MIP's finds count at once (the proving MIP may stop on one), not at its end.
                (runner.h.cbMipImprovingSolution, lambda e: self._offer_from(e, own=True)),
            ]
            for hook, fn in subs:
                hook.subscribe(fn)
        rounds = _ROUNDS if threaded or full else _ROUNDS_SEQUENTIAL
        # Two searches at once (`full` beside a threaded one) try different HiGHS seeds.
        seed_offset = _FULL_SEED_OFFSET if full else 0
        step = misses = 0
        took = 0.0  # the last round's time
        try:
            while (
                not self.stopped and self.until.left_s() > max(0.05, _MIN_ROUND_SHARE * took) and misses < len(rounds)
            ):
                began = self.until.now_s()
                with self.lock:
                    start, start_obj = self.best, self.best_obj
                reach, loose, cap = rounds[step % len(rounds)]
                better = rins(
                    runner,
                    self.lo,
                    self.hi,
                    start,
                    self.lp_x,
                    min(cap, self.until.left_s()),
                    reach=reach,
                    loose=loose,
                    seed=seed_offset + self.rounds,
                )
                self.rounds += 1
                step += 1
                took = self.until.now_s() - began
                if better is not None:
                    self.offer(better, own=True)  # usually offered already, by the callback
                if self.best_obj < start_obj - EPS:
                    misses = 0
                else:
                    misses += 1
                    if not threaded and not full and step >= len(rounds):
                        break
        finally:
            if not threaded:
                for hook, fn in subs:
                    hook.unsubscribe(fn)


def rins(
    run: Runner,
    lo: np.ndarray,
    hi: np.ndarray,
    start: np.ndarray,
    lp_x: Mapping[CellKey, float],
    time_limit_s: float,
    *,
    reach: str,
    loose: bool = True,
    seed: int = 0,
) -> np.ndarray | None:
    """RINS on `run`'s model: every cell fixed where the start and the LP agree, from the start.

    Why: what is left free are the cells the rounding had to decide (a few hundred of 10k+), a
    sub-MIP HiGHS usually closes in well under a second, where the whole MIP spends seconds in
    root cuts before its first sub-MIP incumbent. Pools where a service the start leaves short
    could go stay free too (the instances there may have to make room); with `wide`, so do all
    cells of the services running in those pools, so they can move out. With `loose=False` the
    cells where start and LP disagree are fixed too (a tight, fast round). Returns the sub-MIP's
    incumbent (all columns) or None.
    """
    short = {name for key, c in run.unmet_col.items() if start[c] > EPS for name in (key[0],)}
    contested = {(k.gpu_type, k.s1) for k, c in run.x_col.items() if k.service in short and hi[c] > 0}
    occupants = {k.service for k, c in run.x_col.items() if start[c] > EPS and (k.gpu_type, k.s1) in contested}
    movers = short | occupants if reach == "wide" else set(short)

    # "near": the services running in contested pools may move within the group domains they
    # hold there (none-affinity ones: among the S1s they already use), not everywhere.
    def home(k: CellKey) -> tuple[str, str]:  # the group domain of a cell; its S1 for none-affinity
        dom = run.pb.group_of[(k.service, k.s1)]
        return (k.service, k.s1 if dom == "*" else dom)

    near: set[tuple[str, str]] = set()
    if reach == "near":
        near = {
            home(k)
            for k, c in run.x_col.items()
            if start[c] > EPS
            and k.service in occupants
            and (run.pb.group_of[(k.service, k.s1)] == "*" or (k.gpu_type, k.s1) in contested)
        }
    lo_f, hi_f = lo.copy(), hi.copy()
    for k, c in run.x_col.items():
        free = k.service in movers or (k.gpu_type, k.s1) in contested or (bool(near) and home(k) in near)
        if not free and (not loose or abs(lp_x.get(k, 0.0) - start[c]) < EPS):
            lo_f[c] = hi_f[c] = start[c]
    return run.mip(lo_f, hi_f, start, time_limit_s, _RINS_GAP, seed=seed)
