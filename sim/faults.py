"""Fault injection: wrappers that make any backend fail the way real ones do.

Used by the fault-injection test suite, the soak replay and operators' game days
(`scale_cluster(..., faults={...})`). Randomness is seeded, so a fault run is reproducible.

Signals faults (`signals`): `error` (the source raises ConnectionError: Prometheus down or 5xx),
`timeout` (raises TimeoutError), `empty` (no series at all), `partial` (half the services
missing), `nan`, `inf`, `stale` (samples ten minutes old), `negative` (a counter-reset
artefact). Each hits a collect with probability `signals_rate`.
Cluster faults: `read_error_rate` (reading the cluster raises), `apply_error_rate` (apply raises
before changing anything), `apply_crash_after` (apply changes that many cells, then raises: a
crash between two apply steps).
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from models.config import ClusterConfig
from models.errors import TransientError
from models.values import ApplyMode, ApplyResult, Placement, PlacementPlan, ServiceSignals, SloState
from tasks.backends import ClusterBackend, SignalsBackend
from tasks.core.topology import ClusterView

SIGNAL_FAULTS = ("error", "timeout", "empty", "partial", "nan", "inf", "stale", "negative")


class InjectedFault(TransientError, ConnectionError):
    """A failure injected on purpose (transient: a retry may succeed)."""


class InjectedTimeout(TransientError, TimeoutError):
    """A timeout injected on purpose."""


@dataclass(frozen=True)
class FaultPlan:
    signals: str | None = None
    signals_rate: float = 1.0
    read_error_rate: float = 0.0
    apply_error_rate: float = 0.0
    apply_crash_after: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.signals is not None and self.signals not in SIGNAL_FAULTS:
            raise ValueError(f"faults.signals {self.signals!r} is unknown; choose one of {SIGNAL_FAULTS}")
        for name in ("signals_rate", "read_error_rate", "apply_error_rate"):
            v = getattr(self, name)
            if not 0 <= v <= 1:
                raise ValueError(f"faults.{name} must be a probability in [0, 1], got {v}")

    @staticmethod
    def parse(data: Mapping[str, Any] | FaultPlan | None) -> FaultPlan | None:
        if data is None or isinstance(data, FaultPlan):
            return data
        known = {f.name for f in dataclasses.fields(FaultPlan)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"faults: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
        return FaultPlan(**data)


class FaultySignals:
    def __init__(self, inner: SignalsBackend, plan: FaultPlan, rng: random.Random) -> None:
        self.inner, self.plan, self.rng = inner, plan, rng

    def read_signals(self, config: ClusterConfig, now_s: float) -> dict[str, ServiceSignals]:
        real = self.inner.read_signals(config, now_s)
        mode = self.plan.signals
        if mode is None or self.rng.random() >= self.plan.signals_rate:
            return real
        if mode == "error":
            raise InjectedFault("injected: signals source unreachable (HTTP 503)")
        if mode == "timeout":
            raise InjectedTimeout("injected: signals query timed out")
        if mode == "empty":
            return {}
        if mode == "partial":
            names = sorted(real)
            return {n: real[n] for n in names[: len(names) // 2]}
        out = {}
        for name, sig in real.items():
            if mode == "stale":
                out[name] = dataclasses.replace(sig, sampled_at_s=now_s - 600.0)
                continue
            bad = {"nan": math.nan, "inf": math.inf, "negative": -1234.0}[mode]
            out[name] = dataclasses.replace(
                sig, **{f: bad for f in ("decode_tps", "prefill_tps", "gpu_util_prefill", "gpu_util_decode")}
            )
        return out


class FaultyCluster:
    def __init__(self, inner: ClusterBackend, plan: FaultPlan, rng: random.Random) -> None:
        self.inner, self.plan, self.rng = inner, plan, rng

    def read_state(self, config: ClusterConfig, now_s: float) -> ClusterView:
        if self.rng.random() < self.plan.read_error_rate:
            raise InjectedFault("injected: cluster API unreachable while reading state")
        return self.inner.read_state(config, now_s)

    def apply(
        self,
        config: ClusterConfig,
        plan: PlacementPlan,
        mode: ApplyMode,
        now_s: float,
        *,
        slo: Mapping[str, SloState] | None = None,
    ) -> ApplyResult:
        if self.rng.random() < self.plan.apply_error_rate:
            raise InjectedFault("injected: cluster API error before any change (HTTP 500)")
        k = self.plan.apply_crash_after
        if k is None or mode is not ApplyMode.APPLY:
            return self.inner.apply(config, plan, mode, now_s, slo=slo)
        current = self.inner.read_state(config, now_s).placement
        keys = sorted(set(current.cells) | set(plan.placement.cells))
        changed = [key for key in keys if current.cells.get(key, 0) != plan.placement.cells.get(key, 0)]
        if len(changed) <= k:
            return self.inner.apply(config, plan, mode, now_s, slo=slo)
        # Apply the first k cell changes only, then crash.
        partial = dict(current.cells)
        for key in changed[:k]:
            partial[key] = plan.placement.cells.get(key, 0)
        self.inner.apply(
            config, dataclasses.replace(plan, placement=Placement.of(partial.items())), mode, now_s, slo=slo
        )
        raise InjectedFault(f"injected: crash after {k} of {len(changed)} cell changes")


def wrap(signals: SignalsBackend, cluster: ClusterBackend, plan: FaultPlan) -> tuple[SignalsBackend, ClusterBackend]:
    rng = random.Random(plan.seed)
    return FaultySignals(signals, plan, rng), FaultyCluster(cluster, plan, rng)
