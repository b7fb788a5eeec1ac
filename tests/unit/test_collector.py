"""Collector logic with fake query functions: stale, missing, NaN, partial, failing, slow; escaping."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from models.config import ClusterConfig, load_config, parse_config
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
    assert coll.queries == len(calls) == 9
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
    assert coll.errors == [] and coll.attempts == 11
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
