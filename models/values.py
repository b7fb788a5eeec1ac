"""Value objects passed between the steps of one scaling run.

All frozen. A signal that could not be read is `None`, never 0: the policy holds on `None`.
Time is plain float seconds (`now_s`, epoch seconds in production, trace seconds in replay) and
is always passed in; nothing here reads a clock.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

from models.config import Role
from models.enums import TargetSource


class Action(StrEnum):
    SCALE_OUT = "scale_out"
    SCALE_IN = "scale_in"
    HOLD = "hold"


class ApplyMode(StrEnum):
    APPLY = "apply"
    DRY_RUN = "dry-run"
    ADVISORY = "advisory"
    # Nothing is sent to the cluster: the decision is recorded and published as Prometheus
    # metrics (`heteroscale exporter`) for HPA or KEDA to act on (docs/kubernetes.md).
    EXPORT = "export"


@dataclass(frozen=True, slots=True)
class ServiceSignals:
    """What was observed for one service over the last window, ending at `sampled_at_s`.

    Every field is `None` when it could not be read (absent, NaN, stale): never 0.
    """

    service: str
    sampled_at_s: float | None
    decode_tps: float | None = None
    prefill_tps: float | None = None  # cache-missed prompt tokens/s
    ttft_p99_s: float | None = None
    tbt_p99_s: float | None = None
    gpu_util_prefill: float | None = None
    gpu_util_decode: float | None = None
    running_requests: float | None = None
    waiting_requests: float | None = None  # requests queued for prefill at the end of the window
    # Demand, not only what was served (a saturated pool serves its capacity, whatever is asked):
    queued_prompt_tokens: float | None = None  # cache-missed prompt tokens waiting, end of window
    queue_growth_tps: float | None = None  # d(queued_prompt_tokens)/dt over the window (may be < 0)
    arrival_rps: float | None = None  # requests/s arriving at the router/frontend
    arrival_peak_rps: float | None = None  # the highest short-interval (~10 s) arrival rate in the window
    arrival_prompt_tps: float | None = None  # prompt tokens/s arriving (before the prefix cache)
    mean_input_tokens: float | None = None  # prompt tokens per request
    mean_output_tokens: float | None = None  # generated tokens per request
    prefix_cache_hit_rate: float | None = None  # share of prompt tokens served from the prefix cache

    def get(self, name: str) -> float | None:
        return getattr(self, name)

    def age_s(self, now_s: float) -> float | None:
        return None if self.sampled_at_s is None else now_s - self.sampled_at_s

    @staticmethod
    def missing(service: str) -> ServiceSignals:
        return ServiceSignals(service=service, sampled_at_s=None)


@dataclass(frozen=True, slots=True)
class ExpectedStep:
    """An upward step of the policy metric expected at `t_s` (tasks/core/stepprofile.py): on
    `days_with` of the `days_seen` past days the history covers there, the metric stepped up at
    this time of day (+- the tolerance), by a median `size` (0.25 = +25%)."""

    t_s: float
    size: float
    days_with: int
    days_seen: int


@dataclass(frozen=True, slots=True)
class Forecast:
    """Expected value of the policy metric at `now_s + horizon_s`; `quantiles`: ((level, value), ...)
    of the metric there, by increasing level (empty: too little history for them); `steps`: the
    upward steps the daily step profile expects from the forecast's origin on (empty when step
    awareness is off)."""

    service: str
    metric: str
    value: float | None
    horizon_s: float
    method: str
    quantiles: tuple[tuple[float, float], ...] = ()
    steps: tuple[ExpectedStep, ...] = ()

    def quantile(self, q: float) -> float | None:
        """The value at level q: exact when carried, else interpolated in log space between the
        two nearest carried levels; None outside their range or when none are carried."""
        qs = sorted(self.quantiles)
        for lv, v in qs:
            if abs(lv - q) < 1e-9:
                return v
        for (l0, v0), (l1, v1) in itertools.pairwise(qs):
            if l0 < q < l1:
                w = (q - l0) / (l1 - l0)
                if v0 <= 0 or v1 <= 0:
                    return v0 + (v1 - v0) * w
                return math.exp(math.log(v0) + (math.log(v1) - math.log(v0)) * w)
        return None


@dataclass(frozen=True, slots=True)
class RoleCounts:
    num_prefill: int
    num_decode: int

    @property
    def total(self) -> int:
        return self.num_prefill + self.num_decode

    def of(self, role: Role) -> int:
        return self.num_prefill if role is Role.PREFILL else self.num_decode


@dataclass(frozen=True, slots=True)
class Targets:
    """The policy's decision for one service: instance counts in reference-GPU units."""

    service: str
    num_prefill: int
    num_decode: int
    action: Action
    reason: str
    source: TargetSource

    @property
    def counts(self) -> RoleCounts:
        return RoleCounts(self.num_prefill, self.num_decode)


