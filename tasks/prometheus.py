"""Signals from Prometheus: metric profiles (vLLM, SGLang, Dynamo), PromQL templates, collector.

What it decides: which PromQL to send, and what each answer means for each (service, role).
Contract:
  * one instant query per signal per *profile group* (services sharing engine profile, label
    names and window), never one per service: 100 vLLM services cost 17 queries;
  * service names are regex- and string-escaped into one `service=~"a|b"` matcher, so a name can
    never inject PromQL (names are DNS-1123 already; this is defence in depth);
  * a transient error (timeout, connection refused, HTTP 429/5xx) is retried `retries` times
    with back-off; a permanent one (HTTP 4xx: a bad query; an answer that is not Prometheus
    JSON, such as a proxy's HTML page) is not. A query that still fails leaves its signals `None`
    and a `QueryError` (query, HTTP status, URL without credentials, message) in
    `Collection.errors`: the policy holds, it never reads a failure as zero load. A read returns
    the values and these errors together (`PrometheusSignals.read` -> `SignalRead`); every query
    failing is an outage (`SignalRead.unavailable`), never a quiet hold;
  * bounded: per-query timeout and retries come from `ClusterConfig.collect_budget()` (derived
    from the control period, or configured and checked against it), the HTTP client does no
    retries of its own, and `collect` stops waiting at the budget's worst case: a collect never
    takes longer than its share of the control period, whatever the server does;
  * a value that is absent, NaN or infinite is `None` (missing); a role whose newest scraped
    sample is older than `max_staleness_s` has every signal `None` and `stale=True`.
History at start-up (`fetch_history`, `bootstrap_history`): when the store holds little history
for a service (a fresh install), the policy metric's past is read with one *range* query per
(profile group, metric), never per service, over a bounded window (`BOOTSTRAP_WINDOW_S`) at the
control period's step (at most `MAX_RANGE_POINTS` points), and recorded in the store; missing
steps stay gaps. A failed range query leaves the history as it was: forecasting then starts from
the store alone, it never fails the run.
The PromQL text of every signal can be overridden per service (`signals.queries` in the config);
placeholders: `$services` (service matcher), `$prefill` / `$decode` (plus the role matcher),
`$window` (rate window), `$by` (service label), `$by_role` (service and role labels).
"""

from __future__ import annotations

import datetime as dt
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from string import Template
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from urllib3.util.retry import Retry

from models.config import ClusterConfig, Role, SignalsProfile
from models.enums import SignalName
from models.errors import PermanentError, TransientError, redact
from models.values import QueryError, ServiceSignals, SignalRead

ENV_URL = "HETEROSCALE_PROMETHEUS_URL"
ENV_TOKEN = "HETEROSCALE_PROMETHEUS_TOKEN"

# Raw query result: Prometheus `data.result` of an instant vector query.
QueryFn = Callable[[str, float | None, float], list[dict[str, Any]]]
# Range query (promql, start_s, end_s, step_s, timeout_s) -> `data.result` of a range (matrix) query.
RangeQueryFn = Callable[[str, float, float, float, float], list[dict[str, Any]]]

# Start-up history: a day covers one daily season for the seasonal forecaster; Prometheus refuses
# range queries of more than 11,000 points per series.
BOOTSTRAP_WINDOW_S = 86400.0
BOOTSTRAP_MIN_SPAN_S = 3600.0  # a service with less stored history than this is bootstrapped
MAX_RANGE_POINTS = 10_000
# The store writes one transaction per timestamp (Store.append_samples, ~2-9 ms here): the
# bootstrapped past is recorded at most this many timestamps (bucket means), a day at 6 minutes.
MAX_RECORDED_POINTS = 240
# A query's own timeouts end it within the budget; this covers thread start-up and scheduling.
DEADLINE_SLACK_S = 0.5


