"""Backend protocols: where signals come from and what holds the cluster.

The flows and the replay loop only see these protocols. Implementations: the replay twin
(`sim.twin.Twin`, both roles), Prometheus (signals) and Kubernetes (cluster) in their own modules.
"""

from __future__ import annotations

from typing import Any, Protocol

from models.config import ClusterConfig
from models.values import ApplyMode, ApplyResult, PlacementPlan, ServiceSignals
from tasks.core.topology import ClusterView


class SignalsBackend(Protocol):
    def read_signals(self, config: ClusterConfig, now_s: float) -> dict[str, ServiceSignals]:
        """Signals per service; a value that cannot be read is None, never 0."""
        ...


class ClusterBackend(Protocol):
    def read_state(self, config: ClusterConfig, now_s: float) -> ClusterView:
        """Free GPUs per type and domain, and the placement running now."""
        ...

    def apply(self, config: ClusterConfig, plan: PlacementPlan, mode: ApplyMode, now_s: float) -> ApplyResult:
        """Make the cluster match `plan` (or, in dry-run/advisory, say what would change)."""
        ...


def make_backend(
    config: ClusterConfig,
    backend: str,
    *,
    twin_trace: str | None = None,
    twin_peak_rps: dict[str, float] | None = None,
) -> Any:
    """The backend object a flow run uses, by name. Each branch imports its own dependencies.

    Every backend offers `now()` (its clock) plus the `SignalsBackend` and `ClusterBackend`
    methods; the twin also offers `serve_period()` (advance one control period).
    """
    if backend == "twin":
        from heteroscale import settings
        from sim.live import TwinBackend, auto_peaks, demo_curves
        from sim.traces import load_curve

        trace = twin_trace or str(settings.BUNDLED_TRACE)
        peaks = twin_peak_rps or auto_peaks(config, load_curve(trace))
        state = settings.data_dir() / "twin" / f"{config.cluster.name}.json"
        return TwinBackend(config, state_path=state, curves=demo_curves(config, trace, peaks))
    raise ValueError(f"unknown backend {backend!r}; choose one of: twin")
