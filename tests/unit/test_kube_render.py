"""Pure rendering and actuation decisions of the Kubernetes backend (no server)."""

from __future__ import annotations

import json

import kubernetes_validate

from models.config import Role, parse_config
from models.values import CellKey, Placement, PlacementPlan, SloState, SloStatus
from tasks.core.actuation import Drain, ManagedCell, RenderedCell, Scale, decide_actions
from tasks.kube import render as r
from tests.integration.test_kube_scenario import CONFIG

CFG = parse_config(json.loads(json.dumps(CONFIG)))
D = CellKey("chat", Role.DECODE, "a100", "c1")


def test_rendered_deployment_is_valid_and_pinned_to_its_cell() -> None:
    tmpl = {
        "metadata": {"labels": {"app": "chat-template", "team": "llm"}},
        "spec": {
            "containers": [{"name": "vllm", "image": "vllm/vllm-openai:v0.9.0"}],
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["z1"]}]}
                        ]
                    }
                }
            },
        },
    }
    dep = r.render_deployment(CFG, D, s2="pod-c", pod_template=tmpl, drop_labels=["app"])
    kubernetes_validate.validate(dep, "1.37.0", strict=True)
    pod = dep["spec"]["template"]
    assert "app" not in pod["metadata"]["labels"] and pod["metadata"]["labels"]["team"] == "llm"
    assert pod["metadata"]["labels"]["heteroscale.io/serving"] == "false"  # held until the skew guard admits it
    exprs = pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ][0]["matchExpressions"]
    assert {e["key"] for e in exprs} == {"zone", "nvidia.com/gpu.product", "heteroscale.io/s1"}
    assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert "replicas" not in dep["spec"]  # the scale subresource owns replicas
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert r.render_deployment(CFG, D, s2="pod-c", pod_template=tmpl, drop_labels=["app"]) == dep  # deterministic


def test_long_names_stay_dns_labels() -> None:
    key = CellKey("a" * 50, Role.PREFILL, "h100", "s1-domain-with-a-long-name")
    name = r.deployment_name(key)
    assert len(name) <= 63 and name != r.deployment_name(CellKey("a" * 50, Role.DECODE, "h100", key.s1))


def _rendered() -> dict[CellKey, RenderedCell]:
    body = r.render_deployment(CFG, D, s2="pod-c")
    meta = body["metadata"]
    group = r.group_name(CFG.service("chat"), "c1", "pod-c")
    return {D: RenderedCell(meta["namespace"], meta["name"], group, meta["annotations"][r.A_TEMPLATE_HASH], body)}


def _slo(status: SloStatus) -> dict[str, SloState]:
    return {"chat": SloState("chat", status, status.value)}


def _cell(**kw: object) -> ManagedCell:
    current = r.render_deployment(CFG, D, s2="pod-c")["metadata"]["annotations"][r.A_TEMPLATE_HASH]
    base = dict(
        key=D,
        name=r.deployment_name(D),
        namespace="llm",
        replicas=6,
        resource_version="1",
        template_hash=current,
        applied_replicas=6,
    )
    return ManagedCell(**(base | kw))  # type: ignore[arg-type]


def _plan(n: int) -> PlacementPlan:
    return PlacementPlan(placement=Placement.of([(D, n)]), method="t", reason="t")


def test_scale_in_drains_first_then_removes_after_window_or_restores_on_slo_breach() -> None:
    rendered, met = _rendered(), _slo(SloStatus.MET)
    first = decide_actions(CFG, {D: _cell()}, _plan(4), rendered, met, 100.0)
    drains = [a for a in first.actions if isinstance(a, Drain)]
    assert [(a.count, a.draining_after) for a in drains] == [(2, 2)]
    assert not [a for a in first.actions if isinstance(a, Scale)]
    draining = _cell(draining=2, drain_since_s=100.0)
    early = decide_actions(CFG, {D: draining}, _plan(4), rendered, met, 101.0)
    assert not [a for a in early.actions if isinstance(a, Scale)]
    after_window = 100.0 + CFG.kubernetes.soft_scale_in_window_s + 1.0
    late = decide_actions(CFG, {D: draining}, _plan(4), rendered, met, after_window)
    assert [(a.before, a.after) for a in late.actions if isinstance(a, Scale)] == [(6, 4)]
    breach = decide_actions(CFG, {D: draining}, _plan(4), rendered, _slo(SloStatus.DEGRADED), after_window)
    assert [c.after for c in breach.changes] == [6] and not [a for a in breach.actions if isinstance(a, Scale)]
    blind = decide_actions(CFG, {D: draining}, _plan(4), rendered, _slo(SloStatus.UNKNOWN), after_window)
    assert not blind.actions and "cannot be read" in blind.warnings[0]
