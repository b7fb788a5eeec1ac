"""Pure: the Deployment that runs one placement cell, and the labels that identify it.

One Deployment per (service, role, GPU type, S1 domain) cell. It is rendered from the service's
pod template (inline PodSpec, a template Deployment's pod template, or a default vLLM container)
and gets:

* node affinity (required) to the cell's GPU-type label values and S1 label value, ANDed into
  every node-selector term the template already has;
* the GPU resource as request and limit on the first container (`gpus_per_instance`);
* the Kubernetes recommended labels (`app.kubernetes.io/name|instance|component|part-of|
  managed-by`) plus `heteroscale.io/*` labels naming cluster, service, role, GPU type, S1 domain
  and deployment group; pods also carry the serving label the router's selector uses, `"false"`
  at start: the startup skew guard (tasks/core/skew.py) admits them;
* a template-hash annotation so an unchanged template is not re-applied every run.

`spec.replicas` is never part of the rendered template (the scale subresource owns it) except
as 0 on creation, so applying the template can never undo a replica change.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from models.config import AffinityLevel, ClusterConfig, Service
from models.values import CellKey
from tasks.core.actuation import A_APPLIED_REPLICAS as APPLIED_REPLICAS_ANNOTATION

MANAGER = "heteroscale"
DOMAIN = "heteroscale.io"
L_NAME = "app.kubernetes.io/name"
L_INSTANCE = "app.kubernetes.io/instance"
L_COMPONENT = "app.kubernetes.io/component"
L_PART_OF = "app.kubernetes.io/part-of"
L_MANAGED_BY = "app.kubernetes.io/managed-by"
L_CLUSTER = f"{DOMAIN}/cluster"
L_SERVICE = f"{DOMAIN}/service"
L_ROLE = f"{DOMAIN}/role"
L_GPU_TYPE = f"{DOMAIN}/gpu-type"
L_S1 = f"{DOMAIN}/s1"
L_GROUP = f"{DOMAIN}/group"
A_TEMPLATE_HASH = f"{DOMAIN}/template-hash"
A_MODEL = f"{DOMAIN}/model"
# Replica count heteroscale last set; a different spec.replicas means a human changed it.
A_APPLIED_REPLICAS = APPLIED_REPLICAS_ANNOTATION
# Soft scale-in in progress: how many replicas are out of service discovery, and since when.
A_DRAINING = f"{DOMAIN}/draining-replicas"
A_DRAIN_SINCE = f"{DOMAIN}/draining-since-s"
# The ReplicaSet removes pods with the lowest deletion cost first: drained pods go first.
A_DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
DRAINED_DELETION_COST = "-1000"


def deployment_name(key: CellKey) -> str:
    """`<service>-<role>-<gpu type>-<s1>`, shortened with a hash suffix past 63 characters."""
    name = f"{key.service}-{key.role.value}-{key.gpu_type}-{key.s1}"
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[:54].rstrip('-')}-{digest}"


def group_name(service: Service, s1: str, s2: str) -> str:
    """The deployment group a cell belongs to: the service within its affinity domain."""
    if service.affinity is AffinityLevel.S1:
        domain = s1
    elif service.affinity is AffinityLevel.S2:
        domain = s2
    else:
        domain = "all"
    return f"{service.name}-{domain}"[:63].rstrip("-")


def selector_labels(key: CellKey) -> dict[str, str]:
    """The Deployment's (immutable) selector: the instance name and the manager."""
    return {L_INSTANCE: deployment_name(key), L_MANAGED_BY: MANAGER}


def cell_labels(config: ClusterConfig, key: CellKey, group: str) -> dict[str, str]:
    return {
        L_NAME: key.service,
        L_INSTANCE: deployment_name(key),
        L_COMPONENT: key.role.value,
        L_PART_OF: config.cluster.name,
        L_MANAGED_BY: MANAGER,
        L_CLUSTER: config.cluster.name,
        L_SERVICE: key.service,
        L_ROLE: key.role.value,
        L_GPU_TYPE: key.gpu_type,
        L_S1: key.s1,
        L_GROUP: group,
    }


def managed_selector(config: ClusterConfig) -> str:
    """Label selector of every Deployment heteroscale manages in this cluster."""
    return f"{L_MANAGED_BY}={MANAGER},{L_CLUSTER}={config.cluster.name}"


