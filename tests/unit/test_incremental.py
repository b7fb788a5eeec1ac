"""The loop's incremental placement: the small MIP, the full re-optimisation, the greedy fallback."""

from __future__ import annotations

import itertools
import math

import pytest

from models.config import Role
from models.enums import TargetSource
from models.values import Action, CellKey, Placement, PlacementPlan, RoleCounts, Targets
from tasks import steps
from tasks.core.placement import Deadline, evaluate, full_due, place_greedy, place_incremental
from tasks.core.placement import incremental as inc
from tasks.core.placement.problem import weight
from tasks.core.synth import synth_cluster
from tasks.core.topology import view_from_config
from tests.builders import make_config, service_dict


def _deadline(seconds: float = 5.0) -> Deadline:
    # A clock that never moves: the test does not depend on the machine's speed.
    return Deadline.after(seconds, lambda: 0.0)


def _units(config, placement: Placement, service: str, role: Role) -> float:
    svc = config.service(service)
    return sum(
        n * weight(svc, role, k.gpu_type) for k, n in placement.cells.items() if k.service == service and k.role is role
    )


def _split(case, moving_share: float = 0.5):
    names = sorted(case.targets)
    cut = max(1, int(len(names) * moving_share))
    moving = {n: case.targets[n] for n in names[:cut]}
    running = steps.current_counts(case.config, case.view)
    held = {n: running[n] for n in names[cut:]}
    return moving, held


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_small_mip_never_moves_fixed_services_and_only_changes_what_moves(seed: int) -> None:
    case = synth_cluster(gpus=1200, services=10, gpu_types=3, seed=seed)
    moving, held = _split(case)
    plan = place_incremental(case.config, case.view, moving, held=held, deadline=_deadline())
    assert plan.stats["stage"] == "small", plan.reason
    assert case.view.placement.churn(plan.placement) > 0  # the moving services did change
    before, after = case.view.placement.cells, plan.placement.cells
    for k in set(before) | set(after):
        if k.service not in moving:
            assert after.get(k, 0) == before.get(k, 0), f"fixed service {k.service} changed in {k}"
    # Locked: a growing role keeps every running instance, a shrinking one starts none.
    grows = {
        (n, r): t.of(r) >= _units(case.config, case.view.placement, n, r) - 1e-9
        for n, t in moving.items()
        for r in Role
    }
    for k in set(before) | set(after):
        if k.service in moving:
            if grows[(k.service, k.role)]:
                assert after.get(k, 0) >= before.get(k, 0), k
            else:
                assert after.get(k, 0) <= before.get(k, 0), k
    score = evaluate(case.config, case.view, moving, plan.placement)
    assert score.affinity_violations == 0 and score.ratio_violations == 0


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_places_every_count_change_the_greedy_places_cleanly(seed: int) -> None:
    case = synth_cluster(gpus=1200, services=10, gpu_types=3, seed=seed)
    greedy = place_greedy(case.config, case.view, case.targets)
    g = evaluate(case.config, case.view, case.targets, greedy.placement)
    plan = place_incremental(case.config, case.view, case.targets, held={}, deadline=_deadline())
    score = evaluate(case.config, case.view, case.targets, plan.placement)
    assert score.affinity_violations == 0 and score.ratio_violations == 0
    if not greedy.unmet and g.affinity_violations + g.ratio_violations == 0:
        assert not plan.unmet, plan.reason
    # Whatever it reports unmet is what its placement leaves short (beyond a sliver), per role.
    for name, t in case.targets.items():
        for role in Role:
            short = t.of(role) - _units(case.config, plan.placement, name, role)
            if short > inc.SLIVER + 1e-9:
                assert plan.unmet.get((name, role), 0.0) == pytest.approx(short)
            else:
                assert (name, role) not in plan.unmet


def test_a_sliver_is_neither_unmet_nor_paid_for_with_a_whole_instance() -> None:
    # One A100 prefill is 0.333 of an H100 one: 3 of them are 0.999 of the target of 1.
    svc = service_dict(
        affinity="S2",
        prefill={"gpu_types": ["h100", "a100"], "capacity_tokens_per_s": {"h100": 6000, "a100": 1998}},
        decode={"gpu_types": ["a100"], "capacity_tokens_per_s": {"a100": 950}},
        pd_ratio={"prefill": 1, "decode": 1},
    )
    config = make_config(services=[svc])
    b1 = [CellKey("chat", Role.PREFILL, "a100", "b1"), CellKey("chat", Role.DECODE, "a100", "b1")]
    view = view_from_config(config, Placement.of([(b1[0], 3), (b1[1], 1)]))
    plan = place_incremental(config, view, {"chat": RoleCounts(1, 2)}, held={}, deadline=_deadline())
    assert not plan.unmet, plan.reason
    assert plan.stats["sliver_unmet"] == pytest.approx(1 - 3 * 1998 / 6000)
    assert plan.placement.cells.get(b1[0], 0) == 3  # no fourth instance for 0.1 % of one


