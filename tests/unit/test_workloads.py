"""Workload shapes (sim/workloads.py) and `bench matrix` end to end in its quick mode."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from flows.matrix import FLOOR_POLICY, QUICK_POLICIES, Cell, with_floor_ratio
from heteroscale.cli import app
from heteroscale.commands.matrix import columns
from sim import workloads as wl
from sim.traces import curve_from_requests, load_requests
from tasks.core import capacity as cap
from tasks.core.capacity import EngineModel
from tests.conftest import BUNDLED_TRACE, DEMO_CONFIG


def requests(n: int = 600, duration_s: float = 600.0, seed: int = 0) -> pd.DataFrame:
    """Poisson-ish arrivals over `duration_s`, sizes like Azure conv's."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "t_s": np.sort(rng.uniform(0.0, duration_s, n)),
            "input_tokens": rng.integers(10, 4000, n).astype(float),
            "output_tokens": rng.integers(5, 600, n).astype(float),
        }
    )
    df.attrs["start_epoch_s"] = 1.7e9
    return df


# --- scale_sizes -------------------------------------------------------------------------------


@given(st.floats(0.05, 20), st.floats(0.05, 20))
@settings(max_examples=30, deadline=None)
def test_scale_sizes_scales_means_and_keeps_arrivals(fin: float, fout: float) -> None:
    base = requests(200)
    out = wl.scale_sizes(base, input_factor=fin, output_factor=fout)
    assert np.array_equal(out["t_s"].to_numpy(), base["t_s"].to_numpy())
    assert (out[["input_tokens", "output_tokens"]] >= 1).all().all()
    # Rounding to whole tokens (and the floor of one) moves the mean by at most one token.
    assert out["input_tokens"].mean() == pytest.approx(base["input_tokens"].mean() * fin, abs=1.0)
    assert out["output_tokens"].mean() == pytest.approx(base["output_tokens"].mean() * fout, abs=1.0)
    assert out.attrs["start_epoch_s"] == 1.7e9


def test_scale_sizes_rejects_non_positive_factors() -> None:
    with pytest.raises(ValueError, match="positive"):
        wl.scale_sizes(requests(10), input_factor=0.0)


# --- bursts --------------------------------------------------------------------------------------


def test_burst_schedule_every_five_minutes_from_150_s() -> None:
    assert list(wl.burst_starts_s(1200.0)) == [150.0, 450.0, 750.0, 1050.0]
    assert list(wl.burst_starts_s(455.0)) == [150.0]  # a burst must fit wholly


def test_bursts_raise_their_windows_to_the_factor_and_leave_the_rest() -> None:
    base = requests(1200, 1200.0)
    out = wl.add_bursts(base)
    mean_rps = len(base) / (base["t_s"].max() + 1e-9)
    goal = round(wl.BURST_FACTOR * mean_rps * wl.BURST_S)
    starts = wl.burst_starts_s(base["t_s"].max())
    t = out["t_s"].to_numpy()
    for s in starts:
        assert ((t >= s) & (t < s + wl.BURST_S)).sum() == goal
    inside = np.zeros(len(t), dtype=bool)
    for s in starts:
        inside |= (t >= s) & (t < s + wl.BURST_S)
    tb = base["t_s"].to_numpy()
    inside_base = np.zeros(len(tb), dtype=bool)
    for s in starts:
        inside_base |= (tb >= s) & (tb < s + wl.BURST_S)
    assert np.array_equal(np.sort(t[~inside]), np.sort(tb[~inside_base]))  # nothing added outside
    assert np.all(np.diff(t) >= 0)
    # Added sizes come from the trace itself.
    assert set(out["input_tokens"]) <= set(base["input_tokens"])


def test_bursts_are_deterministic_per_seed() -> None:
    base = requests(600)
    a, b = wl.add_bursts(base, seed=1), wl.add_bursts(base, seed=1)
    pd.testing.assert_frame_equal(a, b)
    assert not wl.add_bursts(base, seed=2).equals(a)


