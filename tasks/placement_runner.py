"""The placement ILP on the wall clock, with its RINS search on a second core (an adapter).

Contract: `run_ilp(config, view, targets, ...)` is `tasks.core.placement.place_ilp` given what
pure code may not touch: a `Deadline` `time_limit_s` from now on `time.perf_counter`, and, with
`parallel=True` (the default), a `Parallel` that runs the RINS search on a daemon thread named
"placement-rins" beside the MIP, the two sharing a `threading.Lock`. The thread is joined before
`run_ilp` returns. `parallel=False` runs RINS and then the MIP on the calling thread (one core).
Same result contract as `place_ilp`: it never raises for a solver problem (the greedy plan, with
the reason), and raises `ValueError` for an unknown `mip_start`. `run_incremental` is
`tasks.core.placement.place_incremental` on the same clock and thread (the loop's method).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence

import pulp

from models.config import ClusterConfig, PlacementSettings
from models.values import PlacementPlan, RoleCounts
from tasks.core.placement import Deadline, Parallel, place_ilp, place_incremental
from tasks.core.topology import ClusterView


def _spawn(work: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=work, name="placement-rins", daemon=True)
    thread.start()
    return thread


# The second core: the search on a thread, its hand-over to the MIP under a lock.
THREAD = Parallel(spawn=_spawn, lock=threading.Lock)


def run_ilp(
    config: ClusterConfig,
    view: ClusterView,
    targets: Mapping[str, RoleCounts],
    *,
    settings: PlacementSettings | None = None,
    solvers: Sequence[pulp.LpSolver] | None = None,
    mip_start: str = "ratio",
    parallel: bool = True,
) -> PlacementPlan:
    """`place_ilp` within `time_limit_s` of now, RINS beside the MIP unless `parallel=False`."""
    st = settings or config.cluster.placement
    return place_ilp(
        config,
        view,
        targets,
        deadline=Deadline.after(st.time_limit_s, time.perf_counter),
        settings=st,
        solvers=solvers,
        mip_start=mip_start,
        parallel=THREAD if parallel else None,
    )


def run_incremental(
    config: ClusterConfig,
    view: ClusterView,
    moving: Mapping[str, RoleCounts],
    *,
    held: Mapping[str, RoleCounts],
    full: bool = False,
    settings: PlacementSettings | None = None,
    parallel: bool = True,
) -> PlacementPlan:
    """`place_incremental` within `time_limit_s` of now per MIP stage (the full stage gets its own
    limit on the same clock), the large-cluster RINS beside the MIP unless `parallel=False`."""
    st = settings or config.cluster.placement
    return place_incremental(
        config,
        view,
        moving,
        held=held,
        deadline=Deadline.after(st.time_limit_s, time.perf_counter),
        full=full,
        settings=st,
        parallel=THREAD if parallel else None,
    )
