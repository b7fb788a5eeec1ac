"""Backend protocols: where signals come from and what holds the cluster.

The flows and the replay loop only see these protocols. Implementations: the replay twin
(`sim.twin.Twin`, both roles), Prometheus (signals) and Kubernetes (cluster) in their own modules;
`flows.backends.make_backends` builds them by name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

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
