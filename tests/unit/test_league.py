"""League: every policy runs on the same load; oracle is the floor; auto peak fits the cluster."""

from __future__ import annotations

import numpy as np
import pytest

from flows.replay import ALL_POLICIES, AUTO_GPU_SHARE, fit_to_cluster, run_league, static_peak_gpus
from models.config import load_config
from sim.traces import LoadCurve
from tests.conftest import DEMO_CONFIG


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HETEROSCALE_CAPACITY_CACHE", str(tmp_path_factory.getbasetemp() / "capcache"))


def _wave(peak: float, n: int = 180) -> LoadCurve:
    rps = peak * (0.55 + 0.45 * np.sin(np.linspace(0, 2 * np.pi, n)))
    return LoadCurve("wave", 60.0, np.arange(n) * 60.0, rps, np.full(n, 1155.0), np.full(n, 211.0), np.ones(n, bool))


def test_every_policy_runs_and_reports_the_contract() -> None:
    cfg = load_config(DEMO_CONFIG)
    curves = {s.name: _wave(10.0) for s in cfg.services}
    rows = {r.policy: r.summary() for r in run_league(cfg, curves, ALL_POLICIES, keep_ticks=False, placement="greedy")}
    assert set(rows) == set(ALL_POLICIES)
    for r in rows.values():
        assert {"gpu_hours", "avg_gpu_util", "slo_attainment", "avg_sm_activity", "ttft_p99_s", "tbt_p99_s"} <= set(r)
    # Perfect foresight never holds more than provisioning for the peak all day.
    assert rows["oracle"]["gpu_hours"] < rows["static-peak"]["gpu_hours"]


def test_peak_auto_fills_about_80_percent_of_the_cluster() -> None:
    cfg = load_config(DEMO_CONFIG)
    curves, factor = fit_to_cluster(cfg, {s.name: _wave(1.0) for s in cfg.services})
    total = sum(p.nodes * p.gpus_per_node for p in cfg.topology.node_pools)
    used = static_peak_gpus(cfg, curves)
    assert factor > 0 and all(c.scale == pytest.approx(factor) for c in curves.values())
    assert AUTO_GPU_SHARE * total - 12 <= used <= AUTO_GPU_SHARE * total
