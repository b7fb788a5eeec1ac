"""SQLModel tables: the audit record of every scaling run.

One `ScalingRun` per run (held, failed and applied alike) with its inputs; one `DecisionRecord`
per service; one `PlacementRecord`; one `CellReplicas` per cell (current and desired replicas);
one `AppliedChange` per cell changed (or that would change, in dry-run, advisory and export modes); one `ActuationDecision` per actuation decision (drain, restore,
removal, kept drain ...) with its reason; one `SignalErrorRecord` per signal query that failed
(HTTP status, URL without credentials); and the policy state each service carries between runs.
A held run whose signals were all unreadable has `error` "signals-unavailable: <query errors>".
JSON columns hold structured inputs as text so any SQLAlchemy database works (SQLite default,
PostgreSQL by URL).
"""

from __future__ import annotations

import datetime as dt

from sqlmodel import Field, SQLModel

from models.enums import RunStatus


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class ScalingRun(SQLModel, table=True):
    __tablename__ = "scaling_run"

    id: int | None = Field(default=None, primary_key=True)
    cluster: str = Field(index=True)
    now_s: float | None = None  # the backend's clock; None if the run failed before reading it
    started_at: dt.datetime = Field(default_factory=_utcnow)
    finished_at: dt.datetime | None = None
    # A `models.enums.RunStatus` value: running | held | applied | dry-run | advisory | failed | skipped
    status: str = Field(default=RunStatus.RUNNING.value, index=True)
    mode: str
    backend: str
    flow_run_id: str | None = Field(default=None, index=True)
    failed_step: str | None = None
    error: str | None = None
    signals_json: str = "{}"
    summary: str = ""


class DecisionRecord(SQLModel, table=True):
    __tablename__ = "decision"

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="scaling_run.id", index=True)
    service: str = Field(index=True)
    num_prefill_before: int
    num_decode_before: int
    num_prefill: int
    num_decode: int
    action: str
    source: str
    reason: str
    metric_value: float | None = None
    forecast_value: float | None = None
    forecast_method: str | None = None


class PlacementRecord(SQLModel, table=True):
    __tablename__ = "placement"

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="scaling_run.id", index=True)
    method: str
    reason: str
    cells_json: str
    unmet_json: str = "{}"
    stats_json: str = "{}"


class AppliedChange(SQLModel, table=True):
    __tablename__ = "applied_change"

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="scaling_run.id", index=True)
    service: str = Field(index=True)
    role: str
    gpu_type: str
    s1: str
    replicas_before: int
    replicas_after: int
    mode: str
    applied: bool


class CellReplicas(SQLModel, table=True):
    """One placement cell of a run: the replicas it had and the replicas the run decided.

    Every cell that had or gets instances (a cell scaled to 0 is kept with `desired` 0), so the
    exporter (`heteroscale exporter`) can publish desired and current replicas per cell for
    HPA/KEDA. A new table rather than new columns: existing stores gain it on `create_all`.
    """

    __tablename__ = "cell_replicas"

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="scaling_run.id", index=True)
    service: str = Field(index=True)
    role: str
    gpu_type: str
    s1: str
    current: int
    desired: int


class ActuationDecision(SQLModel, table=True):
    """One actuation decision of a run (tasks/core/actuation.py), executed or recorded as a hold."""

    __tablename__ = "actuation"

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="scaling_run.id", index=True)
    kind: str  # create | scale-out | drain | restore | remove-drained | keep-drained | ...
    namespace: str
    name: str
    count: int
    reason: str
    pods_json: str = "[]"
    mode: str
    applied: bool


class SignalErrorRecord(SQLModel, table=True):
    """A signal query that failed after its retries in a run."""

    __tablename__ = "signal_error"

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="scaling_run.id", index=True)
    query: str
    status: int | None = None  # HTTP status; None when nothing answered (refused, timeout)
    url: str = ""
    message: str = ""


class PolicyStateRecord(SQLModel, table=True):
    __tablename__ = "policy_state"

    cluster: str = Field(primary_key=True)
    service: str = Field(primary_key=True)
    state_json: str
    updated_at: dt.datetime = Field(default_factory=_utcnow)


class MetricSample(SQLModel, table=True):
    """The policy metric each run saw, per service: the forecaster's history."""

    __tablename__ = "metric_sample"

    id: int | None = Field(default=None, primary_key=True)
    cluster: str = Field(index=True)
    service: str = Field(index=True)
    t_s: float = Field(index=True)
    value: float | None = None


class ClusterLock(SQLModel, table=True):
    """At most one scaling run per cluster at a time (beside Prefect's concurrency limit)."""

    __tablename__ = "cluster_lock"

    cluster: str = Field(primary_key=True)
    run_id: int
    expires_at_s: float  # wall-clock epoch seconds; an expired lock may be taken over
