"""Composition: the backends one scaling run talks to, built by name.

`make_backends` is where the flows choose adapters (`tasks.prometheus`, `tasks.kube`) or the
twin (`sim.live`) and wrap them in fault injectors (`sim.faults`); the protocols they meet are in
`tasks.backends`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from models import settings
from models.config import ClusterConfig
from models.enums import BackendKind
from sim.faults import FaultPlan
from sim.faults import wrap as wrap_faults
from sim.live import TwinBackend, auto_peaks, demo_curves
from sim.traces import load_curve
from tasks.backends import Backends, ClusterBackend, SignalsBackend


def make_backends(
    config: ClusterConfig,
    cluster: str,
    *,
    signals: str | SignalsBackend | None = None,
    twin_trace: str | None = None,
    twin_peak_rps: dict[str, float] | None = None,
    faults: Mapping[str, Any] | None = None,
) -> Backends:
    """Backends by name. `cluster`: twin; `signals`: twin (default: same as the cluster).

    The Kubernetes and Prometheus adapters are imported in their branches (their client libraries
    cost ~1 s at start-up, for runs that never use them). `faults`
    (see `sim.faults.FaultPlan`) wraps both in fault injectors, for tests, soaks and game days.
    """
    if cluster == BackendKind.TWIN:
        trace = twin_trace or str(settings.BUNDLED_TRACE)
        peaks = twin_peak_rps or auto_peaks(config, load_curve(trace))
        state = settings.data_dir() / "twin" / f"{config.cluster.name}.json"
        twin = TwinBackend(config, state_path=state, curves=demo_curves(config, trace, peaks))
        cluster_backend: ClusterBackend = twin
        clock: Callable[[], float] = twin.now
        before: Callable[[], None] = twin.serve_period
        default_signals: SignalsBackend = twin
    elif cluster == BackendKind.KUBE:
        from tasks.kube.backend import KubeBackend  # late: the kubernetes client, kube runs only

        # Connection from the config's `kubernetes` section, overridden by the CLI/env (tasks.kube.client).
        kube = KubeBackend.connect(config)
        cluster_backend, clock, before = kube, time.time, lambda: None
        default_signals = None  # type: ignore[assignment]
        signals = signals or BackendKind.PROMETHEUS
    else:
        raise ValueError(f"unknown cluster backend {cluster!r}; choose one of: {BackendKind.TWIN}, {BackendKind.KUBE}")

    if signals is not None and not isinstance(signals, str):
        signals_backend = signals  # an object (tests, embedding): used as given
    elif signals is None or signals == cluster:
        signals_backend = default_signals
    elif signals == BackendKind.PROMETHEUS:
        from tasks.prometheus import PrometheusSignals  # late: prometheus-api-client, Prometheus runs only

        # URL: HETEROSCALE_PROMETHEUS_URL or the config's prometheus.url; token from the env only.
        signals_backend = PrometheusSignals(config)
    else:
        raise ValueError(
            f"unknown signals backend {signals!r}; choose one of: {BackendKind.TWIN}, {BackendKind.PROMETHEUS}"
        )
    plan = FaultPlan.parse(faults)
    if plan is not None:
        signals_backend, cluster_backend = wrap_faults(signals_backend, cluster_backend, plan)
    return Backends(signals=signals_backend, cluster=cluster_backend, clock=clock, before_run=before)
