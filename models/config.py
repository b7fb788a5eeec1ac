"""Cluster configuration: YAML parsed once into frozen, validated pydantic models.

Contract: `load_config(path)` returns a fully validated `ClusterConfig` or raises `ConfigError`
whose message names the file, the field path and what is expected. Names chosen from a registry
(`policy.name`, `policy.forecaster`) are checked by the registries' owner, `tasks.core.registry`,
whose `load_config` is the one to run with: this module sits below them. Nothing is half-loaded: the
models are frozen and every cross-field check (min <= max, GPU types that exist, ratio > 0, ...)
runs before the object is returned. Unknown keys are rejected so a typo never silently becomes a
default.
"""

from __future__ import annotations

import datetime as dt
import math
import warnings
from enum import StrEnum
from pathlib import Path
from string import Template
from typing import Annotated, Any, Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from models.enums import SignalName

# Names end up in Kubernetes object names, label values and PromQL label matchers: keep them to
# the DNS-1123 label alphabet so nothing a config says can inject into a selector or a query.
Name = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"),
]
PositiveFloat = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]


class ConfigError(ValueError):
    """A configuration file that cannot be used, with where and why."""


class ConfigWarning(UserWarning):
    """A config that loads but may not do what it says (the CLI prints it as a warning)."""


# A request longer than this (input + output tokens) is not served by any model today; a
# service's `max_context_tokens` (its model's context window) overrides it.
DEFAULT_MAX_CONTEXT_TOKENS = 1_048_576


class Role(StrEnum):
    PREFILL = "prefill"
    DECODE = "decode"


class AffinityLevel(StrEnum):
    """Network domain a deployment group's P and D must share."""

    S1 = "S1"
    S2 = "S2"
    NONE = "none"


class Metric(StrEnum):
    DECODE_TPS = "decode_tps"
    PREFILL_TPS = "prefill_tps"  # cache-missed prefill tokens/s


class _Frozen(BaseModel):
    # allow_inf_nan=False: `.inf` / `.nan` are never a target, a capacity or a cooldown.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class GpuType(_Frozen):
    name: Name
    memory_gib: PositiveFloat
    cost_per_gpu_hour: Annotated[float, Field(ge=0)]


class NodePool(_Frozen):
    """`nodes` identical nodes under one S1 (leaf) switch inside one S2 (big-pod) domain."""

    name: Name
    gpu_type: Name
    nodes: Annotated[int, Field(ge=1)]
    gpus_per_node: Annotated[int, Field(ge=1, le=64)]
    s1: Name
    s2: Name


class Topology(_Frozen):
    node_pools: Annotated[tuple[NodePool, ...], Field(min_length=1)]

    @model_validator(mode="after")
    def _check(self) -> Self:
        names = [p.name for p in self.node_pools]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"node pool names must be unique; repeated: {sorted(dup)}")
        s2_of_s1: dict[str, str] = {}
        for pool in self.node_pools:
            prev = s2_of_s1.setdefault(pool.s1, pool.s2)
            if prev != pool.s2:
                raise ValueError(
                    f"S1 domain {pool.s1!r} is placed under two S2 domains ({prev!r} and "
                    f"{pool.s2!r}); an S1 switch sits under exactly one S2"
                )
        return self


class RdmaSubgroup(_Frozen):
    """A set of network domains and its priority (higher = scarcer, spent last)."""

    name: Name
    level: AffinityLevel
    domains: Annotated[tuple[Name, ...], Field(min_length=1)]
    priority: Annotated[int, Field(ge=0)]

    @field_validator("level")
    @classmethod
    def _level(cls, v: AffinityLevel) -> AffinityLevel:
        if v is AffinityLevel.NONE:
            raise ValueError("an RDMA subgroup is a set of S1 or S2 domains: use 'S1' or 'S2'")
        return v


class RoleSpec(_Frozen):
    """How one role (prefill or decode) of a service runs.

    `gpu_types` is in preference order; the first is the reference type in whose units the
    policy counts instances. `capacity_tokens_per_s` is what one instance sustains at the
    service's SLOs on each GPU type (prefill: cache-missed prompt tokens/s; decode: output
    tokens/s).
    """

    gpu_types: Annotated[tuple[Name, ...], Field(min_length=1)]
    gpus_per_instance: Annotated[int, Field(ge=1, le=64)]
    capacity_tokens_per_s: dict[Name, PositiveFloat]

    @model_validator(mode="after")
    def _check(self) -> Self:
        if len(set(self.gpu_types)) != len(self.gpu_types):
            raise ValueError("gpu_types lists a GPU type twice")
        missing = [g for g in self.gpu_types if g not in self.capacity_tokens_per_s]
        if missing:
            raise ValueError(
                f"capacity_tokens_per_s has no entry for {missing}: give the tokens/s one "
                "instance sustains on every GPU type in gpu_types"
            )
        return self

    @property
    def reference_gpu_type(self) -> str:
        return self.gpu_types[0]

    def weight(self, gpu_type: str) -> float:
        """Capacity of one instance on `gpu_type` in reference-type instances."""
        return self.capacity_tokens_per_s[gpu_type] / self.capacity_tokens_per_s[self.reference_gpu_type]


