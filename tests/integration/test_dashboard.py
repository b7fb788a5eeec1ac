"""The Grafana dashboard (deployments/grafana/heteroscale.json): its structure, and every PromQL
expression in it (and in the KEDA/adapter examples) parsed by a real Prometheus.

Dashboard variables are replaced by values of their type first ($cluster -> `.*`, a textbox by its
default, `$__rate_interval` -> `1m`). An empty result is fine; a `bad_data` answer is a parse error.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml

from tests.conftest import ROOT
from tests.integration.prom import PromServer, start_prometheus

pytestmark = pytest.mark.integration

DASHBOARD = ROOT / "deployments" / "grafana" / "heteroscale.json"
PANEL_TYPES = {"row", "timeseries", "stat", "table", "piechart", "gauge", "bargauge"}
EXPORTED = (
    "heteroscale_desired_replicas",
    "heteroscale_current_replicas",
    "heteroscale_signal",
    "heteroscale_decision_info",
    "heteroscale_last_run_timestamp_seconds",
    "heteroscale_run_duration_seconds",
)


@pytest.fixture(scope="module")
def prom(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PromServer]:
    server = start_prometheus([], tmp_path_factory.mktemp("prom-dashboard"))
    try:
        yield server
    finally:
        server.stop()


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _substitute(expr: str, variables: list[dict]) -> str:
    values = {"__rate_interval": "1m", "__interval": "1m", "__range": "1h"}
    for v in variables:
        if v["type"] == "textbox":
            values[v["name"]] = v["query"]
        elif v["type"] == "query":
            values[v["name"]] = ".*"
    out = re.sub(r"\$\{?(\w+)\}?", lambda m: values.get(m.group(1), m.group(0)), expr)
    assert "$" not in out, f"unknown variable in {expr!r}"
    return out


def _parse_error(prom: PromServer, expr: str) -> str | None:
    r = requests.get(f"{prom.url}/api/v1/query", params={"query": expr}, timeout=5)
    body = r.json()
    if body.get("status") == "success":
        return None
    return f"{body.get('errorType')}: {body.get('error')}"


def test_dashboard_structure() -> None:
    d = _dashboard()
    assert d["title"] and d["uid"] and isinstance(d["schemaVersion"], int)
    names = [v["name"] for v in d["templating"]["list"]]
    assert {"datasource", "cluster", "service", "ttft_slo_s", "tbt_slo_s"} <= set(names)
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    exprs = []
    for p in d["panels"]:
        assert p["type"] in PANEL_TYPES and p["title"]
        g = p["gridPos"]
        assert g["w"] > 0 and g["h"] > 0 and 0 <= g["x"] and g["x"] + g["w"] <= 24
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "${datasource}" and p["targets"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs))
        exprs += [t["expr"] for t in p["targets"]]
    # Every exported series is on the dashboard, and the serving metrics beside them.
    for name in EXPORTED:
        assert any(name in e for e in exprs), name
    assert any("vllm:" in e for e in exprs)
    titles = {p["title"] for p in d["panels"]}
    assert {"P/D ratio", "Hold reasons", "Last run age", "TTFT p99 vs SLO", "TBT p99 vs SLO"} <= titles


def test_every_query_parses_in_prometheus(prom: PromServer) -> None:
    d = _dashboard()
    variables = d["templating"]["list"]
    exprs = [t["expr"] for p in d["panels"] if p["type"] != "row" for t in p["targets"]]
    exprs += [
        re.sub(r"^label_values\((.*), \w+\)$", r"\1", v["query"]["query"]) for v in variables if v["type"] == "query"
    ]
    errors = {e: err for e in exprs if (err := _parse_error(prom, _substitute(e, variables)))}
    assert not errors, errors


def test_keda_and_adapter_queries_parse(prom: PromServer) -> None:
    k8s = ROOT / "deployments" / "k8s"
    (so,) = [x for x in yaml.safe_load_all((k8s / "keda-scaledobject.yaml").read_text()) if x]
    assert _parse_error(prom, so["spec"]["triggers"][0]["metadata"]["query"]) is None
    cm = yaml.safe_load((k8s / "prometheus-adapter-rules.yaml").read_text())
    rule = yaml.safe_load(cm["data"]["config.yaml"])["externalRules"][0]
    assert _parse_error(prom, rule["seriesQuery"]) is None
    q = rule["metricsQuery"].replace("<<.Series>>", "heteroscale_desired_replicas")
    q = q.replace("<<.LabelMatchers>>", 'cluster="demo",service="chat",role="prefill"')
    assert _parse_error(prom, q) is None


def test_a_broken_query_is_caught(prom: PromServer, tmp_path: Path) -> None:
    assert _parse_error(prom, "sum by (service (heteroscale_signal)") is not None
