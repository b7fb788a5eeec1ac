"""Replay and the policy bench as Prefect flows, runnable from the UI with parameters.

Orchestration only: the replay itself is `flows.replay.run_league` and the outputs are
`heteroscale.league.write_outputs`, the same code `heteroscale replay` and `heteroscale demo`
run. Each policy replays in its own task (named after the policy) so the UI shows which one is
running and how long each took; the league table, the per-service report and the plot are
published as artifacts of the flow run, and the files land in `out_dir`.

- `replay` (`replay_flow`): one load (one trace, or a trace per service) through the league.
- `bench_policies` (`bench_policies_flow`): the league on each of several traces; one league
  table for all of them, one plot per trace.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.artifacts import artifact_key, publish_markdown, publish_plot, publish_table
from heteroscale import settings
from models.config import ClusterConfig, load_config
from sim.traces import LoadCurve, load_curve


def load_curves(
    config: ClusterConfig,
    traces: dict[str, str] | str,
    peak_rps: dict[str, float] | None,
    lengths: str | None = None,
) -> dict[str, LoadCurve]:
    """One curve per service: `traces` is one path for all or SERVICE -> path; peaks rescale."""
    dt = min(10.0, config.cluster.control_period_s)
    if peak_rps is None:
        from sim.live import auto_peaks

        first = traces if isinstance(traces, str) else next(iter(traces.values()))
        peak_rps = auto_peaks(config, load_curve(first, lengths=lengths, dt_s=dt))
    cache: dict[str, LoadCurve] = {}
    out = {}
    for svc in config.services:
        path = traces if isinstance(traces, str) else traces.get(svc.name)
        if path is None:
            raise ValueError(f"no trace for service {svc.name!r}; give one trace or one per service")
        if path not in cache:
            cache[path] = load_curve(path, lengths=lengths, dt_s=dt)
        curve = cache[path]
        peak = peak_rps.get(svc.name)
        out[svc.name] = curve.scaled_to_peak(peak) if peak else curve
    return out


def _out_dir(out_dir: str | None, what: str) -> Path:
    if out_dir:
        return Path(out_dir)
    from prefect.runtime import flow_run

    return settings.data_dir() / what / str(flow_run.get_id() or "local")


@task(name="load traces", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=1)
def load_curves_task(
    config: ClusterConfig, traces: dict[str, str] | str, peak_rps: dict[str, float] | None, lengths: str | None
) -> dict[str, LoadCurve]:
    return load_curves(config, traces, peak_rps, lengths)


@task(name="replay policy", cache_policy=NO_CACHE, persist_result=False)
def replay_policy_task(config: ClusterConfig, curves: dict[str, LoadCurve], policy: str) -> Any:
    from flows.replay import run_league

    return run_league(config, curves, [policy])[0]


@task(name="write outputs", cache_policy=NO_CACHE)
def write_outputs_task(
    results: list[Any], config: ClusterConfig, curves: dict[str, LoadCurve], out: Path, command: str
) -> dict[str, Path]:
    from heteroscale.league import write_outputs

    return write_outputs(results, config, curves, out, command=command)


def _league(config: ClusterConfig, curves: dict[str, LoadCurve], policies: list[str]) -> list[Any]:
    from tasks.core.policy import POLICIES

    bad = [p for p in policies if p not in POLICIES]
    if bad:
        # Permanent: fail the run at once with the valid names, before any replay starts.
        raise ValueError(f"unknown policy {bad}; choose from {sorted(POLICIES)}")
    futures = [replay_policy_task.with_options(task_run_name=f"replay {p}").submit(config, curves, p) for p in policies]
    return [f.result() for f in futures]


@flow(name="replay")
def replay_flow(
    config_path: str = str(settings.DEMO_CONFIG),
    trace: str = str(settings.BUNDLED_TRACE),
    peak_rps: dict[str, float] | None = None,
    policies: list[str] | None = None,
    lengths: str | None = None,
    out_dir: str | None = None,
) -> dict[str, Any]:
    """Replay `trace` on the twin with each policy; league table, report and plot as artifacts."""
    from flows.replay import DEFAULT_LEAGUE
    from heteroscale.league import table

    logger = get_run_logger()
    config = load_config(config_path)
    policies = list(policies or DEFAULT_LEAGUE)
    curves = load_curves_task(config, trace, peak_rps, lengths)
    results = _league(config, curves, policies)
    out = _out_dir(out_dir, "replay")
    cmd = f"replay flow: config={config_path} trace={trace} peak_rps={peak_rps} policies={policies}"
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
    peak_rps: dict[str, float] | None = None,
    policies: list[str] | None = None,
    lengths: str | None = None,
    out_dir: str | None = None,
) -> dict[str, Any]:
    """The policy league on each trace; one table over all traces, a plot per trace."""
    from flows.replay import DEFAULT_LEAGUE

    config = load_config(config_path)
    policies = list(policies or DEFAULT_LEAGUE)
    traces = traces or [str(settings.BUNDLED_TRACE)]
    out = _out_dir(out_dir, "bench")
    rows: list[dict[str, Any]] = []
    for trace in traces:
        label = Path(trace).stem
        curves = load_curves_task.with_options(task_run_name=f"load {label}")(config, trace, peak_rps, lengths)
        results = _league(config, curves, policies)
        paths = write_outputs_task(results, config, curves, out / label, f"bench_policies flow: trace={trace}")
        rows += [{"trace": label, **r.summary()} for r in results]
        publish_plot(paths["plot"], key=artifact_key("bench-plot", label), title=f"bench · {label}")
    publish_table(rows, key=artifact_key("bench-policies", config.cluster.name), description="policy bench")
    return {"results": rows, "out_dir": str(out)}