@dataclass(frozen=True, slots=True)
class ServicePolicyState:
    """What a policy must remember between runs for one service (persisted by the flow)."""

    last_scale_out_s: float | None = None
    last_scale_in_s: float | None = None
    last_latency_action_s: float | None = None
    # (time, desired prefill, desired decode) recommendations, for HPA stabilisation windows.
    recommendations: tuple[tuple[float, int, int], ...] = ()

    def with_(self, **changes: object) -> ServicePolicyState:
        return replace(self, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True, order=True)
class CellKey:
    """One placement cell: instances of a service's role on one GPU type in one S1 domain."""

    service: str
    role: Role
    gpu_type: str
    s1: str


@dataclass(frozen=True, slots=True)
class Placement:
    """Instance counts per cell. Cells with zero instances are not stored."""

    cells: Mapping[CellKey, int] = field(default_factory=dict)

    @staticmethod
    def of(items: Iterable[tuple[CellKey, int]]) -> Placement:
        cells: dict[CellKey, int] = {}
        for key, n in items:
            if n:
                cells[key] = cells.get(key, 0) + n
        return Placement(cells)

    def count(self, service: str, role: Role) -> int:
        return sum(n for k, n in self.cells.items() if k.service == service and k.role is role)

    def for_service(self, service: str) -> dict[CellKey, int]:
        return {k: n for k, n in self.cells.items() if k.service == service}

    def churn(self, other: Placement) -> int:
        """Instances started plus instances stopped to go from `self` to `other`."""
        keys = set(self.cells) | set(other.cells)
        return sum(abs(other.cells.get(k, 0) - self.cells.get(k, 0)) for k in keys)


@dataclass(frozen=True, slots=True)
class PlacementPlan:
    """Where instances should run after this run, and why."""

    placement: Placement
    method: str  # greedy | ilp | ...
    reason: str
    # Reference-type instances that could not be placed, per (service, role).
    unmet: Mapping[tuple[str, Role], float] = field(default_factory=dict)
    stats: Mapping[str, float | int | str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Change:
    """One cell's replica change as applied (or as it would be applied)."""

    key: CellKey
    before: int
    after: int


class SloStatus(StrEnum):
    MET = "met"
    DEGRADED = "degraded"
    UNKNOWN = "unknown"  # neither p99 TTFT nor TBT could be read


@dataclass(frozen=True, slots=True)
class SloState:
    """A service's latency SLOs as this run read them (from the collected signals)."""

    service: str
    status: SloStatus
    reason: str


@dataclass(frozen=True, slots=True)
class ActuationRecord:
    """One actuation decision of a run, for the record: what, on which object, how many, why.

    `kind`: create | scale-out | scale-in | drain | restore | remove-drained | keep-drained | resync-drained
    | update-template | prune | admit | hold-skew (the startup skew guard, tasks/core/skew.py).
    `pods` names the pods a drain, restore or admission relabels (or a hold keeps out).
    """

    kind: str
    namespace: str
    name: str
    count: int
    reason: str
    pods: tuple[str, ...] = ()

    def __str__(self) -> str:
        pods = f" [{', '.join(self.pods)}]" if self.pods else ""
        return f"{self.kind} {self.count} {self.namespace}/{self.name}{pods}: {self.reason}"


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What apply changed (or would change), the actuation decisions behind it, and warnings.

    `error` is reserved for a failure text; warnings (paused service, manual override, drained
    instances kept) are in `warnings` and never make a run failed.
    """

    mode: ApplyMode
    changes: tuple[Change, ...]
    applied: bool
    error: str | None = None
    warnings: tuple[str, ...] = ()
    actions: tuple[ActuationRecord, ...] = ()


@dataclass(frozen=True, slots=True)
class QueryError:
    """A signal query that failed after its retries: which, the HTTP status (None for a
    timeout, refused connection or malformed answer), the URL (no credentials) and the message."""

    query: str  # "<profile>/<signal>", e.g. "vllm/decode_tps"
    status: int | None
    url: str
    message: str
    services: tuple[str, ...] = ()  # the services whose signals it left unread

    def __str__(self) -> str:
        status = f"HTTP {self.status}" if self.status is not None else "no answer"
        at = f" from {self.url}" if self.url else ""
        return f"{self.query}: {status}{at}: {self.message}"


@dataclass(frozen=True, slots=True)
class SignalRead:
    """What one collect returned: the signals per service and the queries that failed.

    `unavailable`: queries were sent and none could be read (an outage, a wrong URL, a proxy's
    HTML page): the run holds with status reason `signals-unavailable`.
    """

    signals: Mapping[str, ServiceSignals]
    errors: tuple[QueryError, ...] = ()
    queries: int = 0
    wall_s: float = 0.0

    @property
    def unavailable(self) -> bool:
        return self.queries > 0 and len(self.errors) >= self.queries

    def errors_for(self, service: str) -> tuple[QueryError, ...]:
        return tuple(e for e in self.errors if not e.services or service in e.services)
