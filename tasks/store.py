"""The store: records every scaling run and keeps the state policies carry between runs.

Only this module talks to the database. Every run is recorded: `start_run` writes the run row
before anything is applied, `finish_run` writes the decisions, the placement and the changes
with the final status (`models.enums.RunStatus`), the actuation decisions behind the changes and
the signal queries that failed, and every cell's current and desired replicas (what
`heteroscale exporter` publishes from `latest_decided_runs`). A database that cannot be reached
or is locked raises `StoreUnavailable` (transient: the record task retries it).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from sqlalchemy import Engine, func, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlmodel import Session, SQLModel, col, create_engine, delete, select

from models.enums import RunStatus
from models.errors import TransientError
from models.store import (
    ActuationDecision,
    AppliedChange,
    CellReplicas,
    ClusterLock,
    DecisionRecord,
    MetricSample,
    PlacementRecord,
    PolicyStateRecord,
    ScalingRun,
    SignalErrorRecord,
)
from models.values import (
    ApplyResult,
    Forecast,
    Placement,
    PlacementPlan,
    QueryError,
    RoleCounts,
    ServicePolicyState,
    ServiceSignals,
    Targets,
)
from tasks.core.export import cell_replicas


def _clean(value: object) -> object:
    """JSON-safe: NaN and infinities become None (never 0)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def signals_json(signals: Mapping[str, ServiceSignals]) -> str:
    return json.dumps(
        {name: {k: _clean(v) for k, v in dataclasses.asdict(s).items()} for name, s in signals.items()},
        sort_keys=True,
    )


class StoreUnavailable(TransientError):
    """The database could not be reached, or was locked (sqlalchemy's OperationalError)."""


