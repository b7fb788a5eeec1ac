"""The RBAC manifests grant exactly what the code calls: no more, no less."""

from __future__ import annotations

import re

import pytest
import yaml

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


def granted_permissions() -> set[tuple[str, str, str]]:
    granted: set[tuple[str, str, str]] = set()
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
