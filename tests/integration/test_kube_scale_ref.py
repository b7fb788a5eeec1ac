"""scale_ref targets over real HTTP (kmock on loopback, official client): a Deployment, a
LeaderWorkerSet, a StatefulSet and Dynamo's scaling adapter (a CRD with /scale) that the operator
owns are scaled through `/scale` only, soft scale-in works through pod labels, and nothing else
is ever written."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s

from models.config import ClusterConfig, Role, parse_config
from models.values import ApplyMode, CellKey, Placement, PlacementPlan, SloState, SloStatus
from tasks.kube.backend import KubeBackend
from tasks.kube.client import KubePermanentError
from tests.integration.kube_fixture import (
    DEPLOYMENTS,
    DGDSA,
    INFERENCEPOOLS,
    LEADERWORKERSETS,
    STATEFULSETS,
    WIDGETS,
    KubeCluster,
)
from tests.integration.test_kube_scenario import CONFIG as MANAGED_CONFIG

pytestmark = pytest.mark.integration
NS = "llm"
SERVING = "heteroscale.io/serving"


def _service(name: str, prefill: dict[str, Any], decode: dict[str, Any]) -> dict[str, Any]:
    svc = copy.deepcopy(MANAGED_CONFIG["services"][0])
    svc["name"] = name
    svc.pop("pod_template")
    svc["scale_targets"] = {"prefill": prefill, "decode": decode}
    return svc


CONFIG: dict[str, Any] = {
    **{k: v for k, v in MANAGED_CONFIG.items() if k != "services"},
    "services": [
        _service(
            "chat",
            {"kind": "scale_ref", "refs": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "chat-prefill"}]},
            {"kind": "scale_ref", "refs": [{"kind": "LeaderWorkerSet", "name": "chat-decode"}]},
        ),
        _service(
            "code",
            {"kind": "scale_ref", "refs": [{"kind": "StatefulSet", "selector": {"app": "code-prefill"}}]},
            {
                "kind": "scale_ref",
                "refs": [
                    {
                        "apiVersion": "nvidia.com/v1alpha1",
                        "kind": "DynamoGraphDeploymentScalingAdapter",
                        "selector": {"nvidia.com/dynamo-graph-deployment": "code"},
                    }
                ],
            },
        ),
    ],
}


def pod_spec(node: str) -> dict[str, Any]:
    return {
        "nodeName": node,
        "containers": [{"name": "engine", "image": "x", "resources": {"limits": {"nvidia.com/gpu": "2"}}}],
    }


def seed_workloads(kc: KubeCluster) -> None:
    """The operator's own objects (as Helm or Argo CD would have created them), 1 replica each."""
    kc.add_object(
        DEPLOYMENTS,
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "chat-prefill", "namespace": NS, "labels": {"app": "chat-prefill"}},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "chat-prefill"}},
                "template": {"metadata": {"labels": {"app": "chat-prefill"}}, "spec": pod_spec("c-h")},
            },
        },
    )
    kc.add_object(
        LEADERWORKERSETS,
        {
            "apiVersion": "leaderworkerset.x-k8s.io/v1",
            "kind": "LeaderWorkerSet",
            "metadata": {"name": "chat-decode", "namespace": NS},
            "spec": {"replicas": 1, "leaderWorkerTemplate": {"size": 2}},
            "status": {
                "hpaPodSelector": "leaderworkerset.sigs.k8s.io/name=chat-decode,leaderworkerset.sigs.k8s.io/worker-index=0"
            },
        },
    )
    kc.add_object(
        STATEFULSETS,
        {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {"name": "code-prefill", "namespace": NS, "labels": {"app": "code-prefill"}},
            "spec": {
                "replicas": 1,
                "serviceName": "code-prefill",
                "selector": {"matchLabels": {"app": "code-prefill"}},
                "template": {"metadata": {"labels": {"app": "code-prefill"}}, "spec": pod_spec("c-h")},
            },
        },
    )
    kc.add_object(
        DGDSA,
        {
            "apiVersion": "nvidia.com/v1alpha1",
            "kind": "DynamoGraphDeploymentScalingAdapter",
            "metadata": {
                "name": "code-decode",
                "namespace": NS,
                "labels": {"nvidia.com/dynamo-graph-deployment": "code"},
            },
            "spec": {"replicas": 1, "dgdRef": {"name": "code", "service": "decode"}},
            "status": {"replicas": 1, "selector": "nvidia.com/dynamo-component=code-decode"},
        },
    )


