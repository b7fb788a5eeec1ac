"""Actuation safety over real HTTP (kmock on loopback, official client): modes, pause, manual
override, conflicts, retriable and permanent errors, pagination, RBAC/job manifests."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from kubernetes import client as k8s

from models.config import ClusterConfig, Role, parse_config
from models.values import ApplyMode, CellKey, Placement, PlacementPlan, SloState, SloStatus
from tasks.core.actuation import Admit, Drain, Restore, Scale
from tasks.kube import discovery
from tasks.kube.backend import KubeBackend
from tasks.kube.client import KubePermanentError, KubeTransientError
from tests.integration.kube_fixture import PODS, KubeCluster
from tests.integration.test_kube_scenario import CONFIG

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
P = CellKey("chat", Role.PREFILL, "h100", "c1")
D = CellKey("chat", Role.DECODE, "a100", "c1")


@pytest.fixture()
def kc() -> Iterator[KubeCluster]:
    with KubeCluster() as c:
        c.add_node("c-h", product="NVIDIA-H100-80GB-HBM3", s1="c1", s2="pod-c")
        c.add_node("c-a", product="NVIDIA-A100-SXM4-80GB", s1="c1", s2="pod-c")
        yield c


def _config(**kube: object) -> ClusterConfig:
    data = json.loads(json.dumps(CONFIG))
    data["kubernetes"].update(kube)
    return parse_config(data)


def _backend(kc: KubeCluster, tmp_path: Path) -> KubeBackend:
    cfg = k8s.Configuration()
    cfg.host = kc.url
    return KubeBackend(k8s.ApiClient(cfg), export_dir=tmp_path)


def _plan(p: int, d: int) -> PlacementPlan:
    return PlacementPlan(placement=Placement.of([(P, p), (D, d)]), method="test", reason="test")


def test_dry_run_and_advisory_change_nothing(kc: KubeCluster, tmp_path: Path) -> None:
    cfg, be = _config(), _backend(kc, tmp_path)
    dry = be.apply(cfg, _plan(2, 4), ApplyMode.DRY_RUN, 0.0)
    assert not dry.applied and {(c.key, c.after) for c in dry.changes} == {(P, 2), (D, 4)}
    assert kc.deployments() == {}
    # The server saw the writes, each with dryRun=All.
    writes = [r for r in kc.server.requests if r.method.value in ("PATCH", "POST")]
    assert writes and all(r.params.get("dryRun") == "All" for r in writes)
    adv = be.apply(cfg, _plan(2, 4), ApplyMode.ADVISORY, 0.0)
    assert not adv.applied and kc.deployments() == {}
    exported = {
        d["metadata"]["name"]: d["spec"]["replicas"]
        for d in yaml.safe_load_all((tmp_path / "kind-gpu-desired.yaml").read_text())
    }
    assert exported == {"chat-prefill-h100-c1": 2, "chat-decode-a100-c1": 4}


def test_apply_is_idempotent_and_pause_stops_changes(kc: KubeCluster, tmp_path: Path) -> None:
    cfg, be = _config(), _backend(kc, tmp_path)
    assert be.apply(cfg, _plan(2, 4), ApplyMode.APPLY, 0.0).applied
    versions = {n: d["metadata"]["resourceVersion"] for n, d in kc.deployments().items()}
    again = be.apply(cfg, _plan(2, 4), ApplyMode.APPLY, 1.0)
    assert (
        again.changes == () and {n: d["metadata"]["resourceVersion"] for n, d in kc.deployments().items()} == versions
    )
    apps = k8s.AppsV1Api(be.api)
    apps.patch_namespaced_deployment(
        "chat-decode-a100-c1", "llm", {"metadata": {"annotations": {"heteroscale.io/paused": "true"}}}
    )
    res = be.apply(cfg, _plan(3, 6), ApplyMode.APPLY, 2.0)
    assert res.changes == () and res.error is None and "paused" in "; ".join(res.warnings)
    assert {n: d["spec"]["replicas"] for n, d in kc.deployments().items()} == {
        "chat-prefill-h100-c1": 2,
        "chat-decode-a100-c1": 4,
    }


def test_manual_replica_change_is_respected_until_cleared(kc: KubeCluster, tmp_path: Path) -> None:
    cfg, be = _config(), _backend(kc, tmp_path)
    be.apply(cfg, _plan(2, 4), ApplyMode.APPLY, 0.0)
    apps = k8s.AppsV1Api(be.api)
    apps.patch_namespaced_deployment_scale(
        "chat-decode-a100-c1", "llm", {"spec": {"replicas": 7}}, field_manager="kubectl"
    )
    res = be.apply(cfg, _plan(3, 6), ApplyMode.APPLY, 1.0)
    assert "changed manually by 'kubectl' to 7" in "; ".join(res.warnings)
    deps = kc.deployments()
    assert deps["chat-decode-a100-c1"]["spec"]["replicas"] == 7  # not fought
    assert deps["chat-prefill-h100-c1"]["spec"]["replicas"] == 3  # the rest of the service proceeds
    # Clearing the record hands the Deployment back.
    apps.patch_namespaced_deployment(
        "chat-decode-a100-c1", "llm", {"metadata": {"annotations": {"heteroscale.io/applied-replicas": None}}}
    )
    res = be.apply(cfg, _plan(3, 8), ApplyMode.APPLY, 2.0)
    assert kc.deployments()["chat-decode-a100-c1"]["spec"]["replicas"] == 8


def test_executed_changes_equal_the_pure_decision(kc: KubeCluster, tmp_path: Path) -> None:
    """What apply does to pods and replicas is exactly what `decide_actions` decided, and the
    result records every decision."""
    cfg, be = _config(), _backend(kc, tmp_path)
    be.apply(cfg, _plan(2, 6), ApplyMode.APPLY, 0.0)
    kc.reconcile_pods()

    def labels() -> dict[str, str]:
        return {n: p["metadata"]["labels"]["heteroscale.io/serving"] for n, p in kc.pods("llm").items()}

    # New pods start held; all Ready, nothing to wait for: the startup skew guard admits them.
    assert set(labels().values()) == {"false"}
    res = be.apply(cfg, _plan(2, 6), ApplyMode.APPLY, 5.0)
    assert set(labels().values()) == {"true"} and {r.kind for r in res.actions} == {"admit"}

    def replicas() -> dict[str, int]:
        return {n: d["spec"]["replicas"] for n, d in kc.deployments().items()}

    met = {"chat": SloState("chat", SloStatus.MET, "within SLO")}
    # 1. Scale-in: the decided drains mark exactly the decided pods; replicas stay.
    before, reps = labels(), replicas()
    _, decided = be.decide(cfg, _plan(1, 3), met, 10.0)
    res = be.apply(cfg, _plan(1, 3), ApplyMode.APPLY, 10.0, slo=met)
    after = labels()
    drained = {p for a in decided.actions if isinstance(a, Drain) for p in a.pods}
    assert len(drained) == 4 and {n for n in after if after[n] != before[n]} == drained
    assert all(after[n] == "false" for n in drained) and replicas() == reps
    costs = {
        n: p["metadata"].get("annotations", {}).get("controller.kubernetes.io/pod-deletion-cost")
        for n, p in kc.pods("llm").items()
    }
    assert {n for n, c in costs.items() if c == "-1000"} == drained
    assert res.actions == decided.records and {r.kind for r in res.actions} == {"drain"}

    # 2. SLO breach inside the window: the decided restores unmark exactly the drained pods.
    degraded = {"chat": SloState("chat", SloStatus.DEGRADED, "TBT p99 0.3s > SLO 0.1s")}
    _, decided = be.decide(cfg, _plan(1, 3), degraded, 12.0)
    res = be.apply(cfg, _plan(1, 3), ApplyMode.APPLY, 12.0, slo=degraded)
    restored = {p for a in decided.actions if isinstance(a, Restore) for p in a.pods}
    assert restored == drained and all(v == "true" for v in labels().values())
    assert res.actions == decided.records and all("TBT p99 0.3s" in r.reason for r in res.actions)

    # 3. Drain again, then past the window with SLOs met: the decided scale-downs are the replicas.
    be.apply(cfg, _plan(1, 3), ApplyMode.APPLY, 20.0, slo=met)
    _, decided = be.decide(cfg, _plan(1, 3), met, 30.0)
    res = be.apply(cfg, _plan(1, 3), ApplyMode.APPLY, 30.0, slo=met)
    scales = {a.name: a.after for a in decided.actions if isinstance(a, Scale)}
    assert scales == {"chat-prefill-h100-c1": 1, "chat-decode-a100-c1": 3} and replicas() == scales
    assert [r.kind for r in res.actions] == ["remove-drained", "remove-drained"]
    # Without an SLO state, a drain is kept (and recorded), never finished.
    kc.reconcile_pods()  # the ReplicaSet removed the drained pods
    be.apply(cfg, _plan(1, 2), ApplyMode.APPLY, 40.0, slo=met)
    res = be.apply(cfg, _plan(1, 2), ApplyMode.APPLY, 100.0)
    assert replicas()["chat-decode-a100-c1"] == 3 and [r.kind for r in res.actions] == ["keep-drained"]


def _set_ready(kc: KubeCluster, name: str, ready: bool) -> None:
    pod = kc.pods("llm")[name]
    pod["status"]["conditions"] = [{"type": "Ready", "status": "True" if ready else "False"}]
    kc.server.objects[PODS, "llm", name] = pod


def test_startup_guard_label_changes_equal_the_pure_decision(kc: KubeCluster, tmp_path: Path) -> None:
    """Prefill Ready before decode (ratio 1:2, tolerance 10%): each run relabels exactly the pods
    the pure guard admitted, and records its admissions and holds."""
    cfg, be = _config(), _backend(kc, tmp_path)
    be.apply(cfg, _plan(2, 4), ApplyMode.APPLY, 0.0)
    kc.reconcile_pods()
    pods = sorted(kc.pods("llm"))
    prefill = [n for n in pods if "prefill" in n]
    decode = [n for n in pods if "decode" in n]
    for n in decode:
        _set_ready(kc, n, False)

    def labels() -> dict[str, str]:
        return {n: p["metadata"]["labels"]["heteroscale.io/serving"] for n, p in kc.pods("llm").items()}

    def run(t: float) -> tuple[set[str], list[str]]:
        _, decided = be.decide(cfg, _plan(2, 4), None, t)
        before = labels()
        res = be.apply(cfg, _plan(2, 4), ApplyMode.APPLY, t)
        after = labels()
        admitted = {p for a in decided.actions if isinstance(a, Admit) for p in a.pods}
        assert {n for n in after if after[n] != before[n]} == admitted  # exactly the decision
        assert all(after[n] == "true" for n in admitted)
        assert res.actions == decided.records
        return admitted, [r.kind for r in res.actions]

    # 1. Prefill Ready, no decode: the group's first prefill serves (never held back), the other waits.
    admitted, kinds = run(1.0)
    assert admitted == {prefill[0]} and kinds == ["admit", "hold-skew"]
    # 2. Two decode Ready: the first decode, then the laggard decode (1:2 is the ratio); prefill waits.
    _set_ready(kc, decode[0], True)
    _set_ready(kc, decode[1], True)
    admitted, kinds = run(2.0)
    assert admitted == set(decode[:2]) and kinds == ["admit", "hold-skew"]
    # 3. Everything Ready: nothing left to wait for, the rest serves.
    for n in decode[2:]:
        _set_ready(kc, n, True)
    admitted, _ = run(3.0)
    assert admitted == {prefill[1], *decode[2:]} and set(labels().values()) == {"true"}
    assert run(4.0)[0] == set()  # idempotent


def test_conflict_is_retried_with_a_fresh_read(kc: KubeCluster, tmp_path: Path) -> None:
    cfg, be = _config(), _backend(kc, tmp_path)
    be.apply(cfg, _plan(2, 4), ApplyMode.APPLY, 0.0)
    kc.server.fail("PATCH", r"/deployments/chat-decode-a100-c1/scale$", 409)
    be.apply(cfg, _plan(2, 6), ApplyMode.APPLY, 1.0)
    assert kc.deployments()["chat-decode-a100-c1"]["spec"]["replicas"] == 6
    scale_reads = [r for r in kc.server.requests if r.method.value == "GET" and r.url.path.endswith("a100-c1/scale")]
    assert len(scale_reads) >= 3  # first scale-out, then the conflicting try and the fresh re-read


def test_errors_are_classified_and_record_what_was_applied(kc: KubeCluster, tmp_path: Path) -> None:
    cfg, be = _config(), _backend(kc, tmp_path)
    kc.server.fail("GET", r"/api/v1/nodes$", 503)
    with pytest.raises(KubeTransientError, match="HTTP 503"):
        be.read_state(cfg, 0.0)
    kc.server.fail("PATCH", r"/deployments/chat-prefill-h100-c1/scale$", 403)
    with pytest.raises(KubePermanentError) as err:
        be.apply(cfg, _plan(2, 4), ApplyMode.APPLY, 0.0)
    msg = str(err.value)
    assert "'patch'" in msg and "'deployments/scale'" in msg and "namespace 'llm'" in msg
    assert "applied before failing: created llm/chat-" in msg
    # Re-running converges (the templates are there; only the scale-outs remain).
    be.apply(cfg, _plan(2, 4), ApplyMode.APPLY, 1.0)
    assert {n: d["spec"]["replicas"] for n, d in kc.deployments().items()} == {
        "chat-prefill-h100-c1": 2,
        "chat-decode-a100-c1": 4,
    }


def test_discovery_follows_pagination(kc: KubeCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(7):
        kc.add_node(f"n{i:03d}", product="NVIDIA-A100-SXM4-80GB", s1="b1", s2="pod-b", gpus=4)
    monkeypatch.setattr(discovery, "PAGE_SIZE", 3)
    cfg, be = _config(), _backend(kc, tmp_path)
    caps = {(c.gpu_type, c.s1): c.gpus_total for c in be.read_state(cfg, 0.0).capacities}
    assert caps[("a100", "b1")] == 28
    node_lists = [r for r in kc.server.requests if r.url.path == "/api/v1/nodes"]
    assert [r.params.get("continue", "") for r in node_lists] == ["", "3", "6"]


def test_manifests_validate() -> None:
    for doc in yaml.safe_load_all((ROOT / "deployments/k8s/rbac.yaml").read_text()):
        kubernetes_validate.validate(doc, "1.37.0", strict=True)
    tmpl = json.loads((ROOT / "deployments/k8s/work-pool-job-template.json").read_text())
    assert tmpl["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["serviceAccountName"] == "heteroscale"
    rules = [
        d for d in yaml.safe_load_all((ROOT / "deployments/k8s/rbac.yaml").read_text()) if d["kind"] == "ClusterRole"
    ]
    assert {v for r in rules[0]["rules"] for v in r["verbs"]} <= {"get", "list", "watch"}
