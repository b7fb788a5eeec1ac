"""The safety invariants the flow checks before every apply (pure)."""

from __future__ import annotations

import pytest

from models.config import Role
from models.values import Action, CellKey, Placement, PlacementPlan, ServiceSignals, Targets
from tasks.core.invariants import group_warnings, plan_violations
from tasks.core.topology import view_from_config
from tests.builders import make_config, service_dict

pytestmark = pytest.mark.faults

CFG = make_config(cluster={"name": "test", "gpu_budget": 40}, services=[service_dict()])
VIEW = view_from_config(CFG)
NOW = 1000.0
GOOD = {"chat": ServiceSignals("chat", sampled_at_s=NOW - 10, decode_tps=100.0)}


def _targets(action: Action, p: int = 2, d: int = 4, source: str = "proportional") -> dict[str, Targets]:
    return {"chat": Targets("chat", p, d, action, "test", source)}


def _plan(*cells: tuple[Role, str, str, int]) -> PlacementPlan:
    return PlacementPlan(Placement.of((CellKey("chat", r, g, s1), n) for r, g, s1, n in cells), "test", "")


OK_PLAN = _plan((Role.PREFILL, "h100", "a1", 2), (Role.DECODE, "a100", "b1", 4))


def test_a_sane_plan_passes() -> None:
    assert plan_violations(CFG, VIEW, GOOD, _targets(Action.SCALE_OUT), OK_PLAN, NOW) == []


@pytest.mark.parametrize(
    "signals",
    [
        {},
        {"chat": ServiceSignals("chat", sampled_at_s=None)},
        {"chat": ServiceSignals("chat", sampled_at_s=NOW - 10_000, decode_tps=100.0)},
        {"chat": ServiceSignals("chat", sampled_at_s=NOW, decode_tps=float("nan"))},
        {"chat": ServiceSignals("chat", sampled_at_s=NOW, decode_tps=-5.0)},
    ],
)
def test_scale_in_without_usable_signal_is_a_violation(signals: dict) -> None:
    v = plan_violations(CFG, VIEW, signals, _targets(Action.SCALE_IN), OK_PLAN, NOW)
    assert any("scale-in decided without a usable decode_tps" in x for x in v)


def test_bounds_capacity_and_budget() -> None:
    v = plan_violations(CFG, VIEW, GOOD, _targets(Action.SCALE_OUT, 100, 100), OK_PLAN, NOW)
    assert any("outside [3, 60]" in x for x in v)
    too_many = _plan((Role.PREFILL, "h100", "a1", 9))  # 18 GPUs of 16
    assert any(
        "only 16 available" in x for x in plan_violations(CFG, VIEW, GOOD, _targets(Action.SCALE_OUT), too_many, NOW)
    )
    over_budget = _plan((Role.PREFILL, "h100", "a1", 8), (Role.DECODE, "a100", "b1", 8), (Role.DECODE, "a100", "c1", 5))
    assert any(
        "above the budget of 40" in x
        for x in plan_violations(CFG, VIEW, GOOD, _targets(Action.SCALE_OUT), over_budget, NOW)
    )
    nowhere = _plan((Role.PREFILL, "h100", "zz", 1))
    assert any(
        "unknown domain zz" in x for x in plan_violations(CFG, VIEW, GOOD, _targets(Action.SCALE_OUT), nowhere, NOW)
    )


def test_one_role_groups_are_warned() -> None:
    assert group_warnings(CFG, VIEW, OK_PLAN) == [
        "chat: group in pod-a has prefill instances only",
        "chat: group in pod-b has decode instances only",
    ]