def reconcile(kc: KubeCluster) -> None:
    """The operator's controllers: every workload runs its pods on the nodes its cell has."""
    kc.reconcile_pods()  # the Deployment (its template names node c-h)
    kc.reconcile_scaled(LEADERWORKERSETS, pod_spec("c-a"), workers=1)
    kc.reconcile_scaled(STATEFULSETS, pod_spec("c-h"))
    kc.reconcile_scaled(DGDSA, pod_spec("b-a"))


@pytest.fixture()
def kc() -> Iterator[KubeCluster]:
    with KubeCluster() as c:
        c.add_node("c-h", product="NVIDIA-H100-80GB-HBM3", s1="c1", s2="pod-c")
        c.add_node("c-a", product="NVIDIA-A100-SXM4-80GB", s1="c1", s2="pod-c")
        c.add_node("b-a", product="NVIDIA-A100-SXM4-80GB", s1="b1", s2="pod-b")
        seed_workloads(c)
        reconcile(c)
        yield c


def config(**changes: Any) -> ClusterConfig:
    data = json.loads(json.dumps(CONFIG))
    data.update(changes)
    return parse_config(data)


def backend(kc: KubeCluster, tmp_path: Path) -> KubeBackend:
    cfg = k8s.Configuration()
    cfg.host = kc.url
    return KubeBackend(k8s.ApiClient(cfg), export_dir=tmp_path)


def plan(chat_p: int, chat_d: int, code_p: int, code_d: int) -> PlacementPlan:
    cells = [
        (CellKey("chat", Role.PREFILL, "h100", "c1"), chat_p),
        (CellKey("chat", Role.DECODE, "a100", "c1"), chat_d),
        (CellKey("code", Role.PREFILL, "h100", "c1"), code_p),
        # Placement asked for c1; the adapter's pods run in b1: same GPU type, so it takes them.
        (CellKey("code", Role.DECODE, "a100", "c1"), code_d),
    ]
    return PlacementPlan(placement=Placement.of(cells), method="test", reason="test")


def replicas(kc: KubeCluster) -> dict[str, int]:
    return {
        "chat-prefill": kc.deployments(NS)["chat-prefill"]["spec"]["replicas"],
        "chat-decode": kc.objects_of(LEADERWORKERSETS, NS)["chat-decode"]["spec"]["replicas"],
        "code-prefill": kc.objects_of(STATEFULSETS, NS)["code-prefill"]["spec"]["replicas"],
        "code-decode": kc.objects_of(DGDSA, NS)["code-decode"]["spec"]["replicas"],
    }


def writes(kc: KubeCluster) -> list[tuple[str, str]]:
    return [
        (r.method.value, r.url.path) for r in kc.server.requests if r.method.value in ("POST", "PUT", "PATCH", "DELETE")
    ]


def assert_only_scale_and_pod_writes(kc: KubeCluster) -> None:
    other = [
        (m, p)
        for m, p in writes(kc)
        if not (m == "PATCH" and (p.endswith("/scale") or p.startswith(f"/api/v1/namespaces/{NS}/pods/")))
    ]
    assert not other, f"writes other than /scale and pod labels: {other}"


def serving(kc: KubeCluster) -> dict[str, str]:
    return {n: p["metadata"]["labels"].get(SERVING, "-") for n, p in sorted(kc.pods(NS).items())}


def _without_replicas(obj: dict[str, Any]) -> dict[str, Any]:
    return {**obj, "spec": {**obj["spec"], "replicas": 0}, "metadata": {**obj["metadata"], "resourceVersion": ""}}


MET = {s: SloState(s, SloStatus.MET, "within SLO") for s in ("chat", "code")}


def test_discovery_reads_pods_cells_and_gpus_of_scale_ref_objects(kc: KubeCluster, tmp_path: Path) -> None:
    found = backend(kc, tmp_path).discover(config())
    homes = {t.name: t.key for t in found.targets.values()}
    assert homes == {
        "chat-prefill": CellKey("chat", Role.PREFILL, "h100", "c1"),
        "chat-decode": CellKey("chat", Role.DECODE, "a100", "c1"),
        "code-prefill": CellKey("code", Role.PREFILL, "h100", "c1"),
        "code-decode": CellKey("code", Role.DECODE, "a100", "b1"),
    }
    assert dict(found.view.placement.cells) == {k: 1 for k in homes.values()}
    # The LeaderWorkerSet's worker pod is its own, not another workload's GPUs.
    assert all(c.gpus_other == 0 for c in found.view.capacities)
    lws = found.targets[homes["chat-decode"]]
    assert [p.name for p in lws.cell.pods] == ["chat-decode-0"] and lws.cell.soft_scale_in
    assert not found.targets[homes["code-decode"]].cell.soft_scale_in


