"""Issue 15 item 4: degenerate traces are clear errors (or a warning naming the detected unit),
naming the file's own row number and the raw text."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from typer.testing import CliRunner

from heteroscale.cli import app
from sim.traces import TraceError, TraceWarning, load_curve, load_requests
from tests.conftest import DEMO_CONFIG

runner = CliRunner()
HEADER = "timestamp,input_tokens,output_tokens\n"


def _trace(tmp_path: Path, body: str, name: str = "t.csv") -> Path:
    p = tmp_path / name
    p.write_text(HEADER + body)
    return p


def _replay(*args: str) -> object:
    return runner.invoke(app, ["replay", "--config", str(DEMO_CONFIG), "--policy", "static-peak", *args])


def test_one_row_and_equal_timestamps_span_zero_seconds(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="spans 0 s"):
        load_requests(_trace(tmp_path, "5,10,5\n"))
    with pytest.raises(TraceError, match="all 3 request\\(s\\) are at the same time"):
        load_requests(_trace(tmp_path, "5,10,5\n5,10,5\n5,1,1\n"))


def test_fewer_than_two_control_periods_and_skip_leaving_too_little(tmp_path: Path) -> None:
    short = _trace(tmp_path, "".join(f"{i},10,5\n" for i in range(60)))
    res = _replay("--trace", str(short), "--out", str(tmp_path / "o"))
    assert res.exit_code == 2 and "fewer than two control periods" in res.output
    long = _trace(tmp_path, "".join(f"{i * 10},10,5\n" for i in range(60)), "long.csv")
    res = _replay("--trace", str(long), "--skip", "0.999", "--out", str(tmp_path / "o"))
    assert res.exit_code == 2 and "after --skip 0.999" in res.output
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("cell", ["inf", "nan", "-inf", "1e400"])
def test_non_finite_tokens_name_the_row_and_raw_text(tmp_path: Path, cell: str) -> None:
    p = _trace(tmp_path, f"0,10,5\n1,{cell},5\n2,10,5\n")
    with pytest.raises(TraceError, match=rf"row 3: input_tokens must be a finite non-negative number, got '{cell}'"):
        load_requests(p)


def test_empty_or_nan_timestamp_is_reported_at_its_file_row_with_raw_text(tmp_path: Path) -> None:
    # Line 3 is blank (pandas skips it): the bad cell is on line 5 of the file.
    p = _trace(tmp_path, "0,10,5\n\n1,10,5\n,10,5\n")
    with pytest.raises(TraceError) as exc:
        load_requests(p)
    assert "row 5: timestamp" in str(exc.value) and "got ''" in str(exc.value)
    assert "np.float64" not in str(exc.value)
    p = _trace(tmp_path, "0,10,5\n1,10,5\nnan,10,5\n", "nan.csv")
    with pytest.raises(TraceError, match=r"row 4: timestamp .*'nan'"):
        load_requests(p)


def test_millisecond_timestamps_are_detected_or_refused(tmp_path: Path) -> None:
    # Relative milliseconds: a 1-h log reads as 41 days of seconds. Refused with the fix ...
    rel = _trace(tmp_path, "".join(f"{i * 1800},10,5\n" for i in range(2000)))
    with pytest.raises(TraceError, match=r"span 41.6 days if they are seconds.*--time-unit ms"):
        load_curve(rel)
    assert load_curve(rel, time_unit="ms").duration_s == pytest.approx(3600, abs=20)
    # ... epoch milliseconds are unambiguous: converted, with a warning naming the unit.
    epoch = _trace(tmp_path, "".join(f"{1_700_000_000_000 + i * 1800},10,5\n" for i in range(2000)), "e.csv")
    with pytest.warns(TraceWarning, match="read as epoch milliseconds"):
        assert load_curve(epoch).duration_s == pytest.approx(3600, abs=20)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_curve(epoch, time_unit="ms").duration_s == pytest.approx(3600, abs=20)


def test_rate_trace_with_inf_rate_and_duplicate_windows(tmp_path: Path) -> None:
    lengths = _trace(tmp_path, "0,10,5\n1,10,5\n", "len.csv")
    p = tmp_path / "r.csv"
    p.write_text("window_start_s,req_per_s\n0,1\n60,inf\n120,1\n")
    with pytest.raises(TraceError, match=r"row 3: req_per_s must be a finite non-negative rate .*got 'inf'"):
        load_curve(p, lengths=lengths)
    p.write_text("window_start_s,req_per_s\n0,1\n60,1\n60,1\n")
    with pytest.raises(TraceError, match="row 4: window_start_s '60' does not increase"):
        load_curve(p, lengths=lengths)


def test_impossible_requests_and_rates_need_an_explicit_flag(tmp_path: Path) -> None:
    rows = "".join(f"{i * 2},500,{10**15 if i == 50 else 100}\n" for i in range(200))
    p = _trace(tmp_path, rows)
    res = _replay("--trace", str(p), "--out", str(tmp_path / "o"))
    assert res.exit_code == 2 and "max_context_tokens" in res.output and "--allow-implausible" in res.output
    assert not (tmp_path / "o").exists()
    ok = _trace(tmp_path, "".join(f"{i * 2},500,100\n" for i in range(200)), "ok.csv")
    res = _replay("--trace", str(ok), "--peak-rps", "1e9", "--out", str(tmp_path / "o"))
    assert res.exit_code == 2 and "what the whole cluster could serve" in res.output