class _QueryFailure(Exception):
    """A failed query, with the HTTP status (None: no answer) and the URL (no credentials)."""

    def __init__(self, message: str, *, status: int | None = None, url: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.url = url


class TransientQueryError(_QueryFailure, TransientError):
    """Worth retrying: timeout, connection failure, overload (HTTP 429 / 5xx)."""


class PermanentQueryError(_QueryFailure, PermanentError):
    """Not worth retrying: the query itself is wrong (HTTP 4xx) or the answer is malformed."""


def public_url(url: str) -> str:
    """`url` without user info, query string or fragment: safe for records and logs."""

    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


@dataclass(frozen=True)
class SignalSpec:
    """One signal: which role(s) it belongs to and whether its query groups by role."""

    name: SignalName
    roles: tuple[Role, ...]
    by_role: bool
    freshness: SignalName = SignalName.FRESHNESS  # which freshness query decides staleness


SIGNALS: tuple[SignalSpec, ...] = (
    SignalSpec(SignalName.DECODE_TPS, (Role.DECODE,), by_role=False),
    SignalSpec(SignalName.PREFILL_TPS, (Role.PREFILL,), by_role=False),
    SignalSpec(SignalName.TTFT_P99_S, (Role.PREFILL,), by_role=False),
    SignalSpec(SignalName.TBT_P99_S, (Role.DECODE,), by_role=False),
    SignalSpec(SignalName.RUNNING_REQUESTS, (Role.PREFILL, Role.DECODE), by_role=True),
    SignalSpec(SignalName.WAITING_REQUESTS, (Role.PREFILL, Role.DECODE), by_role=True),
    SignalSpec(SignalName.GPU_UTIL, (Role.PREFILL, Role.DECODE), by_role=True, freshness=SignalName.GPU_FRESHNESS),
    # Demand, not only what was served (docs/signals.md, "Demand signals"): the prefill queue in
    # tokens and its growth, the arrival side (router/frontend counters), request sizes, cache hits.
    SignalSpec(SignalName.QUEUED_PROMPT_TOKENS, (Role.PREFILL,), by_role=False),
    SignalSpec(SignalName.QUEUE_GROWTH_TPS, (Role.PREFILL,), by_role=False),
    SignalSpec(SignalName.ARRIVAL_RPS, (Role.PREFILL,), by_role=False),
    SignalSpec(SignalName.ARRIVAL_PEAK_RPS, (Role.PREFILL,), by_role=False),
    SignalSpec(SignalName.ARRIVAL_PROMPT_TPS, (Role.PREFILL,), by_role=False),
    SignalSpec(SignalName.MEAN_INPUT_TOKENS, (Role.PREFILL,), by_role=False),
    SignalSpec(SignalName.MEAN_OUTPUT_TOKENS, (Role.DECODE,), by_role=False),
    SignalSpec(SignalName.PREFIX_CACHE_HIT_RATE, (Role.PREFILL,), by_role=False),
)
FRESHNESS = (SignalName.FRESHNESS, SignalName.GPU_FRESHNESS)

_DCGM = {
    "gpu_util": "avg by ($by_role) (avg_over_time(DCGM_FI_DEV_GPU_UTIL{$services}[$window])) / 100",
    "gpu_freshness": "max by ($by_role) (timestamp(DCGM_FI_DEV_GPU_UTIL{$services}))",
}

# --- demand templates (composed once at import; every one stays a single query) -----------

PEAK_INTERVAL_S = 10  # the short interval of `arrival_peak_rps`: needs a scrape interval <= this


def _rate(metric: str, selector: str, window: str = "$window") -> str:
    return f"sum by ($by) (rate({metric}{{{selector}}}[{window}]))"


def _mean(num: str, den: str) -> str:
    """A per-request mean over the window; NaN (-> None) when nothing was counted."""
    return f"({num} / {den})"


# Arrival side: the router/frontend in front of the engines, when the stack has one. Dynamo's
# frontend first, else the Gateway API Inference Extension's EPP (llm-d's gateway; its series
# carry `model_name`, so the service label must come from scrape relabelling or an override).
# Neither scraped: absent -> None, and the policy falls back to served + queue growth.
_FRONTEND_REQUESTS = ("dynamo_frontend_requests_total", "inference_objective_request_total")
_FRONTEND_PROMPT = ("dynamo_frontend_input_sequence_tokens_sum", "inference_objective_input_tokens_sum")


def _first_of(metrics: tuple[str, ...], window: str = "$window") -> str:
    return " or ".join(_rate(m, "$services", window) for m in metrics)


_ARRIVALS = {
    "arrival_rps": _first_of(_FRONTEND_REQUESTS),
    # The highest PEAK_INTERVAL_S arrival rate in the window (a subquery at that step). With a
    # scrape interval above PEAK_INTERVAL_S the inner rate has < 2 samples: absent -> None, and
    # the policy sizes for the window's mean.
    "arrival_peak_rps": (
        f"max_over_time(({_first_of(_FRONTEND_REQUESTS, f'{PEAK_INTERVAL_S}s')})[$window:{PEAK_INTERVAL_S}s])"
    ),
    "arrival_prompt_tps": _first_of(_FRONTEND_PROMPT),
}


def _queue(waiting: str, waiting_metric: str, mean_input: str, hit: str) -> dict[str, str]:
    """The prefill queue in cache-missed prompt tokens and its growth per second, from a waiting
    gauge: waiting requests x mean prompt tokens x (1 - hit rate). Without a prefix-cache metric
    the hit rate counts as 0 (the queue as every prompt token); without the mean (no request
    finished in the window) both are NaN -> None. `deriv` is per second of Prometheus time."""
    miss = f"(1 - ({hit} or {waiting} * 0))"
    return {
        "queued_prompt_tokens": f"{waiting} * {mean_input} * {miss}",
        "queue_growth_tps": f"sum by ($by) (deriv({waiting_metric}[$window])) * {mean_input} * {miss}",
    }


_VLLM_WAITING_P = "sum by ($by) (vllm:num_requests_waiting{$prefill})"
_VLLM_MEAN_IN = _mean(
    _rate("vllm:request_prompt_tokens_sum", "$prefill"), _rate("vllm:request_prompt_tokens_count", "$prefill")
)
_VLLM_HIT = _mean(
    _rate("vllm:prefix_cache_hits_total", "$prefill"), _rate("vllm:prefix_cache_queries_total", "$prefill")
)
_VLLM_DEMAND = {
    **_queue(_VLLM_WAITING_P, "vllm:num_requests_waiting{$prefill}", _VLLM_MEAN_IN, _VLLM_HIT),
    **_ARRIVALS,
    "mean_input_tokens": _VLLM_MEAN_IN,
    "mean_output_tokens": _mean(
        _rate("vllm:request_generation_tokens_sum", "$decode"), _rate("vllm:request_generation_tokens_count", "$decode")
    ),
    "prefix_cache_hit_rate": _VLLM_HIT,
}

# SGLang counts requests and tokens (no request-size histograms): sizes are token / request rates.
_SGLANG_WAITING_P = "sum by ($by) (sglang:num_queue_reqs{$prefill})"
_SGLANG_MEAN_IN = _mean(_rate("sglang:prompt_tokens_total", "$prefill"), _rate("sglang:num_requests_total", "$prefill"))
_SGLANG_HIT = _mean(_rate("sglang:cached_tokens_total", "$prefill"), _rate("sglang:prompt_tokens_total", "$prefill"))
_SGLANG_DEMAND = {
    **_queue(_SGLANG_WAITING_P, "sglang:num_queue_reqs{$prefill}", _SGLANG_MEAN_IN, _SGLANG_HIT),
    **_ARRIVALS,
    "mean_input_tokens": _SGLANG_MEAN_IN,
    "mean_output_tokens": _mean(
        _rate("sglang:generation_tokens_total", "$decode"), _rate("sglang:num_requests_total", "$decode")
    ),
    "prefix_cache_hit_rate": _SGLANG_HIT,
}

# Dynamo: everything from the frontend (no role); the cache hit rate from the frontend's cached
# tokens, else the workers' KV stats.
_DYNAMO_WAITING = "sum by ($by) (dynamo_frontend_queued_requests{$services})"
_DYNAMO_MEAN_IN = _mean(
    _rate("dynamo_frontend_input_sequence_tokens_sum", "$services"),
    _rate("dynamo_frontend_input_sequence_tokens_count", "$services"),
)
_DYNAMO_HIT = (
    _mean(
        _rate("dynamo_frontend_cached_tokens_sum", "$services"),
        _rate("dynamo_frontend_input_sequence_tokens_sum", "$services"),
    )
    + " or avg by ($by) (dynamo_component_kvstats_gpu_prefix_cache_hit_rate{$prefill})"
)
_DYNAMO_DEMAND = {
    **_queue(_DYNAMO_WAITING, "dynamo_frontend_queued_requests{$services}", _DYNAMO_MEAN_IN, f"({_DYNAMO_HIT})"),
    "arrival_rps": _rate("dynamo_frontend_requests_total", "$services"),
    "arrival_peak_rps": (
        f"max_over_time(({_rate('dynamo_frontend_requests_total', '$services', f'{PEAK_INTERVAL_S}s')})"
        f"[$window:{PEAK_INTERVAL_S}s])"
    ),
    "arrival_prompt_tps": _rate("dynamo_frontend_input_sequence_tokens_sum", "$services"),
    "mean_input_tokens": _DYNAMO_MEAN_IN,
    "mean_output_tokens": _mean(
        _rate("dynamo_frontend_output_sequence_tokens_sum", "$services"),
        _rate("dynamo_frontend_output_sequence_tokens_count", "$services"),
    ),
    "prefix_cache_hit_rate": _DYNAMO_HIT,
}

# PromQL per engine. TTFT is read on the prefill role (queueing + prefill: what the SLO is about
# in P/D serving), TBT on the decode role. Cache-missed prefill = prompt tokens minus prefix-cache
# hits; `or ... * 0` keeps the signal when the engine runs without a prefix cache.
PROFILES: dict[SignalsProfile, dict[str, str]] = {
    SignalsProfile.VLLM: {
        "decode_tps": "sum by ($by) (rate(vllm:generation_tokens_total{$decode}[$window]))",
        "prefill_tps": (
            "sum by ($by) (rate(vllm:prompt_tokens_total{$prefill}[$window]))"
            " - (sum by ($by) (rate(vllm:prefix_cache_hits_total{$prefill}[$window]))"
            " or sum by ($by) (rate(vllm:prompt_tokens_total{$prefill}[$window])) * 0)"
        ),
        "ttft_p99_s": (
            "histogram_quantile(0.99, sum by ($by, le) (rate(vllm:time_to_first_token_seconds_bucket{$prefill}[$window])))"
        ),
        "tbt_p99_s": (
            "histogram_quantile(0.99, sum by ($by, le) (rate(vllm:inter_token_latency_seconds_bucket{$decode}[$window])))"
        ),
        "running_requests": "sum by ($by_role) (vllm:num_requests_running{$services})",
        "waiting_requests": "sum by ($by_role) (vllm:num_requests_waiting{$services})",
        "freshness": "max by ($by_role) (timestamp(vllm:generation_tokens_total{$services}))",
        **_DCGM,
        **_VLLM_DEMAND,
    },
    SignalsProfile.SGLANG: {
        "decode_tps": "sum by ($by) (rate(sglang:generation_tokens_total{$decode}[$window]))",
        "prefill_tps": (
            "sum by ($by) (rate(sglang:prompt_tokens_total{$prefill}[$window]))"
            " - (sum by ($by) (rate(sglang:cached_tokens_total{$prefill}[$window]))"
            " or sum by ($by) (rate(sglang:prompt_tokens_total{$prefill}[$window])) * 0)"
        ),
        "ttft_p99_s": (
            "histogram_quantile(0.99, sum by ($by, le) (rate(sglang:time_to_first_token_seconds_bucket{$prefill}[$window])))"
        ),
        "tbt_p99_s": (
            "histogram_quantile(0.99, sum by ($by, le) (rate(sglang:inter_token_latency_seconds_bucket{$decode}[$window])))"
        ),
        "running_requests": "sum by ($by_role) (sglang:num_running_reqs{$services})",
        "waiting_requests": "sum by ($by_role) (sglang:num_queue_reqs{$services})",
        "freshness": "max by ($by_role) (timestamp(sglang:num_running_reqs{$services}))",
        **_DCGM,
        **_SGLANG_DEMAND,
    },
    # Dynamo: token and latency metrics come from the frontend (one per service, no role), queue
    # depth from the frontend too; worker GPU utilisation from DCGM as for the others.
    SignalsProfile.DYNAMO: {
        "decode_tps": "sum by ($by) (rate(dynamo_frontend_output_sequence_tokens_sum{$services}[$window]))",
        "prefill_tps": (
            "sum by ($by) (rate(dynamo_frontend_input_sequence_tokens_sum{$services}[$window]))"
            " * (1 - (avg by ($by) (dynamo_component_kvstats_gpu_prefix_cache_hit_rate{$prefill})"
            " or avg by ($by) (dynamo_frontend_inflight_requests{$services}) * 0))"
        ),
        "ttft_p99_s": (
            "histogram_quantile(0.99, sum by ($by, le) (rate(dynamo_frontend_time_to_first_token_seconds_bucket{$services}[$window])))"
        ),
        "tbt_p99_s": (
            "histogram_quantile(0.99, sum by ($by, le) (rate(dynamo_frontend_inter_token_latency_seconds_bucket{$services}[$window])))"
        ),
        "running_requests": "sum by ($by) (dynamo_frontend_inflight_requests{$services})",
        "waiting_requests": "sum by ($by) (dynamo_frontend_queued_requests{$services})",
        "freshness": "max by ($by) (timestamp(dynamo_frontend_inflight_requests{$services}))",
        **_DCGM,
        **_DYNAMO_DEMAND,
    },
}

# Dynamo's frontend series carry no role: those answers hold for both roles of the service.
_ROLELESS = {SignalsProfile.DYNAMO: {"running_requests", "waiting_requests", "freshness"}}


# --- PromQL building ---------------------------------------------------------------------

_RE2_META = set("\\.+*?()|[]{}^$")


def escape_label_value(value: str) -> str:
    """A PromQL double-quoted string literal body for `value` (backslash, quote, newline)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def regex_alternation(values: Iterable[str]) -> str:
    """`a|b|c` matching exactly these values: RE2 metacharacters escaped, then string-escaped."""
    parts = ["".join("\\" + ch if ch in _RE2_META else ch for ch in v) for v in sorted(set(values))]
    return escape_label_value("|".join(parts))


def _duration(seconds: float) -> str:
    return f"{max(1, round(seconds))}s"


@dataclass(frozen=True)
class ProfileGroup:
    """Services whose signals one set of queries answers."""

    profile: SignalsProfile
    service_label: str
    role_label: str
    window_s: float
    overrides: tuple[tuple[str, str], ...]
    # label value in Prometheus -> service name in the config
    services: tuple[tuple[str, str], ...]

    def queries(self) -> dict[str, str]:
        """Signal name -> rendered PromQL for every service of the group."""
        names = [v for v, _ in self.services]
        svc = f'{self.service_label}=~"{regex_alternation(names)}"'
        subst = {
            "services": svc,
            "prefill": f'{svc},{self.role_label}="{Role.PREFILL.value}"',
            "decode": f'{svc},{self.role_label}="{Role.DECODE.value}"',
            "window": _duration(self.window_s),
            "by": self.service_label,
            "by_role": f"{self.service_label},{self.role_label}",
        }
        templates = {**PROFILES[self.profile], **dict(self.overrides)}
        return {name: Template(t).substitute(subst) for name, t in templates.items()}


def profile_groups(config: ClusterConfig) -> list[ProfileGroup]:
    window = config.prometheus.rate_window_s or config.cluster.control_period_s
    groups: dict[tuple[Any, ...], list[tuple[str, str]]] = {}
    for svc in config.services:
        src = svc.signals
        groups.setdefault(src.group_key(), []).append((src.label_value or svc.name, svc.name))
    return [
        ProfileGroup(
            profile=k[0], service_label=k[1], role_label=k[2], window_s=window, overrides=k[3], services=tuple(v)
        )
        for k, v in groups.items()
    ]


# --- answers -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Reading:
    """One signal of one (service, role): a value, or None with the reason."""

    value: float | None
    stale: bool = False
    reason: str | None = None  # absent | nan | stale (age) | error: ...
    sampled_at_s: float | None = None

    def as_json(self) -> dict[str, Any]:
        return {"value": self.value, "stale": self.stale, "reason": self.reason}


@dataclass
class Collection:
    """What one collect saw: readings[service][role][signal], and how it went."""

    query_time_s: float
    readings: dict[str, dict[str, dict[str, Reading]]]
    queries: int = 0
    attempts: int = 0
    wall_s: float = 0.0
    errors: list[QueryError] = field(default_factory=list)
    budget_s: float | None = None  # the worst case the collect was bounded by

    @property
    def unavailable(self) -> bool:
        """Queries were sent and not one was answered: the source is down or not Prometheus."""
        return self.queries > 0 and len(self.errors) >= self.queries

    def to_read(self, *, now_s: float | None = None) -> SignalRead:
        return SignalRead(
            signals=self.to_service_signals(now_s=now_s),
            errors=tuple(self.errors),
            queries=self.queries,
            wall_s=self.wall_s,
        )

    def to_service_signals(self, *, now_s: float | None = None) -> dict[str, ServiceSignals]:
        """ServiceSignals per service. Times move into the caller's time base (`now_s`): the
        age of a sample stays what Prometheus says it is."""
        shift = 0.0 if now_s is None else now_s - self.query_time_s
        out: dict[str, ServiceSignals] = {}
        for name, roles in self.readings.items():
            p, d = roles[Role.PREFILL.value], roles[Role.DECODE.value]
            times = [r.sampled_at_s for role in (p, d) for r in role.values() if r.sampled_at_s is not None]
            out[name] = ServiceSignals(
                service=name,
                sampled_at_s=(min(times) + shift) if times else None,
                decode_tps=d["decode_tps"].value,
                prefill_tps=p["prefill_tps"].value,
                ttft_p99_s=p["ttft_p99_s"].value,
                tbt_p99_s=d["tbt_p99_s"].value,
                gpu_util_prefill=p["gpu_util"].value,
                gpu_util_decode=d["gpu_util"].value,
                running_requests=_sum_or_none(p["running_requests"].value, d["running_requests"].value),
                waiting_requests=_sum_or_none(p["waiting_requests"].value, d["waiting_requests"].value),
                queued_prompt_tokens=p["queued_prompt_tokens"].value,
                queue_growth_tps=p["queue_growth_tps"].value,
                arrival_rps=p["arrival_rps"].value,
                arrival_peak_rps=p["arrival_peak_rps"].value,
                arrival_prompt_tps=p["arrival_prompt_tps"].value,
                mean_input_tokens=p["mean_input_tokens"].value,
                mean_output_tokens=d["mean_output_tokens"].value,
                prefix_cache_hit_rate=p["prefix_cache_hit_rate"].value,
            )
        return out

    def as_json(self) -> dict[str, Any]:
        return {
            "query_time_s": self.query_time_s,
            "queries": self.queries,
            "attempts": self.attempts,
            "wall_s": round(self.wall_s, 4),
            "budget_s": None if self.budget_s is None else round(self.budget_s, 3),
            "unavailable": self.unavailable,
            "errors": [str(e) for e in self.errors],
            "failed_queries": [
                {"query": e.query, "status": e.status, "url": e.url, "message": e.message} for e in self.errors
            ],
            "services": {
                svc: {role: {sig: r.as_json() for sig, r in sigs.items()} for role, sigs in roles.items()}
                for svc, roles in self.readings.items()
            },
        }


def _sum_or_none(*values: float | None) -> float | None:
    # A total with a missing part is unknown, not the sum of the known parts.
    return None if any(v is None for v in values) else float(sum(v for v in values if v is not None))


def _sample(item: Mapping[str, Any]) -> tuple[float, float | None]:
    ts, raw = item["value"]
    try:
        v = float(raw)
    except (TypeError, ValueError):
        return float(ts), None
    return float(ts), v if math.isfinite(v) else None


def interpret(
    group: ProfileGroup,
    answers: Mapping[str, list[dict[str, Any]] | Exception],
    *,
    query_time_s: float,
    max_staleness_s: float,
) -> dict[str, dict[str, dict[str, Reading]]]:
    """Readings per service, role and signal from the raw answers of one group's queries.

    Pure: no I/O, no clock. An Exception in `answers` means that query failed for good.
    """
    by_value = dict(group.services)
    roleless = _ROLELESS.get(group.profile, set())

    def index(name: str, by_role: bool) -> dict[tuple[str, str | None], float | None] | Exception | None:
        ans = answers.get(name)
        if ans is None or isinstance(ans, Exception):
            return ans
        out: dict[tuple[str, str | None], float | None] = {}
        for item in ans:
            labels = item.get("metric", {})
            svc = by_value.get(labels.get(group.service_label, ""))
            if svc is None:
                continue
            role = labels.get(group.role_label) if by_role and name not in roleless else None
            out[(svc, role)] = _sample(item)[1]
        return out

    fresh = {f: index(f, True) for f in FRESHNESS}
    readings: dict[str, dict[str, dict[str, Reading]]] = {}
    for svc in by_value.values():
        readings[svc] = {r.value: {} for r in Role}
        for spec in SIGNALS:
            values = index(spec.name, spec.by_role)
            for role in spec.roles:
                readings[svc][role.value][spec.name] = _reading(
                    values, fresh[spec.freshness], svc, role, spec.by_role and spec.name not in roleless,
                    query_time_s, max_staleness_s, roleless_fresh=spec.freshness in roleless,
                )  # fmt: skip
    return readings


def _reading(
    values: dict[tuple[str, str | None], float | None] | Exception | None,
    fresh: dict[tuple[str, str | None], float | None] | Exception | None,
    svc: str,
    role: Role,
    by_role: bool,
    query_time_s: float,
    max_staleness_s: float,
    *,
    roleless_fresh: bool,
) -> Reading:
    if isinstance(values, Exception) or values is None:
        return Reading(None, reason=f"error: {values}" if values is not None else "not queried")
    sampled_at: float | None = None
    if isinstance(fresh, dict):
        sampled_at = fresh.get((svc, None if roleless_fresh else role.value))
        if sampled_at is None:
            # No series of this role at all within Prometheus' lookback: nothing scraped.
            return Reading(None, reason="absent")
        age = query_time_s - sampled_at
        if age > max_staleness_s:
            return Reading(None, stale=True, reason=f"stale ({age:.0f}s old)", sampled_at_s=sampled_at)
    key = (svc, role.value if by_role else None)
    if key not in values:
        return Reading(None, reason="absent", sampled_at_s=sampled_at)
    v = values[key]
    if v is None:
        return Reading(None, reason="nan", sampled_at_s=sampled_at)
    # Unknown freshness (its query failed) is not proof of staleness; keep the value, say so.
    reason = None if isinstance(fresh, dict) else "freshness unknown"
    return Reading(v, reason=reason, sampled_at_s=sampled_at)


# --- history (range queries) -------------------------------------------------------------


def history_queries(config: ClusterConfig) -> list[tuple[ProfileGroup, str, str]]:
    """(group, metric signal, PromQL) for each policy metric each profile group's services use:
    one range query per signal group, whatever the number of services."""
    metric_of = {s.name: s.policy.metric.value for s in config.services}
    out = []
    for g in profile_groups(config):
        queries = g.queries()
        for metric in sorted({metric_of[name] for _, name in g.services}):
            out.append((g, metric, queries[metric]))
    return out


def interpret_range(
    group: ProfileGroup, metric: str, answer: list[dict[str, Any]], config: ClusterConfig
) -> dict[str, list[tuple[float, float | None]]]:
    """Samples per service (only services whose policy metric is `metric`) from a matrix answer.

    Pure. NaN and infinite values are None; steps Prometheus has no value for are simply absent
    (the forecaster sees gaps, never zeros)."""
    by_value = dict(group.services)
    wanted = {s.name for s in config.services if s.policy.metric.value == metric}
    out: dict[str, list[tuple[float, float | None]]] = {}
    for item in answer:
        svc = by_value.get(item.get("metric", {}).get(group.service_label, ""))
        if svc is None or svc not in wanted:
            continue
        out[svc] = [_sample({"value": v}) for v in item.get("values", [])]
    return out


def range_step_s(window_s: float, step_s: float) -> float:
    """The step: at least `step_s`, coarse enough for at most MAX_RANGE_POINTS points."""
    return max(step_s, math.ceil(window_s / MAX_RANGE_POINTS))


@dataclass
class HistoryFetch:
    """What one history read saw: samples per service (Prometheus time), and how it went."""

    samples: dict[str, list[tuple[float, float | None]]]
    queries: int = 0
    step_s: float = 0.0
    wall_s: float = 0.0
    errors: list[str] = field(default_factory=list)


def fetch_history(
    config: ClusterConfig,
    query_range: RangeQueryFn,
    *,
    end_s: float,
    window_s: float = BOOTSTRAP_WINDOW_S,
    step_s: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> HistoryFetch:
    """The policy metric of every service over `[end_s - window_s, end_s]`, one range query per
    (profile group, metric), with the collector's retry rule. A failed query leaves its services
    without history and is listed in `errors`."""
    budget = config.collect_budget()
    step = range_step_s(window_s, step_s or config.cluster.control_period_s)
    started = time.perf_counter()
    fetch = HistoryFetch(samples={}, step_s=step)
    for group, metric, promql in history_queries(config):

        def one(q: str, _at: float | None, timeout_s: float) -> list[dict[str, Any]]:
            return query_range(q, end_s - window_s, end_s, step, timeout_s)

        res, _attempts = run_query(
            one,
            promql,
            None,
            timeout_s=budget.timeout_s,
            retries=budget.retries,
            sleep=sleep,
            backoff_s=budget.backoff_s,
        )
        fetch.queries += 1
        if isinstance(res, Exception):
            fetch.errors.append(f"{group.profile.value}/{metric} range: {res}")
            continue
        fetch.samples.update(interpret_range(group, metric, res, config))
    fetch.wall_s = time.perf_counter() - started
    return fetch


def short_services(
    config: ClusterConfig, stored: Mapping[str, Sequence[tuple[float, float | None]]], *, min_span_s: float
) -> list[str]:
    """Services whose stored history (valid samples) spans less than `min_span_s`."""
    out = []
    for svc in config.services:
        ts = [t for t, v in stored.get(svc.name, ()) if v is not None]
        if not ts or ts[-1] - ts[0] < min_span_s:
            out.append(svc.name)
    return out


def coarsen(
    samples: Mapping[str, Sequence[tuple[float, float | None]]], max_points: int
) -> dict[float, dict[str, float | None]]:
    """Samples of every service on one shared grid of at most `max_points` buckets: time ->
    service -> bucket mean (missing values skipped; an all-missing bucket stays None). A bucket
    is stamped with the latest sample time in it, the same for every service. Pure."""
    times = [t for ss in samples.values() for t, _ in ss]
    if not times:
        return {}
    t0, t1 = min(times), max(times)
    width = max((t1 - t0) / max_points, 1e-9) * (1 + 1e-9)
    buckets: dict[int, dict[str, list[float | None]]] = {}
    stamp: dict[int, float] = {}
    for name, ss in samples.items():
        for t, v in ss:
            k = min(int((t - t0) / width), max_points - 1)
            buckets.setdefault(k, {}).setdefault(name, []).append(v)
            stamp[k] = max(stamp.get(k, t), t)
    out: dict[float, dict[str, float | None]] = {}
    for k, per in sorted(buckets.items()):
        row: dict[str, float | None] = {}
        for name, vs in per.items():
            valid = [v for v in vs if v is not None]
            row[name] = sum(valid) / len(valid) if valid else None
        out[stamp[k]] = row
    return out


def merge_history(
    stored: Mapping[str, Sequence[tuple[float, float | None]]],
    fetched: Mapping[str, Sequence[tuple[float, float | None]]],
    services: Iterable[str],
    *,
    step_s: float,
) -> tuple[dict[str, list[tuple[float, float | None]]], dict[str, list[tuple[float, float | None]]]]:
    """(merged history, the fetched samples that were added) for `services`: fetched samples
    older than the service's first stored sample (by half a step) go in front; stored ones win
    where both exist. Pure."""
    merged = {name: list(h) for name, h in stored.items()}
    added: dict[str, list[tuple[float, float | None]]] = {}
    for name in services:
        own = merged.get(name, [])
        first = own[0][0] if own else math.inf
        new = [(t, v) for t, v in fetched.get(name, ()) if t < first - step_s / 2]
        if new:
            added[name] = new
            merged[name] = [*new, *own]
    return merged, added


# --- I/O ---------------------------------------------------------------------------------


def run_query(
    query: QueryFn,
    promql: str,
    at_s: float | None,
    *,
    timeout_s: float,
    retries: int,
    sleep: Callable[[float], None] = time.sleep,
    backoff_s: float = 0.2,
) -> tuple[list[dict[str, Any]] | Exception, int]:
    """Run one query with retries on transient errors. Returns (result or final error, attempts)."""
    attempt = 0
    while True:
        attempt += 1
        try:
            return query(promql, at_s, timeout_s), attempt
        except TransientQueryError as exc:
            if attempt > retries:
                return exc, attempt
            sleep(backoff_s * 2 ** (attempt - 1))
        except PermanentQueryError as exc:
            return exc, attempt


def collect(
    config: ClusterConfig,
    query: QueryFn,
    *,
    at_s: float | None = None,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> Collection:
    """Query every signal of every service (one query per signal per profile group).

    `at_s`: evaluation time (Prometheus' own "now" when None; staleness is then judged against
    `clock()`). Queries run in parallel, at most `prometheus.max_parallel_queries` at a time, with
    the budget's timeout and retries; a query still running at the budget's worst case (a server
    that trickles its answer past the socket timeouts) is recorded as failed and not waited for.
    """
    budget = config.collect_budget()
    started = time.perf_counter()
    query_time = at_s if at_s is not None else clock()
    groups = profile_groups(config)
    jobs = [(g, name, q) for g in groups for name, q in g.queries().items()]

    def run(job: tuple[ProfileGroup, str, str]) -> tuple[list[dict[str, Any]] | Exception, int]:
        return run_query(
            query,
            job[2],
            at_s,
            timeout_s=budget.timeout_s,
            retries=budget.retries,
            sleep=sleep,
            backoff_s=budget.backoff_s,
        )

    pool = ThreadPoolExecutor(max_workers=budget.parallel)
    futures = [pool.submit(run, job) for job in jobs]
    wait(futures, timeout=budget.worst_case_s + DEADLINE_SLACK_S)
    pool.shutdown(wait=False, cancel_futures=True)
    results: list[tuple[list[dict[str, Any]] | Exception, int]] = [
        f.result()
        if f.done() and not f.cancelled()
        else (TransientQueryError(f"no answer within the collect budget ({budget.explain()})"), 0)
        for f in futures
    ]
    coll = Collection(query_time_s=query_time, readings={}, queries=len(jobs), budget_s=budget.worst_case_s)
    for g in groups:
        answers: dict[str, list[dict[str, Any]] | Exception] = {}
        for (jg, name, _q), (res, attempts) in zip(jobs, results, strict=True):
            if jg is not g:
                continue
            answers[name] = res
            coll.attempts += attempts
            if isinstance(res, Exception):
                coll.errors.append(query_error(f"{g.profile.value}/{name}", res, tuple(n for _, n in g.services)))
        coll.readings.update(
            interpret(g, answers, query_time_s=query_time, max_staleness_s=config.prometheus.max_staleness_s)
        )
    coll.wall_s = time.perf_counter() - started
    return coll


def query_error(name: str, exc: Exception, services: tuple[str, ...]) -> QueryError:
    return QueryError(
        query=name,
        status=getattr(exc, "status", None),
        url=getattr(exc, "url", ""),
        message=str(exc),
        services=services,
    )


def _client(url: str, token: str | None) -> Any:
    # late: prometheus-api-client and requests: Prometheus runs only
    from prometheus_api_client import PrometheusConnect

    headers = {"Authorization": f"Bearer {token}"} if token else None
    # No retries in the HTTP client (its default retries 5xx and refused connections with
    # back-off, ~20 s a query): `run_query` retries within the collect budget.
    return PrometheusConnect(
        url=url, headers=headers, disable_ssl=False, method="POST", retry=Retry(total=0, raise_on_status=False)
    )


_STATUS = re.compile(r"HTTP Status Code (\d{3})")


def _server_message(text: str) -> str:
    """Prometheus' own `errorType: error` from an error body quoted in the client's message."""
    m = re.search(r'"errorType"\s*:\s*"([^"]*)".*?"error"\s*:\s*"((?:[^"\\]|\\.)*)"', text)
    return f"{m.group(1)}: {m.group(2)}" if m else text


def _transport_message(exc: Exception) -> str:
    """A short cause for a failed connection or timeout (the library's text repeats the PromQL)."""
    # late: requests: Prometheus runs only
    import requests

    text = str(exc)
    for needle, short in (
        ("Connection refused", "connection refused"),
        ("Name or service not known", "host name not found"),
        ("nodename nor servname", "host name not found"),
        ("No route to host", "no route to host"),
        ("CERTIFICATE_VERIFY_FAILED", "TLS certificate verification failed"),
    ):
        if needle in text:
            return short
    if isinstance(exc, requests.Timeout):
        return f"timed out ({type(exc).__name__})"
    return f"{type(exc).__name__}: " + re.sub(r"with url: \S+", "", text)


def _call(fn: Callable[[], list[dict[str, Any]]], token: str | None, url: str = "") -> list[dict[str, Any]]:
    """Run one HTTP query; map its failures to transient / permanent errors with the HTTP status
    and the URL (token and user info removed)."""
    # late: requests: Prometheus runs only
    import requests

    # late: prometheus-api-client and requests: Prometheus runs only
    from prometheus_api_client import PrometheusApiClientException

    try:
        return fn()
    except (requests.Timeout, requests.ConnectionError) as exc:
        raise TransientQueryError(redact(_transport_message(exc), token)[:300], url=url) from None
    except PrometheusApiClientException as exc:
        text = redact(str(exc), token)
        m = _STATUS.search(text)
        status = int(m.group(1)) if m else None
        transient = status in (429, 500, 502, 503, 504)
        raise (TransientQueryError if transient else PermanentQueryError)(
            _server_message(text)[:300], status=status, url=url
        ) from None
    except (ValueError, KeyError, TypeError) as exc:  # a non-JSON or malformed body
        raise PermanentQueryError(
            redact(f"not a Prometheus answer ({type(exc).__name__}: {exc}); is the URL Prometheus' base URL?", token)[
                :300
            ],
            status=200,
            url=url,
        ) from None
    except requests.RequestException as exc:  # invalid URL, too many redirects: retrying cannot help
        raise PermanentQueryError(redact(f"{type(exc).__name__}: {exc}", token)[:300], url=url) from None


def http_query(url: str, *, token: str | None = None) -> QueryFn:
    """A QueryFn over HTTP with prometheus-api-client (POST: long service matchers fit)."""
    client = _client(url, token)
    where = public_url(f"{url}/api/v1/query")

    def query(promql: str, at_s: float | None, timeout_s: float) -> list[dict[str, Any]]:
        params = {} if at_s is None else {"time": f"{at_s:.3f}"}
        return _call(lambda: client.custom_query(promql, params=params, timeout=timeout_s), token, where)

    return query


def http_query_range(url: str, *, token: str | None = None) -> RangeQueryFn:
    """A RangeQueryFn over HTTP with prometheus-api-client's `custom_query_range`."""

    client = _client(url, token)
    where = public_url(f"{url}/api/v1/query_range")

    def query_range(promql: str, start_s: float, end_s: float, step_s: float, timeout_s: float) -> list[dict[str, Any]]:
        start = dt.datetime.fromtimestamp(start_s, dt.UTC)
        end = dt.datetime.fromtimestamp(end_s, dt.UTC)
        return _call(
            lambda: client.custom_query_range(promql, start, end, f"{step_s:g}s", timeout=timeout_s), token, where
        )

    return query_range


def resolve_url(config: ClusterConfig, url: str | None = None) -> str:
    """The Prometheus URL: explicit > HETEROSCALE_PROMETHEUS_URL > config `prometheus.url`."""
    found = url or os.environ.get(ENV_URL) or config.prometheus.url
    if not found:
        raise ValueError(
            f"no Prometheus URL: pass --prometheus-url, set {ENV_URL}, or set prometheus.url in the cluster config"
        )
    return found.rstrip("/")


class PrometheusSignals:
    """SignalsBackend over Prometheus. Queries at wall-clock now; sampled times are moved into
    the flow's time base so signal ages are preserved whatever clock the cluster runs on."""

    name = "prometheus"

    def __init__(
        self,
        config: ClusterConfig,
        *,
        url: str | None = None,
        query: QueryFn | None = None,
        query_range: RangeQueryFn | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = resolve_url(config, url) if query is None else (url or "")
        # The token is read from the environment only and never logged or stored elsewhere.
        token = os.environ.get(ENV_TOKEN) or None
        self._query = query or http_query(self.url, token=token)
        self._query_range = query_range or (http_query_range(self.url, token=token) if self.url else None)
        self.clock = clock
        self.last: Collection | None = None

    def collect(self, config: ClusterConfig) -> Collection:
        self.last = collect(config, self._query)
        return self.last

    def read(self, config: ClusterConfig, now_s: float) -> SignalRead:
        """The signals per service in the flow's time base, with every query that failed."""
        return self.collect(config).to_read(now_s=now_s)

    def read_signals(self, config: ClusterConfig, now_s: float) -> dict[str, ServiceSignals]:
        return dict(self.read(config, now_s).signals)

    def read_history(
        self, config: ClusterConfig, now_s: float, *, window_s: float = BOOTSTRAP_WINDOW_S
    ) -> HistoryFetch:
        """The policy metric's past `window_s` per service, in the flow's time base (`now_s`)."""
        if self._query_range is None:
            return HistoryFetch(samples={}, errors=["no range query configured"])
        wall_now = self.clock()
        fetch = fetch_history(config, self._query_range, end_s=wall_now, window_s=window_s)
        shift = now_s - wall_now
        fetch.samples = {n: [(t + shift, v) for t, v in h] for n, h in fetch.samples.items()}
        return fetch


class _SampleStore(Protocol):
    def append_samples(self, cluster: str, now_s: float, values: Mapping[str, float | None]) -> None: ...


def bootstrap_history(
    signals: object,
    store: _SampleStore,
    config: ClusterConfig,
    stored: Mapping[str, Sequence[tuple[float, float | None]]],
    now_s: float,
    *,
    window_s: float = BOOTSTRAP_WINDOW_S,
    min_span_s: float = BOOTSTRAP_MIN_SPAN_S,
) -> tuple[dict[str, list[tuple[float, float | None]]], dict[str, Any]]:
    """Fill a fresh store's history from Prometheus: (history, what was done).

    Only when some service's stored history spans less than `min_span_s` and the signals backend
    can read history (`read_history`: the Prometheus backend). This run forecasts from the full
    resolution; the store records the samples coarsened to MAX_RECORDED_POINTS timestamps (so the
    next run finds a day there and sends no range query). A failed range query changes nothing:
    the run forecasts from what the store has.
    """
    history = {n: list(h) for n, h in stored.items()}
    short = short_services(config, stored, min_span_s=min_span_s)
    read = getattr(signals, "read_history", None)
    if not short or read is None:
        return history, {"bootstrapped": False, "short_services": short}
    fetch: HistoryFetch = read(config, now_s, window_s=window_s)
    merged, added = merge_history(stored, fetch.samples, short, step_s=fetch.step_s or 1.0)
    by_time = coarsen(added, MAX_RECORDED_POINTS)
    for t in sorted(by_time):
        store.append_samples(config.cluster.name, t, by_time[t])
    info = {
        "bootstrapped": True,
        "short_services": short,
        "queries": fetch.queries,
        "step_s": fetch.step_s,
        "window_s": window_s,
        "samples_added": {n: len(v) for n, v in added.items()},
        "wall_s": round(fetch.wall_s, 4),
        "errors": fetch.errors,
    }
    return merged, info