class Store:
    def __init__(self, url: str) -> None:
        self.url = url
        kwargs: dict[str, object] = {}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        self.engine: Engine = create_engine(url, **kwargs)
        with self._unavailable_is_transient():
            SQLModel.metadata.create_all(self.engine)

    @property
    def where(self) -> str:
        """The store's URL without its password: what `heteroscale runs` shows."""
        return self.engine.url.render_as_string(hide_password=True)

    @contextmanager
    def _unavailable_is_transient(self) -> Iterator[None]:
        try:
            yield
        except OperationalError as exc:
            raise StoreUnavailable(f"store {self.where} unavailable: {exc.orig or exc}") from exc

    @contextmanager
    def _session(self) -> Iterator[Session]:
        with self._unavailable_is_transient(), Session(self.engine) as s:
            yield s

    # --- runs -------------------------------------------------------------------------

    def start_run(
        self,
        *,
        cluster: str,
        now_s: float | None,
        mode: str,
        backend: str,
        flow_run_id: str | None = None,
    ) -> int:
        with self._session() as s:
            run = ScalingRun(cluster=cluster, now_s=now_s, mode=mode, backend=backend, flow_run_id=flow_run_id)
            s.add(run)
            s.commit()
            s.refresh(run)
            assert run.id is not None
            return run.id

    def finish_run(
        self,
        run_id: int,
        *,
        status: RunStatus,
        signals: Mapping[str, ServiceSignals] | None = None,
        current: Mapping[str, RoleCounts] | None = None,
        targets: Mapping[str, Targets] | None = None,
        forecasts: Mapping[str, Forecast] | None = None,
        metric_values: Mapping[str, float | None] | None = None,
        plan: PlacementPlan | None = None,
        result: ApplyResult | None = None,
        current_cells: Placement | None = None,
        failed_step: str | None = None,
        error: str | None = None,
        summary: str = "",
        now_s: float | None = None,
        signal_errors: tuple[QueryError, ...] = (),
    ) -> None:
        with self._session() as s:
            run = s.get(ScalingRun, run_id)
            if run is None:
                raise KeyError(f"no scaling run {run_id}")
            run.status = RunStatus(status).value
            if now_s is not None:
                run.now_s = now_s
            run.finished_at = dt.datetime.now(dt.UTC)
            run.failed_step = failed_step
            run.error = error
            run.summary = summary
            if signals is not None:
                run.signals_json = signals_json(signals)
            s.add(run)
            for name, t in (targets or {}).items():
                before = (current or {}).get(name, RoleCounts(0, 0))
                fc = (forecasts or {}).get(name)
                s.add(
                    DecisionRecord(
                        run_id=run_id,
                        service=name,
                        num_prefill_before=before.num_prefill,
                        num_decode_before=before.num_decode,
                        num_prefill=t.num_prefill,
                        num_decode=t.num_decode,
                        action=t.action.value,
                        source=t.source,
                        reason=t.reason,
                        metric_value=_clean((metric_values or {}).get(name)),  # type: ignore[arg-type]
                        forecast_value=_clean(fc.value) if fc else None,  # type: ignore[arg-type]
                        forecast_method=fc.method if fc else None,
                    )
                )
            if plan is not None:
                s.add(
                    PlacementRecord(
                        run_id=run_id,
                        method=plan.method,
                        reason=plan.reason,
                        cells_json=json.dumps(
                            [
                                [k.service, k.role.value, k.gpu_type, k.s1, n]
                                for k, n in sorted(plan.placement.cells.items())
                            ]
                        ),
                        unmet_json=json.dumps({f"{sv}/{r.value}": v for (sv, r), v in plan.unmet.items()}),
                        stats_json=json.dumps(dict(plan.stats)),
                    )
                )
            if current_cells is not None:
                desired = plan.placement if plan is not None else current_cells
                for k, (cur, want) in cell_replicas(current_cells, desired).items():
                    s.add(
                        CellReplicas(
                            run_id=run_id,
                            service=k.service,
                            role=k.role.value,
                            gpu_type=k.gpu_type,
                            s1=k.s1,
                            current=cur,
                            desired=want,
                        )
                    )
            if result is not None:
                for ch in result.changes:
                    s.add(
                        AppliedChange(
                            run_id=run_id,
                            service=ch.key.service,
                            role=ch.key.role.value,
                            gpu_type=ch.key.gpu_type,
                            s1=ch.key.s1,
                            replicas_before=ch.before,
                            replicas_after=ch.after,
                            mode=result.mode.value,
                            applied=result.applied,
                        )
                    )
                for a in result.actions:
                    s.add(
                        ActuationDecision(
                            run_id=run_id,
                            kind=a.kind,
                            namespace=a.namespace,
                            name=a.name,
                            count=a.count,
                            reason=a.reason,
                            pods_json=json.dumps(list(a.pods)),
                            mode=result.mode.value,
                            applied=result.applied,
                        )
                    )
            for e in signal_errors:
                s.add(SignalErrorRecord(run_id=run_id, query=e.query, status=e.status, url=e.url, message=e.message))
            s.commit()

    def runs(self, cluster: str | None = None, limit: int = 20) -> list[ScalingRun]:
        with self._session() as s:
            q = select(ScalingRun).order_by(col(ScalingRun.id).desc()).limit(limit)
            if cluster:
                q = q.where(ScalingRun.cluster == cluster)
            return list(s.exec(q))

    def decisions(self, run_id: int) -> list[DecisionRecord]:
        with self._session() as s:
            return list(s.exec(select(DecisionRecord).where(DecisionRecord.run_id == run_id)))

    def latest_decided_runs(self) -> list[ScalingRun]:
        """The last run of each cluster that reached a decision (not running, failed or skipped)."""
        decided = [st.value for st in RunStatus if st not in (RunStatus.RUNNING, RunStatus.FAILED, RunStatus.SKIPPED)]
        with self._session() as s:
            last = (
                select(ScalingRun.cluster, func.max(ScalingRun.id).label("id"))
                .where(col(ScalingRun.status).in_(decided))
                .group_by(col(ScalingRun.cluster))
                .subquery()
            )
            q = select(ScalingRun).join(last, col(ScalingRun.id) == last.c.id).order_by(col(ScalingRun.cluster))
            return list(s.exec(q))

    def cells(self, run_id: int) -> list[CellReplicas]:
        with self._session() as s:
            q = select(CellReplicas).where(CellReplicas.run_id == run_id).order_by(col(CellReplicas.id))
            return list(s.exec(q))

    def changes(self, run_id: int) -> list[AppliedChange]:
        with self._session() as s:
            return list(s.exec(select(AppliedChange).where(AppliedChange.run_id == run_id)))

    def actuations(self, run_id: int) -> list[ActuationDecision]:
        with Session(self.engine) as s:
            q = select(ActuationDecision).where(ActuationDecision.run_id == run_id).order_by(col(ActuationDecision.id))
            return list(s.exec(q))

    def signal_errors(self, run_id: int) -> list[SignalErrorRecord]:
        with Session(self.engine) as s:
            return list(s.exec(select(SignalErrorRecord).where(SignalErrorRecord.run_id == run_id)))

    # --- policy state and metric history ------------------------------------------------

    def load_states(self, cluster: str) -> dict[str, ServicePolicyState]:
        with self._session() as s:
            rows = s.exec(select(PolicyStateRecord).where(PolicyStateRecord.cluster == cluster))
            out = {}
            for row in rows:
                data = json.loads(row.state_json)
                data["recommendations"] = tuple(tuple(r) for r in data.get("recommendations", ()))
                out[row.service] = ServicePolicyState(**data)
            return out

    def save_states(self, cluster: str, states: Mapping[str, ServicePolicyState]) -> None:
        with self._session() as s:
            for service, state in states.items():
                row = s.get(PolicyStateRecord, (cluster, service))
                text = json.dumps(dataclasses.asdict(state))
                if row is None:
                    row = PolicyStateRecord(cluster=cluster, service=service, state_json=text)
                else:
                    row.state_json = text
                    row.updated_at = dt.datetime.now(dt.UTC)
                s.add(row)
            s.commit()

    def append_samples(self, cluster: str, now_s: float, values: Mapping[str, float | None]) -> None:
        with self._session() as s:
            for service, v in values.items():
                s.add(MetricSample(cluster=cluster, service=service, t_s=now_s, value=_clean(v)))  # type: ignore[arg-type]
            s.commit()

    def history(self, cluster: str, since_s: float) -> dict[str, list[tuple[float, float | None]]]:
        with self._session() as s:
            rows = s.exec(
                select(MetricSample)
                .where(MetricSample.cluster == cluster, MetricSample.t_s >= since_s)
                .order_by(col(MetricSample.t_s))
            )
            out: dict[str, list[tuple[float, float | None]]] = {}
            for r in rows:
                out.setdefault(r.service, []).append((r.t_s, r.value))
            return out

    def prune_samples(self, cluster: str, before_s: float) -> int:
        """Delete the cluster's metric samples older than `before_s`; returns how many."""
        with self._session() as s:
            result = s.exec(delete(MetricSample).where(MetricSample.cluster == cluster, MetricSample.t_s < before_s))  # type: ignore[call-overload]
            s.commit()
            return int(result.rowcount or 0)

    # --- one run per cluster at a time ----------------------------------------------------

    def try_lock(self, cluster: str, run_id: int, *, now_wall_s: float, ttl_s: float) -> int | None:
        """Take the cluster's lock for `run_id`. Returns None on success, else the holder's run id.

        Atomic on any SQL database: an insert, or a conditional update of an expired lock.
        """
        with self._session() as s:
            s.add(ClusterLock(cluster=cluster, run_id=run_id, expires_at_s=now_wall_s + ttl_s))
            try:
                s.commit()
                return None
            except IntegrityError:
                s.rollback()
            taken = s.execute(
                update(ClusterLock)
                .where(col(ClusterLock.cluster) == cluster, col(ClusterLock.expires_at_s) < now_wall_s)
                .values(run_id=run_id, expires_at_s=now_wall_s + ttl_s)
            )
            s.commit()
            if taken.rowcount == 1:  # type: ignore[attr-defined]
                return None
            holder = s.get(ClusterLock, cluster)
            return holder.run_id if holder is not None else -1

    def unlock(self, cluster: str, run_id: int) -> None:
        with self._session() as s:
            s.exec(delete(ClusterLock).where(ClusterLock.cluster == cluster, ClusterLock.run_id == run_id))  # type: ignore[call-overload]
            s.commit()
