"""scale_targets: config validation with errors naming the field, the pure parts of scale_ref
(selector matching, which plan cell goes to which object, drain order) and the RBAC generator."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from models.config import ConfigError, Role, ScaleTargetKind, parse_config
from models.values import CellKey, Placement, PlacementPlan
from tasks.core.actuation import ManagedCell, ManagedPod, pods_to_mark
from tasks.kube.rbac import namespace_rules, rbac_manifests
from tasks.kube.scaleref import RefTarget, map_plan, selector_matches
from tests.builders import config_dict, service_dict

LWS = {"kind": "LeaderWorkerSet", "name": "chat-decode"}


def _cfg(prefill: Any = None, decode: Any = None, **svc: Any) -> dict[str, Any]:
    targets = {k: v for k, v in (("prefill", prefill), ("decode", decode)) if v is not None}
    return config_dict(services=[service_dict(namespace="llm", scale_targets=targets, **svc)])


def _error(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as exc:
        parse_config(copy.deepcopy(data), source="c.yaml")
    return str(exc.value)


def test_default_is_managed_and_known_kinds_need_no_api_version() -> None:
    cfg = parse_config(_cfg(decode={"kind": "scale_ref", "refs": [LWS]}))
    svc = cfg.services[0]
    assert svc.scale_target(Role.PREFILL).kind is ScaleTargetKind.MANAGED
    ref = svc.scale_target(Role.DECODE).refs[0]
    assert ref.group_version == ("leaderworkerset.x-k8s.io", "v1") and ref.resource == "leaderworkersets"
    dgdsa = {"kind": "DynamoGraphDeploymentScalingAdapter", "name": "x"}
    ref = parse_config(_cfg(decode={"kind": "scale_ref", "refs": [dgdsa]})).services[0].scale_targets.decode.refs[0]
    assert ref.group_version == ("nvidia.com", "v1alpha1") and ref.resource == "dynamographdeploymentscalingadapters"
    crd = {"apiVersion": "x.io/v1", "kind": "Policy", "name": "p"}
    assert (
        parse_config(_cfg(decode={"kind": "scale_ref", "refs": [crd]}))
        .services[0]
        .scale_targets.decode.refs[0]
        .resource
        == "policies"
    )


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (
            {"kind": "scale_ref", "refs": [{"kind": "Deployment"}]},
            "services[0].scale_targets.decode.refs[0]: Deployment: give exactly one of name or selector",
        ),
        (
            {"kind": "scale_ref", "refs": [{"kind": "Deployment", "name": "a", "selector": {"app": "a"}}]},
            "give exactly one of name or selector",
        ),
        (
            {"kind": "scale_ref", "refs": [{"kind": "InferencePool", "name": "a"}]},
            "services[0].scale_targets.decode.refs[0]: kind 'InferencePool' is not one heteroscale knows",
        ),
        (
            {"kind": "scale_ref", "refs": [{"kind": "Deployment", "apiVersion": "extensions/v1beta1", "name": "a"}]},
            "apiVersion must be apps/v1",
        ),
        ({"kind": "scale_ref"}, "services[0].scale_targets.decode: kind: scale_ref needs refs"),
        ({"kind": "managed", "refs": [LWS]}, "refs are only read with kind: scale_ref"),
        ({"kind": "scale_ref", "refs": [{**LWS, "nam": "x"}]}, "refs[0].nam: unknown field"),
        (
            {"kind": "scale_ref", "refs": [{**LWS, "cell": {"gpu_type": "l4", "s1": "c1"}}]},
            "refs[0].cell.gpu_type 'l4'",
        ),
        ({"kind": "scale_ref", "refs": [{**LWS, "cell": {"gpu_type": "a100", "s1": "zz"}}]}, "refs[0].cell.s1 'zz'"),
        ({"kind": "autoscale"}, "services[0].scale_targets.decode.kind: Input should be 'managed' or 'scale_ref'"),
    ],
)
def test_bad_scale_targets_name_the_field(target: dict[str, Any], message: str) -> None:
    assert message in _error(_cfg(decode=target))


def test_selector_strings_as_the_api_writes_them() -> None:
    labels = {"app": "x", "leaderworkerset.sigs.k8s.io/worker-index": "0", "tier": "gpu"}
    assert selector_matches("app=x,leaderworkerset.sigs.k8s.io/worker-index=0", labels)
    assert selector_matches("app==x, tier in (gpu,cpu), !missing", labels)
    assert not selector_matches("app=x,tier notin (gpu)", labels)
    assert not selector_matches("app!=x", labels)
    assert not selector_matches("", labels)  # no selector: no pods are known to be its own


def _target(service: str, role: Role, gpu: str, s1: str, name: str) -> RefTarget:
    cfg = parse_config(_cfg(decode={"kind": "scale_ref", "refs": [LWS]}))
    ref = cfg.services[0].scale_target(Role.DECODE).refs[0]
    key = CellKey(service, role, gpu, s1)
    cell = ManagedCell(key, name, "llm", 1, "1", None, None)
    return RefTarget(key, ref, "llm", name, cell, {key: 1}, frozenset())


def test_plan_cells_go_to_the_object_in_the_cell_else_same_gpu_type_in_weighted_units() -> None:
    cfg = parse_config(_cfg(decode={"kind": "scale_ref", "refs": [{**LWS, "name": None, "selector": {"a": "b"}}]}))
    t_c1 = _target("chat", Role.DECODE, "a100", "c1", "d-c1")
    t_b1 = _target("chat", Role.DECODE, "a100", "b1", "d-b1")
    prefill = CellKey("chat", Role.PREFILL, "h100", "a1")
    plan = PlacementPlan(
        placement=Placement.of(
            [
                (prefill, 2),  # a managed role: untouched
                (CellKey("chat", Role.DECODE, "a100", "c1"), 3),
                (CellKey("chat", Role.DECODE, "a100", "b1"), 1),
                # One h100 decode instance is worth 1500/950 reference (a100) instances.
                (CellKey("chat", Role.DECODE, "h100", "a1"), 2),
            ]
        ),
        method="test",
        reason="test",
    )
    out, warnings = map_plan(cfg, plan, {t.key: t for t in (t_c1, t_b1)}, {"a1": "pod-a", "b1": "pod-b", "c1": "pod-c"})
    # No a100 target in a1's S2 and no h100 target: the first target (b1 sorts first) takes 2 x 1500/950.
    assert dict(out.placement.cells) == {prefill: 2, t_c1.key: 3, t_b1.key: 1 + 4}
    assert warnings == []


def test_drain_takes_the_pods_the_controller_removes_first() -> None:
    pods = [ManagedPod(f"sts-{i}", True, True, float(i), removal_rank=-i) for i in range(4)]
    # Oldest-and-Ready would be kept by the default order; a StatefulSet removes sts-3, sts-2.
    assert pods_to_mark(pods, 2) == (("sts-3", "sts-2"), ())
    drained = [ManagedPod(p.name, p.name not in ("sts-3", "sts-2"), True, p.created_s, p.removal_rank) for p in pods]
    assert pods_to_mark(drained, 1) == ((), ("sts-2",))  # restore the one removed last


def test_rbac_names_only_the_kinds_and_verbs_the_config_uses() -> None:
    data = _cfg(
        prefill={"kind": "scale_ref", "refs": [{"kind": "StatefulSet", "selector": {"app": "p"}}]},
        decode={"kind": "scale_ref", "refs": [LWS]},
    )
    data["services"].append(service_dict("code", namespace="batch"))
    rules = namespace_rules(parse_config(data))
    assert rules["llm"] == {
        ("apps", "statefulsets"): {"list"},
        ("apps", "statefulsets/scale"): {"get", "patch"},
        ("leaderworkerset.x-k8s.io", "leaderworkersets"): {"get"},
        ("leaderworkerset.x-k8s.io", "leaderworkersets/scale"): {"get", "patch"},
        ("", "pods"): {"patch"},
    }
    assert rules["batch"][("apps", "deployments")] == {"get", "list", "create", "patch"}
    kinds = [d["kind"] for d in rbac_manifests(parse_config(data))]
    assert kinds.count("Role") == 2 and kinds.count("RoleBinding") == 2 and "ClusterRole" in kinds


def test_the_documented_example_config_validates_and_its_rbac_is_the_documented_one() -> None:
    from tasks.core.registry import load_config
    from tests.conftest import ROOT

    cfg = load_config(ROOT / "deployments" / "k8s" / "examples" / "scale-ref.yaml")
    docs = (ROOT / "docs" / "kubernetes.md").read_text()
    snippet = docs.split("For the example config:", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    import yaml

    documented = {
        (rule["apiGroups"][0], rule["resources"][0]): set(rule["verbs"]) for rule in yaml.safe_load(snippet)["rules"]
    }
    assert namespace_rules(cfg)["llm"] == documented