class PdRatio(_Frozen):
    prefill: PositiveFloat
    decode: PositiveFloat

    @property
    def prefill_per_decode(self) -> float:
        return self.prefill / self.decode


class Slo(_Frozen):
    ttft_p99_s: PositiveFloat
    tbt_p99_s: PositiveFloat


class LatencyTier(_Frozen):
    """Scale out by `step` (fraction of current) when p99 latency >= `ratio` x its SLO."""

    ratio: PositiveFloat
    step: Annotated[float, Field(gt=0, le=2)]


class ScheduleMode(StrEnum):
    """How a service's periodic schedule combines with its metric policy: `override` (the paper's
    periodic policy: a window covering now fixes the counts) or `floor` (the metric policy decides
    and each role is at least the window's count)."""

    OVERRIDE = "override"
    FLOOR = "floor"


class StepAwareness(_Frozen):
    """Step pre-provisioning (`heteroscale`; tasks/core/stepprofile.py): upward steps of the policy
    metric detected in the history; when, on at least `min_share` of the past days seen (and at
    least `min_days` of them), one occurred at the time of day coming up within a cold start plus a
    period (+- `tolerance_s`), demand is sized for the median such step ahead of it."""

    enabled: bool = False
    # A step: the median of the `window_s` after a sample over the median of the `window_s` before
    # it, at least 1 + min_step (10% on ServeGen's 10-minute windows is well above the twin's noise).
    min_step: Annotated[float, Field(gt=0, le=10)] = 0.10
    window_s: PositiveFloat = 180.0
    min_share: Annotated[float, Field(gt=0, le=1)] = 0.5
    # 3, not 2: chosen on ServeGen days 2-7 (the curation half), where 2 lets chance coincidences of
    # the series' own 10-minute steps fire (m-small 21 times in 120 hours looked ahead, 4 with 3).
    min_days: Annotated[int, Field(ge=1)] = 3
    tolerance_s: Annotated[float, Field(ge=0)] = 120.0


class PolicyParams(_Frozen):
    name: str = "heteroscale-paper"
    metric: Metric = Metric.DECODE_TPS
    # Metric units one reference-GPU instance of the metric's role serves at the SLO target.
    target_per_instance: PositiveFloat
    hysteresis: Annotated[float, Field(ge=0, lt=1)] = 0.10
    scale_out_cooldown_s: Annotated[float, Field(ge=0)] = 60.0
    scale_in_cooldown_s: Annotated[float, Field(ge=0)] = 300.0
    # `heteroscale` only: a role is shed only to the highest count the load asked for over the last
    # max(cold start, scale_in_cooldown_s, this). Curated on the workload matrix's curation halves
    # and ServeGen days 1-7 (docs/forecasting.md "The scale-in window"): bursty and long-context
    # loads come back within minutes, and what is shed takes a cold start to return.
    scale_in_window_s: Annotated[float, Field(ge=0)] = 1800.0
    max_step_fraction: Annotated[float, Field(gt=0, le=10)] = 0.5
    min_instances: Annotated[int, Field(ge=0)] = 2
    max_instances: Annotated[int, Field(ge=1)] = 1000
    # The paper's example tiers: +10% on a moderate TBT breach, +20% on a severe one.
    latency_tiers: tuple[LatencyTier, ...] = (
        LatencyTier(ratio=1.0, step=0.10),
        LatencyTier(ratio=1.5, step=0.20),
    )
    use_ttft_feedback: bool = False
    latency_cooldown_s: Annotated[float, Field(ge=0)] = 180.0
    max_signal_age_s: PositiveFloat = 180.0
    # Near-term load forecaster (tasks/core/forecast.py); "auto" = chosen per run by backtest.
    forecaster: str = "auto"
    hpa_target_gpu_util: Annotated[float, Field(gt=0, le=1)] = 0.8
    hpa_tolerance: Annotated[float, Field(ge=0, lt=1)] = 0.1
    hpa_scale_down_stabilization_s: Annotated[float, Field(ge=0)] = 300.0
    # `heteroscale` only: the share of an instance's capacity at the SLO (for the request sizes
    # observed, from the capacity model) it sizes each role to, applied to the recent peak demand.
    # The rest absorbs forecast error and load moving within a control period.
    slo_headroom: Annotated[float, Field(gt=0, le=1)] = 0.8
    # `heteroscale` only: size for this quantile of the load at Ready time (cold start + period)
    # from the forecast's quantiles (its own rolling-origin errors), not for the point forecast.
    # None, or a forecast without quantiles (short history): the point forecast, as before.
    risk: float | None = 0.9
    # Startup skew guard (tasks/core/skew.py): a deployment group's Ready-and-serving prefill
    # (reference units) stays within pd_ratio x decode (1 +- this) while new instances start.
    # None = the hysteresis band.
    skew_tolerance: Annotated[float, Field(ge=0, lt=1)] | None = None
    # The periodic schedule (`Service.schedule`) overrides the metric policy, or is a floor under it.
    schedule_mode: ScheduleMode = ScheduleMode.OVERRIDE
    steps: StepAwareness = StepAwareness()

    @field_validator("risk")
    @classmethod
    def _risk_level(cls, v: float | None) -> float | None:
        if v is not None and not 0.5 <= v < 1.0:
            raise ValueError("must be a quantile level in [0.5, 1) (e.g. 0.9), or null for the point forecast")
        return v

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.min_instances > self.max_instances:
            raise ValueError(f"min_instances ({self.min_instances}) is above max_instances ({self.max_instances})")
        ratios = [t.ratio for t in self.latency_tiers]
        if ratios != sorted(ratios) or len(set(ratios)) != len(ratios):
            raise ValueError("latency_tiers must be listed by strictly increasing ratio")
        return self

    @property
    def startup_skew_tolerance(self) -> float:
        """The startup skew guard's ratio tolerance: `skew_tolerance`, else the hysteresis band."""
        return self.hysteresis if self.skew_tolerance is None else self.skew_tolerance


