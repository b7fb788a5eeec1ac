"""Reason codes (pure) and the exporter's series built from a store (no server)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from models.config import Role
from models.enums import ReasonCode, RunStatus, TargetSource
from models.values import Action, CellKey, Placement, PlacementPlan, ServiceSignals, Targets
from tasks.core.export import cell_replicas, reason_code
from tasks.exporter import StoreCollector, registry_for
from tasks.store import Store


def test_reason_codes_from_decisions() -> None:
    assert (
        reason_code(Action.HOLD, "hold", "signals-unavailable: vllm/decode_tps 503") is ReasonCode.SIGNALS_UNAVAILABLE
    )
    assert (
        reason_code(Action.HOLD, "hold", "hold: decode_tps or prefill load missing/stale") is ReasonCode.SIGNALS_MISSING
    )
    assert reason_code(Action.HOLD, "hold", "x; failed queries: vllm/ttft 500") is ReasonCode.SIGNALS_MISSING
    assert (
        reason_code(Action.HOLD, "proportional", "wants 5 decode; scale-out cooldown 20s left") is ReasonCode.COOLDOWN
    )
    assert reason_code(Action.HOLD, "proportional", "inside ±10% band") is ReasonCode.PROPORTIONAL
    assert reason_code(Action.SCALE_OUT, TargetSource.LATENCY, "tbt over slo") is ReasonCode.LATENCY
    assert reason_code("scale_in", "bounds", "min_instances") is ReasonCode.BOUNDS
    assert reason_code("hold", "unknown-source", "") is ReasonCode.HOLD


def test_cell_replicas_keeps_emptied_cells() -> None:
    a = CellKey("chat", Role.DECODE, "h100", "c1")
    b = CellKey("chat", Role.DECODE, "a100", "c2")
    got = cell_replicas(Placement({a: 3}), Placement({b: 2}))
    assert got == {b: (0, 2), a: (3, 0)}


def _store(tmp_path: Path) -> tuple[Store, int]:
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    run_id = store.start_run(cluster="demo", now_s=0.0, mode="export", backend="twin")
    cur = Placement({CellKey("chat", Role.DECODE, "h100", "c1"): 2, CellKey("chat", Role.PREFILL, "h100", "c1"): 1})
    plan = PlacementPlan(
        Placement({CellKey("chat", Role.DECODE, "h100", "c1"): 4, CellKey("chat", Role.PREFILL, "h100", "c1"): 2}),
        method="greedy",
        reason="",
    )
    store.finish_run(
        run_id,
        status=RunStatus.EXPORT,
        signals={"chat": ServiceSignals("chat", 0.0, decode_tps=1200.0, ttft_p99_s=None)},
        targets={"chat": Targets("chat", 2, 4, Action.SCALE_OUT, "decode_tps / target = 4", TargetSource.PROPORTIONAL)},
        plan=plan,
        current_cells=cur,
    )
    return store, run_id


def _samples(registry: object) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list] = {}
    for fam in text_string_to_metric_families(generate_latest(registry).decode()):  # type: ignore[arg-type]
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def test_exporter_series_from_the_last_run(tmp_path: Path) -> None:
    store, _ = _store(tmp_path)
    got = _samples(registry_for(store))
    assert got["heteroscale_exporter_store_up"] == [({}, 1.0)]
    desired = {(lb["service"], lb["role"]): v for lb, v in got["heteroscale_desired_replicas"]}
    assert desired == {("chat", "decode"): 4.0, ("chat", "prefill"): 2.0}
    current = {(lb["service"], lb["role"]): v for lb, v in got["heteroscale_current_replicas"]}
    assert current == {("chat", "decode"): 2.0, ("chat", "prefill"): 1.0}
    ((labels, _),) = got["heteroscale_decision_info"]
    assert labels == {"cluster": "demo", "service": "chat", "action": "scale_out", "reason_code": "proportional"}
    signals = {lb["signal"]: v for lb, v in got["heteroscale_signal"]}
    assert signals["decode_tps"] == 1200.0 and "ttft_p99_s" not in signals  # unread: absent, not 0
    assert got["heteroscale_run_info"][0][0]["mode"] == "export"


def test_stale_run_drops_the_decision_but_keeps_its_age(tmp_path: Path) -> None:
    store, _ = _store(tmp_path)
    later = dt.datetime.now(dt.UTC).timestamp() + 3600
    reg = CollectorRegistry()
    reg.register(StoreCollector(store, stale_after_s=900, clock=lambda: later))
    got = _samples(reg)
    assert "heteroscale_desired_replicas" not in got and "heteroscale_decision_info" not in got
    assert got["heteroscale_last_run_timestamp_seconds"]


def test_unreadable_store_reports_down_not_zeros(tmp_path: Path) -> None:
    store, _ = _store(tmp_path)
    store.engine.dispose()
    (tmp_path / "store.db").unlink()
    (tmp_path / "store.db").mkdir()  # the path now is a directory: sqlite cannot open it
    got = _samples(registry_for(store))
    assert got == {"heteroscale_exporter_store_up": [({}, 0.0)]}
