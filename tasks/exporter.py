"""The metrics exporter: the last decided run of every cluster, read from the store at each scrape.

`heteroscale exporter --port 9464` serves `/metrics` for Prometheus; HPA (external metric through
an adapter) or KEDA (Prometheus scaler) then own the replicas (`mode: export`, docs/kubernetes.md).
Pull, not push: Prefect's scheduled runs are short-lived processes, and the store already holds
every run; a scrape reads the last run of each cluster that reached a decision, so the exporter
keeps no state of its own, needs no coordination with the runs, and a restart loses nothing.

Series (labels `cluster`, `service`; cells add `role`, `gpu_type`, `s1`):

| metric | labels | value |
|---|---|---|
| `heteroscale_desired_replicas` | cell | replicas the last run decided |
| `heteroscale_current_replicas` | cell | replicas the last run found |
| `heteroscale_signal` | `signal` | each signal the run read (unreadable ones absent, never 0) |
| `heteroscale_decision_info` | `action`, `reason_code` | 1 (`models.enums.ReasonCode`) |
| `heteroscale_last_run_timestamp_seconds` | `cluster` | end of the last decided run (epoch s) |
| `heteroscale_run_duration_seconds` | `cluster` | its wall duration |
| `heteroscale_run_info` | `cluster`, `mode`, `status` | 1 |
| `heteroscale_exporter_store_up` | — | 1 if the store could be read at this scrape |

A cluster whose last decided run is older than `stale_after_s` keeps only its run timestamp and
info: its desired, current, signal and decision series are dropped, so a consumer (KEDA's
`fallback`, an HPA) sees no data rather than an old decision. A store that cannot be read gives
`heteroscale_exporter_store_up 0` and nothing else, never zeros.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Callable, Iterator
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from models.store import ScalingRun
from tasks.core.export import reason_code
from tasks.store import Store

log = logging.getLogger(__name__)

CELL_LABELS = ("cluster", "service", "role", "gpu_type", "s1")
DEFAULT_PORT = 9464
DEFAULT_STALE_AFTER_S = 900.0


def _epoch_s(t: dt.datetime) -> float:
    # SQLite hands back naive datetimes; the store writes UTC.
    return (t if t.tzinfo is not None else t.replace(tzinfo=dt.UTC)).timestamp()


class StoreCollector(Collector):
    """Builds every series from the store at each scrape (`collect`)."""

    def __init__(
        self,
        store: Store,
        *,
        stale_after_s: float | None = DEFAULT_STALE_AFTER_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.stale_after_s = stale_after_s
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("heteroscale_exporter_store_up", "1 if the store could be read at this scrape.")
        try:
            families = self._families()
        except Exception as exc:  # the outermost boundary of a scrape: report it, never zeros
            log.warning("exporter: store %s unreadable: %s", self.store.where, exc)
            up.add_metric([], 0.0)
            yield up
            return
        up.add_metric([], 1.0)
        yield up
        yield from families

    def _families(self) -> list[Metric]:
        desired = GaugeMetricFamily(
            "heteroscale_desired_replicas", "Replicas the last run decided, per cell.", labels=CELL_LABELS
        )
        current = GaugeMetricFamily(
            "heteroscale_current_replicas", "Replicas the last run found, per cell.", labels=CELL_LABELS
        )
        signal = GaugeMetricFamily(
            "heteroscale_signal", "Signals the last run read, per service.", labels=("cluster", "service", "signal")
        )
        decision = GaugeMetricFamily(
            "heteroscale_decision_info",
            "The last run's decision per service (1).",
            labels=("cluster", "service", "action", "reason_code"),
        )
        last = GaugeMetricFamily(
            "heteroscale_last_run_timestamp_seconds", "End of the last decided run (epoch s).", labels=("cluster",)
        )
        duration = GaugeMetricFamily(
            "heteroscale_run_duration_seconds", "Wall duration of the last decided run.", labels=("cluster",)
        )
        info = GaugeMetricFamily(
            "heteroscale_run_info", "Mode and status of the last decided run (1).", labels=("cluster", "mode", "status")
        )
        now = self.clock()
        for run in self.store.latest_decided_runs():
            assert run.id is not None
            ended = _epoch_s(run.finished_at or run.started_at)
            last.add_metric([run.cluster], ended)
            duration.add_metric([run.cluster], max(0.0, ended - _epoch_s(run.started_at)))
            info.add_metric([run.cluster, run.mode, run.status], 1.0)
            if self.stale_after_s is not None and now - ended > self.stale_after_s:
                continue
            self._add_run(run, desired, current, signal, decision)
        return [desired, current, signal, decision, last, duration, info]

    def _add_run(
        self,
        run: ScalingRun,
        desired: GaugeMetricFamily,
        current: GaugeMetricFamily,
        signal: GaugeMetricFamily,
        decision: GaugeMetricFamily,
    ) -> None:
        assert run.id is not None
        for c in self.store.cells(run.id):
            labels = [run.cluster, c.service, c.role, c.gpu_type, c.s1]
            desired.add_metric(labels, float(c.desired))
            current.add_metric(labels, float(c.current))
        for d in self.store.decisions(run.id):
            code = reason_code(d.action, d.source, d.reason)
            decision.add_metric([run.cluster, d.service, d.action, code.value], 1.0)
        for service, values in sorted(json.loads(run.signals_json or "{}").items()):
            for name, value in sorted(values.items()):
                if name in ("service", "sampled_at_s") or not isinstance(value, int | float) or value is None:
                    continue
                signal.add_metric([run.cluster, service, name], float(value))


def registry_for(store: Store, *, stale_after_s: float | None = DEFAULT_STALE_AFTER_S) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store, stale_after_s=stale_after_s))
    return registry


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # scrapes every few seconds: no access log
        return


def make_exporter_server(
    store: Store,
    *,
    host: str = "0.0.0.0",
    port: int = DEFAULT_PORT,
    stale_after_s: float | None = DEFAULT_STALE_AFTER_S,
) -> WSGIServer:
    """A WSGI server answering every path with the metrics (call `serve_forever`, `shutdown`)."""
    app = make_wsgi_app(registry_for(store, stale_after_s=stale_after_s))
    return make_server(host, port, app, handler_class=_QuietHandler)