def test_scale_ref_targets_scale_through_scale_and_pod_labels_only(kc: KubeCluster, tmp_path: Path) -> None:
    """Done-when of issue 16: a Deployment, a LeaderWorkerSet and a CRD with /scale (and a
    StatefulSet) are scaled over real HTTP; the only writes are /scale and pod labels."""
    cfg, be = config(), backend(kc, tmp_path)
    before = {
        "lws": kc.objects_of(LEADERWORKERSETS, NS)["chat-decode"],
        "dgdsa": kc.objects_of(DGDSA, NS)["code-decode"],
    }
    out = be.apply(cfg, plan(2, 3, 3, 2), ApplyMode.APPLY, 0.0, slo=MET)
    assert out.applied and out.error is None
    assert replicas(kc) == {"chat-prefill": 2, "chat-decode": 3, "code-prefill": 3, "code-decode": 2}
    assert {w[1] for w in writes(kc)} == {
        "/apis/apps/v1/namespaces/llm/deployments/chat-prefill/scale",
        "/apis/leaderworkerset.x-k8s.io/v1/namespaces/llm/leaderworkersets/chat-decode/scale",
        "/apis/apps/v1/namespaces/llm/statefulsets/code-prefill/scale",
        "/apis/nvidia.com/v1alpha1/namespaces/llm/dynamographdeploymentscalingadapters/code-decode/scale",
    }
    # Nothing but spec.replicas changed on the objects themselves (no labels, no annotations).
    after = {
        "lws": kc.objects_of(LEADERWORKERSETS, NS)["chat-decode"],
        "dgdsa": kc.objects_of(DGDSA, NS)["code-decode"],
    }
    assert {k: _without_replicas(o) for k, o in after.items()} == {k: _without_replicas(o) for k, o in before.items()}
    reconcile(kc)

    # Scale-in: soft (pods out of service first) where the controller's removal order is known.
    be.apply(cfg, plan(1, 2, 2, 1), ApplyMode.APPLY, 10.0, slo=MET)
    labels = serving(kc)
    assert [n for n, v in labels.items() if v == "false"] == sorted(
        [
            "chat-decode-2",
            "code-prefill-2",
            next(n for n in labels if n.startswith("chat-prefill-") and labels[n] == "false"),
        ]
    )
    # Drained: the LeaderWorkerSet's highest group and the StatefulSet's highest ordinal (the
    # ones their controllers remove); replicas unchanged. The adapter (no known order) at once.
    assert replicas(kc) == {"chat-prefill": 2, "chat-decode": 3, "code-prefill": 3, "code-decode": 1}
    reconcile(kc)
    # A later run inside the window keeps them; after it (SLOs met), they are removed.
    be.apply(cfg, plan(1, 2, 2, 1), ApplyMode.APPLY, 12.0, slo=MET)
    assert replicas(kc)["chat-decode"] == 3
    be.apply(cfg, plan(1, 2, 2, 1), ApplyMode.APPLY, 20.0, slo=MET)
    assert replicas(kc) == {"chat-prefill": 1, "chat-decode": 2, "code-prefill": 2, "code-decode": 1}
    reconcile(kc)
    left = serving(kc)
    assert "false" not in left.values(), left  # exactly the drained pods went
    assert {n for n in left if n.startswith(("chat-decode", "code-prefill"))} == {
        "chat-decode-0",
        "chat-decode-0-1",
        "chat-decode-1",
        "chat-decode-1-1",
        "code-prefill-0",
        "code-prefill-1",
    }
    # Steady state: nothing more to do.
    assert be.apply(cfg, plan(1, 2, 2, 1), ApplyMode.APPLY, 30.0, slo=MET).changes == ()
    assert_only_scale_and_pod_writes(kc)


