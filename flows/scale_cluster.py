"""`scale_cluster`: one scaling run of one cluster, as a Prefect flow.

collect signals -> read cluster -> forecast -> targets -> place -> apply -> record.
Each step is a Prefect task with a clear name and retries where the step talks to the outside
(signals, cluster, apply). The decisions are the plain functions of `tasks.steps`, the same the
replay loop calls. The run row is written before anything is applied, and every run ends in the
store with its status: held, applied, dry-run, advisory, export or failed (with the step that
failed). In `export` mode nothing is sent to the cluster; the decision (per-cell current and
desired replicas included) is what `heteroscale exporter` publishes for HPA/KEDA.

Outages are outages: when no signal query could be read (`SignalRead.unavailable`: Prometheus
down, a wrong URL, a proxy's HTML page), the run reads the cluster, holds every service, applies
nothing and is recorded as `held` with error `signals-unavailable: <query, HTTP status, URL>`;
its Prefect flow run ends in a COMPLETED state named `SignalsUnavailable` (distinct in the UI and
the API; the store has the same record). The collect step is bounded by the config's collect
budget (a share of the control period), so such a run still ends within the period.
Apply gets the SLO state per service from this run's signals: the Kubernetes backend decides
drains and restores from it, never from a second read; its decisions are recorded with reasons.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import get_run_context
from prefect.states import Completed, State

from flows.artifacts import publish_scale_run
from flows.backends import make_backends
from models import settings
from models.config import ClusterConfig
from models.enums import RunStatus
from models.errors import redact, retry_transient
from models.values import Action, ApplyMode, SignalRead
from sim.twin import TwinParams, engines_for
from tasks import steps
from tasks.core.actuation import slo_states
from tasks.core.invariants import InvariantViolation, group_warnings, plan_violations
from tasks.core.registry import load_config
from tasks.prometheus import bootstrap_history
from tasks.report import run_markdown
from tasks.store import Store

collect_task = task(
    steps.read_signals,
    name="collect signals",
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=retry_transient,
    cache_policy=NO_CACHE,
    timeout_seconds=60,
)
read_cluster_task = task(
    steps.read_cluster,
    name="read cluster",
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=retry_transient,
    cache_policy=NO_CACHE,
    timeout_seconds=60,
)
forecast_task = task(steps.forecast_load, name="forecast load", cache_policy=NO_CACHE)
bootstrap_task = task(bootstrap_history, name="bootstrap history", cache_policy=NO_CACHE, timeout_seconds=120)
targets_task = task(steps.compute_targets, name="compute targets", cache_policy=NO_CACHE)
place_task = task(steps.place, name="place", cache_policy=NO_CACHE, timeout_seconds=120)
apply_task = task(
    steps.apply_plan,
    name="apply",
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=retry_transient,
    cache_policy=NO_CACHE,
    timeout_seconds=300,
)


@task(name="record run", retries=2, retry_delay_seconds=2, retry_condition_fn=retry_transient, cache_policy=NO_CACHE)
def record_task(store: Store, run_id: int, **kwargs: Any) -> None:
    store.finish_run(run_id, **kwargs)


def _flow_run_id() -> str | None:
    try:
        ctx = get_run_context()
    except RuntimeError:
        return None
    run = getattr(ctx, "flow_run", None)
    return str(run.id) if run is not None else None


@flow(name="scale_cluster")
def scale_cluster(
    config_path: str = str(settings.DEMO_CONFIG),
    backend: str = "twin",
    signals_backend: str | None = None,
    mode: str = "apply",
    twin_trace: str | None = None,
    twin_peak_rps: dict[str, float] | None = None,
    database_url: str | None = None,
    faults: dict[str, Any] | None = None,
) -> dict[str, Any] | State:
    """One scaling run. Returns the run id, status and the decision per service (as the result
    of a `SignalsUnavailable` state when no signal could be read)."""
    logger = get_run_logger()
    config = load_config(config_path)
    delay = settings.task_retry_delay_s()
    collect = collect_task.with_options(retry_delay_seconds=delay)
    read_cluster = read_cluster_task.with_options(retry_delay_seconds=delay)
    apply = apply_task.with_options(retry_delay_seconds=2 * delay)
    apply_mode = ApplyMode(mode)
    store = Store(database_url or settings.database_url())
    cluster = config.cluster.name
    # The run is on record before anything else can fail, so even a run that cannot reach its
    # backends leaves a trace.
    run_id = store.start_run(
        cluster=cluster, now_s=None, mode=apply_mode.value, backend=backend, flow_run_id=_flow_run_id()
    )
    # One run per cluster at a time, even if two deployments or a manual run race Prefect's
    # concurrency limit. The lock expires so a crashed run cannot block the cluster for ever.
    holder = store.try_lock(
        cluster, run_id, now_wall_s=time.time(), ttl_s=max(600.0, 5 * config.cluster.control_period_s)
    )
    if holder is not None:
        msg = f"another run (id {holder}) holds the lock of cluster {cluster!r}; this run changed nothing"
        store.finish_run(run_id, status=RunStatus.SKIPPED, error=msg)
        logger.warning("run %s skipped: %s", run_id, msg)
        return {"run_id": run_id, "status": RunStatus.SKIPPED.value, "moving": False, "changes": 0, "decisions": {}}
    step = "connect backends"
    record: dict[str, Any] = {}
    try:
        be = make_backends(
            config,
            backend,
            signals=signals_backend,
            twin_trace=twin_trace,
            twin_peak_rps=twin_peak_rps,
            faults=faults,
        )
        be.before_run()
        now = float(be.clock())
        record["now_s"] = now
        step = "collect signals"
        read = collect(be.signals, config, now)
        record["signals"] = signals = read.signals
        record["signal_errors"] = read.errors
        step = "read cluster"
        view = read_cluster(be.cluster, config, now)
        record["current"] = steps.current_counts(config, view)
        record["current_cells"] = view.placement
        if read.unavailable:
            return _signals_unavailable(store, run_id, config, read, record, logger)
        step = "forecast load"
        keep_s = config.cluster.history_window_s  # the replay keeps the same window
        # A fresh store: one range query per signal group fills the forecaster's history (recorded).
        stored, boot = bootstrap_task(be.signals, store, config, store.history(cluster, now - keep_s), now)
        if boot["bootstrapped"]:
            logger.info("history from Prometheus for %s: %s", boot["short_services"], boot)
        history = steps.extend_history(stored, signals, config, now)
        record["metric_values"] = {n: h[-1][1] for n, h in history.items()}
        store.append_samples(cluster, now, record["metric_values"])
        store.prune_samples(cluster, now - config.cluster.retention_s)
        record["forecasts"] = forecasts = forecast_task(config, history)
        step = "compute targets"
        # The capacity model (cached on disk): SLO-grounded policies size for the request sizes seen now.
        engines = engines_for(config, TwinParams())
        targets, states = targets_task(
            config, view, signals, forecasts, store.load_states(cluster), now, engines=engines
        )
        record["targets"] = targets = steps.explain_holds(targets, read)
        step = "place"
        record["plan"] = plan = place_task(config, view, targets, now_s=now)
        step = "check invariants"
        broken = plan_violations(config, view, signals, targets, plan, now)
        if broken:
            raise InvariantViolation("; ".join(broken))
        warnings = group_warnings(config, view, plan)
        step = "apply"
        record["result"] = result = apply(be.cluster, config, plan, apply_mode, now, slo=slo_states(config, signals))
        step = "record run"
        # Export mode: HPA/KEDA act on the published decision, so cooldowns run as if applied.
        if apply_mode in (ApplyMode.APPLY, ApplyMode.EXPORT):
            store.save_states(cluster, states)
        moving = any(t.action is not Action.HOLD for t in targets.values())
        status = RunStatus(apply_mode.value) if apply_mode is not ApplyMode.APPLY else RunStatus.APPLIED
        if not result.changes:
            status = RunStatus.HELD
        summary = ", ".join(f"{n}: {t.num_prefill}P/{t.num_decode}D {t.action.value}" for n, t in targets.items())
        # Backend warnings (paused service, manual override, drained instances kept) and the
        # actuation decisions (drains, restores, removals) are kept in the record.
        warnings += result.warnings
        if result.actions:
            summary += " | actuation: " + "; ".join(map(str, result.actions))
        if warnings:
            summary += " | warnings: " + "; ".join(warnings)
        record_task(store, run_id, status=status, summary=summary, **record)
        _publish(config, status, record)
        logger.info("run %s %s: %s", run_id, status, summary)
        return {
            "run_id": run_id,
            "status": status.value,
            "moving": moving,
            "changes": len(result.changes),
            "decisions": {
                n: {
                    "num_prefill": t.num_prefill,
                    "num_decode": t.num_decode,
                    "action": t.action.value,
                    "reason": t.reason,
                }
                for n, t in targets.items()
            },
        }
    except Exception as exc:
        store.finish_run(
            run_id,
            status=RunStatus.FAILED,
            failed_step=step,
            error=redact(f"{type(exc).__name__}: {exc}"),
            **{
                k: v
                for k, v in record.items()
                if k in ("signals", "current", "targets", "forecasts", "metric_values", "plan", "signal_errors")
            },
        )
        logger.error("run %s failed in step %r: %s", run_id, step, exc)
        exc.add_note(f"in scale_cluster step {step!r}")
        raise
    finally:
        store.unlock(cluster, run_id)


def _signals_unavailable(
    store: Store, run_id: int, config: ClusterConfig, read: SignalRead, record: dict[str, Any], logger: Any
) -> State:
    """No signal could be read: hold everything, change nothing, record it as an outage."""
    cluster, now = config.cluster.name, record["now_s"]
    record["targets"] = targets = steps.hold_all(config, record["current"], read)
    record["forecasts"] = {}
    # The history gets a gap (None), never a zero.
    record["metric_values"] = {s.name: None for s in config.services}
    store.append_samples(cluster, now, record["metric_values"])
    error = redact(f"{steps.SIGNALS_UNAVAILABLE}: " + "; ".join(map(str, read.errors)))
    summary = f"{steps.SIGNALS_UNAVAILABLE}: {len(read.errors)} of {read.queries} signal queries failed; all held"
    record_task(store, run_id, status=RunStatus.HELD, summary=summary, error=error, **record)
    _publish(config, "held (signals-unavailable)", record)
    logger.warning("run %s held: %s", run_id, error)
    out = {
        "run_id": run_id,
        "status": RunStatus.HELD.value,
        "status_reason": steps.SIGNALS_UNAVAILABLE,
        "moving": False,
        "changes": 0,
        "errors": [str(e) for e in read.errors],
        "decisions": {
            n: {"num_prefill": t.num_prefill, "num_decode": t.num_decode, "action": t.action.value, "reason": t.reason}
            for n, t in targets.items()
        },
    }
    return Completed(name="SignalsUnavailable", message=error[:500], data=out)


def _publish(config: ClusterConfig, status: RunStatus | str, record: dict[str, Any]) -> None:
    """The run's decision table as a Prefect artifact (visible on the flow-run page)."""
    # late: prefect: ~2 s at import, flow runs only
    from prefect.artifacts import create_markdown_artifact

    md = run_markdown(
        cluster=config.cluster.name,
        status=status,
        signals=record["signals"],
        forecasts=record["forecasts"],
        current=record["current"],
        targets=record["targets"],
        plan=record.get("plan"),
        result=record.get("result"),
        signal_errors=record.get("signal_errors", ()),
    )
    create_markdown_artifact(
        markdown=md, key=f"scale-{config.cluster.name}", description=f"scale_cluster {config.cluster.name}"
    )

    run_dir = settings.data_dir() / "runs" / config.cluster.name / (_flow_run_id() or "local")
    publish_scale_run(config.cluster.name, status, record, run_dir)


if __name__ == "__main__":
    print(scale_cluster(str(Path(settings.DEMO_CONFIG))))
