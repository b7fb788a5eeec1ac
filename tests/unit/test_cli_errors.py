"""Issue 15 items 5, 6 and 8: one clean error path, safe defaults, honest outputs."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

import heteroscale.commands.prefect as prefect_cmds
from flows.league import OUTPUT_FILES, prepare_out_dir
from heteroscale import __version__
from heteroscale.cli import app, explain
from tests.conftest import DEMO_CONFIG, ROOT

runner = CliRunner()
TINY = ROOT / "tests" / "data" / "tiny-cluster.yaml"


def _tiny_trace(tmp_path: Path, seconds: int = 150) -> Path:
    p = tmp_path / "tiny.csv"
    p.write_text("timestamp,input_tokens,output_tokens\n" + "".join(f"{i / 2},400,80\n" for i in range(2 * seconds)))
    return p


def _no_traceback(res: Any) -> None:
    assert "Traceback" not in res.output and "Traceback" not in (res.stderr or "")
    assert res.exception is None or isinstance(res.exception, SystemExit)


# --- item 5: clean errors -------------------------------------------------------------------


def test_brackets_in_an_error_print_as_they_are(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(DEMO_CONFIG.read_text().replace("name: demo", "name: '[red]fast'", 1))
    res = runner.invoke(app, ["validate", str(bad)])
    assert res.exit_code == 2
    _no_traceback(res)
    assert "'[red]fast'" in res.stderr  # the user's value, not eaten as a style
    assert "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$" in res.stderr  # the regex, whole


def test_bad_mode_or_backend_fails_before_prefect_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    import flows.scale_cluster

    def never(**_: Any) -> dict[str, Any]:
        raise AssertionError("scale_cluster must not start on a bad option")

    monkeypatch.setattr(flows.scale_cluster, "scale_cluster", never)
    for args in (["--mode", "nope"], ["--backend", "k8s"], ["--dry-run", "--advisory"], ["--kube"]):
        started = time.perf_counter()
        res = runner.invoke(
            app, ["scale", "--config", str(DEMO_CONFIG), *args] if args != ["--kube"] else ["scale", *args]
        )
        assert res.exit_code == 2, (args, res.output)
        assert time.perf_counter() - started < 5
        _no_traceback(res)


@pytest.mark.parametrize(
    ("exc", "code", "words"),
    [
        (httpx.ConnectError("[Errno 111] Connection refused"), 1, "connection refused"),
        (RuntimeError("Failed to reach API at http://127.0.0.1:9/api/"), 1, "is it running"),
        (socket.gaierror(-2, "Name or service not known"), 1, "cannot resolve"),
        (ssl.SSLCertVerificationError("certificate verify failed: CERTIFICATE_VERIFY_FAILED"), 1, "TLS"),
        (FileNotFoundError(2, "No such file or directory", "x.yaml"), 2, "x.yaml: no such file"),
        (IsADirectoryError(21, "Is a directory", "somedir"), 2, "somedir: is a directory"),
    ],
)
def test_known_failures_are_one_line_with_the_fix(exc: BaseException, code: int, words: str) -> None:
    if isinstance(exc, RuntimeError):
        exc.__cause__ = httpx.ConnectError("[Errno 111] Connection refused")
    got_code, line = explain(exc)
    assert got_code == code and words in line and "\n" not in line


def test_http_401_and_403_name_the_credentials() -> None:
    for status in (401, 403):
        req = httpx.Request("GET", "https://user:secret@api.example:6443/apis?x=1")
        err = httpx.HTTPStatusError("denied", request=req, response=httpx.Response(status, request=req))
        code, line = explain(err)
        assert code == 1 and str(status) in line and "https://api.example:6443/apis" in line
        assert "secret" not in line


def test_connection_refused_for_real_is_one_line() -> None:
    """A real refused Prefect API: one line, exit 1, no traceback (was 96-463 lines)."""
    env = {"PREFECT_API_URL": "http://127.0.0.1:9/api", "PATH": "/usr/bin:/bin", "HOME": str(ROOT)}
    import os

    env = {**os.environ, **env}
    res = subprocess.run(
        [sys.executable, "-m", "heteroscale.cli", "scale", "--config", str(DEMO_CONFIG)],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        cwd=ROOT,
    )
    assert res.returncode == 1, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    assert "connection refused by http://127.0.0.1:9/api" in res.stderr


def test_debug_shows_the_traceback_and_version_prints() -> None:
    res = runner.invoke(app, ["--debug", "pd-curve", "--config", str(DEMO_CONFIG), "--service", "nosuch"])
    assert res.exit_code != 0 and res.exception is not None and not isinstance(res.exception, SystemExit)
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and __version__ in res.output


def test_pd_curve_unknown_service_trace_dir_and_out_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    res = runner.invoke(app, ["pd-curve", "--config", str(DEMO_CONFIG), "--service", "nosuch"])
    assert res.exit_code == 2 and "no such service" in res.stderr and "KeyError" not in res.output
    res = runner.invoke(app, ["replay", "--config", str(TINY), "--trace", str(tmp_path)])
    assert res.exit_code == 2 and "is a directory" in res.stderr
    _no_traceback(res)
    import flows.replay

    def never(*_: Any, **__: Any) -> None:
        raise AssertionError("the replay must not run before --out is checked")

    monkeypatch.setattr(flows.replay, "run_league", never)
    out = tmp_path / "file"
    out.write_text("x")
    res = runner.invoke(
        app, ["replay", "--config", str(TINY), "--trace", str(_tiny_trace(tmp_path)), "--out", str(out)]
    )
    assert res.exit_code == 2 and "is a file, not a directory" in res.stderr


def test_corrupt_twin_state_is_one_line_with_the_fix(data_dir: Path) -> None:
    from flows.backends import make_backends
    from models.config import load_config
    from sim.live import TwinStateError

    state = data_dir / "twin" / "demo.json"
    state.parent.mkdir(parents=True)
    state.write_text('{"cells": [[')
    with pytest.raises(TwinStateError) as exc:
        make_backends(load_config(DEMO_CONFIG), "twin")
    code, line = explain(exc.value)
    assert code == 1 and str(state) in line and "delete the file" in line


def test_no_advice_names_an_option_the_command_lacks() -> None:
    res = runner.invoke(app, ["scale", "--help"])
    assert "--prometheus-url" in res.output  # tasks/prometheus.py advises it when no URL is set


# --- item 6: safe defaults -----------------------------------------------------------------


def test_scale_kube_needs_a_config_and_defaults_to_dry_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import flows.scale_cluster

    seen: list[dict[str, Any]] = []

    def fake(**kw: Any) -> dict[str, Any]:
        seen.append(kw)
        return {"run_id": 1, "status": kw["mode"], "changes": 0, "decisions": {}}

    monkeypatch.setattr(flows.scale_cluster, "scale_cluster", fake)
    res = runner.invoke(app, ["scale", "--kube"])
    assert res.exit_code == 2 and "--kube needs --config" in res.stderr
    res = runner.invoke(app, ["scale", "--kube", "--config", str(DEMO_CONFIG)])
    assert res.exit_code == 0, res.output
    assert seen[-1]["mode"] == "dry-run" and seen[-1]["backend"] == "kube"
    assert "dry-run" in res.stderr
    res = runner.invoke(app, ["scale", "--kube", "--config", str(DEMO_CONFIG), "--mode", "apply"])
    assert seen[-1]["mode"] == "apply"
    cfg = tmp_path / "apply.yaml"
    cfg.write_text(DEMO_CONFIG.read_text() + "\nkubernetes: {mode: apply}\n")
    res = runner.invoke(app, ["scale", "--kube", "--config", str(cfg)])
    assert res.exit_code == 0 and seen[-1]["mode"] == "apply"
    res = runner.invoke(app, ["scale", "--config", str(DEMO_CONFIG)])
    assert seen[-1]["mode"] == "apply" and seen[-1]["backend"] == "twin"  # the twin keeps its default


def test_deploy_refuses_without_an_api_url(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr(prefect_cmds.subprocess, "call", lambda argv: calls.append(argv) or 0)
    monkeypatch.setattr(prefect_cmds, "_prefect_api_url", lambda: None)
    res = runner.invoke(app, ["deploy"])
    assert res.exit_code == 2 and "no PREFECT_API_URL" in res.stderr and not calls
    res = runner.invoke(app, ["deploy", "--ephemeral"])
    assert res.exit_code == 0 and calls
    res = runner.invoke(app, ["deploy", "--target", "nowhere", "--ephemeral"])
    assert res.exit_code == 2 and "--target" in res.stderr


# --- item 8: outputs -----------------------------------------------------------------------


def test_out_dir_is_cleaned_of_our_files_and_foreign_files_need_force(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    for name in OUTPUT_FILES:
        (out / name).write_text("old run")
    prepare_out_dir(out)
    assert list(out.iterdir()) == []
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"holds files this tool did not write \(notes.txt\).*--force"):
        prepare_out_dir(out)
    (out / "replay.png").write_text("old run")
    prepare_out_dir(out, force=True)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_replay_into_a_used_out_keeps_no_stale_files_and_shows_unmet_periods(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "league-gpus.png").write_text("a previous run's plot")
    trace = _tiny_trace(tmp_path)
    args = ["replay", "--config", str(TINY), "--trace", str(trace), "--policy", "static-peak", "--out", str(out)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "unmet" in res.output.split("\n", 3)[2]  # the console table has the column (header row)
    assert (out / "league-gpus.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES)
    summary = json.loads((out / "summary.json").read_text())
    assert "unmet_periods" in summary["results"][0]
    report = (out / "report.md").read_text()
    assert "worst TTFT p99 s (one window)" in report and "TTFT p99 s (whole run)" in report
    assert "whole-run p99" in report
    (out / "foreign.txt").write_text("x")
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "--force" in res.stderr
    res = runner.invoke(app, [*args, "--force"])
    assert res.exit_code == 0 and (out / "foreign.txt").exists()
