"""A short soak: the replay loop with random collect/apply failures stays safe."""

from __future__ import annotations

import pytest

from heteroscale.commands.soak import soak
from models.config import load_config
from sim.traces import load_curve
from tests.conftest import BUNDLED_TRACE, DEMO_CONFIG, ROOT

pytestmark = pytest.mark.faults


def test_two_days_with_heavy_faults_keep_every_invariant() -> None:
    cfg = load_config(DEMO_CONFIG)
    rates = ROOT / "data" / "traces" / "servegen" / "servegen_m-small_10min.csv"
    day2, _ = load_curve(rates, lengths=BUNDLED_TRACE).split(2 / 14)  # two days, one gap window
    curves = {s.name: day2.scaled_to_peak(p) for s, p in zip(cfg.services, (25.0, 12.0, 8.0), strict=True)}
    out = soak(cfg, curves, policy="heteroscale-paper", collect_fail=0.2, apply_fail=0.1, seed=7, placement="greedy")
    clean, faulty = out["runs"]["fault-free"], out["runs"]["faults"]
    assert clean["failed_collects"] == clean["failed_applies"] == 0
    assert faulty["failed_collects"] > 400 and faulty["failed_applies"] > 100  # 2 days = 2,880 periods
    assert clean["invariant_violations"] == faulty["invariant_violations"] == 0, faulty["first_violations"]
    assert abs(out["attainment_drop_points"]) <= 1.0