_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class ScheduleWindow(_Frozen):
    """Fixed instance counts for a time-of-day window on some days (cluster time zone)."""

    days: tuple[str, ...] = _DAYS
    start: dt.time
    end: dt.time
    num_prefill: Annotated[int, Field(ge=0)]
    num_decode: Annotated[int, Field(ge=0)]

    @field_validator("days")
    @classmethod
    def _days(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [d for d in v if d not in _DAYS]
        if bad:
            raise ValueError(f"unknown day(s) {bad}; use {list(_DAYS)}")
        return v

    def covers(self, local: dt.datetime) -> bool:
        day = _DAYS[local.weekday()]
        t = local.time()
        if self.start <= self.end:
            return day in self.days and self.start <= t < self.end
        # Window crossing midnight: it belongs to the day it starts on.
        prev = _DAYS[(local.weekday() - 1) % 7]
        return (day in self.days and t >= self.start) or (prev in self.days and t < self.end)


class PodTemplateSource(_Frozen):
    """Where a service's pod template comes from (Kubernetes backend): exactly one of

    * `inline`: a PodSpec mapping (containers, volumes, tolerations, ...) used for both roles; the
      role reaches the containers as the `HETEROSCALE_ROLE` environment variable;
    * `from_deployment`: the name of a Deployment in the service's namespace whose pod template is
      copied; `{role}` in the name is replaced by `prefill` or `decode`.
    """

    inline: dict[str, Any] | None = None
    from_deployment: Annotated[str, StringConstraints(pattern=r"^[a-z0-9{}]([a-z0-9{}.-]*[a-z0-9{}])?$")] | None = None

    @model_validator(mode="after")
    def _one(self) -> Self:
        if (self.inline is None) == (self.from_deployment is None):
            raise ValueError("give exactly one of pod_template.inline (a PodSpec) or pod_template.from_deployment")
        if self.inline is not None and not isinstance(self.inline.get("containers"), list):
            raise ValueError("pod_template.inline is a PodSpec: it needs a 'containers' list")
        return self


class ScaleTargetKind(StrEnum):
    """Who owns a role's workload objects (Kubernetes backend)."""

    MANAGED = "managed"  # heteroscale creates one Deployment per placement cell (server-side apply)
    SCALE_REF = "scale_ref"  # existing objects, changed only through their /scale subresource


# kind -> apiVersion for the kinds a scale_ref may name without `apiVersion`.
KNOWN_SCALE_KINDS = {
    "Deployment": "apps/v1",
    "StatefulSet": "apps/v1",
    "LeaderWorkerSet": "leaderworkerset.x-k8s.io/v1",
    "DynamoGraphDeploymentScalingAdapter": "nvidia.com/v1alpha1",
}
LabelKey = Annotated[
    str, StringConstraints(pattern=r"^([a-z0-9.-]{1,253}/)?[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$")
]
LabelValue = Annotated[str, StringConstraints(pattern=r"^([A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)?$")]


class RefCell(_Frozen):
    """The placement cell a scale_ref object runs in, when the operator pins it to one."""

    gpu_type: Name
    s1: Name


class ScaleRef(_Frozen):
    """An existing object in the service's namespace that has a /scale subresource.

    `name` names one object; `selector` (matchLabels) every object of that kind carrying the
    labels. `apiVersion` may be left out for the kinds in KNOWN_SCALE_KINDS. `plural` is the
    API resource name when it is not the lowercased kind plus "s". `cell` pins the object to
    one placement cell (otherwise its cell is where most of its pods run).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    api_version: Annotated[str | None, Field(alias="apiVersion")] = None
    kind: Annotated[str, StringConstraints(pattern=r"^[A-Z][A-Za-z0-9]{0,62}$")]
    name: Annotated[str, StringConstraints(pattern=r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$")] | None = None
    selector: dict[LabelKey, LabelValue] | None = None
    plural: Annotated[str, StringConstraints(pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")] | None = None
    cell: RefCell | None = None

    @model_validator(mode="after")
    def _check(self) -> Self:
        if (self.name is None) == (self.selector is None):
            raise ValueError(f"{self.kind}: give exactly one of name or selector (matchLabels) to find the object(s)")
        if self.selector is not None and not self.selector:
            raise ValueError(f"{self.kind}: selector is empty; it would match every {self.kind} in the namespace")
        known = KNOWN_SCALE_KINDS.get(self.kind)
        if self.api_version is None and known is None:
            raise ValueError(
                f"kind {self.kind!r} is not one heteroscale knows ({sorted(KNOWN_SCALE_KINDS)}): give its "
                "apiVersion (group/version, e.g. example.com/v1)"
            )
        if self.api_version is not None and "/" not in self.api_version:
            raise ValueError(f"apiVersion {self.api_version!r}: expected group/version (core kinds have no /scale)")
        if self.kind in ("Deployment", "StatefulSet") and self.api_version not in (None, "apps/v1"):
            raise ValueError(f"kind {self.kind}: apiVersion must be apps/v1 (got {self.api_version!r})")
        return self

    @property
    def group_version(self) -> tuple[str, str]:
        group, _, version = (self.api_version or KNOWN_SCALE_KINDS[self.kind]).rpartition("/")
        return group, version

    @property
    def resource(self) -> str:
        """The API resource (plural) name, as RBAC rules and URLs spell it."""
        if self.plural:
            return self.plural
        low = self.kind.lower()
        if low.endswith(("s", "x", "ch", "sh")):
            return low + "es"
        if low.endswith("y") and low[-2:-1] not in "aeiou":
            return low[:-1] + "ies"
        return low + "s"

    def describe(self) -> str:
        what = self.name or ",".join(f"{k}={v}" for k, v in sorted((self.selector or {}).items()))
        return f"{'/'.join(x for x in self.group_version if x)} {self.kind} {what}"


class ScaleTarget(_Frozen):
    """A role's workload: `managed` (default) or `scale_ref` existing objects (`refs`)."""

    kind: ScaleTargetKind = ScaleTargetKind.MANAGED
    refs: tuple[ScaleRef, ...] = ()

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.kind is ScaleTargetKind.MANAGED and self.refs:
            raise ValueError("refs are only read with kind: scale_ref (kind is managed)")
        if self.kind is ScaleTargetKind.SCALE_REF and not self.refs:
            raise ValueError("kind: scale_ref needs refs: the objects to scale (apiVersion, kind, name or selector)")
        cells = [(r.cell.gpu_type, r.cell.s1) for r in self.refs if r.cell is not None]
        if len(set(cells)) != len(cells):
            raise ValueError("two refs are pinned to the same cell; one object per cell")
        return self


class ScaleTargets(_Frozen):
    prefill: ScaleTarget = ScaleTarget()
    decode: ScaleTarget = ScaleTarget()


class SignalsProfile(StrEnum):
    """Which serving engine's metric names a service exports (tasks/prometheus.py)."""

    VLLM = "vllm"
    SGLANG = "sglang"
    DYNAMO = "dynamo"


LabelName = Annotated[str, StringConstraints(pattern=r"^[a-zA-Z_][a-zA-Z0-9_]*$")]
# Signals a service may override the PromQL of (the enum's values, in its order).
SIGNAL_QUERY_NAMES = tuple(s.value for s in SignalName)


class ServiceSignalsSource(_Frozen):
    """Where a service's metrics live in Prometheus: engine profile, labels, PromQL overrides."""

    profile: SignalsProfile = SignalsProfile.VLLM
    service_label: LabelName = "service"
    role_label: LabelName = "role"
    # Value of `service_label` in Prometheus when it differs from the service name.
    label_value: str | None = None
    queries: dict[str, str] = Field(default_factory=dict)

    def group_key(self) -> tuple[Any, ...]:
        """Services with equal keys share one set of queries (one query per signal per group)."""
        return (self.profile, self.service_label, self.role_label, tuple(sorted(self.queries.items())))

    @field_validator("queries")
    @classmethod
    def _queries(cls, v: dict[str, str]) -> dict[str, str]:
        bad = sorted(set(v) - set(SIGNAL_QUERY_NAMES))
        if bad:
            raise ValueError(f"unknown signal(s) {bad} in queries; override one of {list(SIGNAL_QUERY_NAMES)}")
        allowed = {"services", "prefill", "decode", "window", "by", "by_role"}
        for name, q in v.items():
            t = Template(q)
            if not t.is_valid():
                raise ValueError(f"queries.{name}: invalid $placeholder; write $$ for a literal $")
            unknown = sorted(set(t.get_identifiers()) - allowed)
            if unknown:
                raise ValueError(f"queries.{name}: unknown placeholder(s) {unknown}; use {sorted(allowed)}")
        return v


# The collect step's worst case (every query timing out on every attempt) must fit in this share
# of the control period, leaving the rest for reading the cluster, placement and apply.
COLLECT_SHARE = 0.5
COLLECT_BACKOFF_S = 0.2  # before the first retry of a query; doubles each retry
DEFAULT_QUERY_RETRIES = 2
MAX_DERIVED_TIMEOUT_S = 10.0
MIN_QUERY_TIMEOUT_S = 0.5


class CollectBudget(BaseModel):
    """Worst-case time of one collect: `waves` rounds of parallel queries, each query
    `retries + 1` attempts of at most `timeout_s` plus the back-off between them."""

    model_config = ConfigDict(frozen=True)

    queries: int
    parallel: int
    timeout_s: float
    retries: int
    backoff_s: float
    limit_s: float  # COLLECT_SHARE of the control period

    @property
    def waves(self) -> int:
        return math.ceil(self.queries / self.parallel) if self.queries else 0

    @property
    def backoff_total_s(self) -> float:
        return sum(self.backoff_s * 2**i for i in range(self.retries))

    @property
    def worst_case_s(self) -> float:
        return self.waves * ((self.retries + 1) * self.timeout_s + self.backoff_total_s)

    def explain(self) -> str:
        return (
            f"{self.waves} wave(s) of up to {self.parallel} parallel queries ({self.queries} in all) x "
            f"{self.retries + 1} attempt(s) x {self.timeout_s:.3g}s timeout + {self.backoff_total_s:.3g}s back-off "
            f"= {self.worst_case_s:.3g}s"
        )


class PrometheusSettings(_Frozen):
    """Cluster-level Prometheus access. The URL may also come from HETEROSCALE_PROMETHEUS_URL;
    the bearer token only from HETEROSCALE_PROMETHEUS_TOKEN (never from this file).

    `timeout_s` / `retries` unset: derived from the control period so that a whole collect, every
    query failing on every attempt, fits in COLLECT_SHARE of it (`ClusterConfig.collect_budget`);
    set, they are checked against the same bound."""

    url: str | None = None
    timeout_s: PositiveFloat | None = None
    retries: Annotated[int, Field(ge=0, le=10)] | None = None
    # A role whose latest sample is older than this is stale: its signals are None, flagged.
    max_staleness_s: PositiveFloat = 120.0
    # Window of rate() and histogram quantiles; default: the control period.
    rate_window_s: PositiveFloat | None = None
    max_parallel_queries: Annotated[int, Field(ge=1, le=64)] = 4


class Service(_Frozen):
    name: Name
    model: str
    namespace: Name = "default"
    prefill: RoleSpec
    decode: RoleSpec
    pd_ratio: PdRatio
    slo: Slo
    policy: PolicyParams
    affinity: AffinityLevel = AffinityLevel.S2
    priority: int = 0
    schedule: tuple[ScheduleWindow, ...] = ()
    cold_start_s: Annotated[float, Field(ge=0)] = 180.0
    prefix_cache_hit: Fraction = 0.0
    # The model's context window: a trace request above it is refused (sim/traces.py).
    max_context_tokens: Annotated[int, Field(ge=1)] = DEFAULT_MAX_CONTEXT_TOKENS
    signals: ServiceSignalsSource = ServiceSignalsSource()
    pod_template: PodTemplateSource | None = None  # Kubernetes backend only
    scale_targets: ScaleTargets = ScaleTargets()  # Kubernetes backend only

    @model_validator(mode="after")
    def _check(self) -> Self:
        smallest = 1 + max(1, math.ceil(self.pd_ratio.prefill_per_decode - 1e-9))
        if self.policy.max_instances < smallest:
            raise ValueError(
                f"policy.max_instances ({self.policy.max_instances}) cannot hold one decode "
                f"instance and its prefill at ratio {self.pd_ratio.prefill:g}:"
                f"{self.pd_ratio.decode:g}; raise it to at least {smallest}"
            )
        lo, hi = self.policy.min_instances, self.policy.max_instances
        for j, w in enumerate(self.schedule):
            total = w.num_prefill + w.num_decode
            if not lo <= total <= hi:
                raise ValueError(
                    f"schedule[{j}] asks for {w.num_prefill}P + {w.num_decode}D = {total} instances, outside "
                    f"policy [min_instances, max_instances] = [{lo}, {hi}]; lower the window's counts or raise "
                    "the bounds"
                )
            if total and (w.num_prefill == 0 or w.num_decode == 0):
                raise ValueError(
                    f"schedule[{j}] fixes {w.num_prefill}P/{w.num_decode}D: a service serves only with both "
                    "roles; give each at least 1 (or both 0)"
                )
        return self

    def min_fleet_gpus(self) -> int:
        """GPUs of the smallest fleet the policy keeps (min_instances at the P/D ratio, at
        least one of each role when min_instances > 0)."""
        if self.policy.min_instances <= 0:
            return 0
        r = self.pd_ratio.prefill_per_decode
        d = max(1, math.floor(self.policy.min_instances / (1.0 + r)))
        while d > 1 and d + max(1, math.ceil(d * r - 1e-9)) > self.policy.min_instances:
            d -= 1
        while d + max(1, math.ceil(d * r - 1e-9)) < self.policy.min_instances:
            d += 1
        p = max(1, math.ceil(d * r - 1e-9))
        return p * self.prefill.gpus_per_instance + d * self.decode.gpus_per_instance

    def role(self, role: Role) -> RoleSpec:
        return self.prefill if role is Role.PREFILL else self.decode

    def scale_target(self, role: Role) -> ScaleTarget:
        return self.scale_targets.prefill if role is Role.PREFILL else self.scale_targets.decode


class PlacementMethod(StrEnum):
    ILP = "ilp"  # tasks/core/placement/ilp.py (run by tasks/placement_runner.py), the greedy as fallback
    GREEDY = "greedy"  # tasks/core/placement/greedy.py (HeteroScale Algorithm 4)
    # tasks/core/placement/incremental.py: a small MIP over the moving services each period, the
    # full re-optimisation every `full_every_s` or when the small one cannot place, the greedy last.
    INCREMENTAL = "incremental"


class PlacementSettings(_Frozen):
    """How `tasks.steps.place` chooses cells; see docs/placement.md for the objective terms."""

    method: PlacementMethod = PlacementMethod.ILP
    time_limit_s: PositiveFloat = 5.0
    # The issue asks for within 1 % of the bound; a tighter gap only spends the time limit.
    mip_gap: Annotated[float, Field(ge=0, lt=1)] = 0.01
    # A group's prefill (reference units) may differ from pd_ratio x its decode by this fraction
    # plus one reference instance (integer rounding).
    ratio_tolerance: Annotated[float, Field(ge=0, lt=1)] = 0.10
    # Hours of an instance's GPU cost charged per instance started or stopped. >= 0.5 means a
    # running instance is never moved just to save cost; < 1 means surplus is still scaled in.
    churn_weight_h: Annotated[float, Field(ge=0)] = 0.6
    # Hours of an instance's GPU cost charged on top of churn per relocation: an instance stopped
    # while its service and role grow, or started while they shrink (a move, not a scale step).
    move_weight_h: Annotated[float, Field(ge=0)] = 1.0
    # $/GPU-hour added per RDMA-subgroup priority level of the cell (keeps premium pools free).
    priority_weight: Annotated[float, Field(ge=0)] = 0.05
    # $/GPU-hour charged for GPUs stranded on partly used nodes.
    # Off by default: its integer node counts slowed HiGHS ~5x on 20k-GPU cases (docs/placement.md).
    fragmentation_weight: Annotated[float, Field(ge=0)] = 0.0
    # Above this many cell variables, solve the LP relaxation first and the MIP only on the cells
    # it uses plus the running ones (docs/placement.md: cost of this decomposition).
    restrict_above_cells: Annotated[int, Field(ge=0)] = 3000
    # Method `incremental`: the full re-optimisation (whole fleet, churn priced) runs in the control
    # period that crosses a multiple of this many seconds (600: every 10th 60-s period); 0: only
    # when the small MIP cannot place (docs/placement.md, "ILP in the loop").
    full_every_s: Annotated[float, Field(ge=0)] = 600.0


class ClusterSettings(_Frozen):
    name: Name
    control_period_s: Annotated[float, Field(gt=0)] = 60.0
    timezone: str = "UTC"
    # At least one GPU: a budget of 0 would starve every service (omit it for no budget).
    gpu_budget: Annotated[int, Field(ge=1)] | None = None
    placement: PlacementSettings = PlacementSettings()
    # Policy-metric history the forecasters see, in the flow and in the replay alike: the 7 days
    # profile-ar and the daily shape read, plus one (docs/forecasting.md).
    history_window_s: PositiveFloat = 8 * 86400.0
    # The store deletes a cluster's metric samples older than this each run (default: the window).
    sample_retention_s: PositiveFloat | None = None

    @model_validator(mode="after")
    def _retention(self) -> Self:
        if self.sample_retention_s is not None and self.sample_retention_s < self.history_window_s:
            raise ValueError(
                f"sample_retention_s ({self.sample_retention_s:g}) is below history_window_s "
                f"({self.history_window_s:g}): the forecasters would lose history they read"
            )
        return self

    @property
    def retention_s(self) -> float:
        """How long the store keeps metric samples."""
        return self.sample_retention_s if self.sample_retention_s is not None else self.history_window_s

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {v!r}; use an IANA name such as 'UTC'") from exc
        return v


class KubernetesSettings(_Frozen):
    """How the Kubernetes backend reads topology and labels what it manages (docs/kubernetes.md).

    Connection: `api_url` / `context` / `kubeconfig` here are defaults; the CLI options and the
    HETEROSCALE_KUBE_API_URL / HETEROSCALE_KUBE_CONTEXT / KUBECONFIG variables override them, and
    with none of them set inside a pod the in-cluster service account is used.
    """

    api_url: str | None = None
    context: str | None = None
    kubeconfig: str | None = None
    gpu_type_label: str = "nvidia.com/gpu.product"
    # Config GPU type -> node label values meaning it (default: the type's own name).
    gpu_type_values: dict[Name, tuple[str, ...]] = {}
    s1_label: str = "heteroscale.io/s1"
    s2_label: str = "heteroscale.io/s2"
    gpu_resource: str = "nvidia.com/gpu"
    # Taint keys our pods tolerate; a node with any other NoSchedule/NoExecute taint is not used.
    tolerated_taints: tuple[str, ...] = ("nvidia.com/gpu",)
    field_manager: Annotated[str, Field(min_length=1, max_length=128)] = "heteroscale"
    pause_annotation: str = "heteroscale.io/paused"
    # Pods whose label has any other value than "true" are out of service discovery (soft scale-in).
    serving_label: str = "heteroscale.io/serving"
    soft_scale_in_window_s: Annotated[float, Field(ge=0)] = 300.0
    prune: bool = False
    default_image: str = "vllm/vllm-openai:latest"
    # Mode of `heteroscale scale --kube` without --mode: None = dry-run (a real cluster is only
    # changed when the config or the command line says `apply`).
    mode: Literal["apply", "dry-run", "advisory"] | None = None


class ClusterConfig(_Frozen):
    cluster: ClusterSettings
    gpu_types: Annotated[tuple[GpuType, ...], Field(min_length=1)]
    topology: Topology
    rdma_subgroups: tuple[RdmaSubgroup, ...] = ()
    services: Annotated[tuple[Service, ...], Field(min_length=1)]
    prometheus: PrometheusSettings = PrometheusSettings()
    kubernetes: KubernetesSettings = KubernetesSettings()

    @model_validator(mode="after")
    def _cross_check(self) -> Self:
        known = {g.name for g in self.gpu_types}
        if len(known) != len(self.gpu_types):
            raise ValueError("gpu_types lists a name twice")
        for i, pool in enumerate(self.topology.node_pools):
            if pool.gpu_type not in known:
                raise ValueError(
                    f"topology.node_pools[{i}].gpu_type {pool.gpu_type!r} is not one of the gpu_types {sorted(known)}"
                )
        s1s = {p.s1 for p in self.topology.node_pools}
        s2s = {p.s2 for p in self.topology.node_pools}
        for i, sg in enumerate(self.rdma_subgroups):
            pool = s1s if sg.level is AffinityLevel.S1 else s2s
            bad = [d for d in sg.domains if d not in pool]
            if bad:
                raise ValueError(
                    f"rdma_subgroups[{i}].domains {bad} are not {sg.level} domains of the topology ({sorted(pool)})"
                )
        bad_types = [g for g in self.kubernetes.gpu_type_values if g not in known]
        if bad_types:
            raise ValueError(f"kubernetes.gpu_type_values names {bad_types}, not among gpu_types {sorted(known)}")
        names = [s.name for s in self.services]
        if len(set(names)) != len(names):
            raise ValueError("two services share a name")
        for i, svc in enumerate(self.services):
            for role in Role:
                spec = svc.role(role)
                bad = [g for g in spec.gpu_types if g not in known]
                if bad:
                    raise ValueError(f"services[{i}].{role}.gpu_types {bad} are not among gpu_types {sorted(known)}")
                for j, ref in enumerate(svc.scale_target(role).refs):
                    where = f"services[{i}].scale_targets.{role}.refs[{j}].cell"
                    if ref.cell is not None and ref.cell.gpu_type not in spec.gpu_types:
                        raise ValueError(f"{where}.gpu_type {ref.cell.gpu_type!r} is not in {role}.gpu_types")
                    if ref.cell is not None and ref.cell.s1 not in s1s:
                        raise ValueError(f"{where}.s1 {ref.cell.s1!r} is not an S1 domain of the topology")
        self.collect_budget()  # the collect step must fit in the control period
        return self

    def collect_budget(self) -> CollectBudget:
        """The collect step's per-query timeout and retries and its worst-case time, which fits in
        COLLECT_SHARE of the control period by construction (ValueError when configured values
        cannot). One query per signal per profile group (tasks/prometheus.py)."""
        prom = self.prometheus
        groups = {svc.signals.group_key() for svc in self.services}
        limit = COLLECT_SHARE * self.cluster.control_period_s
        base = {"queries": len(groups) * len(SIGNAL_QUERY_NAMES), "parallel": prom.max_parallel_queries}
        if prom.timeout_s is not None:
            budget = CollectBudget(
                **base,
                timeout_s=prom.timeout_s,
                retries=DEFAULT_QUERY_RETRIES if prom.retries is None else prom.retries,
                backoff_s=COLLECT_BACKOFF_S,
                limit_s=limit,
            )
            if prom.retries is None:  # only the timeout given: as many retries as fit
                while budget.worst_case_s > limit and budget.retries > 0:
                    budget = budget.model_copy(update={"retries": budget.retries - 1})
            if budget.worst_case_s > limit:
                raise ValueError(
                    f"prometheus: a collect could take {budget.explain()}, over {COLLECT_SHARE:.0%} of "
                    f"cluster.control_period_s ({limit:.3g}s); lower prometheus.timeout_s or retries, raise "
                    "max_parallel_queries, or leave timeout_s unset to derive it from the control period"
                )
            return budget
        for retries in range(DEFAULT_QUERY_RETRIES if prom.retries is None else prom.retries, -1, -1):
            probe = CollectBudget(**base, timeout_s=1.0, retries=retries, backoff_s=COLLECT_BACKOFF_S, limit_s=limit)
            waves = max(probe.waves, 1)
            timeout = min(MAX_DERIVED_TIMEOUT_S, (limit / waves - probe.backoff_total_s) / (retries + 1))
            if timeout >= MIN_QUERY_TIMEOUT_S:
                return probe.model_copy(update={"timeout_s": timeout})
            if prom.retries is not None:
                break
        raise ValueError(
            f"prometheus: cluster.control_period_s {self.cluster.control_period_s:g}s is too short for "
            f"{base['queries']} queries at {base['parallel']} in parallel with per-query timeouts of at least "
            f"{MIN_QUERY_TIMEOUT_S:g}s within {COLLECT_SHARE:.0%} of it; raise max_parallel_queries or the period"
        )

    @model_validator(mode="after")
    def _semantic_check(self, info: ValidationInfo) -> Self:
        """What parses but cannot work: roles with no node to run on, instances larger than any
        node, a minimum fleet above the GPU budget or the cluster. Checked for a file an operator
        wrote (`load_config`: context semantic="error"), not for a mapping built in code (synthetic
        benchmark clusters are deliberately short of some GPU types)."""
        if (info.context or {}).get("semantic") != "error":
            return self
        pools_by_type: dict[str, list[NodePool]] = {}
        for pool in self.topology.node_pools:
            pools_by_type.setdefault(pool.gpu_type, []).append(pool)
        # Types named in kubernetes.gpu_type_values are looked for by node discovery: the
        # Kubernetes backend supplies their nodes, so a topology without them only warrants a warning.
        discovered = set(self.kubernetes.gpu_type_values)
        total = sum(p.nodes * p.gpus_per_node for p in self.topology.node_pools)
        for i, svc in enumerate(self.services):
            for role in Role:
                spec = svc.role(role)
                where = f"services[{i}].{role}"
                absent = [g for g in spec.gpu_types if g not in pools_by_type]
                fits = [
                    g
                    for g in spec.gpu_types
                    if any(p.gpus_per_node >= spec.gpus_per_instance for p in pools_by_type.get(g, ()))
                ]
                if not fits and not discovered.intersection(spec.gpu_types):
                    biggest = max(
                        (p.gpus_per_node for g in spec.gpu_types for p in pools_by_type.get(g, ())), default=0
                    )
                    why = (
                        f"no node pool has GPU type(s) {list(spec.gpu_types)}"
                        if len(absent) == len(spec.gpu_types)
                        else f"gpus_per_instance {spec.gpus_per_instance} is more than any node of those types "
                        f"has ({biggest} GPUs); an instance runs on one node"
                    )
                    raise ValueError(
                        f"{where}.gpu_types: {why}; add a node pool of such a type to topology.node_pools, "
                        "allow a GPU type that has one, or lower gpus_per_instance (kubernetes.gpu_type_values "
                        "names the types node discovery supplies)"
                    )
                elif absent:
                    warnings.warn(
                        f"{where}.gpu_types {absent} have no node pool in topology.node_pools: instances of "
                        "those types are only placed if Kubernetes discovery finds such nodes",
                        ConfigWarning,
                        stacklevel=2,
                    )
        need = sum(svc.min_fleet_gpus() for svc in self.services)
        if need > total and not discovered:
            warnings.warn(
                f"services[].policy.min_instances: the minimum fleet needs {need} GPUs, the topology has {total}: "
                "placement will report unmet demand every period; lower min_instances or add nodes",
                ConfigWarning,
                stacklevel=2,
            )
        budget = self.cluster.gpu_budget
        if budget is not None and need > budget:
            raise ValueError(
                f"cluster.gpu_budget {budget} is below the minimum fleet's {need} GPUs (every service at "
                "policy.min_instances); raise the budget or lower min_instances"
            )
        return self

    def service(self, name: str) -> Service:
        for svc in self.services:
            if svc.name == name:
                return svc
        raise KeyError(f"no service {name!r} in cluster {self.cluster.name!r}")

    def gpu_type(self, name: str) -> GpuType:
        for g in self.gpu_types:
            if g.name == name:
                return g
        raise KeyError(name)


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "<top level>"


def parse_config(data: Any, *, source: str = "<config>", strict: bool = False) -> ClusterConfig:
    """Validate an already-parsed mapping; errors name `source` and each field path. `strict`:
    semantic problems (ClusterConfig._semantic_check) are errors, not warnings."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return ClusterConfig.model_validate(data, context={"semantic": "error" if strict else "warn"})
    except ValidationError as exc:
        lines = [f"{source}: invalid cluster config ({exc.error_count()} problem(s)):"]
        for err in exc.errors():
            # Strip pydantic's internal union/function tags from the path.
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
            msg = err["msg"].removeprefix("Value error, ")
            got = err.get("input")
            hint = ""
            if err["type"] == "extra_forbidden":
                msg = "unknown field (typo?); remove it or check docs/configuration.md"
            elif err["type"] == "missing":
                msg = "required field is missing"
            elif not isinstance(got, dict | list) and got is not None:
                hint = f" (got {got!r})"
            lines.append(f"  - {_format_loc(loc)}: {msg}{hint}")
        raise ConfigError("\n".join(lines)) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load that refuses a key given twice in one mapping (YAML keeps the last one
    silently: an operator's correction above a forgotten old value would lose)."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            first = seen.setdefault(key, key_node.start_mark.line + 1)
        except TypeError:  # an unhashable key: the constructor below reports it
            continue
        if first != key_node.start_mark.line + 1:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {key!r} (first at line {first}); YAML would keep only the last one: remove one",
                key_node.start_mark,
            )
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def load_config(path: str | Path) -> ClusterConfig:
    """Read and validate a cluster config file (YAML, loaded safely, duplicate keys refused)."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{p}: is a directory; give a cluster config YAML file")
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read config file: {exc}") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass: no python tags
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{p}: not valid YAML{where}: {problem}") from None
    return parse_config(data, source=str(p), strict=True)