def test_bursts_make_a_10s_curve_spiky() -> None:
    base = requests(1200, 1200.0)
    flat = wl.ShapeStats.of(curve_from_requests(base, dt_s=10.0, name="x")).peak_to_mean_rps
    spiky = wl.ShapeStats.of(curve_from_requests(wl.add_bursts(base), dt_s=10.0, name="x")).peak_to_mean_rps
    assert spiky > 4.0 > flat


# --- mix shift, heads, split point -------------------------------------------------------------


def test_switch_sizes_changes_sizes_at_the_time_on_the_same_arrivals() -> None:
    base = requests(400)
    heavy = wl.scale_sizes(base, input_factor=2.0, output_factor=0.125)
    out = wl.switch_sizes(base, heavy, 300.0)
    early = out["t_s"] < 300.0
    assert out.loc[early, "input_tokens"].equals(base.loc[early, "input_tokens"])
    assert out.loc[~early, "input_tokens"].equals(heavy.loc[~early, "input_tokens"])
    assert out.loc[~early, "output_tokens"].equals(heavy.loc[~early, "output_tokens"])
    with pytest.raises(ValueError, match="same arrivals"):
        wl.switch_sizes(base, requests(400, seed=3), 300.0)


def test_heads_and_split_point() -> None:
    base = requests(600)
    assert wl.head_requests(base, 100.0)["t_s"].max() < 100.0
    curve = curve_from_requests(base, dt_s=10.0, name="x")
    assert wl.head_curve(curve, 95.0).duration_s == 100.0
    assert wl.head_curve(curve, 1e9).duration_s == curve.duration_s
    first, second = curve.split(0.5)
    assert wl.split_at_s(curve, 0.5) == first.duration_s == second.start_epoch_s - curve.start_epoch_s


def test_shape_stats_are_request_weighted() -> None:
    base = requests(600)
    s = wl.ShapeStats.of(curve_from_requests(base, dt_s=10.0, name="x"))
    assert s.mean_input_tokens == pytest.approx(base["input_tokens"].mean())
    assert s.mean_output_tokens == pytest.approx(base["output_tokens"].mean())


# --- the feasible TTFT SLO -----------------------------------------------------------------------


def test_ttft_floor_is_the_p99_prompt_prefill_plus_its_kv_transfer() -> None:
    e = EngineModel("h100", 2, 0.03, 1e-4, 1e-9, 0.0, 0.0, 0.0, 1000.0, 1e12, "test")
    p99 = cap.P99_INPUT_FACTOR * 1000.0
    want = e.prefill_s(1, p99 * 0.5) + 1000.0 * p99 / (25e9 * 0.8)
    assert wl.ttft_floor_s(e, 1000.0, 1000.0, prefix_cache_hit=0.5) == pytest.approx(want)
    assert wl.feasible_ttft_slo_s(3.9) == 6.0  # 1.5 x 3.9 = 5.85, up to the half second
    assert wl.feasible_ttft_slo_s(2.0) == 3.0


# --- the matrix: floor ratio, optional columns, end to end -------------------------------------


def test_floor_ratio_prefers_cost_and_needs_the_floor() -> None:
    rows = [{"policy": "a", "gpu_hours": 10.0}, {"policy": FLOOR_POLICY, "gpu_hours": 8.0}]
    assert [r["ratio_to_floor"] for r in with_floor_ratio(rows)] == [1.25, 1.0]
    costed = [{**r, "cost": c} for r, c in zip(rows, (30.0, 40.0), strict=True)]
    assert [r["ratio_to_floor"] for r in with_floor_ratio(costed)] == [0.75, 1.0]
    assert with_floor_ratio(rows[:1])[0]["ratio_to_floor"] is None


def test_optional_columns_appear_when_the_rows_have_them() -> None:
    plain = [{"cell": "c", "rows": [{"policy": "a", "gpu_hours": 1.0, "slo_attainment": 0.9}]}]
    assert "cost" not in [h for h, _ in columns(plain)]
    rich = [
        {
            "cell": "c",
            "rows": [{"policy": "a", "gpu_hours": 1.0, "cost": 3.0, "slo_attainment_feasible": 0.99}],
            "slo_floor": {"chat": {"feasible": False}},
        }
    ]
    cols = dict(columns(rich))
    assert {"cost", "attainment (feasible)", "SLO feasible"} <= set(cols)
    assert cols["SLO feasible"](rich[0], rich[0]["rows"][0]) == "no"


