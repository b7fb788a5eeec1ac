"""The pure actuation decision (tasks/core/actuation.py): which pods drain or come back, when a
drain is removed or kept, and that every decision is recorded with its reason. No server."""

from __future__ import annotations

import ast
import json
from pathlib import Path

from models.config import Role, parse_config
from models.values import CellKey, Placement, PlacementPlan, ServiceSignals, SloState, SloStatus
from tasks.core.actuation import (
    Drain,
    ManagedCell,
    ManagedPod,
    RenderedCell,
    Restore,
    Scale,
    SyncDrained,
    decide_actions,
    pods_to_mark,
    slo_states,
)
from tests.integration.test_kube_scenario import CONFIG

CFG = parse_config(json.loads(json.dumps(CONFIG)))
D = CellKey("chat", Role.DECODE, "a100", "c1")
NAME = "chat-decode-a100-c1"
WINDOW = CFG.kubernetes.soft_scale_in_window_s


def _pod(name: str, *, serving: bool = True, ready: bool = True, created_s: float = 0.0) -> ManagedPod:
    return ManagedPod(name, serving=serving, ready=ready, created_s=created_s)


def _cell(replicas: int, pods: tuple[ManagedPod, ...], **kw: object) -> ManagedCell:
    base = dict(
        key=D,
        name=NAME,
        namespace="llm",
        replicas=replicas,
        resource_version="1",
        template_hash="h",
        applied_replicas=replicas,
        pods=pods,
    )
    return ManagedCell(**(base | kw))  # type: ignore[arg-type]


RENDERED = {D: RenderedCell("llm", NAME, "chat-pod-c", "h", {"metadata": {"name": NAME, "namespace": "llm"}})}


def _plan(n: int) -> PlacementPlan:
    return PlacementPlan(placement=Placement.of([(D, n)]), method="t", reason="t")


def _slo(status: SloStatus, reason: str = "r") -> dict[str, SloState]:
    return {"chat": SloState("chat", status, reason)}


def test_drain_takes_not_ready_then_newest_pods_and_records_them() -> None:
    pods = (
        _pod("old", created_s=1.0),
        _pod("new", created_s=9.0),
        _pod("mid", created_s=5.0),
        _pod("unready", ready=False, created_s=2.0),
    )
    out = decide_actions(CFG, {D: _cell(4, pods)}, _plan(2), RENDERED, _slo(SloStatus.MET), 100.0)
    (drain,) = out.actions
    assert isinstance(drain, Drain) and drain.pods == ("unready", "new") and drain.since_s == 100.0
    (rec,) = out.records
    assert (rec.kind, rec.count, rec.pods) == ("drain", 2, ("unready", "new")) and "plan wants 2" in rec.reason


def test_restore_brings_back_ready_oldest_first_when_the_plan_wants_more() -> None:
    pods = (
        _pod("a", serving=False, created_s=3.0),
        _pod("b", serving=False, created_s=1.0),
        _pod("c", serving=False, ready=False, created_s=0.5),
        _pod("d", created_s=0.0),
    )
    cell = _cell(4, pods, draining=3, drain_since_s=50.0)
    out = decide_actions(CFG, {D: cell}, _plan(2), RENDERED, _slo(SloStatus.MET), 60.0)
    (restore,) = out.actions
    assert isinstance(restore, Restore) and restore.count == 1 and restore.pods == ("b",)
    assert restore.draining_after == 2 and restore.drain_since_s == 50.0
    assert [(r.kind, r.pods) for r in out.records] == [("restore", ("b",))]


def test_slo_breach_restores_every_drained_pod_with_the_slo_reason() -> None:
    pods = (_pod("a", serving=False), _pod("b", serving=False), _pod("c"), _pod("d"))
    cell = _cell(4, pods, draining=2, drain_since_s=0.0)
    slo = _slo(SloStatus.DEGRADED, "TBT p99 0.2s > SLO 0.1s")
    out = decide_actions(CFG, {D: cell}, _plan(2), RENDERED, slo, WINDOW + 1)
    (restore,) = out.actions
    assert isinstance(restore, Restore) and set(restore.pods) == {"a", "b"} and restore.draining_after == 0
    assert "TBT p99 0.2s > SLO 0.1s" in out.records[0].reason and out.records[0].kind == "restore"


