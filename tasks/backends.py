"""Backend protocols: where signals come from and what holds the cluster.

The flows and the replay loop only see these protocols. Implementations: the replay twin
(`sim.twin.Twin`, both roles), Prometheus (signals) and Kubernetes (cluster) in their own modules.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from models.config import ClusterConfig
from models.values import ApplyMode, ApplyResult, PlacementPlan, ServiceSignals, SloState
from tasks.core.topology import ClusterView


class SignalsBackend(Protocol):
    def read_signals(self, config: ClusterConfig, now_s: float) -> dict[str, ServiceSignals]:
        """Signals per service; a value that cannot be read is None, never 0."""
        ...


class ClusterBackend(Protocol):
    def read_state(self, config: ClusterConfig, now_s: float) -> ClusterView:
        """Free GPUs per type and domain, and the placement running now."""
        ...

    def apply(
        self,
        config: ClusterConfig,
        plan: PlacementPlan,
        mode: ApplyMode,
        now_s: float,
        *,
        slo: Mapping[str, SloState] | None = None,
    ) -> ApplyResult:
        """Make the cluster match `plan` (or, in dry-run/advisory, say what would change).

        `slo`: each service's SLO state as the run read it (soft scale-in decides from it; a
        backend never reads signals again)."""
        ...


@dataclass
class Backends:
    """What one flow run talks to: a signals source, a cluster, and the clock of that cluster."""

    signals: SignalsBackend
    cluster: ClusterBackend
    clock: Callable[[], float]
    # Called once before collecting (the twin serves one control period; others: nothing).
    before_run: Callable[[], None] = lambda: None


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

    Each branch imports its own dependencies, so an unused backend costs nothing. `faults`
    (see `sim.faults.FaultPlan`) wraps both in fault injectors, for tests, soaks and game days.
    """
    from sim.faults import FaultPlan
    from sim.faults import wrap as wrap_faults

    if cluster == "twin":
        from heteroscale import settings
        from sim.live import TwinBackend, auto_peaks, demo_curves
        from sim.traces import load_curve

        trace = twin_trace or str(settings.BUNDLED_TRACE)
        peaks = twin_peak_rps or auto_peaks(config, load_curve(trace))
        state = settings.data_dir() / "twin" / f"{config.cluster.name}.json"
        twin = TwinBackend(config, state_path=state, curves=demo_curves(config, trace, peaks))
        cluster_backend: ClusterBackend = twin
        clock: Callable[[], float] = twin.now
        before: Callable[[], None] = twin.serve_period
        default_signals: SignalsBackend = twin
    elif cluster == "kube":
        import time

        from tasks.kube.backend import KubeBackend

        # Connection from the config's `kubernetes` section, overridden by the CLI/env (tasks.kube.client).
        kube = KubeBackend.connect(config)
        cluster_backend, clock, before = kube, time.time, lambda: None
        default_signals = None  # type: ignore[assignment]
        signals = signals or "prometheus"
    else:
        raise ValueError(f"unknown cluster backend {cluster!r}; choose one of: twin, kube")

    if signals is not None and not isinstance(signals, str):
        signals_backend = signals  # an object (tests, embedding): used as given
    elif signals is None or signals == cluster:
        signals_backend = default_signals
    elif signals == "prometheus":
        from tasks.prometheus import PrometheusSignals

        # URL: HETEROSCALE_PROMETHEUS_URL or the config's prometheus.url; token from the env only.
        signals_backend = PrometheusSignals(config)
    else:
        raise ValueError(f"unknown signals backend {signals!r}; choose one of: twin, prometheus")
    plan = FaultPlan.parse(faults)
    if plan is not None:
        signals_backend, cluster_backend = wrap_faults(signals_backend, cluster_backend, plan)
    return Backends(signals=signals_backend, cluster=cluster_backend, clock=clock, before_run=before)
