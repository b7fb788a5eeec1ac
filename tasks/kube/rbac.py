"""Pure: the least-privilege RBAC a cluster config needs, as Kubernetes manifests.

`rbac_manifests(config)` returns, in order: the ServiceAccount's Namespace and ServiceAccount, a
ClusterRole (+ binding) that only lists nodes and pods (topology, GPUs in use), and per service
namespace one Role (+ binding) with exactly what the Kubernetes backend calls there:

* a namespace with a `managed` role: `apps/deployments` get, list, create, patch (server-side
  apply creates a missing object; get reads `pod_template.from_deployment`), delete only with
  `kubernetes.prune`, and `apps/deployments/scale` get, patch;
* per kind a `scale_ref` names there: `<resource>` get (refs by name) and/or list (refs by
  selector), and `<resource>/scale` get, patch;
* `pods` patch (soft scale-in marks and the drain start of scale_ref pods).

`deployments/k8s/rbac.yaml` is this output for an all-managed config in namespace `llm`;
`heteroscale kube rbac --config C` prints it for any config. tests/faults/test_least_privilege.py
compares it with the API calls the code makes, statically and over real HTTP.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from models.config import ClusterConfig, Role, ScaleTargetKind

RBAC_API = "rbac.authorization.k8s.io/v1"
VERB_ORDER = ("get", "list", "create", "patch", "delete")


def _sorted_verbs(verbs: set[str]) -> list[str]:
    return sorted(verbs, key=lambda v: (VERB_ORDER.index(v) if v in VERB_ORDER else len(VERB_ORDER), v))


def namespace_rules(config: ClusterConfig) -> dict[str, dict[tuple[str, str], set[str]]]:
    """Per service namespace: (API group, resource) -> verbs."""
    out: dict[str, dict[tuple[str, str], set[str]]] = defaultdict(lambda: defaultdict(set))
    for svc in config.services:
        rules = out[svc.namespace]
        for role in Role:
            target = svc.scale_target(role)
            if target.kind is ScaleTargetKind.MANAGED:
                rules["apps", "deployments"] |= {"get", "list", "create", "patch"}
                if config.kubernetes.prune:
                    rules["apps", "deployments"].add("delete")
                rules["apps", "deployments/scale"] |= {"get", "patch"}
                continue
            for ref in target.refs:
                group = ref.group_version[0]
                rules[group, ref.resource].add("get" if ref.name is not None else "list")
                rules[group, f"{ref.resource}/scale"] |= {"get", "patch"}
        rules["", "pods"].add("patch")
    return {ns: dict(r) for ns, r in out.items()}


def rbac_manifests(
    config: ClusterConfig, *, service_account: str = "heteroscale", sa_namespace: str = "heteroscale"
) -> list[dict[str, Any]]:
    labels = {"app.kubernetes.io/name": "heteroscale"}
    subject = {"kind": "ServiceAccount", "name": service_account, "namespace": sa_namespace}
    docs: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": sa_namespace}},
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {
                "name": service_account,
                "namespace": sa_namespace,
                "labels": {**labels, "app.kubernetes.io/component": "autoscaler"},
            },
        },
        {
            "apiVersion": RBAC_API,
            "kind": "ClusterRole",
            "metadata": {"name": "heteroscale-topology-reader", "labels": labels},
            "rules": [{"apiGroups": [""], "resources": ["nodes", "pods"], "verbs": ["list"]}],
        },
        {
            "apiVersion": RBAC_API,
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "heteroscale-topology-reader", "labels": labels},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "heteroscale-topology-reader",
            },
            "subjects": [subject],
        },
    ]
    for ns, rules in sorted(namespace_rules(config).items()):
        docs.append(
            {
                "apiVersion": RBAC_API,
                "kind": "Role",
                "metadata": {"name": "heteroscale-workloads", "namespace": ns, "labels": labels},
                "rules": [
                    {"apiGroups": [group], "resources": [resource], "verbs": _sorted_verbs(verbs)}
                    for (group, resource), verbs in sorted(rules.items(), key=lambda kv: (kv[0][0] == "", kv[0]))
                ],
            }
        )
        docs.append(
            {
                "apiVersion": RBAC_API,
                "kind": "RoleBinding",
                "metadata": {"name": "heteroscale-workloads", "namespace": ns, "labels": labels},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "heteroscale-workloads"},
                "subjects": [subject],
            }
        )
    return docs
