"""Fan independent replays out with a Prefect task runner (issue 18, item 3).

A league is policies x loads of replays that share nothing: each is one Prefect task, submitted
together in one flow run whose task runner is chosen by an `Engine`:

  * `dask` (default): prefect-dask's `DaskTaskRunner` on a local Dask cluster of `workers`
    processes (one thread each: a replay is CPU-bound Python, threads would share one GIL);
  * `dask` with `address`: the same tasks on a running Dask scheduler (`tcp://host:8786`), any
    number of machines. The workers need this package installed (same version) and the data the
    replays read already in memory: the curves travel with the task, nothing is read there;
  * `sequential`: no flow and no task runner, the replays one after the other in this process (the
    previous behaviour; no Prefect server needed).

Ray: `prefect-ray`'s `RayTaskRunner(address=...)` is a drop-in task runner for the same flow
(docs/league.md); it is not installed here.

Results are the same objects the sequential loop returns (`flows.replay.ReplayResult`), in the
order of `calls`; a failed replay fails the fan-out with its exception.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

T = TypeVar("T")

DEFAULT_WORKERS = 2


class EngineKind(StrEnum):
    DASK = "dask"
    SEQUENTIAL = "sequential"


@dataclass(frozen=True)
class Engine:
    """Where the replays of a league run."""

    kind: EngineKind = EngineKind.DASK
    address: str | None = None  # a running Dask scheduler; None: a local cluster per fan-out
    workers: int = DEFAULT_WORKERS  # processes of the local cluster

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        if self.address and self.kind is not EngineKind.DASK:
            raise ValueError("a Dask address needs the dask engine")

    @classmethod
    def of(cls, kind: str = "dask", address: str | None = None, workers: int = DEFAULT_WORKERS) -> Engine:
        """From command-line values; unknown kinds fail with the valid names."""
        try:
            k = EngineKind(kind)
        except ValueError:
            raise ValueError(f"unknown engine {kind!r}; choose from {[e.value for e in EngineKind]}") from None
        return cls(kind=k, address=address or None, workers=workers)

    def describe(self) -> str:
        if self.kind is EngineKind.SEQUENTIAL:
            return "sequential"
        return f"dask {self.address}" if self.address else f"dask local ({self.workers} processes)"

    def task_runner(self) -> Any:
        from prefect_dask import DaskTaskRunner

        if self.address:
            return DaskTaskRunner(address=self.address)
        return DaskTaskRunner(
            cluster_kwargs={
                "n_workers": self.workers,
                "threads_per_worker": 1,
                "processes": True,
                "dashboard_address": ":0",  # any free port: several leagues may run side by side
                "silence_logs": logging.WARNING,
            }
        )


@contextmanager
def _shared_api(engine: Engine) -> Iterator[None]:
    """Local workers report their task runs to this process's Prefect API.

    Workers are processes spawned when the flow starts; they read `PREFECT_API_URL` from the
    environment. It is set here to this process's API for the duration: the configured one (a
    server, or a test harness's), or else the ephemeral server this process uses, started now;
    without it each worker would start an ephemeral server of its own (~20 s each). A remote
    Dask cluster's workers need `PREFECT_API_URL` in their own environment (docs/league.md)."""
    if engine.address:
        yield
        return
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        from prefect.server.api.server import SubprocessASGIServer

        server = SubprocessASGIServer()  # the ephemeral server this process's client uses (a singleton)
        server.start()
        url = server.api_url
    before = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = url
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = before


SEQUENTIAL = Engine(kind=EngineKind.SEQUENTIAL)


class _Held:
    """A value Prefect passes along without looking inside.

    On a task's and a flow's return, Prefect walks the returned value (every list, dict, dataclass
    and pydantic model in it) looking for futures to resolve. A league's results hold twins with
    their tick records: walking them cost 45% of the parent process's CPU, serially after the
    last replay (py-spy, 7 policies x 3 days). A plain object is visited once and not entered."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def _held(fn: Callable[..., T]) -> Callable[..., _Held]:
    def call(**kwargs: Any) -> _Held:
        return _Held(fn(**kwargs))

    call.__name__ = getattr(fn, "__name__", "replay")
    call.__qualname__ = call.__name__
    return call


def fan_out(
    fn: Callable[..., T],
    calls: Sequence[tuple[str, Mapping[str, Any]]],
    engine: Engine,
    *,
    flow_name: str = "league",
    weights: Sequence[float] | None = None,
) -> list[T]:
    """`[fn(**kwargs) for _name, kwargs in calls]`, each call a Prefect task named `name`, run by
    `engine`'s task runner in one flow run (a subflow when called from a flow). Sequential: plain
    calls here (in a flow: tasks, one after the other).

    `weights` (one per call, e.g. expected run time): submitted heaviest first, so the longest
    replays do not start last and leave one worker idle at the end (longest-processing-time
    order); results are still returned in the order of `calls`."""
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE
    from prefect.context import FlowRunContext

    if weights is not None and len(weights) != len(calls):
        raise ValueError(f"{len(weights)} weights for {len(calls)} calls")
    # Results stay in memory (a ReplayResult holds the twin); nothing is cached or persisted, and
    # Prefect does not walk them (`_Held`).
    replay_task = task(_held(fn), name=getattr(fn, "__name__", "replay"), cache_policy=NO_CACHE, persist_result=False)
    if engine.kind is EngineKind.SEQUENTIAL or not calls:
        if FlowRunContext.get() is not None:  # in a flow: still one task per replay, for the UI
            return [replay_task.with_options(task_run_name=name)(**kwargs).value for name, kwargs in calls]
        return [fn(**kwargs) for _name, kwargs in calls]

    order = sorted(range(len(calls)), key=lambda i: -weights[i]) if weights is not None else list(range(len(calls)))

    def run_all() -> _Held:
        futures = {i: replay_task.with_options(task_run_name=calls[i][0]).submit(**calls[i][1]) for i in order}
        return _Held([futures[i].result().value for i in range(len(calls))])

    # A closure without parameters: the config and curves are not flow parameters (stored by the API).
    fanned = flow(name=flow_name, task_runner=engine.task_runner(), persist_result=False, validate_parameters=False)(
        run_all
    )
    logging.getLogger("distributed").setLevel(logging.WARNING)  # the scheduler's chatter, in this process
    with _shared_api(engine):
        return fanned().value
