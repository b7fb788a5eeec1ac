"""Curation (Algorithm 1): an interior P/D optimum, and a result the config accepts."""

from __future__ import annotations

import numpy as np
import pytest

from flows.curate import Lengths, curate, pd_curve, service_yaml
from models.config import load_config, parse_config
from sim.traces import LoadCurve
from sim.twin import TwinParams, engines_for
from tests.conftest import DEMO_CONFIG


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HETEROSCALE_CAPACITY_CACHE", str(tmp_path_factory.getbasetemp() / "capcache"))


def test_pd_curve_has_an_interior_optimum() -> None:
    cfg = load_config(DEMO_CONFIG)
    rows = pd_curve(cfg.service("chat"), engines_for(cfg, TwinParams()), Lengths(1155, 211), 16)
    best = max(range(len(rows)), key=lambda i: rows[i][2])
    assert 0 < best < len(rows) - 1
    assert rows[best][2] > 1.3 * min(rows[0][2], rows[-1][2])


def test_curate_writes_a_config_the_loader_accepts() -> None:
    cfg = load_config(DEMO_CONFIG)
    n = 60
    curve = LoadCurve(
        "c", 60.0, np.arange(n) * 60.0, np.linspace(5, 15, n), np.full(n, 1155.0), np.full(n, 211.0), np.ones(n, bool)
    )
    res = curate(cfg, "chat", curve, shares=(0.5, 0.8), policies=("heteroscale-paper",))
    assert len(res.candidates) == 2 and res.chosen in res.candidates
    new = parse_config(service_yaml(cfg, res.service))
    svc = new.service("chat")
    assert svc.policy.target_per_instance == res.chosen.target_per_instance
    assert (svc.pd_ratio.prefill, svc.pd_ratio.decode) == tuple(map(float, res.ratio))


def test_each_policy_is_tuned_on_its_own_knob() -> None:
    cfg = load_config(DEMO_CONFIG)
    n = 60
    curve = LoadCurve(
        "c", 60.0, np.arange(n) * 60.0, np.linspace(5, 15, n), np.full(n, 1155.0), np.full(n, 211.0), np.ones(n, bool)
    )
    res = curate(cfg, "chat", curve, shares=(0.5, 0.8), headrooms=(0.7, 0.9))
    heteroscale = [c for c in res.candidates if c.policy == "heteroscale"]
    assert sorted(c.slo_headroom for c in heteroscale) == [0.7, 0.9]
    assert all(c.slo_headroom is None for c in res.candidates if c.policy == "heteroscale-paper")
    svc = parse_config(service_yaml(cfg, res.service)).service("chat")
    assert svc.policy.slo_headroom in (0.7, 0.9)
    paper_targets = {c.target_per_instance for c in res.candidates if c.policy == "heteroscale-paper"}
    assert svc.policy.target_per_instance in paper_targets
