"""The synthetic cluster generator: deterministic, sized as asked, a fair (ratio-keeping) current
fleet that fits, targets within the stated change, and the legacy greedy fleet on request."""

from __future__ import annotations

from collections import defaultdict

import pytest

from models.config import AffinityLevel
from tasks.core.placement import evaluate
from tasks.core.synth import synth_cluster
from tasks.core.topology import gpus_per_instance_map


def test_same_arguments_same_case_and_different_seed_differs() -> None:
    a = synth_cluster(gpus=1200, services=10, gpu_types=3, seed=7)
    b = synth_cluster(gpus=1200, services=10, gpu_types=3, seed=7)
    c = synth_cluster(gpus=1200, services=10, gpu_types=3, seed=8)
    assert a == b
    assert a.targets != c.targets or a.view.placement != c.view.placement


def test_size_types_and_topology_shape() -> None:
    case = synth_cluster(gpus=5000, services=30, gpu_types=4, seed=1)
    assert case.view.total_gpus == 5000
    assert len(case.config.services) == 30
    assert {c.gpu_type for c in case.view.capacities} <= {g.name for g in case.config.gpu_types}
    assert len(case.config.gpu_types) == 4
    # S1s hold 2-4 racks of 4 eight-GPU nodes (the last one may be cut short); S2s hold 4-8 S1s.
    s1_gpus: dict[str, int] = defaultdict(int)
    for c in case.view.capacities:
        s1_gpus[c.s1] += c.gpus_total
    assert all(g <= 128 and g % 8 == 0 for g in s1_gpus.values())
    s2s = case.view.domains(AffinityLevel.S2)
    assert all(len(s1s) <= 8 for s1s in s2s.values())
    assert {s.affinity for s in case.config.services} == set(AffinityLevel)


def test_ratio_fleet_is_valid_fits_and_matches_previous_targets() -> None:
    case = synth_cluster(gpus=5000, services=30, gpu_types=4, seed=2)
    score = evaluate(case.config, case.view, case.previous, case.view.placement)
    # The current fleet the benchmark starts from breaks no group: neither method is handicapped.
    assert score.affinity_violations == 0 and score.ratio_violations == 0
    # previous = what runs (floor of reference units), so nothing of it is unmet.
    assert score.unmet == pytest.approx(0.0, abs=1e-6)
    gpi = gpus_per_instance_map(case.config)
    used: dict[tuple[str, str], int] = defaultdict(int)
    for k, n in case.view.placement.cells.items():
        used[(k.gpu_type, k.s1)] += n * gpi[(k.service, k.role.value)]
    caps = {(c.gpu_type, c.s1): c.gpus_total for c in case.view.capacities}
    assert all(u <= caps[key] for key, u in used.items())
    fill = sum(used.values()) / case.view.total_gpus
    assert 0.4 < fill < 0.75


def test_targets_move_by_at_most_the_change_and_keep_the_ratio() -> None:
    case = synth_cluster(gpus=3000, services=25, gpu_types=3, seed=4, change=0.25)
    for svc in case.config.services:
        prev, new = case.previous[svc.name], case.targets[svc.name]
        base = max(1, prev.num_decode)
        assert abs(new.num_decode - base) <= 0.25 * base + 0.5
        assert new.num_prefill == max(1, round(new.num_decode * svc.pd_ratio.prefill_per_decode))


def test_greedy_current_fleet_on_request_and_bad_arguments_rejected() -> None:
    greedy = synth_cluster(gpus=3000, services=25, gpu_types=3, seed=4, current="greedy")
    fair = synth_cluster(gpus=3000, services=25, gpu_types=3, seed=4)
    assert greedy.config == fair.config and greedy.view.placement != fair.view.placement
    with pytest.raises(ValueError, match="current"):
        synth_cluster(gpus=3000, services=25, gpu_types=3, seed=4, current="random")
    with pytest.raises(ValueError, match="gpu_types"):
        synth_cluster(gpus=3000, services=25, gpu_types=9, seed=4)
    with pytest.raises(ValueError, match="at least"):
        synth_cluster(gpus=4, services=2, gpu_types=2, seed=4)
