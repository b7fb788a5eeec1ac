"""The proven global bound (Lagrangian at the LP's duals): valid, at least the LP, and the bench's seed sweep."""

from __future__ import annotations

import math

import numpy as np
import pytest

from heteroscale.commands.placement import nearest_rank, parse_seeds, summarize
from tasks.core.placement import Deadline, build_problem
from tasks.core.placement.highs import Runner
from tasks.core.placement.lagrange import global_bound
from tasks.core.placement.model import build_model
from tasks.core.synth import synth_cluster


def _clock() -> float:
    return 0.0  # a frozen clock: the deadline never passes


def _case(seed: int) -> tuple[Runner, np.ndarray]:
    case = synth_cluster(gpus=2000, services=16, gpu_types=3, seed=seed)
    st = case.config.cluster.placement
    pb = build_problem(case.config, case.view, case.targets)
    run = Runner(build_model(pb, st), pb, st)
    lp = run.lp()
    assert lp is not None and run.row_dual is not None
    return run, lp


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_bound_between_lp_and_the_proven_integer_optimum(seed: int) -> None:
    run, lp = _case(seed)
    z_lp = run.objective(lp)
    b = global_bound(run, lp, run.row_dual, deadline=Deadline.after(60.0, _clock))
    # The weak-duality sum of the parts is the LP's own value (duals and reduced costs consistent).
    assert b.lp_dual == pytest.approx(z_lp, rel=1e-6)
    assert b.value >= z_lp - 1e-6 * abs(z_lp)
    assert b.skipped == 0 and b.solved == b.fractional
    # The full MIP solved to optimality (small case): no integer placement below the bound.
    opt = run.mip(run.arr.lo.copy(), run.arr.hi.copy(), None, 120.0, 1e-9)
    assert opt is not None and run.optimal
    assert b.value <= run.objective(opt) + 1e-6 * abs(run.objective(opt))


def test_bound_tighter_than_lp_where_integrality_matters() -> None:
    # Some of these cases have an integrality gap; the bound must close part of it on at least one.
    gains = []
    for seed in (1, 2, 3, 4):
        run, lp = _case(seed)
        b = global_bound(run, lp, run.row_dual, deadline=Deadline.after(60.0, _clock))
        gains.append(b.value - run.objective(lp))
    assert max(gains) > 1.0


def test_bound_without_time_is_the_lp_bound() -> None:
    run, lp = _case(1)
    b = global_bound(run, lp, run.row_dual, deadline=Deadline.after(0.0, _clock))
    assert b.solved == 0 and b.skipped == b.fractional
    assert b.value == pytest.approx(run.objective(lp), rel=1e-6)


def test_parse_seeds_ranges_and_lists() -> None:
    assert parse_seeds("1-4") == [1, 2, 3, 4]
    assert parse_seeds("3, 1,2-3") == [3, 1, 2]
    for bad in ("", "4-1", "x"):
        with pytest.raises(ValueError, match="--seeds"):
            parse_seeds(bad)


def test_summary_quantiles_by_nearest_rank() -> None:
    times = [float(t) for t in range(1, 41)]
    assert nearest_rank(times, 0.95) == 38.0 and nearest_rank(times, 0.5) == 20.0
    runs = [
        {
            "ilp": {
                "solve_s": t,
                "cost": 101.0 if t > 39 else 100.0,
                "global_bound": 100.0,
                "affinity_violations": 0,
                "ratio_violations": 1 if t == 1 else 0,
                "method": "ilp",
            }
        }
        for t in times
    ]
    s = summarize(runs, target_s=2.0)
    assert s["solve_s_p95"] == 38.0 and s["solve_s_max"] == 40.0 and s["over_target"] == 38
    assert s["violations"] == 1 and s["within_1pct"] == 40 and math.isclose(s["cost_over_bound_max"], 1.01)


@pytest.mark.parametrize("rins_only", [False, True])
def test_large_path_with_the_bound_in_the_solve_stays_valid(rins_only: bool, monkeypatch) -> None:
    # `lagrange_s` > 0: the global bound is proven inside the call and may stop the MIP; the
    # answer still keeps every rule and lies above that bound. Also in the RINS-only mode (the
    # relaxed LP's duals price the bound there).
    from tasks.core.placement import evaluate, large, place_ilp

    if rins_only:
        monkeypatch.setattr(large, "RELAX_GROUPS_ABOVE_COLUMNS", 0)
        monkeypatch.setattr(large, "RINS_ONLY_ABOVE_COLUMNS", 0)
    case = synth_cluster(gpus=4000, services=30, gpu_types=3, seed=2)
    settings = case.config.cluster.placement.model_copy(update={"restrict_above_cells": 0, "time_limit_s": 30.0})
    plan = place_ilp(
        case.config, case.view, case.targets, deadline=Deadline.after(30.0, _clock), settings=settings, lagrange_s=5.0
    )
    assert plan.method == "ilp"
    gb = float(plan.stats["global_bound"])
    assert gb >= float(plan.stats["lp_bound"]) - 1e-6
    assert float(plan.stats["lagrange_bound"]) <= gb + 1e-6
    score = evaluate(case.config, case.view, case.targets, plan.placement, settings)
    assert score.affinity_violations == score.ratio_violations == 0
    assert score.cost >= gb - 1e-6 * abs(gb)
    assert ("rins_only" in plan.stats) is rins_only and "lagrange_bound" in plan.stats
