"""Export mode end to end: `scale_cluster` on the twin in `mode=export`, the exporter serving the
store, a real Prometheus scraping it; PromQL returns the desired replicas the run decided."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from flows.scale_cluster import scale_cluster
from models import settings
from tasks.exporter import make_exporter_server
from tasks.store import Store
from tests.conftest import DEMO_CONFIG
from tests.integration.prom import PromServer, free_port, start_prometheus

pytestmark = pytest.mark.integration


@pytest.fixture()
def exporter(data_dir: Path) -> Iterator[str]:
    server = make_exporter_server(Store(settings.database_url()), host="127.0.0.1", port=free_port())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def query(prom: PromServer, promql: str) -> list[dict]:
    r = requests.get(f"{prom.url}/api/v1/query", params={"query": promql}, timeout=5)
    r.raise_for_status()
    return r.json()["data"]["result"]


def test_prometheus_reads_the_desired_replicas_of_the_last_export_run(
    prefect_harness: None, data_dir: Path, exporter: str, tmp_path: Path
) -> None:
    scale_cluster(config_path=str(DEMO_CONFIG))  # seeds the twin with its starting fleet
    cells_before = json.loads((data_dir / "twin" / "demo.json").read_text())["cells"]
    out = scale_cluster(config_path=str(DEMO_CONFIG), mode="export")
    assert out["status"] in ("export", "held")
    # Export changes nothing in the cluster.
    assert json.loads((data_dir / "twin" / "demo.json").read_text())["cells"] == cells_before
    store = Store(settings.database_url())
    cells = store.cells(out["run_id"])
    assert cells and {c.service for c in cells} == {"chat", "code", "summarize"}

    prom = start_prometheus([exporter], tmp_path / "prom")
    try:
        prom.wait_for_series('heteroscale_desired_replicas{cluster="demo"}')
        got = {
            (r["metric"]["service"], r["metric"]["role"], r["metric"]["gpu_type"], r["metric"]["s1"]): float(
                r["value"][1]
            )
            for r in query(prom, 'heteroscale_desired_replicas{cluster="demo"}')
        }
        assert got == {(c.service, c.role, c.gpu_type, c.s1): float(c.desired) for c in cells}
        # What a KEDA ScaledObject asks for one service's role (deployments/k8s/keda-scaledobject.yaml).
        chat_decode = query(prom, 'sum(heteroscale_desired_replicas{cluster="demo",service="chat",role="decode"})')
        assert float(chat_decode[0]["value"][1]) == sum(
            c.desired for c in cells if c.service == "chat" and c.role == "decode"
        )
        current = query(prom, 'sum by (service) (heteroscale_current_replicas{cluster="demo"})')
        assert {r["metric"]["service"]: float(r["value"][1]) for r in current} == {
            s: float(sum(c.current for c in cells if c.service == s)) for s in ("chat", "code", "summarize")
        }
        info = query(prom, 'heteroscale_decision_info{cluster="demo"}')
        assert {r["metric"]["service"]: r["metric"]["action"] for r in info} == {
            n: d["action"] for n, d in out["decisions"].items()
        }
        assert all(r["metric"]["reason_code"] for r in info)
        assert query(prom, 'heteroscale_signal{cluster="demo",service="chat",signal="decode_tps"}')
        age = query(prom, 'time() - heteroscale_last_run_timestamp_seconds{cluster="demo"}')
        assert 0 <= float(age[0]["value"][1]) < 120
        run = query(prom, 'heteroscale_run_info{cluster="demo"}')
        assert run[0]["metric"]["mode"] == "export"
    finally:
        prom.stop()
