"""The RBAC manifests grant exactly what the code calls: no more, no less.

Managed Deployments: `deployments/k8s/rbac.yaml` against the client calls in `tasks/kube/`
(static), and that file against what `tasks.kube.rbac` generates for a managed config.
scale_ref targets name their kinds in the config, so they are checked over real HTTP: the
requests a run sends to the API emulator against the RBAC generated for that config.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s

from models.config import parse_config
from models.values import ApplyMode
from tasks.kube.backend import KubeBackend
from tasks.kube.rbac import rbac_manifests
from tests.conftest import ROOT

pytestmark = pytest.mark.faults

# client method prefix -> RBAC verb
VERBS = {"list": "list", "read": "get", "patch": "patch", "create": "create", "delete": "delete", "replace": "update"}
# client method stem -> (API group, resource)
RESOURCES = {
    "node": ("", "nodes"),
    "pod": ("", "pods"),
    "deployment": ("apps", "deployments"),
    "deployment_scale": ("apps", "deployments/scale"),
}
CALL = re.compile(r"\.(list|read|patch|create|delete|replace)_(namespaced_)?([a-z_]+?)(_for_all_namespaces)?\b(?!_)")


def used_permissions() -> set[tuple[str, str, str]]:
    used: set[tuple[str, str, str]] = set()
    for path in sorted((ROOT / "tasks" / "kube").glob("*.py")):
        for m in CALL.finditer(path.read_text()):
            verb, stem = m.group(1), m.group(3)
            if stem not in RESOURCES:
                continue  # not a Kubernetes API method (e.g. read_signals)
            group, resource = RESOURCES[stem]
            used.add((group, resource, VERBS[verb]))
    # Server-side apply is a PATCH that creates the object when it does not exist yet: the
    # API server then checks `create` as well.
    if ("apps", "deployments", "patch") in used:
        used.add(("apps", "deployments", "create"))
    return used


def granted_permissions(docs: Iterable[Any] | None = None) -> set[tuple[str, str, str]]:
    granted: set[tuple[str, str, str]] = set()
    if docs is None:
        docs = yaml.safe_load_all((ROOT / "deployments" / "k8s" / "rbac.yaml").read_text())
    for doc in docs:
        if not doc or doc.get("kind") not in ("Role", "ClusterRole"):
            continue
        for rule in doc.get("rules", []):
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        granted.add((group, resource, verb))
    return granted


def test_the_code_calls_something_and_the_role_grants_something() -> None:
    assert len(used_permissions()) >= 5 and len(granted_permissions()) >= 5


def test_every_call_is_granted() -> None:
    missing = used_permissions() - granted_permissions()
    assert not missing, f"deployments/k8s/rbac.yaml lacks {sorted(missing)}: the call would fail with 403"


def test_nothing_is_granted_that_the_code_does_not_use() -> None:
    extra = granted_permissions() - used_permissions()
    assert not extra, f"deployments/k8s/rbac.yaml grants unused {sorted(extra)}: remove them (least privilege)"


def scoped_grants(docs: Iterable[dict[str, Any]]) -> set[tuple[str | None, str, str, str]]:
    """(namespace or None for cluster scope, API group, resource, verb) of every rule."""
    out: set[tuple[str | None, str, str, str]] = set()
    for doc in docs:
        if doc.get("kind") not in ("Role", "ClusterRole"):
            continue
        ns = doc["metadata"].get("namespace") if doc["kind"] == "Role" else None
        for rule in doc["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        out.add((ns, group, resource, verb))
    return out


REQUEST = re.compile(r"^/(?:api/v1|apis/(?P<group>[^/]+)/[^/]+)(?:/namespaces/(?P<ns>[^/]+))?/(?P<rest>.+)$")
METHOD_VERB = {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}


def request_permission(method: str, path: str) -> tuple[str | None, str, str, str]:
    m = REQUEST.match(path)
    assert m, path
    parts = m.group("rest").split("/")
    resource = parts[0] if len(parts) < 3 else f"{parts[0]}/{parts[2]}"
    verb = METHOD_VERB.get(method) or ("get" if len(parts) > 1 else "list")
    return (m.group("ns"), m.group("group") or "", resource, verb)


def test_rbac_yaml_is_what_the_generator_makes_for_a_managed_config() -> None:
    from tests.integration.test_kube_scenario import CONFIG

    data = json.loads(json.dumps(CONFIG))
    data["kubernetes"]["prune"] = True  # the example grants delete, with a comment saying when it is used
    assert granted_permissions(rbac_manifests(parse_config(data))) == granted_permissions()


@pytest.mark.integration
def test_scale_ref_rbac_is_exactly_what_a_run_calls(tmp_path: Path) -> None:
    """Over real HTTP: every request a scale_ref run sends (discovery, scale-out, soft scale-in,
    removal) is granted by the RBAC generated for its config, and everything granted is used."""
    from tests.integration import test_kube_scale_ref as s
    from tests.integration.kube_fixture import KubeCluster

    cfg = s.config()
    with KubeCluster() as kc:
        kc.add_node("c-h", product="NVIDIA-H100-80GB-HBM3", s1="c1", s2="pod-c")
        kc.add_node("c-a", product="NVIDIA-A100-SXM4-80GB", s1="c1", s2="pod-c")
        kc.add_node("b-a", product="NVIDIA-A100-SXM4-80GB", s1="b1", s2="pod-b")
        s.seed_workloads(kc)
        s.reconcile(kc)
        api_cfg = k8s.Configuration()
        api_cfg.host = kc.url
        be = KubeBackend(k8s.ApiClient(api_cfg), export_dir=tmp_path)
        for now_s, counts in ((0.0, (2, 3, 3, 2)), (10.0, (1, 2, 2, 1)), (20.0, (1, 2, 2, 1))):
            be.apply(cfg, s.plan(*counts), ApplyMode.APPLY, now_s, slo=s.MET)
            s.reconcile(kc)
        used = {request_permission(r.method.value, r.url.path) for r in kc.server.requests}
    granted = scoped_grants(rbac_manifests(cfg))
    assert used - granted == set(), "calls the generated RBAC does not grant (403 in a real cluster)"
    assert granted - used == set(), "grants no call needs (least privilege)"
    assert ("llm", "leaderworkerset.x-k8s.io", "leaderworkersets/scale", "patch") in granted
    assert not any(r == "deployments" and v in ("create", "patch") for _, _, r, v in granted)