def test_degraded_slo_restores_drained_pods_of_a_scale_ref(kc: KubeCluster, tmp_path: Path) -> None:
    cfg, be = config(), backend(kc, tmp_path)
    be.apply(cfg, plan(3, 1, 1, 1), ApplyMode.APPLY, 0.0, slo=MET)
    reconcile(kc)
    be.apply(cfg, plan(1, 1, 1, 1), ApplyMode.APPLY, 1.0, slo=MET)
    assert list(serving(kc).values()).count("false") == 2
    bad = {**MET, "chat": SloState("chat", SloStatus.DEGRADED, "TBT p99 0.3s > SLO 0.1s")}
    out = be.apply(cfg, plan(1, 1, 1, 1), ApplyMode.APPLY, 2.0, slo=bad)
    assert "false" not in serving(kc).values() and any(a.kind == "restore" for a in out.actions)
    assert replicas(kc)["chat-prefill"] == 3
    assert_only_scale_and_pod_writes(kc)


def test_pause_dry_run_and_advisory(kc: KubeCluster, tmp_path: Path) -> None:
    cfg, be = config(), backend(kc, tmp_path)
    dry = be.apply(cfg, plan(2, 2, 2, 2), ApplyMode.DRY_RUN, 0.0, slo=MET)
    assert not dry.applied and replicas(kc) == dict.fromkeys(replicas(kc), 1)
    assert all(r.params.get("dryRun") == "All" for r in kc.server.requests if r.method.value == "PATCH")
    adv = be.apply(cfg, plan(2, 3, 2, 2), ApplyMode.ADVISORY, 0.0, slo=MET)
    assert not adv.applied
    docs = {d["metadata"]["name"]: d for d in yaml.safe_load_all((tmp_path / "kind-gpu-desired.yaml").read_text())}
    assert docs["chat-decode"]["kind"] == "Scale" and docs["chat-decode"]["spec"]["replicas"] == 3
    # The pause annotation on the operator's object pauses its service.
    k8s.CustomObjectsApi(be.api).patch_namespaced_custom_object(
        "leaderworkerset.x-k8s.io",
        "v1",
        NS,
        "leaderworkersets",
        "chat-decode",
        {"metadata": {"annotations": {"heteroscale.io/paused": "true"}}},
    )
    out = be.apply(cfg, plan(2, 2, 2, 2), ApplyMode.APPLY, 1.0, slo=MET)
    assert "service chat: paused" in "; ".join(out.warnings)
    assert replicas(kc) == {"chat-prefill": 1, "chat-decode": 1, "code-prefill": 2, "code-decode": 2}


def test_any_crd_with_scale_and_clear_errors(kc: KubeCluster, tmp_path: Path) -> None:
    """Any CRD with a scale subresource works given apiVersion (and plural when irregular); a
    missing object or a kind without /scale fails at once, naming the config field."""
    kc.add_object(
        INFERENCEPOOLS,
        {
            "apiVersion": "serving.example.com/v1",
            "kind": "InferencePool",
            "metadata": {"name": "chat-decode-pool", "namespace": NS},
            "spec": {"replicas": 1},
            "status": {"selector": "pool=chat-decode"},
        },
    )
    data = json.loads(json.dumps(CONFIG))
    data["services"][0]["scale_targets"]["decode"] = {
        "kind": "scale_ref",
        "refs": [{"apiVersion": "serving.example.com/v1", "kind": "InferencePool", "name": "chat-decode-pool"}],
    }
    be = backend(kc, tmp_path)
    be.apply(parse_config(data), plan(1, 4, 1, 1), ApplyMode.APPLY, 0.0, slo=MET)
    assert kc.objects_of(INFERENCEPOOLS, NS)["chat-decode-pool"]["spec"]["replicas"] == 4

    data["services"][0]["scale_targets"]["decode"]["refs"][0]["name"] = "nope"
    with pytest.raises(KubePermanentError, match=r"services\[0\]\.scale_targets\.decode\.refs\[0\].*not found"):
        be.apply(parse_config(data), plan(1, 4, 1, 1), ApplyMode.APPLY, 1.0, slo=MET)
    kc.add_object(
        WIDGETS,
        {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w", "namespace": NS}, "spec": {}},
    )
    data["services"][0]["scale_targets"]["decode"]["refs"][0] = {
        "apiVersion": "example.com/v1",
        "kind": "Widget",
        "name": "w",
    }
    with pytest.raises(KubePermanentError, match="has no /scale subresource"):
        be.apply(parse_config(data), plan(1, 4, 1, 1), ApplyMode.APPLY, 2.0, slo=MET)
