"""Scenario over real HTTP: discover a 3-domain, 2-GPU-type cluster served by kmock, run the
`scale_cluster` flow against it with the official client, check the exact Deployments and
replicas, then take a scale-in through the soft path (drain -> window -> removal)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from models.config import ClusterConfig, load_config
from models.values import ServiceSignals
from tests.integration.kube_fixture import KubeCluster

pytestmark = pytest.mark.integration

CONFIG = {
    "cluster": {"name": "kind-gpu", "control_period_s": 60},
    "gpu_types": [
        {"name": "h100", "memory_gib": 80, "cost_per_gpu_hour": 4.0},
        {"name": "a100", "memory_gib": 80, "cost_per_gpu_hour": 2.0},
    ],
    # Required by the schema; the Kubernetes backend discovers the real topology instead.
    "topology": {
        "node_pools": [{"name": "p", "gpu_type": "h100", "nodes": 1, "gpus_per_node": 8, "s1": "x", "s2": "y"}]
    },
    "kubernetes": {
        "gpu_type_values": {"h100": ["NVIDIA-H100-80GB-HBM3"], "a100": ["NVIDIA-A100-SXM4-80GB"]},
        "soft_scale_in_window_s": 6,
    },
    "services": [
        {
            "name": "chat",
            "model": "meta-llama/Llama-2-70b-hf",
            "namespace": "llm",
            "prefill": {"gpu_types": ["h100"], "gpus_per_instance": 2, "capacity_tokens_per_s": {"h100": 6500}},
            "decode": {"gpu_types": ["a100"], "gpus_per_instance": 2, "capacity_tokens_per_s": {"a100": 950}},
            "pd_ratio": {"prefill": 1, "decode": 2},
            "slo": {"ttft_p99_s": 2.0, "tbt_p99_s": 0.1},
            "affinity": "S2",
            "pod_template": {"inline": {"containers": [{"name": "vllm", "image": "vllm/vllm-openai:v0.9.0"}]}},
            "policy": {
                "target_per_instance": 650,
                "min_instances": 2,
                "max_instances": 40,
                "max_step_fraction": 10,
                "scale_in_cooldown_s": 0,
                "scale_out_cooldown_s": 0,
            },
        }
    ],
}


class FixedSignals:
    """Signals the test sets (the cluster, not Prometheus, is under test here)."""

    def __init__(self) -> None:
        self.decode_tps = 0.0
        self.tbt_p99_s = 0.05

    def read_signals(self, config: ClusterConfig, now_s: float) -> dict[str, ServiceSignals]:
        return {
            "chat": ServiceSignals(
                "chat", sampled_at_s=now_s, decode_tps=self.decode_tps, ttft_p99_s=0.5, tbt_p99_s=self.tbt_p99_s
            )
        }


@pytest.fixture()
def cluster() -> Iterator[KubeCluster]:
    with KubeCluster() as kc:
        # pod-a: H100 only; pod-b: A100 only; pod-c: both under S1 c1 -> the only S2 that can host
        # chat's H100 prefill and A100 decode together.
        kc.add_node("gpu-node-0001", product="NVIDIA-H100-80GB-HBM3", s1="a1", s2="pod-a")
        kc.add_node("gpu-node-0002", product="NVIDIA-H100-80GB-HBM3", s1="a1", s2="pod-a")
        kc.add_node("x7", product="NVIDIA-A100-SXM4-80GB", s1="b1", s2="pod-b")
        kc.add_node("c-h", product="NVIDIA-H100-80GB-HBM3", s1="c1", s2="pod-c")
        kc.add_node("c-a1", product="NVIDIA-A100-SXM4-80GB", s1="c1", s2="pod-c")
        kc.add_node("c-a2", product="NVIDIA-A100-SXM4-80GB", s1="c1", s2="pod-c")
        kc.add_node("cordoned", product="NVIDIA-A100-SXM4-80GB", s1="c1", s2="pod-c", cordoned=True)
        # Someone else's job holds 4 of c1's A100s.
        kc.add_pod("research", "train-0", node="c-a1", gpus=4)
        yield kc


@pytest.fixture()
def config_path(tmp_path: Path, cluster: KubeCluster, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HETEROSCALE_KUBE_API_URL", cluster.url)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    p = tmp_path / "kube.yaml"
    p.write_text(yaml.safe_dump(CONFIG), encoding="utf-8")
    return p


def _use_signals(monkeypatch: pytest.MonkeyPatch, signals: FixedSignals) -> None:
    import flows.scale_cluster as flow_mod
    from flows.backends import make_backends

    def with_signals(config: ClusterConfig, cluster: str, **kw: Any) -> Any:
        kw["signals"] = signals
        return make_backends(config, cluster, **kw)

    monkeypatch.setattr(flow_mod, "make_backends", with_signals)


def test_discovery_reads_topology_and_free_gpus(cluster: KubeCluster, config_path: Path) -> None:
    from tasks.kube.backend import KubeBackend

    config = load_config(config_path)
    view = KubeBackend.connect(config).read_state(config, 0.0)
    caps = {(c.gpu_type, c.s1): (c.s2, c.gpus_total, c.gpus_other) for c in view.capacities}
    assert caps == {
        ("h100", "a1"): ("pod-a", 16, 0),
        ("a100", "b1"): ("pod-b", 8, 0),
        ("h100", "c1"): ("pod-c", 8, 0),
        ("a100", "c1"): ("pod-c", 16, 4),  # the cordoned node is not counted; train-0 holds 4
    }
    assert view.placement.cells == {}


def test_scale_out_then_soft_scale_in(
    cluster: KubeCluster, config_path: Path, prefect_harness: None, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.scale_cluster import scale_cluster

    signals = FixedSignals()
    _use_signals(monkeypatch, signals)

    # 1. Load for 6 decode instances (6 x 650 tok/s) -> 3 prefill at 1:2, all in pod-c / c1.
    signals.decode_tps = 6 * 650.0
    out = scale_cluster(config_path=str(config_path), backend="kube")
    assert out["decisions"]["chat"]["num_decode"] == 6 and out["decisions"]["chat"]["num_prefill"] == 3
    deps = cluster.deployments("llm")
    assert {n: d["spec"]["replicas"] for n, d in deps.items()} == {
        "chat-prefill-h100-c1": 3,
        "chat-decode-a100-c1": 6,
    }
    for dep in deps.values():
        kubernetes_validate.validate(dep, "1.37.0", strict=True)
        terms = dep["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"
        ]["nodeSelectorTerms"]
        assert {"key": "heteroscale.io/s1", "operator": "In", "values": ["c1"]} in terms[0]["matchExpressions"]
        assert dep["metadata"]["labels"]["heteroscale.io/group"] == "chat-pod-c"
        assert dep["metadata"]["annotations"]["heteroscale.io/applied-replicas"] == str(dep["spec"]["replicas"])
        assert dep["metadata"]["managedFields"][-1]["manager"] == "heteroscale"
    cluster.reconcile_pods()

    # 2. Load halves -> 3 decode, 2 prefill wanted (bounds: ratio 1:2 rounds prefill up).
    signals.decode_tps = 3 * 650.0
    drain_started = time.time()
    out = scale_cluster(config_path=str(config_path), backend="kube")
    want_p, want_d = out["decisions"]["chat"]["num_prefill"], out["decisions"]["chat"]["num_decode"]
    assert want_d == 3 and want_p < 3
    deps = cluster.deployments("llm")
    decode = deps["chat-decode-a100-c1"]
    # Soft: replicas unchanged, 3 instances out of service discovery, the window started.
    assert decode["spec"]["replicas"] == 6
    assert decode["metadata"]["annotations"]["heteroscale.io/draining-replicas"] == "3"
    pods = cluster.pods("llm")
    drained = [p for p in pods.values() if p["metadata"]["labels"]["heteroscale.io/serving"] != "true"]
    assert len(drained) == 3 + (3 - want_p)
    assert all(p["metadata"]["annotations"]["controller.kubernetes.io/pod-deletion-cost"] == "-1000" for p in drained)
    drain_run, drained_names = out["run_id"], {p["metadata"]["name"] for p in drained}

    # The window runs from the drain run's own clock (recorded on the Deployment), not from when the
    # test started it: on a loaded machine Prefect can take seconds to get there.
    since = float(decode["metadata"]["annotations"]["heteroscale.io/draining-since-s"])
    assert since >= drain_started - 1e-3

    # 3. Within the window nothing is removed; after it (SLOs met) the drained ones go.
    out = scale_cluster(config_path=str(config_path), backend="kube")
    assert cluster.deployments("llm")["chat-decode-a100-c1"]["spec"]["replicas"] == 6
    # The window (6 s) is long enough for run 3 to land inside it even on a loaded machine.
    assert time.time() - since < 6
    time.sleep(max(0.0, since + 6.1 - time.time()))
    out = scale_cluster(config_path=str(config_path), backend="kube")
    deps = cluster.deployments("llm")
    assert deps["chat-decode-a100-c1"]["spec"]["replicas"] == 3
    assert deps["chat-prefill-h100-c1"]["spec"]["replicas"] == want_p
    assert "heteroscale.io/draining-replicas" not in deps["chat-decode-a100-c1"]["metadata"]["annotations"]
    # The run record holds each drain decision with its reason and the pods it took out, and the removal.
    from models import settings
    from tasks.store import Store

    store = Store(settings.database_url())
    recs = {a.name: a for a in store.actuations(drain_run) if a.kind == "drain"}
    assert recs["chat-decode-a100-c1"].count == 3 and "plan wants 3" in recs["chat-decode-a100-c1"].reason
    assert {n for a in recs.values() for n in json.loads(a.pods_json)} == drained_names
    assert "actuation: drain 3 llm/chat-decode-a100-c1" in next(r for r in store.runs() if r.id == drain_run).summary
    assert {a.kind for a in store.actuations(out["run_id"])} == {"remove-drained"}
    cluster.reconcile_pods()
    serving = [p for p in cluster.pods("llm").values() if p["metadata"]["labels"]["heteroscale.io/serving"] == "true"]
    assert len(serving) == 3 + want_p  # the drained pods were the ones removed
