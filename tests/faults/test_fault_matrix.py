"""Fault injection on whole `scale_cluster` runs (twin backend, temporary Prefect API).

Each test injects one fault and asserts the safe behaviour and the record: no scale-in on
missing, stale or invalid signals; nothing applied when a step fails; every run recorded with
its status and failed step; one run per cluster at a time; re-running after a crash converges.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.scale_cluster import scale_cluster
from models import settings
from models.store import ScalingRun
from tasks.store import Store
from tests.conftest import DEMO_CONFIG

pytestmark = [pytest.mark.faults, pytest.mark.integration]
CFG = str(DEMO_CONFIG)


def _cells(data_dir: Path) -> list:
    return json.loads((data_dir / "twin" / "demo.json").read_text())["cells"]


def _last_run() -> ScalingRun:
    return Store(settings.database_url()).runs("demo", 1)[0]


@pytest.fixture()
def seeded(prefect_harness: None, data_dir: Path) -> Path:
    """A twin that has run once, so there is a fleet to protect."""
    scale_cluster(config_path=CFG)
    return data_dir


@pytest.mark.parametrize("fault", ["error", "timeout"])
def test_signals_source_down_fails_the_run_and_applies_nothing(seeded: Path, fault: str) -> None:
    before = _cells(seeded)
    with pytest.raises((ConnectionError, TimeoutError)):
        scale_cluster(config_path=CFG, faults={"signals": fault})
    run = _last_run()
    assert run.status == "failed" and run.failed_step == "collect signals"
    assert _cells(seeded) == before
    # The lock was released: the next run goes through.
    assert scale_cluster(config_path=CFG)["status"] in ("applied", "held")


@pytest.mark.parametrize("fault", ["empty", "nan", "inf", "stale", "negative"])
def test_unusable_signals_hold_every_service(seeded: Path, fault: str) -> None:
    before = _cells(seeded)
    out = scale_cluster(config_path=CFG, faults={"signals": fault})
    assert out["status"] == "held" and out["changes"] == 0
    for d in out["decisions"].values():
        assert d["action"] == "hold" and "hold:" in d["reason"]
    assert _cells(seeded) == before
    decisions = Store(settings.database_url()).decisions(out["run_id"])
    assert all(d.action == "hold" for d in decisions)


def test_partial_signals_hold_only_the_blind_services(seeded: Path) -> None:
    out = scale_cluster(config_path=CFG, faults={"signals": "partial"})
    blind = [n for n, d in out["decisions"].items() if "missing" in d["reason"]]
    assert blind, "half the services had no signals"
    for n in blind:
        assert out["decisions"][n]["action"] == "hold"
    for d in out["decisions"].values():
        assert d["action"] != "scale_in" or "missing" not in d["reason"]


def test_cluster_unreadable_fails_before_deciding(seeded: Path) -> None:
    before = _cells(seeded)
    with pytest.raises(ConnectionError):
        scale_cluster(config_path=CFG, faults={"read_error_rate": 1.0})
    run = _last_run()
    assert (run.status, run.failed_step) == ("failed", "read cluster")
    assert _cells(seeded) == before


def test_apply_error_leaves_cluster_and_policy_state_unchanged(seeded: Path) -> None:
    store = Store(settings.database_url())
    states_before = store.load_states("demo")
    before = _cells(seeded)
    with pytest.raises(ConnectionError):
        # Signals forced to breach TBT so the policy wants to scale out, then apply fails.
        scale_cluster(
            config_path=CFG, twin_peak_rps={"chat": 200, "code": 100, "summarize": 60}, faults={"apply_error_rate": 1.0}
        )
    run = _last_run()
    assert (run.status, run.failed_step) == ("failed", "apply")
    assert _cells(seeded) == before
    assert store.load_states("demo") == states_before  # cooldowns not started by a failed apply


def _planned(run_id: int) -> dict[tuple, int]:
    from sqlmodel import Session, select

    from models.store import PlacementRecord

    with Session(Store(settings.database_url()).engine) as s:
        rec = s.exec(select(PlacementRecord).where(PlacementRecord.run_id == run_id)).one()
    return {(svc, role, g, s1): n for svc, role, g, s1, n in json.loads(rec.cells_json)}


def _running(data_dir: Path) -> dict[tuple, int]:
    running: dict[tuple, float] = {}
    for svc, role, g, s1, _ready_at, n in _cells(data_dir):
        running[(svc, role, g, s1)] = running.get((svc, role, g, s1), 0) + n
    return {k: int(v) for k, v in running.items() if v}


def test_crash_between_apply_steps_then_rerun_converges(tmp_path: Path) -> None:
    """Apply changes one cell and crashes. Apply is idempotent — it moves the cluster towards the
    plan from wherever it is — so re-running the same plan completes it, and a third run changes
    nothing."""
    import random

    from models.config import load_config
    from models.values import ApplyMode, RoleCounts
    from sim.faults import FaultPlan, FaultyCluster, InjectedFault
    from sim.live import TwinBackend, demo_curves
    from tasks.core.placement import place_greedy

    cfg = load_config(CFG)
    twin = TwinBackend(cfg, state_path=tmp_path / "twin.json", curves=demo_curves(cfg, settings.BUNDLED_TRACE))
    view = twin.read_state(cfg, 0.0)
    plan = place_greedy(
        cfg, view, {"chat": RoleCounts(12, 16), "code": RoleCounts(9, 12), "summarize": RoleCounts(6, 6)}
    )
    assert view.placement.churn(plan.placement) > 3
    faulty = FaultyCluster(twin, FaultPlan(apply_crash_after=1), random.Random(0))
    with pytest.raises(InjectedFault, match="crash after 1"):
        faulty.apply(cfg, plan, ApplyMode.APPLY, 0.0)
    reloaded = TwinBackend(cfg, state_path=tmp_path / "twin.json", curves=demo_curves(cfg, settings.BUNDLED_TRACE))
    partial = reloaded.read_state(cfg, 0.0).placement
    keys = set(view.placement.cells) | set(partial.cells)
    changed = [k for k in keys if view.placement.cells.get(k, 0) != partial.cells.get(k, 0)]
    assert len(changed) == 1  # exactly one cell was changed (and persisted) before the crash
    result = reloaded.apply(cfg, plan, ApplyMode.APPLY, 0.0)
    assert result.applied and reloaded.read_state(cfg, 0.0).placement.churn(plan.placement) == 0
    assert reloaded.apply(cfg, plan, ApplyMode.APPLY, 0.0).changes == ()


def test_second_concurrent_run_is_skipped(seeded: Path) -> None:
    store = Store(settings.database_url())
    import time

    assert store.try_lock("demo", 999_999, now_wall_s=time.time(), ttl_s=600) is None
    before = _cells(seeded)
    out = scale_cluster(config_path=CFG)
    assert out["status"] == "skipped"
    run = _last_run()
    assert run.status == "skipped" and "999999" in (run.error or "")
    assert _cells(seeded) == before
    store.unlock("demo", 999_999)
    assert scale_cluster(config_path=CFG)["status"] in ("applied", "held")


def test_expired_lock_is_taken_over(seeded: Path) -> None:
    store = Store(settings.database_url())
    assert store.try_lock("demo", 424_242, now_wall_s=0.0, ttl_s=1.0) is None  # expired in 1970
    assert scale_cluster(config_path=CFG)["status"] in ("applied", "held")


def test_store_unavailable_means_no_apply(prefect_harness: None, data_dir: Path, tmp_path: Path) -> None:
    scale_cluster(config_path=CFG)
    before = _cells(data_dir)
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the database directory should be")
    with pytest.raises(Exception, match="unable to open database file"):
        scale_cluster(config_path=CFG, database_url=f"sqlite:///{blocked}/store.db")
    assert _cells(data_dir) == before
