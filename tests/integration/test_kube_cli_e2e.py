"""`heteroscale scale --kube` end to end with nothing faked in between: vLLM-named counters
scraped by a real Prometheus, the collector's PromQL, the policy, placement, and the official
Kubernetes client over real HTTP to the API emulator (kmock) — through the CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from heteroscale.cli import app
from models import settings
from tasks.store import Store
from tests.integration.kube_fixture import KubeCluster
from tests.integration.prom import free_port, start_prometheus
from tests.integration.test_kube_scenario import CONFIG

pytestmark = pytest.mark.integration

DECODE_TPS = 3000.0  # output tokens/s the "fleet" generates
PROMPT_TPS = 15000.0
SCRAPE_INTERVAL_S = 1.0
RATE_WINDOW_S = 10


@pytest.fixture()
def prometheus(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    script = Path(__file__).with_name("vllm_fleet.py")
    fleet = subprocess.Popen([sys.executable, str(script), str(port), str(DECODE_TPS), str(PROMPT_TPS)])
    prom = start_prometheus([f"127.0.0.1:{port}"], tmp_path / "prom", scrape_interval_s=SCRAPE_INTERVAL_S)
    try:
        prom.wait_for_series("rate(vllm:generation_tokens_total[5s]) > 0", timeout_s=30)
        time.sleep(RATE_WINDOW_S)  # a full rate window of samples
        yield prom.url
    finally:
        prom.stop()
        fleet.terminate()
        fleet.wait(10)


@pytest.fixture()
def cluster() -> Iterator[KubeCluster]:
    with KubeCluster() as kc:
        kc.add_node("h-1", product="NVIDIA-H100-80GB-HBM3", s1="c1", s2="pod-c")
        kc.add_node("a-1", product="NVIDIA-A100-SXM4-80GB", s1="c1", s2="pod-c")
        kc.add_node("a-2", product="NVIDIA-A100-SXM4-80GB", s1="c1", s2="pod-c")
        yield kc


def test_scale_kube_cli_reads_prometheus_and_scales_the_cluster(
    prefect_harness: None,
    data_dir: Path,
    prometheus: str,
    cluster: KubeCluster,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = json.loads(json.dumps(CONFIG))
    config["prometheus"] = {"rate_window_s": RATE_WINDOW_S}
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("HETEROSCALE_PROMETHEUS_URL", prometheus)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    runner = CliRunner()

    dry = runner.invoke(
        app, ["scale", "--config", str(path), "--kube", "--api-url", cluster.url, "--dry-run", "--json"]
    )
    assert dry.exit_code == 0, dry.output
    assert cluster.deployments() == {}  # dryRun=All: the server validated, nothing was stored

    # `--kube` is a dry-run unless told to apply (issue 15): this run applies.
    res = runner.invoke(
        app, ["scale", "--config", str(path), "--kube", "--api-url", cluster.url, "--mode", "apply", "--json"]
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.output[res.output.index("{") :])
    chat = out["decisions"]["chat"]
    # 3,000 decode tok/s read through Prometheus / 650 per decode instance -> 5 decode, 3 prefill
    # (ratio 1:2), from the 2-instance minimum in one damped step (max_step_fraction 10).
    assert (chat["action"], chat["num_decode"], chat["num_prefill"]) == ("scale_out", 5, 3), chat["reason"]
    seen = float(re.search(r"decode_tps (\d+)", chat["reason"]).group(1))  # type: ignore[union-attr]
    assert seen == pytest.approx(DECODE_TPS, rel=0.02)
    replicas = {n: d["spec"]["replicas"] for n, d in cluster.deployments().items()}
    assert replicas == {"chat-prefill-h100-c1": 3, "chat-decode-a100-c1": 5}
    run = Store(settings.database_url()).runs("kind-gpu", 1)[0]
    assert run.status == "applied" and run.backend == "kube"
    signals = json.loads(run.signals_json)["chat"]
    assert signals["decode_tps"] == pytest.approx(DECODE_TPS, rel=0.02)