def gpu_label_values(config: ClusterConfig, gpu_type: str) -> tuple[str, ...]:
    return config.kubernetes.gpu_type_values.get(gpu_type) or (gpu_type,)


def default_pod_spec(config: ClusterConfig, service: Service) -> dict[str, Any]:
    return {
        "containers": [{"name": "server", "image": config.kubernetes.default_image, "args": ["--model", service.model]}]
    }


def render_deployment(
    config: ClusterConfig,
    key: CellKey,
    *,
    s2: str,
    pod_template: Mapping[str, Any] | None = None,
    drop_labels: Iterable[str] = (),
    replicas: int | None = None,
) -> dict[str, Any]:
    """The Deployment manifest of one cell (a plain dict, ready for server-side apply).

    `pod_template` is a PodTemplateSpec (`{"metadata": ..., "spec": ...}`); None means the
    service's inline PodSpec or the default container. `drop_labels` are template labels that must
    not be copied (a template Deployment's own selector, or its ReplicaSet would adopt our pods).
    """
    svc = config.service(key.service)
    ks = config.kubernetes
    if pod_template is None:
        inline = svc.pod_template.inline if svc.pod_template is not None else None
        pod_template = {"spec": inline if inline is not None else default_pod_spec(config, svc)}
    tmpl = copy.deepcopy(dict(pod_template))
    meta = tmpl.get("metadata") or {}
    spec: dict[str, Any] = tmpl.get("spec") or {}
    if not spec.get("containers"):
        raise ValueError(f"service {svc.name!r}: its pod template has no containers")

    name = deployment_name(key)
    group = group_name(svc, key.s1, s2)
    labels = cell_labels(config, key, group)
    dropped = set(drop_labels)
    pod_labels = {k: v for k, v in (meta.get("labels") or {}).items() if k not in dropped}
    pod_labels.update(labels)
    # New pods start out of service discovery; the startup skew guard admits them (tasks/core/skew.py).
    pod_labels[ks.serving_label] = "false"
    # A copied deletion cost would make every new pod look drained (and first to go).
    pod_annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k != A_DELETION_COST}

    _require_node_affinity(
        spec,
        [
            {"key": ks.gpu_type_label, "operator": "In", "values": list(gpu_label_values(config, key.gpu_type))},
            {"key": ks.s1_label, "operator": "In", "values": [key.s1]},
        ],
    )
    gpus = svc.role(key.role).gpus_per_instance
    first = spec["containers"][0]
    resources = first.setdefault("resources", {})
    # Extended resources such as GPUs must have request == limit.
    resources.setdefault("limits", {})[ks.gpu_resource] = str(gpus)
    resources.setdefault("requests", {})[ks.gpu_resource] = str(gpus)
    env = first.setdefault("env", [])
    have = {e.get("name") for e in env}
    for var, value in (
        ("HETEROSCALE_SERVICE", key.service),
        ("HETEROSCALE_ROLE", key.role.value),
        ("HETEROSCALE_GPU_TYPE", key.gpu_type),
        ("HETEROSCALE_S1", key.s1),
        ("HETEROSCALE_GROUP", group),
    ):
        if var not in have:
            env.append({"name": var, "value": value})

    template = {"metadata": {"labels": pod_labels, **({"annotations": pod_annotations} if pod_annotations else {})}}
    template["spec"] = spec
    body: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": svc.namespace,
            "labels": labels,
            "annotations": {A_TEMPLATE_HASH: template_hash(template), A_MODEL: svc.model},
        },
        "spec": {"selector": {"matchLabels": selector_labels(key)}, "template": template},
    }
    if replicas is not None:
        body["spec"]["replicas"] = replicas
    return body


def template_hash(template: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:16]


def _require_node_affinity(spec: dict[str, Any], expressions: list[dict[str, Any]]) -> None:
    """AND `expressions` into every required node-selector term (terms are ORed by Kubernetes)."""
    node_aff = spec.setdefault("affinity", {}).setdefault("nodeAffinity", {})
    required = node_aff.setdefault("requiredDuringSchedulingIgnoredDuringExecution", {})
    terms = required.setdefault("nodeSelectorTerms", [])
    if not terms:
        terms.append({})
    ours = {e["key"] for e in expressions}
    for term in terms:
        kept = [e for e in term.get("matchExpressions", []) if e.get("key") not in ours]
        term["matchExpressions"] = kept + copy.deepcopy(expressions)
