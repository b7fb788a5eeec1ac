"""Replay and the policy bench as Prefect flows, runnable from the UI with parameters.

Orchestration only: the replay itself is `flows.replay.run_league` and the outputs are
`flows.league.write_outputs`, the same code `heteroscale replay` and `heteroscale demo`
run. Each policy replays in its own task (named after the policy) so the UI shows which one is
running and how long each took; the league table, the per-service report and the plot are
published as artifacts of the flow run, and the files land in `out_dir`.

- `replay` (`replay_flow`): one load (one trace, or a trace per service) through the league.
- `bench_policies` (`bench_policies_flow`): the league on each of several traces; one league
  table for all of them, one plot per trace.

Loading is `flows.replay.load_service_curves`, the CLI's (`[SERVICE=]PATH`, `PATH@SHIFT`,
`peak_rps="auto"` fits the load to the cluster). So a run started from the UI finishes in
seconds, the defaults replay at most the first `hours` (24) of each trace; `hours=None` replays
all of it and `placement` (greedy | ilp) overrides the per-policy default (the ILP for
`heteroscale` only), for long replays where the ILP's tens of milliseconds per period add up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.artifacts import artifact_key, publish_markdown, publish_plot, publish_table
from flows.league import prepare_out_dir, table, write_outputs
from flows.replay import DEFAULT_LEAGUE, load_service_curves, replay, replay_weight
from models import settings
from models.config import ClusterConfig, PlacementMethod
from sim.sizing import fit_to_cluster
from sim.traces import LoadCurve
from tasks.core.policy import POLICIES
from tasks.core.registry import load_config

# A UI run replays at most this much of each trace by default (a 14-day trace takes minutes).
DEFAULT_HOURS = 24.0


def window(curves: dict[str, LoadCurve], hours: float | None) -> dict[str, LoadCurve]:
    """The first `hours` of every curve (all of it when None or longer than the trace)."""
    if hours is None:
        return curves
    if hours <= 0:
        raise ValueError(f"hours must be positive or None (whole trace), got {hours}")
    out = {}
    for name, c in curves.items():
        share = hours * 3600.0 / c.duration_s
        out[name] = c if share >= 1 else c.split(share)[0]
    return out


def _out_dir(out_dir: str | None, what: str) -> Path:
    if out_dir:
        return Path(out_dir)
    # late: prefect: ~2 s at import, flow runs only
    from prefect.runtime import flow_run

    return settings.data_dir() / what / str(flow_run.get_id() or "local")


@task(name="load traces", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=1)
def load_curves_task(
    config: ClusterConfig,
    trace: str | list[str],
    peak_rps: dict[str, float] | str | None,
    lengths: str | list[str] | None,
    hours: float | None,
) -> dict[str, LoadCurve]:

    # The window is cut before fitting: "auto" sizes the load for what is actually replayed.
    curves, _factor = load_service_curves(config, trace, lengths, None if peak_rps == "auto" else peak_rps)
    curves = window(curves, hours)
    if peak_rps == "auto":
        curves, _factor = fit_to_cluster(config, curves)
    return curves


@task(name="replay policy", cache_policy=NO_CACHE, persist_result=False)
def replay_policy_task(
    config: ClusterConfig, curves: dict[str, LoadCurve], policy: str, placement: str | None = None
) -> Any:

    # No per-tick records: the league needs the totals, and a day of ticks is memory for nothing.
    return replay(config, curves, policy, placement=placement)


@task(name="write outputs", cache_policy=NO_CACHE)
def write_outputs_task(
    results: list[Any], config: ClusterConfig, curves: dict[str, LoadCurve], out: Path, command: str
) -> dict[str, Path]:

    # A re-run into the same out_dir leaves no plot of the previous run (other files are kept).
    prepare_out_dir(out, force=True)
    return write_outputs(results, config, curves, out, command=command)


def _check(policies: list[str], placement: str | None) -> None:

    # Permanent: fail the run at once with the valid names, before any replay starts.
    bad = [p for p in policies if p not in POLICIES]
    if bad:
        raise ValueError(f"unknown policy {bad}; choose from {sorted(POLICIES)}")
    if placement is not None and placement not in {m.value for m in PlacementMethod}:
        raise ValueError(f"unknown placement {placement!r}; choose from {[m.value for m in PlacementMethod]}")


def _league(
    config: ClusterConfig, curves: dict[str, LoadCurve], policies: list[str], placement: str | None
) -> list[Any]:
    # One task per policy, run one after the other: replays are CPU-bound, threads would only
    # contend for the GIL and make each task's duration in the UI meaningless.
    return [
        replay_policy_task.with_options(task_run_name=f"replay {p}")(config, curves, p, placement) for p in policies
    ]


@flow(name="replay")
def replay_flow(
    config_path: str = str(settings.DEMO_CONFIG),
    trace: str | list[str] = str(settings.BUNDLED_TRACE),
    peak_rps: dict[str, float] | str | None = "auto",
    policies: list[str] | None = None,
    lengths: str | list[str] | None = None,
    out_dir: str | None = None,
    hours: float | None = DEFAULT_HOURS,
    placement: str | None = None,
) -> dict[str, Any]:
    """Replay `trace` on the twin with each policy; league table, report and plot as artifacts.

    `trace`: a path or `[SERVICE=]PATH[@SHIFT]` items; `peak_rps`: "auto" (static-peak needs ~80%
    of the cluster), `{service: req/s}` or None (as recorded); `hours`: replay the first hours only
    (None: all); `placement`: greedy | ilp for every policy (default: per policy)."""

    logger = get_run_logger()
    config = load_config(config_path)
    policies = list(policies or DEFAULT_LEAGUE)
    _check(policies, placement)
    curves = load_curves_task(config, trace, peak_rps, lengths, hours)
    results = _league(config, curves, policies, placement)
    out = _out_dir(out_dir, "replay")
    cmd = (
        f"replay flow: config={config_path} trace={trace} peak_rps={peak_rps} policies={policies} "
        f"hours={hours} placement={placement}"
    )
    paths = write_outputs_task(results, config, curves, out, cmd)
    rows = [r.summary() for r in results]
    name = config.cluster.name
    publish_table(rows, key=artifact_key("replay-league", name), description=f"replay league · {name}")
    publish_markdown(
        paths["report"].read_text(), key=artifact_key("replay-report", name), description=f"replay report · {name}"
    )
    publish_plot(paths["plot"], key=artifact_key("replay-plot", name), title=f"replay · {name}: load and instances")
    logger.info("replay of %s with %s written to %s\n%s", name, policies, out, table(rows))
    return {"results": rows, "out_dir": str(out), "summary": str(paths["summary"])}


@flow(name="bench_policies")
def bench_policies_flow(
    config_path: str = str(settings.DEMO_CONFIG),
    traces: list[str] | None = None,
    peak_rps: dict[str, float] | str | None = "auto",
    policies: list[str] | None = None,
    lengths: str | None = None,
    out_dir: str | None = None,
    hours: float | None = DEFAULT_HOURS,
    placement: str | None = None,
    engine: str = "dask",
    dask_address: str | None = None,
    workers: int = 2,
) -> dict[str, Any]:
    """The policy league on each trace; one table over all traces, a plot per trace.

    Every (trace, policy) replay is one task of a subflow run by `engine` (`flows.fanout`): dask
    (a local cluster of `workers` processes, or the scheduler at `dask_address`) or sequential."""
    # late: dask and distributed cost seconds at import; only the league fans out
    from flows.fanout import Engine, fan_out

    config = load_config(config_path)
    policies = list(policies or DEFAULT_LEAGUE)
    _check(policies, placement)
    eng = Engine.of("dask" if dask_address else engine, dask_address, workers)
    traces = traces or [str(settings.BUNDLED_TRACE)]
    out = _out_dir(out_dir, "bench")
    loads = []
    for trace in traces:
        label = Path(trace.rsplit("@", 1)[0]).stem
        curves = load_curves_task.with_options(task_run_name=f"load {label}")(config, trace, peak_rps, lengths, hours)
        loads.append((trace, label, curves))
    calls = [
        (
            f"replay {p} · {label}",
            {"config": config, "curves": curves, "policy": p, "placement": placement, "keep_ticks": True},
        )
        for _trace, label, curves in loads
        for p in policies
    ]
    weights = [replay_weight(p) for _trace, _label, _curves in loads for p in policies]
    replays = iter(fan_out(replay, calls, eng, flow_name="bench_policies league", weights=weights))
    rows: list[dict[str, Any]] = []
    for trace, label, curves in loads:
        results = [next(replays) for _ in policies]
        paths = write_outputs_task(results, config, curves, out / label, f"bench_policies flow: trace={trace}")
        rows += [{"trace": label, **r.summary()} for r in results]
        publish_plot(paths["plot"], key=artifact_key("bench-plot", label), title=f"bench · {label}")
    publish_table(rows, key=artifact_key("bench-policies", config.cluster.name), description="policy bench")
    return {"results": rows, "out_dir": str(out)}