def _blocked_case():
    """`a` (S1 affinity, H100 only) must grow in s1 x1, which `b` (S2 affinity, H100 or A100 at the
    same capacity) fills; x2 (A100, same S2) is empty. Only moving `b` makes room."""
    pools = [
        {"name": "x1", "gpu_type": "h100", "nodes": 1, "gpus_per_node": 8, "s1": "x1", "s2": "pod"},
        {"name": "x2", "gpu_type": "a100", "nodes": 1, "gpus_per_node": 8, "s1": "x2", "s2": "pod"},
    ]
    h100_only = {"gpu_types": ["h100"], "capacity_tokens_per_s": {"h100": 1000}}
    either = {"gpu_types": ["h100", "a100"], "capacity_tokens_per_s": {"h100": 1000, "a100": 1000}}
    a = service_dict("a", affinity="S1", prefill=h100_only, decode=h100_only, pd_ratio={"prefill": 1, "decode": 1})
    b = service_dict("b", affinity="S2", prefill=either, decode=either, pd_ratio={"prefill": 1, "decode": 1})
    config = make_config(topology={"node_pools": pools}, services=[a, b])
    cells = [(CellKey(s, r, "h100", "x1"), 1) for s in ("a", "b") for r in Role]
    return config, view_from_config(config, Placement.of(cells))


def test_falls_back_to_the_full_reoptimisation_when_the_small_one_cannot_place() -> None:
    config, view = _blocked_case()
    moving, held = {"a": RoleCounts(2, 2)}, {"b": RoleCounts(1, 1)}
    assert place_greedy(config, view, moving).unmet  # the greedy cannot either
    plan = place_incremental(config, view, moving, held=held, deadline=_deadline())
    assert plan.stats["stage"] == "full" and "small MIP left" in plan.stats["fallback"]
    assert not plan.unmet
    assert (
        _units(config, plan.placement, "a", Role.PREFILL) == 2 and _units(config, plan.placement, "a", Role.DECODE) == 2
    )
    # The held service was moved, not shrunk.
    for role in Role:
        assert _units(config, plan.placement, "b", role) == pytest.approx(1.0)
    assert evaluate(config, view, {**moving, **held}, plan.placement).ratio_violations == 0


def test_the_full_stage_keeps_held_services_at_their_running_capacity() -> None:
    case = synth_cluster(gpus=1200, services=10, gpu_types=3, seed=2)
    moving, held = _split(case)
    plan = place_incremental(case.config, case.view, moving, held=held, deadline=_deadline(), full=True)
    assert plan.stats["stage"] == "full", plan.reason
    for name in held:
        for role in Role:
            assert (
                _units(case.config, plan.placement, name, role)
                >= _units(case.config, case.view.placement, name, role) - 1e-6
            )


def test_falls_back_to_the_greedy_when_no_mip_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    case = synth_cluster(gpus=1200, services=10, gpu_types=3, seed=1)
    monkeypatch.setattr(inc, "solve", lambda prob, solvers, deadline=None: ("", "", ["stub: no solver"]))
    plan = place_incremental(case.config, case.view, case.targets, held={}, deadline=_deadline())
    greedy = place_greedy(case.config, case.view, case.targets)
    assert plan.method == "greedy" and plan.stats["stage"] == "greedy"
    assert "small MIP: stub: no solver" in plan.stats["fallback"] and "full MIP: stub" in plan.stats["fallback"]
    assert plan.placement == greedy.placement and plan.unmet == greedy.unmet


def test_same_input_same_placement() -> None:
    case = synth_cluster(gpus=1200, services=10, gpu_types=3, seed=3)
    moving, held = _split(case)
    for full in (False, True):
        runs = [
            place_incremental(case.config, case.view, moving, held=held, deadline=_deadline(), full=full)
            for _ in range(2)
        ]
        assert runs[0].placement == runs[1].placement and runs[0].unmet == runs[1].unmet


@pytest.mark.parametrize(
    ("now_s", "due"), [(600.0, True), (660.0, False), (1199.0, False), (1201.0, True), (1260.0, False)]
)
def test_full_due_once_per_cadence(now_s: float, due: bool) -> None:
    assert full_due(now_s, 60.0, 600.0) is due


def test_full_due_never_with_no_cadence_and_once_per_window_over_a_day() -> None:
    assert not any(full_due(t * 60.0, 60.0, 0.0) for t in range(1, 100))
    hits = [t for t in range(1, 1441) if full_due(t * 60.0, 60.0, 600.0)]
    assert len(hits) == 144 and all(b - a == 10 for a, b in itertools.pairwise(hits))


def _targets(counts: dict[str, RoleCounts], held: set[str]) -> dict[str, Targets]:
    return {
        n: Targets(
            n,
            c.num_prefill,
            c.num_decode,
            Action.HOLD if n in held else Action.SCALE_OUT,
            "test",
            TargetSource.HOLD if n in held else TargetSource.PROPORTIONAL,
        )
        for n, c in counts.items()
    }


def test_steps_place_runs_the_full_stage_on_its_cadence_and_nothing_when_nothing_is_due() -> None:
    config, view = _blocked_case()
    held = _targets({"a": RoleCounts(1, 1), "b": RoleCounts(1, 1)}, {"a", "b"})
    idle = steps.place(config, view, held, method="incremental", now_s=660.0)
    assert idle.method == "none"
    due = steps.place(config, view, held, method="incremental", now_s=600.0)
    assert due.stats["stage"] == "full" and not due.unmet
    grow = _targets({"a": RoleCounts(2, 2), "b": RoleCounts(1, 1)}, {"b"})
    plan: PlacementPlan = steps.place(config, view, grow, method="incremental")
    assert plan.stats["stage"] == "full" and not plan.unmet
    assert math.isclose(_units(config, plan.placement, "a", Role.DECODE), 2)
