"""Outages read as outages, and a hold names its cause (issues 14.5, 15.2), over real HTTP:

* nothing listening: `collect` exits 1 and says what failed; a scaling run is `held` with
  error `signals-unavailable: ...` (query, no HTTP status, URL without credentials), in the store,
  in the Prefect flow-run state (`SignalsUnavailable`) and in the run's artifact;
* an HTML page answering 200 (a login proxy, a wrong path): `collect` exits 1, not 30 rows of
  "malformed answer";
* a real Prometheus answering 400 to a malformed query (a metric profile override): the held
  service's reason in the run record names the query, HTTP 400 and the URL.
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from heteroscale.cli import app
from models import settings
from models.config import SIGNAL_QUERY_NAMES, load_config
from tasks.store import Store
from tests.conftest import DEMO_CONFIG
from tests.integration.prom import free_port, start_prometheus

pytestmark = pytest.mark.integration

# A decode_tps override with a missing parenthesis: Prometheus answers 400 bad_data.
BROKEN_DECODE_TPS = "sum by ($by) (rate(vllm:generation_tokens_total{$decode}[$window])"

# One query per signal of the vLLM profile (the demo's one profile group).
N = len(SIGNAL_QUERY_NAMES)


class _HtmlPage(http.server.BaseHTTPRequestHandler):
    """Answers every request with 200 and an HTML page, as a login proxy in front of Prometheus does."""

    def _page(self) -> None:
        body = b"<!doctype html><html><body><h1>Sign in</h1></body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._page()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._page()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def html_page() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HtmlPage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _collect(url: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["collect", "--config", str(DEMO_CONFIG), "--prometheus-url", url])
    return result.exit_code, result.output + (result.stderr if result.stderr_bytes is not None else "")


def test_collect_with_nothing_listening_exits_1_and_says_what_failed() -> None:
    code, out = _collect(f"http://127.0.0.1:{free_port()}")
    assert code == 1
    assert f"no signal could be read: all {N} queries failed (no answer)" in out
    assert "connection refused" in out


def test_collect_from_an_html_page_exits_1_not_rows_of_malformed_answers(html_page: str) -> None:
    code, out = _collect(html_page)
    assert code == 1
    assert f"all {N} queries failed (200)" in out and "not a Prometheus answer" in out
    assert "signal" in out and "stale" not in out  # no table of 30 null rows


def test_a_run_during_an_outage_is_held_as_signals_unavailable(
    prefect_harness: None, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from flows.scale_cluster import scale_cluster

    port = free_port()
    monkeypatch.setenv("HETEROSCALE_PROMETHEUS_URL", f"http://heteroscale:s3cr3t-pw@127.0.0.1:{port}")
    state = scale_cluster(config_path=str(DEMO_CONFIG), backend="twin", signals_backend="prometheus", return_state=True)
    assert state.name == "SignalsUnavailable" and state.is_completed()
    out = state.result()
    assert out["status"] == "held" and out["status_reason"] == "signals-unavailable" and out["changes"] == 0

    store = Store(settings.database_url())
    run = store.runs("demo")[0]
    assert run.status == "held" and run.error is not None and run.error.startswith("signals-unavailable: ")
    assert f"no answer from http://127.0.0.1:{port}/api/v1/query: connection refused" in run.error
    assert "s3cr3t" not in run.error and "s3cr3t" not in run.summary
    errors = store.signal_errors(run.id)
    assert len(errors) == N and {e.status for e in errors} == {None}
    assert {e.url for e in errors} == {f"http://127.0.0.1:{port}/api/v1/query"}
    assert all(d.action == "hold" and d.reason.startswith("signals-unavailable") for d in store.decisions(run.id))
    assert store.changes(run.id) == []
    # The collect step stayed inside its budget (derived from the control period).
    assert json.loads(run.signals_json)["chat"]["decode_tps"] is None

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]))
        )
    md = next(a.data for a in arts if a.key == "scale-demo")
    assert "signals-unavailable" in md and f"Signal queries that failed** ({N})" in md and "no answer" in md


def test_a_400_from_prometheus_is_in_the_held_runs_record(
    prefect_harness: None, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.scale_cluster import scale_cluster

    data = load_config(DEMO_CONFIG).model_dump(mode="json", exclude_none=True)
    for svc in data["services"]:
        svc.setdefault("signals", {})["queries"] = {"decode_tps": BROKEN_DECODE_TPS}
    config_path = tmp_path / "broken-query.yaml"
    config_path.write_text(yaml.safe_dump(data), encoding="utf-8")
    prom = start_prometheus([f"127.0.0.1:{free_port()}"], tmp_path / "prom")
    try:
        monkeypatch.setenv("HETEROSCALE_PROMETHEUS_URL", prom.url)
        out = scale_cluster(config_path=str(config_path), backend="twin", signals_backend="prometheus")
    finally:
        prom.stop()
    assert out["status"] == "held"
    store = Store(settings.database_url())
    run = store.runs("demo")[0]
    (err,) = store.signal_errors(run.id)
    assert (err.query, err.status, err.url) == ("vllm/decode_tps", 400, f"{prom.url}/api/v1/query")
    assert "bad_data" in err.message
    for d in store.decisions(run.id):
        assert d.action == "hold"
        assert f"vllm/decode_tps: HTTP 400 from {prom.url}/api/v1/query: bad_data" in d.reason, d.reason
    assert "HTTP 400" in out["decisions"]["chat"]["reason"]
