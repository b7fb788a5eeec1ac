"""The twin's tick memo (`Twin.memo_ticks`): the same ticks, stats and summaries as recomputing
every tick, on the demo services and on a small synthetic fleet."""

from __future__ import annotations

import functools
from collections.abc import Mapping

import pytest

from flows import replay as replay_mod
from flows.replay import ReplayResult, replay
from models.config import ClusterConfig, load_config
from sim.fleet import synthetic_fleet
from sim.traces import LoadCurve
from sim.twin import Twin
from tests.conftest import DEMO_CONFIG
from tests.unit.test_decision_cache import _curve


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HETEROSCALE_CAPACITY_CACHE", str(tmp_path_factory.getbasetemp() / "capcache"))


def _run(
    monkeypatch: pytest.MonkeyPatch,
    cfg: ClusterConfig,
    curves: Mapping[str, LoadCurve],
    policy: str,
    *,
    memo: bool,
) -> ReplayResult:
    monkeypatch.setattr(replay_mod, "Twin", functools.partial(Twin, memo_ticks=memo))
    result = replay(cfg, curves, policy, keep_ticks=True, placement="greedy")
    monkeypatch.setattr(replay_mod, "Twin", Twin)
    return result


@pytest.mark.parametrize("shape", ["wave", "steps", "bursty"])
@pytest.mark.parametrize("policy", ["heteroscale-paper", "hpa-gpu-util", "heteroscale"])
def test_memoised_ticks_equal_recomputed_ticks(monkeypatch: pytest.MonkeyPatch, policy: str, shape: str) -> None:
    cfg = load_config(DEMO_CONFIG)
    curves = {s.name: _curve(shape) for s in cfg.services}
    fast = _run(monkeypatch, cfg, curves, policy, memo=True)
    plain = _run(monkeypatch, cfg, curves, policy, memo=False)
    assert fast.twin.ticks == plain.twin.ticks
    assert fast.twin.stats == plain.twin.stats
    assert fast.scale_actions == plain.scale_actions


def test_memoised_ticks_on_a_synthetic_fleet(monkeypatch: pytest.MonkeyPatch) -> None:
    fleet = synthetic_fleet(services=3, days=0.5, seed=2)
    fast = _run(monkeypatch, fleet.config, fleet.curves, "heteroscale-paper", memo=True)
    plain = _run(monkeypatch, fleet.config, fleet.curves, "heteroscale-paper", memo=False)
    assert len(fast.twin.ticks) > 1000
    assert fast.twin.ticks == plain.twin.ticks
    assert fast.twin.stats == plain.twin.stats
    drop = {"wall_s"}
    assert {k: v for k, v in fast.summary().items() if k not in drop} == {
        k: v for k, v in plain.summary().items() if k not in drop
    }