def test_quick_matrix_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "m"
    res = CliRunner().invoke(
        app, ["bench", "matrix", "--quick", "--config", str(DEMO_CONFIG), "--out", str(out), "--json"]
    )
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "matrix.json").read_text())
    md = (out / "matrix.md").read_text()
    assert all(f"| conversation | {p} |" in md for p in QUICK_POLICIES)
    assert (out / "matrix.png").stat().st_size > 10_000
    cells = {c["cell"]: c for c in doc["cells"]}
    assert list(cells) == [c.value for c in Cell]
    for c in cells.values():
        assert [r["policy"] for r in c["rows"]] == list(QUICK_POLICIES)
        for r in c["rows"]:
            assert {"gpu_hours", "slo_attainment", "unmet_periods", "ratio_to_floor"} <= set(r)
        assert next(r for r in c["rows"] if r["policy"] == FLOOR_POLICY)["ratio_to_floor"] == 1.0
        assert (out / "cells" / c["cell"] / "summary.json").exists()

    def stat(cell: Cell, key: str, part: str = "all") -> float:
        return cells[cell.value]["shape"][part][key]

    conv_in, conv_out = stat(Cell.CONVERSATION, "mean_input_tokens"), stat(Cell.CONVERSATION, "mean_output_tokens")
    assert stat(Cell.PREFILL_HEAVY, "mean_input_tokens") == pytest.approx(2 * conv_in, rel=0.01)
    assert stat(Cell.PREFILL_HEAVY, "mean_output_tokens") == pytest.approx(conv_out / 8, rel=0.05)
    assert stat(Cell.DECODE_HEAVY, "mean_output_tokens") == pytest.approx(6 * conv_out, rel=0.01)
    assert stat(Cell.LONG_CONTEXT_FEASIBLE, "mean_input_tokens") == pytest.approx(8 * conv_in, rel=0.01)
    assert stat(Cell.PREFILL_HEAVY_BURSTY, "peak_to_mean_rps") > 1.5 * stat(Cell.CONVERSATION, "peak_to_mean_rps")
    # Mix shift: conversation sizes on the curated half, prefill-heavy on the evaluated one.
    conv_eval = stat(Cell.CONVERSATION, "mean_input_tokens", "evaluate")
    assert stat(Cell.MIX_SHIFT, "mean_input_tokens", "curate") == stat(Cell.CONVERSATION, "mean_input_tokens", "curate")
    assert stat(Cell.MIX_SHIFT, "mean_input_tokens", "evaluate") == pytest.approx(2 * conv_eval, rel=0.01)
    # Long context: the feasible cell's SLO was raised above its floor; the other keeps the config's.
    feas, cfg_slo = cells[Cell.LONG_CONTEXT_FEASIBLE.value], cells[Cell.LONG_CONTEXT_CONFIG_SLO.value]
    for svc, slo in feas["ttft_slo_s"].items():
        assert slo >= min(feas["ttft_floor_s"][svc].values()) > cfg_slo["ttft_slo_s"][svc]
    # Diurnal: 10-minute windows from the rate trace.
    assert stat(Cell.DIURNAL, "duration_s") == 6 * 3600.0


def test_unknown_cell_is_a_clear_error(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["bench", "matrix", "--quick", "--cells", "nope", "--out", str(tmp_path)])
    assert res.exit_code == 2
    assert "unknown cell" in res.output


def test_bundled_trace_sizes_match_the_documented_factors() -> None:
    base = load_requests(BUNDLED_TRACE)
    heavy = wl.size_stats(wl.scale_sizes(base, input_factor=2.0, output_factor=1 / 8))
    assert math.isclose(heavy["mean_input_tokens"], 2 * base["input_tokens"].mean(), rel_tol=0.01)
    assert 20 < heavy["mean_output_tokens"] < 35