def test_window_passed_with_slos_met_removes_exactly_the_drained_pods() -> None:
    pods = (_pod("a", serving=False), _pod("b"), _pod("c"))
    cell = _cell(3, pods, draining=1, drain_since_s=0.0)
    out = decide_actions(CFG, {D: cell}, _plan(2), RENDERED, _slo(SloStatus.MET), WINDOW)
    (scale,) = out.actions
    assert isinstance(scale, Scale) and (scale.before, scale.after) == (3, 2)
    assert [(r.kind, r.pods) for r in out.records] == [("remove-drained", ("a",))]


def test_unreadable_or_missing_slos_keep_the_drain_and_say_why() -> None:
    cell = _cell(3, (_pod("a", serving=False), _pod("b"), _pod("c")), draining=1, drain_since_s=0.0)
    for slo in (_slo(SloStatus.UNKNOWN, "p99 TTFT and TBT could not be read"), None):
        out = decide_actions(CFG, {D: cell}, _plan(2), RENDERED, slo, WINDOW * 10)
        assert out.actions == () and out.changes == ()
        (rec,) = out.records
        assert rec.kind == "keep-drained" and "SLOs cannot be read" in rec.reason
        assert "cannot be read" in out.warnings[0]


def test_inside_the_window_the_drain_is_kept_and_a_half_done_drain_is_healed() -> None:
    # The Deployment records 2 draining but only one pod carries the marks (a crash mid-drain).
    pods = (_pod("a", serving=False), _pod("b", created_s=1.0), _pod("c", created_s=2.0), _pod("d"))
    cell = _cell(4, pods, draining=2, drain_since_s=100.0)
    out = decide_actions(CFG, {D: cell}, _plan(2), RENDERED, _slo(SloStatus.MET), 100.0 + WINDOW / 2)
    (sync,) = out.actions
    assert isinstance(sync, SyncDrained) and sync.mark == ("c",) and sync.unmark == ()
    assert [r.kind for r in out.records] == ["keep-drained", "resync-drained"]


def test_pods_to_mark_is_exact_both_ways() -> None:
    pods = (_pod("a", serving=False), _pod("b", serving=False), _pod("c"))
    assert pods_to_mark(pods, 2) == ((), ())
    assert pods_to_mark(pods, 3) == (("c",), ())
    assert pods_to_mark(pods, 0)[1] == ("a", "b")


def test_slo_states_from_the_collected_signals() -> None:
    def sig(ttft: float | None, tbt: float | None) -> dict[str, ServiceSignals]:
        return {"chat": ServiceSignals("chat", 0.0, ttft_p99_s=ttft, tbt_p99_s=tbt)}

    assert slo_states(CFG, sig(0.5, 0.05))["chat"].status is SloStatus.MET
    degraded = slo_states(CFG, sig(0.5, 0.2))["chat"]
    assert degraded.status is SloStatus.DEGRADED and "TBT p99 0.2s > SLO 0.1s" in degraded.reason
    assert slo_states(CFG, sig(None, None))["chat"].status is SloStatus.UNKNOWN
    assert slo_states(CFG, {})["chat"].status is SloStatus.UNKNOWN


def test_the_decision_module_does_no_io_and_reads_no_clock() -> None:
    src = Path(__file__).resolve().parents[2] / "tasks" / "core" / "actuation.py"
    imported = set()
    for node in ast.walk(ast.parse(src.read_text())):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    assert not imported & {"time", "datetime", "kubernetes", "requests", "sqlmodel", "threading", "os"}
    assert not [m for m in imported if m.startswith(("tasks.kube", "tasks.prometheus", "flows", "sim"))]
