"""Closed sets as string enums, one name per concept across config, code, store and outputs.

`StrEnum` members compare equal to, and serialize as, their string values: what the store and
`summary.json` hold is unchanged. (`Role`, `Metric` and `AffinityLevel` live in `models.config`,
`Action` and `ApplyMode` in `models.values`, next to the models that use them first.)
"""

from __future__ import annotations

from enum import StrEnum


class TargetSource(StrEnum):
    """What set a service's target counts (`Targets.source`)."""

    PROPORTIONAL = "proportional"
    LATENCY = "latency"
    SCHEDULE = "schedule"
    BOUNDS = "bounds"
    HOLD = "hold"
    STATIC = "static"
    HPA = "hpa"
    # A capacity plan (flows/plan_capacity.py), not a policy.
    PLAN = "plan"


class RunStatus(StrEnum):
    """How a scaling run ended (`ScalingRun.status`)."""

    RUNNING = "running"
    HELD = "held"
    APPLIED = "applied"
    DRY_RUN = "dry-run"
    ADVISORY = "advisory"
    # Export mode: the decision was published for HPA/KEDA; nothing was sent to the cluster.
    EXPORT = "export"
    FAILED = "failed"
    # Another run held the cluster's lock: this one changed nothing.
    SKIPPED = "skipped"


class ReasonCode(StrEnum):
    """Why a service's targets are what they are, as a short closed set (the exporter's
    `heteroscale_decision_info{reason_code}` label; derived by `tasks.core.export.reason_code`)."""

    PROPORTIONAL = "proportional"  # sized from the load at the per-instance target
    LATENCY = "latency"  # the TTFT/TBT safety net
    SCHEDULE = "schedule"  # a scheduled floor
    BOUNDS = "bounds"  # clamped to min/max instances
    HOLD = "hold"  # nothing to change (inside the hysteresis band, damping, ...)
    COOLDOWN = "cooldown"  # a change was wanted but a cooldown is running
    SIGNALS_MISSING = "signals-missing"  # this service's driving signal was missing or stale
    SIGNALS_UNAVAILABLE = "signals-unavailable"  # no signal query could be read: all held
    STATIC = "static"  # a baseline policy's fixed fleet
    HPA = "hpa"  # the HPA-like baseline policy
    PLAN = "plan"  # a capacity plan


class SignalName(StrEnum):
    """The signals a service's metrics source answers (PromQL overrides are keyed by these)."""

    DECODE_TPS = "decode_tps"
    PREFILL_TPS = "prefill_tps"
    TTFT_P99_S = "ttft_p99_s"
    TBT_P99_S = "tbt_p99_s"
    RUNNING_REQUESTS = "running_requests"
    WAITING_REQUESTS = "waiting_requests"
    GPU_UTIL = "gpu_util"
    # Demand, not only what was served (issue 13; docs/signals.md "Demand signals").
    QUEUED_PROMPT_TOKENS = "queued_prompt_tokens"
    QUEUE_GROWTH_TPS = "queue_growth_tps"
    ARRIVAL_RPS = "arrival_rps"
    ARRIVAL_PEAK_RPS = "arrival_peak_rps"
    ARRIVAL_PROMPT_TPS = "arrival_prompt_tps"
    MEAN_INPUT_TOKENS = "mean_input_tokens"
    MEAN_OUTPUT_TOKENS = "mean_output_tokens"
    PREFIX_CACHE_HIT_RATE = "prefix_cache_hit_rate"
    FRESHNESS = "freshness"
    GPU_FRESHNESS = "gpu_freshness"


class BackendKind(StrEnum):
    """Backends a scaling run can talk to, by name (`flows.backends.make_backends`)."""

    TWIN = "twin"
    KUBE = "kube"
    PROMETHEUS = "prometheus"
