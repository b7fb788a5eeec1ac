"""Replay end to end through the CLI: summary contract, the paper beats static-peak, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from heteroscale.cli import app
from models.config import load_config
from models.values import ApplyMode, CellKey, Placement, PlacementPlan, Role
from sim.traces import LoadCurve
from sim.twin import Twin
from tests.conftest import BUNDLED_TRACE, DEMO_CONFIG

runner = CliRunner()
PEAKS = ["--peak-rps", "chat=60", "--peak-rps", "code=30", "--peak-rps", "summarize=20"]


def test_replay_writes_the_summary_contract_and_paper_beats_static_peak(tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["replay", "--config", str(DEMO_CONFIG), "--trace", str(BUNDLED_TRACE), *PEAKS, "--out", str(out)]
    args += ["--policy", "static-peak", "--policy", "heteroscale-paper", "--policy", "hpa-gpu-util"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    rows = {r["policy"]: r for r in summary["results"]}
    assert set(rows) == {"static-peak", "heteroscale-paper", "hpa-gpu-util"}
    for r in rows.values():
        assert set(r) >= {
            "policy",
            "gpu_hours",
            "avg_gpu_util",
            "slo_attainment",
            "scale_actions",
            "simulated_s",
            "wall_s",
        }
        assert 0 <= r["avg_gpu_util"] <= 1 and 0 <= r["slo_attainment"] <= 1
        assert r["simulated_s"] > 3000 and r["gpu_hours"] > 0
    assert rows["heteroscale-paper"]["gpu_hours"] < rows["static-peak"]["gpu_hours"]
    assert rows["static-peak"]["scale_actions"] == 0 and rows["heteroscale-paper"]["scale_actions"] > 0
    assert (out / "replay.png").stat().st_size > 10_000
    assert "| heteroscale-paper |" in (out / "report.md").read_text()


def test_bad_config_exits_2_with_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(DEMO_CONFIG.read_text().replace("control_period_s: 60", "control_period_s: -5"))
    res = runner.invoke(app, ["replay", "--config", str(bad), "--trace", str(BUNDLED_TRACE)])
    assert res.exit_code == 2
    assert "cluster.control_period_s" in res.output and "Traceback" not in res.output


def test_trace_with_missing_column_exits_2(tmp_path: Path) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text("TIMESTAMP,ContextTokens\n2023-11-16 18:15:46.6805900,374\n")
    res = runner.invoke(app, ["replay", "--config", str(DEMO_CONFIG), "--trace", str(trace)])
    assert res.exit_code == 2 and "GeneratedTokens" in res.output


def test_unknown_policy_and_unknown_service_are_clear(tmp_path: Path) -> None:
    res = runner.invoke(
        app, ["replay", "--config", str(DEMO_CONFIG), "--trace", str(BUNDLED_TRACE), "--policy", "nope"]
    )
    assert res.exit_code == 2 and "unknown policy" in res.output
    res = runner.invoke(
        app, ["replay", "--config", str(DEMO_CONFIG), "--trace", str(BUNDLED_TRACE), "--peak-rps", "chatt=5"]
    )
    assert res.exit_code == 2 and "no service 'chatt'" in res.output


def test_validate_command() -> None:
    res = runner.invoke(app, ["validate", str(DEMO_CONFIG)])
    assert res.exit_code == 0 and "192 GPUs" in res.output


def _flat_curve(rps: float, n: int = 120, observed: np.ndarray | None = None) -> LoadCurve:
    return LoadCurve(
        name="flat",
        dt_s=10.0,
        t_s=np.arange(n) * 10.0,
        req_per_s=np.full(n, rps),
        mean_input_tokens=np.full(n, 1000.0),
        mean_output_tokens=np.full(n, 200.0),
        observed=np.ones(n, dtype=bool) if observed is None else observed,
    )


def test_twin_cold_start_and_missing_windows() -> None:
    cfg = load_config(DEMO_CONFIG)
    curves = {s.name: _flat_curve(5.0) for s in cfg.services}
    gaps = np.ones(120, dtype=bool)
    gaps[12:18] = False  # one whole control period unobserved
    curves["chat"] = _flat_curve(5.0, observed=gaps)
    twin = Twin(config=cfg, load=curves, tick_s=10.0)
    key = CellKey("chat", Role.DECODE, "a100", "b1")
    twin.seed(Placement.of([(CellKey("chat", Role.PREFILL, "h100", "a1"), 1), (key, 1)]))
    twin.advance(60)
    before = twin.read_signals(cfg, 60)["chat"]
    assert before.decode_tps is not None and before.decode_tps > 0
    # Add a decode instance: its GPUs count at once, its capacity only after the cold start.
    plan = PlacementPlan(placement=Placement.of([*twin.placement().cells.items(), (key, 1)]), method="test", reason="")
    twin.apply(cfg, plan, ApplyMode.APPLY, 60)
    assert twin._ready(key) == 1 and twin.placement().cells[key] == 2
    twin.advance(60 + cfg.service("chat").cold_start_s)
    assert twin._ready(key) == 2
    # The unobserved period reads as missing, never as zero load.
    twin.read_signals(cfg, twin.now_s)
    twin2 = Twin(config=cfg, load=curves, tick_s=10.0)
    twin2.seed(Placement.of([(CellKey("chat", Role.PREFILL, "h100", "a1"), 1), (key, 1)]))
    twin2.advance(120)
    twin2.read_signals(cfg, 120)
    twin2.advance(180)
    gap = twin2.read_signals(cfg, 180)["chat"]
    assert gap.decode_tps is None and gap.sampled_at_s is None
