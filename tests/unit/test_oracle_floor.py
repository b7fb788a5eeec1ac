"""The oracle holds the floor's counts exactly on a mixed-GPU fleet (issue 17, the floor question).

`current_counts` rounds a role's capacity to whole reference instances: four H100 decode
instances (1.92 A100-units each on the demo config) read as 8 while they hold 7.68. Before the
fix the oracle saw "8 = the floor's 8", held, and the fleet stayed short of the floor (the
ServeGen league's oracle lost 1.4 % of its ticks to that)."""

from __future__ import annotations

import pytest

from models.config import ClusterConfig, Role, load_config
from models.values import Action, CellKey, Placement, RoleCounts, ServicePolicyState, ServiceSignals
from tasks import steps
from tasks.core.policy import oracle
from tasks.core.policy.base import PolicyContext
from tasks.core.topology import ClusterView, view_from_config
from tests.conftest import DEMO_CONFIG


@pytest.fixture(scope="module")
def cfg() -> ClusterConfig:
    return load_config(DEMO_CONFIG)


def _fleet(cfg: ClusterConfig, decode_h100: int) -> ClusterView:
    """chat with 2 H100 prefill and `decode_h100` H100 decode instances (decode's reference is A100)."""
    cells = {
        CellKey("chat", Role.PREFILL, "h100", "a1"): 2,
        CellKey("chat", Role.DECODE, "h100", "a1"): decode_h100,
    }
    return view_from_config(cfg, Placement.of(cells.items()))


def _decode_units(cfg: ClusterConfig, placement: Placement) -> float:
    spec = cfg.service("chat").decode
    return sum(n * spec.weight(k.gpu_type) for k, n in placement.cells.items() if k.role is Role.DECODE)


def _oracle_plan(cfg: ClusterConfig, view: ClusterView, need: RoleCounts, keep: RoleCounts) -> tuple[Action, Placement]:
    """The oracle's decision for `chat` on `view` and the greedy placement of it."""
    ctx = PolicyContext(
        service=cfg.service("chat"),
        now_s=1000.0,
        signals=ServiceSignals.missing("chat"),
        current=steps.current_counts(cfg, view)["chat"],
        floor_need=need,
        floor_keep=keep,
    )
    target, _ = oracle(ctx, ServicePolicyState())
    return target.action, steps.place(cfg, view, {"chat": target}, method="greedy").placement


def _oracle_places(cfg: ClusterConfig, view: ClusterView, need: RoleCounts, keep: RoleCounts) -> tuple[Action, float]:
    action, placement = _oracle_plan(cfg, view, need, keep)
    return action, _decode_units(cfg, placement)


def test_rounded_count_equal_to_the_floor_is_topped_up(cfg: ClusterConfig) -> None:
    view = _fleet(cfg, decode_h100=4)
    assert _decode_units(cfg, view.placement) == pytest.approx(4 * 991 / 516)  # 7.68 A100-units
    assert steps.current_counts(cfg, view)["chat"] == RoleCounts(2, 8)  # reads as the floor's 8
    action, units = _oracle_places(cfg, view, need=RoleCounts(2, 8), keep=RoleCounts(2, 8))
    assert action is not Action.HOLD
    assert units >= 8.0  # one more H100: 9.6 A100-units


def test_top_up_never_sheds_below_the_floor(cfg: ClusterConfig) -> None:
    # 5 H100 = 9.6 A100-units read as 10; the floor wants 8 from now on: shedding one H100
    # (7.68) would fall short, so the placement keeps all five.
    view = _fleet(cfg, decode_h100=5)
    action, units = _oracle_places(cfg, view, need=RoleCounts(2, 8), keep=RoleCounts(2, 8))
    assert action is Action.SCALE_IN
    assert units == pytest.approx(5 * 991 / 516)


def test_fraction_the_rounding_hid_is_shed_down_to_the_count(cfg: ClusterConfig) -> None:
    # Prefill 3 H100 + 1 A100 = 3.34 H100-units, read as the floor's 3: the A100 is excess the
    # rounding hid, shed while 3 remain; decode (8 A100) is exactly the floor's 8.
    cells = {
        CellKey("chat", Role.PREFILL, "h100", "a1"): 3,
        CellKey("chat", Role.PREFILL, "a100", "b1"): 1,
        CellKey("chat", Role.DECODE, "a100", "b1"): 8,
    }
    view = view_from_config(cfg, Placement.of(cells.items()))
    assert steps.current_counts(cfg, view)["chat"] == RoleCounts(3, 8)
    action, placement = _oracle_plan(cfg, view, need=RoleCounts(3, 8), keep=RoleCounts(3, 8))
    assert action is not Action.HOLD
    prefill = {k.gpu_type: n for k, n in placement.cells.items() if k.role is Role.PREFILL and n > 0}
    assert prefill == {"h100": 3}
    assert _decode_units(cfg, placement) == pytest.approx(8.0)
