"""The indexed greedy (issue 18, item 0) places exactly what the old one did.

The old implementation lives only in `tests/unit/greedy_reference.py`. Compared: the placement's
cells (in order), the unmet demand and the reason, on the placement benchmark's synthetic
clusters (seeds 1-10 at three sizes, both kinds of current fleet), from an empty cluster, under a
GPU budget, on a scale-in, and the league on the demo trace (identical summary rows).
"""

from __future__ import annotations

import dataclasses

import pytest

import flows.replay
import tasks.core.placement
import tasks.steps
from models.values import PlacementPlan, RoleCounts
from tasks.core.placement import place_greedy
from tasks.core.synth import synth_cluster
from tasks.core.topology import view_from_config
from tests.unit.greedy_reference import place_greedy_reference

SIZES = ((400, 4, 2), (2000, 20, 3), (8000, 60, 4))
SEEDS = range(1, 11)


def _same(a: PlacementPlan, b: PlacementPlan) -> None:
    assert list(a.placement.cells.items()) == list(b.placement.cells.items())
    assert a.unmet == b.unmet
    assert a.reason == b.reason


@pytest.mark.parametrize("current", ["ratio", "greedy"])
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}gpu-{s[1]}svc-{s[2]}types")
def test_same_placements_on_the_bench_seeds(size: tuple[int, int, int], current: str) -> None:
    gpus, services, types = size
    for seed in SEEDS:
        case = synth_cluster(gpus=gpus, services=services, gpu_types=types, seed=seed, current=current)
        _same(
            place_greedy(case.config, case.view, case.targets),
            place_greedy_reference(case.config, case.view, case.targets),
        )
        # From an empty cluster (all scale-out), and at twice the targets (most services short).
        empty = view_from_config(case.config)
        _same(place_greedy(case.config, empty, case.targets), place_greedy_reference(case.config, empty, case.targets))
        double = {n: RoleCounts(2 * t.num_prefill, 2 * t.num_decode) for n, t in case.targets.items()}
        _same(place_greedy(case.config, case.view, double), place_greedy_reference(case.config, case.view, double))
        # Half the targets (all scale-in), and a GPU budget that runs out part-way.
        half = {n: RoleCounts(t.num_prefill // 2, t.num_decode // 2) for n, t in case.targets.items()}
        _same(place_greedy(case.config, case.view, half), place_greedy_reference(case.config, case.view, half))
        used = sum(n for n in case.view.placement.cells.values())
        tight = dataclasses.replace(case.view, gpu_budget=used + gpus // 20)
        _same(place_greedy(case.config, tight, double), place_greedy_reference(case.config, tight, double))


def test_the_demo_league_is_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.replay import DEMO_LEAGUE, load_service_curves, run_league
    from models import settings
    from tasks.core.registry import load_config

    config = load_config(settings.DEMO_CONFIG)
    curves, _ = load_service_curves(config, str(settings.BUNDLED_TRACE), peak_rps="auto")

    def rows() -> list[dict]:
        out = []
        for r in run_league(config, curves, DEMO_LEAGUE, keep_ticks=False, placement="greedy"):
            row = r.summary()
            row.pop("wall_s")
            out.append(row)
        return out

    new = rows()
    for module in (tasks.steps, flows.replay, tasks.core.placement):
        monkeypatch.setattr(module, "place_greedy", place_greedy_reference)
    assert new == rows()
