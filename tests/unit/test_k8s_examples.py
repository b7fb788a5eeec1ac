"""The shipped Kubernetes examples: the kustomize base, the HPA, the adapter rule and the KEDA
ScaledObject.

`kubernetes-validate` holds the built-in kinds to the Kubernetes 1.37 schemas (strict: unknown
fields fail). KEDA's `ScaledObject` is a CRD kubernetes-validate has no schema for, so its
structure is checked here against the fields KEDA documents (keda.sh/docs/2.x/reference/scaledobject-spec,
scalers/prometheus) — required fields, no unknown keys, the threshold a number. The PromQL of
the examples is parsed by a real Prometheus in tests/integration/test_dashboard.py.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.conftest import ROOT

K8S = ROOT / "deployments" / "k8s"
KUBE_VERSION = "1.37.0"

SCALED_OBJECT_SPEC = {
    "scaleTargetRef",
    "pollingInterval",
    "cooldownPeriod",
    "initialCooldownPeriod",
    "idleReplicaCount",
    "minReplicaCount",
    "maxReplicaCount",
    "fallback",
    "advanced",
    "triggers",
}
SCALE_TARGET_REF = {"apiVersion", "kind", "name", "envSourceContainerName"}
TRIGGER = {"type", "metadata", "name", "useCachedMetrics", "metricType", "authenticationRef"}
PROMETHEUS_METADATA = {
    "serverAddress",
    "query",
    "threshold",
    "activationThreshold",
    "namespace",
    "customHeaders",
    "ignoreNullValues",
    "queryParameters",
    "unsafeSsl",
    "timeout",
}


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _validate(doc: dict) -> None:
    kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


def _base_resources() -> list[dict]:
    """The base as kustomize builds it (kubectl's built-in kustomize), else its listed files."""
    base = K8S / "base"
    kubectl = shutil.which("kubectl")
    if kubectl:
        out = subprocess.run(
            [kubectl, "kustomize", "--load-restrictor", "LoadRestrictionsNone", str(base)],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
        return [d for d in yaml.safe_load_all(out) if d]
    kust = yaml.safe_load((base / "kustomization.yaml").read_text())
    return [d for r in kust["resources"] for d in _docs(base / r)]


def test_kustomize_base_validates_and_has_worker_exporter_rbac() -> None:
    docs = _base_resources()
    for doc in docs:
        _validate(doc)
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("Deployment", "heteroscale-worker") in kinds
    assert ("Deployment", "heteroscale-exporter") in kinds
    assert ("Service", "heteroscale-exporter") in kinds
    # The autoscaler's RBAC is rbac.yaml itself, not a copy.
    rbac = {(d["kind"], d["metadata"]["name"]) for d in _docs(K8S / "rbac.yaml")}
    assert rbac <= kinds
    by_name = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    worker = by_name["heteroscale-worker"]["spec"]["template"]["spec"]["containers"][0]
    assert worker["command"][:3] == ["prefect", "worker", "start"] and "kubernetes" in worker["command"]
    exporter = by_name["heteroscale-exporter"]["spec"]["template"]["spec"]["containers"][0]
    assert exporter["command"][:2] == ["heteroscale", "exporter"]
    svc = next(d for d in docs if d["kind"] == "Service")
    assert (
        svc["spec"]["selector"].items()
        <= by_name["heteroscale-exporter"]["spec"]["template"]["metadata"]["labels"].items()
    )


@pytest.mark.parametrize("name", ["hpa-external.yaml", "prometheus-adapter-rules.yaml"])
def test_hpa_and_adapter_rule_validate(name: str) -> None:
    for doc in _docs(K8S / name):
        _validate(doc)


def test_hpa_reads_the_exported_desired_replicas() -> None:
    (hpa,) = _docs(K8S / "hpa-external.yaml")
    (metric,) = hpa["spec"]["metrics"]
    assert metric["external"]["metric"]["name"] == "heteroscale_desired_replicas"
    assert metric["external"]["target"] == {"type": "AverageValue", "averageValue": "1"}
    rules = yaml.safe_load(_docs(K8S / "prometheus-adapter-rules.yaml")[0]["data"]["config.yaml"])
    assert rules["externalRules"][0]["name"]["as"] == "heteroscale_desired_replicas"


def test_keda_scaled_object_structure() -> None:
    (so,) = _docs(K8S / "keda-scaledobject.yaml")
    assert so["apiVersion"] == "keda.sh/v1alpha1" and so["kind"] == "ScaledObject"
    assert so["metadata"]["name"] and so["metadata"]["namespace"]
    spec = so["spec"]
    assert set(spec) <= SCALED_OBJECT_SPEC, set(spec) - SCALED_OBJECT_SPEC
    assert set(spec["scaleTargetRef"]) <= SCALE_TARGET_REF and spec["scaleTargetRef"]["name"]
    assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    assert set(spec["fallback"]) == {"failureThreshold", "replicas"}
    # The advanced HPA behaviour is a real autoscaling/v2 behaviour: validate it as one.
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    _validate(
        {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "x"},
            "spec": {"scaleTargetRef": spec["scaleTargetRef"], "maxReplicas": 1, "behavior": behavior},
        }
    )
    (trigger,) = spec["triggers"]
    assert set(trigger) <= TRIGGER and trigger["type"] == "prometheus"
    assert trigger["metricType"] in ("AverageValue", "Value", "Utilization")
    meta = trigger["metadata"]
    assert set(meta) <= PROMETHEUS_METADATA and {"serverAddress", "query", "threshold"} <= set(meta)
    assert all(isinstance(v, str) for v in meta.values())  # KEDA's trigger metadata is map[string]string
    float(meta["threshold"])
    assert "heteroscale_desired_replicas" in meta["query"]


def test_work_pool_job_template_pod_validates() -> None:
    import json

    tmpl = json.loads((K8S / "work-pool-job-template.json").read_text())
    job = json.loads(json.dumps(tmpl["job_configuration"]["job_manifest"]))
    job["metadata"] = {"name": "x", "namespace": "heteroscale"}
    job["spec"]["ttlSecondsAfterFinished"] = 3600
    pod = job["spec"]["template"]["spec"]
    # prefect-kubernetes requires these two in the pod spec; the API server drops them (see
    # tests/integration/test_prefect_server.py::test_kubernetes_pool_accepts_the_job_template).
    assert pod.pop("completions") == 1 and pod.pop("parallelism") == 1
    container = pod["containers"][0]
    container.update(image="ghcr.io/example/heteroscale:latest", args=["python", "-m", "x"], env=[])
    _validate(job)
