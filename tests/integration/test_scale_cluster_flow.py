"""`scale_cluster` as a real Prefect flow (temporary Prefect API) on the twin backend."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.scale_cluster import scale_cluster
from models import settings
from tasks.store import Store
from tests.conftest import DEMO_CONFIG

pytestmark = pytest.mark.integration


def test_runs_are_recorded_and_the_twin_persists(prefect_harness: None, data_dir: Path) -> None:
    first = scale_cluster(config_path=str(DEMO_CONFIG))
    second = scale_cluster(config_path=str(DEMO_CONFIG))
    store = Store(settings.database_url())
    runs = store.runs("demo")
    assert [r.id for r in runs] == [second["run_id"], first["run_id"]]
    for r in runs:
        assert r.status in ("applied", "held") and r.flow_run_id and r.now_s is not None
        assert set(json.loads(r.signals_json)) == {"chat", "code", "summarize"}
    # The twin's clock advanced one control period per run.
    assert runs[0].now_s - runs[1].now_s == pytest.approx(60.0)
    decisions = store.decisions(first["run_id"])
    assert {d.service for d in decisions} == {"chat", "code", "summarize"}
    assert all(d.reason for d in decisions)
    if first["changes"]:
        assert store.changes(first["run_id"]) and first["status"] == "applied"
    # Policy state survived between runs.
    assert store.load_states("demo")


def test_dry_run_changes_nothing_and_says_so(prefect_harness: None, data_dir: Path) -> None:
    scale_cluster(config_path=str(DEMO_CONFIG))  # seeds the twin
    twin_state = (data_dir / "twin" / "demo.json").read_text()
    cells_before = json.loads(twin_state)["cells"]
    out = scale_cluster(config_path=str(DEMO_CONFIG), mode="dry-run")
    assert out["status"] in ("dry-run", "held")
    assert json.loads((data_dir / "twin" / "demo.json").read_text())["cells"] == cells_before
    for ch in Store(settings.database_url()).changes(out["run_id"]):
        assert ch.mode == "dry-run" and not ch.applied


def test_a_failed_run_is_recorded_with_its_step(prefect_harness: None, data_dir: Path) -> None:
    with pytest.raises(ValueError, match="unknown signals backend"):
        scale_cluster(config_path=str(DEMO_CONFIG), signals_backend="nope")
    run = Store(settings.database_url()).runs("demo")[0]
    assert run.status == "failed" and run.failed_step == "connect backends"
    assert "unknown signals backend 'nope'" in (run.error or "")


def test_each_run_prunes_samples_older_than_the_retention(prefect_harness: None, data_dir: Path) -> None:
    store = Store(settings.database_url())
    # The twin's clock is trace seconds from 0: a sample 30 days before it is past the default
    # retention (the 8-day history window); one an hour before it is kept.
    store.append_samples("demo", -30 * 86400.0, {"chat": 1.0})
    store.append_samples("demo", -3600.0, {"chat": 2.0})
    out = scale_cluster(config_path=str(DEMO_CONFIG))
    now = store.runs("demo", 1)[0].now_s
    kept = store.history("demo", -1e12)["chat"]
    assert (-30 * 86400.0, 1.0) not in kept and (-3600.0, 2.0) in kept
    assert out["status"] in ("applied", "held") and kept[-1][0] == now
