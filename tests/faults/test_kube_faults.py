"""Kubernetes API faults over real HTTP (kmock on loopback, the official client): throttling,
a hung API server, a node vanishing between discovery and apply, a human deleting a managed
Deployment mid-run. Each must fail safe (or converge) and leave a re-runnable state."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client as k8s

from models.values import ApplyMode
from tasks.kube import client as kube_client
from tasks.kube.backend import KubeBackend
from tasks.kube.client import KubeTransientError
from tests.integration.kube_fixture import DEPLOYMENTS, NODES, KubeCluster
from tests.integration.test_kube_actuation import _config, _plan

pytestmark = [pytest.mark.faults, pytest.mark.integration]


@pytest.fixture()
def kc() -> Iterator[KubeCluster]:
    with KubeCluster() as c:
        c.add_node("c-h", product="NVIDIA-H100-80GB-HBM3", s1="c1", s2="pod-c")
        c.add_node("c-a", product="NVIDIA-A100-SXM4-80GB", s1="c1", s2="pod-c")
        yield c


def _backend(url: str, tmp_path: Path) -> KubeBackend:
    cfg = k8s.Configuration()
    cfg.host = url
    return KubeBackend(k8s.ApiClient(cfg), export_dir=tmp_path)


def _replicas(kc: KubeCluster) -> dict[str, int]:
    return {n: d["spec"]["replicas"] for n, d in kc.deployments().items()}


def test_throttled_scale_is_transient_and_a_rerun_converges(kc: KubeCluster, tmp_path: Path) -> None:
    cfg, be = _config(), _backend(kc.url, tmp_path)
    be.apply(cfg, _plan(2, 4), ApplyMode.APPLY, 0.0)
    kc.server.fail("PATCH", r"/deployments/chat-decode-a100-c1/scale$", 429, times=5)
    with pytest.raises(KubeTransientError, match="HTTP 429"):
        be.apply(cfg, _plan(2, 6), ApplyMode.APPLY, 1.0)
    assert _replicas(kc)["chat-decode-a100-c1"] == 4  # nothing half-written
    kc.server.faults.clear()
    be.apply(cfg, _plan(2, 6), ApplyMode.APPLY, 2.0)
    assert _replicas(kc) == {"chat-prefill-h100-c1": 2, "chat-decode-a100-c1": 6}


def test_hung_api_server_times_out_as_transient(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that accepts connections and never answers must fail the read within the
    request timeout (a transient error Prefect retries), not hang the run."""
    monkeypatch.setattr(kube_client, "REQUEST_TIMEOUT_S", (1.0, 1.0))
    import tasks.kube.discovery as discovery

    if hasattr(discovery, "REQUEST_TIMEOUT_S"):
        monkeypatch.setattr(discovery, "REQUEST_TIMEOUT_S", (1.0, 1.0))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(sock.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        cfg = _config()
        be = _backend(f"http://127.0.0.1:{sock.getsockname()[1]}", tmp_path)
        with pytest.raises(KubeTransientError, match="unreachable or slow"):
            be.read_state(cfg, 0.0)
    finally:
        stop.set()
        t.join(2)
        for c in held:
            c.close()
        sock.close()


def test_node_vanishing_between_discovery_and_apply(kc: KubeCluster, tmp_path: Path) -> None:
    cfg, be = _config(), _backend(kc.url, tmp_path)
    before = be.read_state(cfg, 0.0)
    assert sum(c.gpus_total for c in before.capacities) == 16
    kc.server.objects[NODES, None, "c-a"].delete()  # the A100 node is gone
    # Apply still lands (Kubernetes accepts it; pods wait for capacity), nothing crashes ...
    be.apply(cfg, _plan(1, 2), ApplyMode.APPLY, 1.0)
    assert _replicas(kc) == {"chat-prefill-h100-c1": 1, "chat-decode-a100-c1": 2}
    # ... and the next run sees the smaller cluster, so it plans within what exists.
    after = be.read_state(cfg, 2.0)
    assert sum(c.gpus_total for c in after.capacities) == 8
    assert {c.gpu_type for c in after.capacities} == {"h100"}


def test_deployment_deleted_by_a_human_mid_run_is_recreated(kc: KubeCluster, tmp_path: Path) -> None:
    cfg, be = _config(), _backend(kc.url, tmp_path)
    be.apply(cfg, _plan(2, 4), ApplyMode.APPLY, 0.0)
    be.read_state(cfg, 1.0)  # this run's discovery still sees the Deployment ...
    kc.server.objects[DEPLOYMENTS, "llm", "chat-decode-a100-c1"].delete()  # ... then a human deletes it
    try:
        be.apply(cfg, _plan(2, 6), ApplyMode.APPLY, 1.0)
    except KubeTransientError:
        be.apply(cfg, _plan(2, 6), ApplyMode.APPLY, 2.0)  # the retry (a re-read) converges
    assert _replicas(kc) == {"chat-prefill-h100-c1": 2, "chat-decode-a100-c1": 6}
