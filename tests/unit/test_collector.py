"""Collector logic with fake query functions: stale, missing, NaN, partial, failing, slow; escaping."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from models.config import SIGNAL_QUERY_NAMES, ClusterConfig, SignalsProfile, load_config, parse_config
from tasks.prometheus import (
    PermanentQueryError,
    TransientQueryError,
    collect,
    http_query,
    profile_groups,
    regex_alternation,
)

DEMO = Path(__file__).resolve().parents[2] / "deployments" / "clusters" / "demo.yaml"
NOW = 1_000_000.0


def _cfg(**prom: Any) -> ClusterConfig:
    data = load_config(DEMO).model_dump(mode="json", exclude_none=True)
    data["prometheus"] = {"max_staleness_s": 60.0, "retries": 2, **prom}
    return parse_config(data)


def _vec(rows: list[tuple[dict[str, str], float | str]], ts: float = NOW) -> list[dict[str, Any]]:
    return [{"metric": labels, "value": [ts, str(v)]} for labels, v in rows]


def fake(age_s: float = 5.0, **override: Any):
    """Answers like Prometheus for chat/code/summarize; `override[name]` replaces one answer."""
    calls: list[str] = []

    def query(promql: str, at_s: float | None, timeout_s: float) -> list[dict[str, Any]]:
        calls.append(promql)
        for name, ans in override.items():
            if name in promql:
                if isinstance(ans, Exception):
                    raise ans
                return ans
        services = ["chat", "code", "summarize"]
        if "timestamp(" in promql:
            return _vec([({"service": s, "role": r}, NOW - age_s) for s in services for r in ("prefill", "decode")])
        if "by (service,role)" in promql:
            return _vec([({"service": s, "role": r}, 0.9) for s in services for r in ("prefill", "decode")])
        return _vec([({"service": s}, 1234.0) for s in services])

    return query, calls


def _no_sleep(_: float) -> None:
    pass


def test_one_query_per_signal_for_all_services() -> None:
    query, calls = fake()
    coll = collect(_cfg(), query, at_s=NOW, sleep=_no_sleep)
    assert coll.queries == len(calls) == len(SIGNAL_QUERY_NAMES) == 17
    sig = coll.to_service_signals()["chat"]
    assert sig.decode_tps == 1234.0 and sig.gpu_util_decode == 0.9 and sig.sampled_at_s == NOW - 5.0


def test_stale_samples_are_none_and_flagged() -> None:
    query, _ = fake(age_s=300.0)
    coll = collect(_cfg(), query, at_s=NOW, sleep=_no_sleep)
    r = coll.readings["chat"]["decode"]["decode_tps"]
    assert r.value is None and r.stale and "stale" in (r.reason or "")
    assert coll.to_service_signals()["chat"].decode_tps is None


def test_nan_and_absent_are_none_not_zero() -> None:
    query, _ = fake(
        **{
            "time_to_first_token": _vec([({"service": s}, "NaN") for s in ("chat", "code", "summarize")]),
            # partial answer: only chat's series came back
            "rate(vllm:generation_tokens_total": _vec([({"service": "chat"}, 10.0)]),
        }
    )
    coll = collect(_cfg(), query, at_s=NOW, sleep=_no_sleep)
    sig = coll.to_service_signals()
    assert sig["chat"].ttft_p99_s is None and coll.readings["chat"]["prefill"]["ttft_p99_s"].reason == "nan"
    assert sig["chat"].decode_tps == 10.0
    assert sig["code"].decode_tps is None and coll.readings["code"]["decode"]["decode_tps"].reason == "absent"


def test_transient_errors_are_retried_then_succeed() -> None:
    failures = {"n": 0}
    base, _ = fake()

    def flaky(promql: str, at_s: float | None, timeout_s: float) -> list[dict[str, Any]]:
        if "generation_tokens_total{" in promql and "rate(" in promql and failures["n"] < 2:
            failures["n"] += 1
            raise TransientQueryError("timeout")
        return base(promql, at_s, timeout_s)

    coll = collect(_cfg(), flaky, at_s=NOW, sleep=_no_sleep)
    assert coll.errors == [] and coll.attempts == len(SIGNAL_QUERY_NAMES) + 2
    assert coll.to_service_signals()["chat"].decode_tps == 1234.0


def test_query_that_keeps_failing_holds_not_zero() -> None:
    query, calls = fake(inter_token_latency=TransientQueryError("503"), DCGM=PermanentQueryError("400 bad"))
    coll = collect(_cfg(retries=2), query, at_s=NOW, sleep=_no_sleep)
    sig = coll.to_service_signals()["chat"]
    assert sig.tbt_p99_s is None and sig.gpu_util_decode is None
    assert sig.decode_tps == 1234.0  # the other queries still count
    assert sum("inter_token_latency" in c for c in calls) == 3  # 1 + 2 retries
    assert sum("DCGM" in c for c in calls) == 2  # gpu_util + gpu_freshness, not retried
    assert len(coll.errors) == 3


def test_label_values_cannot_inject_promql() -> None:
    evil = 'x"} or vector(1) or up{a=~".*'
    body = regex_alternation([evil, "a.b"])
    assert '"' not in body.replace('\\"', "")
    assert "a\\\\.b" in body  # the dot is a literal in the regex
    cfg = _cfg()
    data = cfg.model_dump(mode="json", exclude_none=True)
    data["services"][0]["signals"] = {"label_value": evil}
    q = profile_groups(parse_config(data))[0].queries()["decode_tps"]
    assert q.count('"') - q.count('\\"') == 4  # service=~"..." and role="decode": two literals only


def test_overridden_query_is_used() -> None:
    data = _cfg().model_dump(mode="json", exclude_none=True)
    data["services"][0]["signals"] = {"queries": {"decode_tps": "sum by ($by) (my_tokens{$decode})"}}
    groups = profile_groups(parse_config(data))
    assert len(groups) == 2  # chat has its own group now
    chat = next(g for g in groups if ("chat", "chat") in g.services)
    assert chat.queries()["decode_tps"] == 'sum by (service) (my_tokens{service=~"chat",role="decode"})'


def test_bad_override_names_the_field() -> None:
    data = _cfg().model_dump(mode="json", exclude_none=True)
    data["services"][0]["signals"] = {"queries": {"decode_tps": "rate(x{$nope}[1m])"}}
    with pytest.raises(ValueError, match=r"queries.decode_tps: unknown placeholder"):
        parse_config(data)


def test_slow_prometheus_times_out_and_is_retried() -> None:
    hits = {"n": 0}

    class Slow(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            hits["n"] += 1
            time.sleep(0.6)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b'{"status":"success","data":{"resultType":"vector","result":[]}}')

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        query = http_query(f"http://127.0.0.1:{server.server_address[1]}")
        with pytest.raises(TransientQueryError):
            query("up", None, 0.2)
        assert query("up", None, 5.0) == []
    finally:
        server.shutdown()


# --- demand signals: templates per profile, fallbacks --------------------------------------


def _profile_cfg(profile: SignalsProfile) -> ClusterConfig:
    data = _cfg().model_dump(mode="json", exclude_none=True)
    for svc in data["services"]:
        svc["signals"] = {"profile": profile.value}
    return parse_config(data)


# Metric names each profile's demand templates must read (rendered for the demo's services).
_SVC = 'service=~"chat|code|summarize"'
_P, _D = f'{{{_SVC},role="prefill"}}', f'{{{_SVC},role="decode"}}'
DEMAND_METRICS: dict[SignalsProfile, dict[str, tuple[str, ...]]] = {
    SignalsProfile.VLLM: {
        "queued_prompt_tokens": (
            f"vllm:num_requests_waiting{_P}",
            f"vllm:request_prompt_tokens_sum{_P}[60s]",
            f"vllm:request_prompt_tokens_count{_P}[60s]",
            f"vllm:prefix_cache_hits_total{_P}",
            f"vllm:prefix_cache_queries_total{_P}",
        ),
        "queue_growth_tps": (f"deriv(vllm:num_requests_waiting{_P}[60s])", "vllm:request_prompt_tokens_sum"),
        "arrival_rps": (
            f"rate(dynamo_frontend_requests_total{{{_SVC}}}[60s])",
            f"rate(inference_objective_request_total{{{_SVC}}}[60s])",
        ),
        "arrival_peak_rps": ("max_over_time((", f"dynamo_frontend_requests_total{{{_SVC}}}[10s]", ")[60s:10s])"),
        "arrival_prompt_tps": ("dynamo_frontend_input_sequence_tokens_sum", "inference_objective_input_tokens_sum"),
        "mean_input_tokens": (f"vllm:request_prompt_tokens_sum{_P}", f"vllm:request_prompt_tokens_count{_P}"),
        "mean_output_tokens": (f"vllm:request_generation_tokens_sum{_D}", f"vllm:request_generation_tokens_count{_D}"),
        "prefix_cache_hit_rate": (f"vllm:prefix_cache_hits_total{_P}", f"vllm:prefix_cache_queries_total{_P}"),
    },
    SignalsProfile.SGLANG: {
        "queued_prompt_tokens": (
            f"sglang:num_queue_reqs{_P}",
            f"sglang:prompt_tokens_total{_P}",
            f"sglang:num_requests_total{_P}",
            f"sglang:cached_tokens_total{_P}",
        ),
        "queue_growth_tps": (f"deriv(sglang:num_queue_reqs{_P}[60s])",),
        "arrival_rps": ("dynamo_frontend_requests_total", "inference_objective_request_total"),
        "mean_input_tokens": (f"sglang:prompt_tokens_total{_P}", f"sglang:num_requests_total{_P}"),
        "mean_output_tokens": (f"sglang:generation_tokens_total{_D}", f"sglang:num_requests_total{_D}"),
        "prefix_cache_hit_rate": (f"sglang:cached_tokens_total{_P}", f"sglang:prompt_tokens_total{_P}"),
    },
    SignalsProfile.DYNAMO: {
        "queued_prompt_tokens": (
            f"dynamo_frontend_queued_requests{{{_SVC}}}",
            "dynamo_frontend_input_sequence_tokens_count",
            "dynamo_frontend_cached_tokens_sum",
        ),
        "queue_growth_tps": (f"deriv(dynamo_frontend_queued_requests{{{_SVC}}}[60s])",),
        "arrival_rps": (f"rate(dynamo_frontend_requests_total{{{_SVC}}}[60s])",),
        "arrival_peak_rps": ("[10s]", "[60s:10s]"),
        "arrival_prompt_tps": (f"rate(dynamo_frontend_input_sequence_tokens_sum{{{_SVC}}}[60s])",),
        "mean_input_tokens": (
            "dynamo_frontend_input_sequence_tokens_sum",
            "dynamo_frontend_input_sequence_tokens_count",
        ),
        "mean_output_tokens": (
            "dynamo_frontend_output_sequence_tokens_sum",
            "dynamo_frontend_output_sequence_tokens_count",
        ),
        "prefix_cache_hit_rate": (
            "dynamo_frontend_cached_tokens_sum",
            "dynamo_component_kvstats_gpu_prefix_cache_hit_rate",
        ),
    },
}


@pytest.mark.parametrize("profile", list(SignalsProfile))
def test_every_profile_renders_every_signal_once(profile: SignalsProfile) -> None:
    (group,) = profile_groups(_profile_cfg(profile))
    queries = group.queries()
    assert set(queries) == set(SIGNAL_QUERY_NAMES)  # one query per signal, 100 services or 1
    for name, promql in queries.items():
        assert "$" not in promql and promql.count("(") == promql.count(")"), (name, promql)
    for name, metrics in DEMAND_METRICS[profile].items():
        for m in metrics:
            assert m in queries[name], (profile, name, m, queries[name])
    # A cache-less stack: the queue counts every prompt token (hit rate 0), it does not vanish.
    for name in ("queued_prompt_tokens", "queue_growth_tps"):
        assert " * 0))" in queries[name]
    # No arrival counter in the engine profiles' own metrics: only a frontend's.
    if profile is not SignalsProfile.DYNAMO:
        assert "vllm:" not in queries["arrival_rps"] and "sglang:" not in queries["arrival_rps"]


def test_demand_signals_reach_service_signals_by_role() -> None:
    cfg = _cfg()
    (group,) = profile_groups(cfg)
    signal_of = {q: name for name, q in group.queries().items()}
    services = ["chat", "code", "summarize"]
    values = {
        "queued_prompt_tokens": 4000.0,
        "queue_growth_tps": 120.0,
        "arrival_rps": 6.0,
        "arrival_peak_rps": 9.0,
        "arrival_prompt_tps": 12000.0,
        "mean_input_tokens": 1600.0,
        "mean_output_tokens": 250.0,
        "prefix_cache_hit_rate": 0.25,
    }

    def query(promql: str, at_s: float | None, timeout_s: float) -> list[dict[str, Any]]:
        name = signal_of[promql]
        if name in ("freshness", "gpu_freshness"):
            return _vec([({"service": s, "role": r}, NOW - 5.0) for s in services for r in ("prefill", "decode")])
        if "by (service,role)" in promql:
            return _vec([({"service": s, "role": r}, 3.0) for s in services for r in ("prefill", "decode")])
        return _vec([({"service": s}, values.get(name, 1234.0)) for s in services])

    coll = collect(cfg, query, at_s=NOW, sleep=_no_sleep)
    sig = coll.to_service_signals()["chat"]
    assert sig.waiting_requests == 6.0  # both roles' gauges
    assert {name: sig.get(name) for name in values} == values
    # Read on the role they describe: output sizes on decode, the rest on prefill.
    assert coll.readings["chat"]["decode"]["mean_output_tokens"].value == 250.0
    assert coll.readings["chat"]["prefill"]["queued_prompt_tokens"].value == 4000.0
    assert "queued_prompt_tokens" not in coll.readings["chat"]["decode"]


def test_stack_without_a_frontend_or_traffic_reads_none_not_zero() -> None:
    """No router/frontend scraped: arrival signals absent -> None (the policy falls back to
    served + queue growth); no request finished in the window: sizes are NaN -> None."""
    nan = _vec([({"service": s}, "NaN") for s in ("chat", "code", "summarize")])
    query, _ = fake(
        **{
            "dynamo_frontend_requests_total": [],  # arrival_rps and arrival_peak_rps
            "input_sequence_tokens": [],
            "request_generation_tokens": nan,
        }
    )
    coll = collect(_cfg(), query, at_s=NOW, sleep=_no_sleep)
    sig = coll.to_service_signals()["chat"]
    for name in ("arrival_rps", "arrival_peak_rps", "arrival_prompt_tps"):
        assert sig.get(name) is None and coll.readings["chat"]["prefill"][name].reason == "absent", name
    assert sig.mean_output_tokens is None and coll.readings["chat"]["decode"]["mean_output_tokens"].reason == "nan"
    assert sig.decode_tps == 1234.0 and sig.queued_prompt_tokens == 1234.0  # the rest still read
    assert coll.errors == []


# --- history at start-up (range queries) ---------------------------------------------------


def _matrix(values: dict[str, list[tuple[float, str]]]) -> list[dict[str, Any]]:
    return [{"metric": {"service": s}, "values": [[t, v] for t, v in vs]} for s, vs in values.items()]


def test_history_is_one_range_query_per_signal_group_with_gaps_kept() -> None:
    from tasks.prometheus import fetch_history

    cfg = _cfg()
    calls: list[tuple[str, float, float, float]] = []

    def query_range(promql: str, start: float, end: float, step: float, timeout_s: float) -> list[dict[str, Any]]:
        calls.append((promql, start, end, step))
        # t=120 missing for chat (a scrape gap), NaN for code; an unknown service is ignored.
        return _matrix(
            {
                "chat": [(60.0, "10"), (180.0, "12")],
                "code": [(60.0, "5"), (120.0, "NaN")],
                "summarize": [(60.0, "7")],
                "other": [(60.0, "99")],
            }
        )

    fetch = fetch_history(cfg, query_range, end_s=NOW, window_s=3600.0)
    assert len(calls) == 1 and "generation_tokens_total" in calls[0][0]
    assert calls[0][1:] == (NOW - 3600.0, NOW, 60.0)  # the control period as the step
    assert fetch.samples["chat"] == [(60.0, 10.0), (180.0, 12.0)]
    assert fetch.samples["code"] == [(60.0, 5.0), (120.0, None)]
    assert "other" not in fetch.samples


def test_range_step_is_bounded_and_a_failed_range_query_changes_nothing() -> None:
    from tasks.prometheus import MAX_RANGE_POINTS, bootstrap_history, fetch_history, range_step_s

    assert range_step_s(30 * 86400.0, 60.0) * MAX_RANGE_POINTS >= 30 * 86400.0
    cfg = _cfg(retries=1)

    def broken(*_: Any) -> list[dict[str, Any]]:
        raise TransientQueryError("connection refused")

    fetch = fetch_history(cfg, broken, end_s=NOW, sleep=_no_sleep)
    assert fetch.samples == {} and len(fetch.errors) == 1

    class Backend:
        def read_history(self, config: ClusterConfig, now_s: float, *, window_s: float) -> Any:
            return fetch_history(config, broken, end_s=now_s, window_s=window_s, sleep=_no_sleep)

    written: list[float] = []

    class Store:
        def append_samples(self, cluster: str, now_s: float, values: Any) -> None:
            written.append(now_s)

    stored = {"chat": [(NOW - 60.0, 1.0)]}
    history, info = bootstrap_history(Backend(), Store(), cfg, stored, NOW)
    assert history == stored and written == [] and info["errors"]


def test_bootstrap_fills_only_short_services_before_their_stored_samples_and_records_coarsened() -> None:
    from tasks.prometheus import MAX_RECORDED_POINTS, HistoryFetch, bootstrap_history, coarsen

    cfg = _cfg()
    day = [(NOW - 86400.0 + 60.0 * i, 100.0 + i) for i in range(1441)]

    class Backend:
        def read_history(self, config: ClusterConfig, now_s: float, *, window_s: float) -> HistoryFetch:
            return HistoryFetch(samples={s.name: list(day) for s in config.services}, queries=1, step_s=60.0)

    written: dict[float, dict[str, float | None]] = {}

    class Store:
        def append_samples(self, cluster: str, now_s: float, values: Any) -> None:
            written[now_s] = dict(values)

    long_enough = [(NOW - 7200.0 + 60.0 * i, 5.0) for i in range(120)]
    short = [(NOW - 120.0, 7.0), (NOW - 60.0, None)]
    history, info = bootstrap_history(Backend(), Store(), cfg, {"chat": long_enough, "code": short}, NOW)
    assert info["short_services"] == ["code", "summarize"]
    assert history["chat"] == long_enough  # enough history: untouched
    # code: the fetched past up to its first stored sample, then its own samples (stored wins).
    assert history["code"][-2:] == short and all(t < NOW - 120.0 for t, _ in history["code"][:-2])
    assert len(history["summarize"]) == 1441
    assert len(written) <= MAX_RECORDED_POINTS + 1
    assert all(set(v) <= {"code", "summarize"} for v in written.values())
    # Bucket means; a missing value is skipped, never averaged as 0.
    got = coarsen({"a": [(0.0, 2.0), (1.0, None), (3.0, 4.0), (4.0, None)], "b": [(0.0, None), (1.0, None)]}, 2)
    assert got == {1.0: {"a": 2.0, "b": None}, 4.0: {"a": 4.0}}


def test_hundred_services_history_is_still_one_query() -> None:
    from tasks.prometheus import history_queries

    data = load_config(DEMO).model_dump(mode="json", exclude_none=True)
    chat = next(s for s in data["services"] if s["name"] == "chat")
    data["services"] = [{**chat, "name": f"svc-{i:03d}"} for i in range(100)]
    assert len(history_queries(parse_config(data))) == 1


# --- the collect budget: bounded below the control period by construction ---------------------


def _sized(
    services: int, *, period_s: float, parallel: int, profiles: int = 1, labels: int = 1, **prom: Any
) -> ClusterConfig:
    data = load_config(DEMO).model_dump(mode="json", exclude_none=True)
    base = data["services"][0]
    kinds = ["vllm", "sglang", "dynamo"][:profiles]
    data["services"] = [
        {**base, "name": f"s{i}", "signals": {"profile": kinds[i % len(kinds)], "service_label": f"l{i % labels}"}}
        for i in range(services)
    ]
    data["cluster"]["control_period_s"] = period_s
    data["prometheus"] = {"max_parallel_queries": parallel, **prom}
    return parse_config(data)


@pytest.mark.parametrize("period_s", [10.0, 30.0, 60.0, 300.0])
@pytest.mark.parametrize("parallel", [1, 4, 64])
@pytest.mark.parametrize("services", [1, 3, 100])
def test_derived_budget_fits_half_the_control_period(period_s: float, parallel: int, services: int) -> None:
    """Whatever the size, the worst case (every query timing out on every attempt, with the
    back-off between attempts) fits in half the period: queries run in at most `waves` rounds.
    A config where no timeout of at least 0.5 s could fit is refused at load, saying why."""
    from models.config import ConfigError

    try:
        cfg = _sized(services, period_s=period_s, parallel=parallel, profiles=3, labels=4)
    except ConfigError as exc:
        assert "too short" in str(exc) and "max_parallel_queries" in str(exc)
        return
    b = cfg.collect_budget()
    assert b.queries == len(SIGNAL_QUERY_NAMES) * len(profile_groups(cfg))
    assert b.waves * ((b.retries + 1) * b.timeout_s + b.backoff_total_s) == pytest.approx(b.worst_case_s)
    assert b.worst_case_s <= 0.5 * period_s + 1e-9 and b.timeout_s >= 0.5


def test_configured_timeouts_that_cannot_fit_fail_validation_and_say_so() -> None:
    from models.config import ConfigError

    with pytest.raises((ConfigError, ValueError), match=r"3 wave\(s\).*3 attempt\(s\) x 10s timeout.*control_period_s"):
        _sized(3, period_s=60.0, parallel=8, timeout_s=10.0, retries=2)
    # A timeout alone keeps as many retries as fit.
    b = _sized(3, period_s=60.0, parallel=8, timeout_s=4.0).collect_budget()
    assert b.retries == 1 and b.worst_case_s <= 30.0
    with pytest.raises((ConfigError, ValueError), match="too short"):
        _sized(3, period_s=2.0, parallel=1)


def test_collect_stops_waiting_at_its_budget_whatever_the_server_does() -> None:
    """A query that ignores its timeout (a server trickling its answer) is recorded as failed
    once the budget's worst case has passed; the collect does not wait for it."""
    cfg = _sized(1, period_s=4.0, parallel=len(SIGNAL_QUERY_NAMES))  # one wave
    release = threading.Event()

    def hung(promql: str, at_s: float | None, timeout_s: float) -> list[dict[str, Any]]:
        release.wait(60)
        return []

    try:
        coll = collect(cfg, hung, at_s=NOW, sleep=_no_sleep)
    finally:
        release.set()
    assert (
        coll.unavailable
        and len(coll.errors) == len(SIGNAL_QUERY_NAMES)
        and coll.budget_s == cfg.collect_budget().worst_case_s
    )
    assert all("no answer within the collect budget" in e.message and e.status is None for e in coll.errors)


def test_http_client_does_not_retry_on_its_own() -> None:
    from tasks.prometheus import _client

    client = _client("http://127.0.0.1:9", None)
    adapter = client._session.get_adapter("http://127.0.0.1:9/api/v1/query")
    assert adapter.max_retries.total == 0


def test_query_errors_carry_status_and_url_without_credentials() -> None:
    query, _ = fake(inter_token_latency=PermanentQueryError("bad_data: parse error", status=400, url="http://p/q"))
    coll = collect(_cfg(), query, at_s=NOW, sleep=_no_sleep)
    (err,) = coll.errors
    assert (err.query, err.status, err.url) == ("vllm/tbt_p99_s", 400, "http://p/q")
    assert str(err) == "vllm/tbt_p99_s: HTTP 400 from http://p/q: bad_data: parse error"
    assert err.services == ("chat", "code", "summarize") and not coll.unavailable
    from tasks.prometheus import public_url

    assert public_url("https://u:pw@prom:9090/api/v1/query?x=1") == "https://prom:9090/api/v1/query"
