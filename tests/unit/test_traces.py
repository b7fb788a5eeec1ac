"""Trace loaders: both per-request layouts, rate traces with gaps, and clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sim.traces import TraceError, load_curve, load_requests
from tests.conftest import BUNDLED_TRACE, ROOT


def test_bundled_azure_trace_loads_with_its_published_figures() -> None:
    req = load_requests(BUNDLED_TRACE)
    assert len(req) == 19_366
    assert abs(req["input_tokens"].mean() - 1155) < 2 and abs(req["output_tokens"].mean() - 211) < 2
    curve = load_curve(BUNDLED_TRACE, dt_s=60)
    assert abs(curve.req_per_s.mean() - 5.5) < 0.1
    assert curve.start_epoch_s > 1.7e9  # 2023-11-16, parsed from the 7-digit timestamps


def test_generic_columns_with_seconds_and_peak_rescale(tmp_path: Path) -> None:
    p = tmp_path / "t.csv"
    p.write_text("timestamp,input_tokens,output_tokens\n" + "".join(f"{i * 0.5},100,20\n" for i in range(240)))
    c = load_curve(p, dt_s=10)
    assert np.allclose(c.req_per_s, 2.0)
    scaled = c.scaled_to_peak(8.0)
    assert scaled.peak_req_per_s == pytest.approx(8.0) and scaled.scale == pytest.approx(4.0)


def test_missing_column_names_the_file_and_what_is_expected(tmp_path: Path) -> None:
    p = tmp_path / "bad.csv"
    p.write_text("timestamp,input_tokens\n0,10\n")
    with pytest.raises(TraceError) as exc:
        load_curve(p)
    assert str(p) in str(exc.value) and "output_tokens" in str(exc.value)


def test_bad_value_names_the_row(tmp_path: Path) -> None:
    p = tmp_path / "bad.csv"
    p.write_text("timestamp,input_tokens,output_tokens\n0,10,5\n1,ten,5\n")
    with pytest.raises(TraceError, match="row 3: input_tokens"):
        load_curve(p)


def test_rate_trace_gaps_are_missing_not_zero() -> None:
    path = ROOT / "data" / "traces" / "servegen" / "servegen_m-small_10min.csv"
    c = load_curve(path, lengths=BUNDLED_TRACE)
    assert len(c.t_s) == 2016 and c.dt_s == 600
    assert (~c.observed).sum() == 37  # the published all_zero_gap count for m-small
    assert (c.req_per_s[~c.observed] > 0).all()  # load interpolated across the gap, never 0


def test_rate_trace_without_lengths_is_a_clear_error() -> None:
    path = ROOT / "data" / "traces" / "servegen" / "servegen_m-small_10min.csv"
    with pytest.raises(TraceError, match="--lengths"):
        load_curve(path)
