"""CLI fuzz (issue 15 item 1): every entry point that takes user input, on >= 200 generated
configs, traces and options each, asserting for every run:

* it exits within a bound (SIGALRM in-process: a pure-Python loop that hangs is interrupted;
  the runs that hung before the fix also run as subprocesses under a timeout);
* exit code 0 or 2: 2 for bad input, never 1 (an unclassified exception) for these inputs;
* no traceback on stdout/stderr, no exception escaping;
* nothing half-written: a failed run leaves `--out` as it was; a successful one writes the set.

Runs in-process through typer's CliRunner (the same command group, error path and warnings as
the console script). Seeded generation (`random.Random(seed)`), tiny configs and traces so the
whole module stays within ~2 minutes on 2 cores. The plots are replaced by a stub writing a
placeholder (matplotlib is ~90% of a tiny replay's time and not what is fuzzed here).
"""

from __future__ import annotations

import copy
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from heteroscale.cli import app
from tests.conftest import ROOT

pytestmark = pytest.mark.faults

TINY = ROOT / "tests" / "data" / "tiny-cluster.yaml"
CASES = 200  # per entry point
BOUND_S = 30.0  # per run; a tiny replay takes < 1 s
runner = CliRunner()

JUNK: list[Any] = [
    None, 0, -1, 1, 0.5, 2**40, 10**15, float("inf"), float("-inf"), float("nan"), "", "x", "[red]fast",
    "^({0,61})?$", [], {}, [1, 2], {"a": 1}, True, "1e9", "-0", ".inf",
]  # fmt: skip


class Hang(Exception):
    pass


def _alarm(_signum: int, _frame: Any) -> None:
    raise Hang


@pytest.fixture(autouse=True)
def _stub_plots(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    import flows.league as league

    def png(path: Path) -> Path:
        path.write_bytes(b"\x89PNG stub")
        return path

    monkeypatch.setattr(league, "plot_instances", lambda _r, _c, path: png(path))
    monkeypatch.setattr(league, "plot_gpus", lambda _r, path: png(path))
    monkeypatch.setattr(league, "plot_tradeoff", lambda _r, path: png(path))
    old = signal.signal(signal.SIGALRM, _alarm)
    yield
    signal.signal(signal.SIGALRM, old)


def _snapshot(out: Path | None) -> dict[str, bytes] | None:
    if out is None or not out.exists():
        return None
    if out.is_file():
        return {"": out.read_bytes()}
    return {p.name: p.read_bytes() if p.is_file() else b"<dir>" for p in out.iterdir()}


def _run(args: list[str], out: Path | None = None, *, ok_files: tuple[str, ...] = ()) -> int:
    before = _snapshot(out)
    signal.setitimer(signal.ITIMER_REAL, BOUND_S)
    started = time.perf_counter()
    try:
        res = runner.invoke(app, args, catch_exceptions=True)
    except Hang:
        pytest.fail(f"hung (> {BOUND_S} s): heteroscale {' '.join(args)}")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    if isinstance(res.exception, Hang):
        pytest.fail(f"hung (> {BOUND_S} s): heteroscale {' '.join(args)}")
    text = res.output + (res.stderr or "")
    where = f"heteroscale {' '.join(args)} -> {res.exit_code}\n{text[-1500:]}"
    assert time.perf_counter() - started < BOUND_S, where
    assert "Traceback" not in text, where
    assert res.exception is None or isinstance(res.exception, SystemExit), (where, repr(res.exception))
    assert res.exit_code in (0, 2), where
    if res.exit_code == 2:
        assert "error: " in (res.stderr or "") or "Usage:" in text, where
        assert len((res.stderr or "").strip().splitlines()) <= 12, where  # a line or a usage block, no dump
        assert _snapshot(out) == before, f"half-written --out: {where}"
    elif ok_files and out is not None:
        missing = [f for f in ok_files if not (out / f).exists()]
        assert not missing, (missing, where)
        assert not [p for p in out.iterdir() if p.name.startswith(".heteroscale-partial")], where
    return res.exit_code


# --- generators -----------------------------------------------------------------------------


def _base() -> dict[str, Any]:
    return yaml.safe_load(TINY.read_text())


def _paths(d: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(d, dict):
        for k, v in d.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            out += _paths(v, (*prefix, i))
    return out


def _set(d: Any, path: tuple[Any, ...], value: Any, *, delete: bool = False) -> None:
    for p in path[:-1]:
        d = d[p]
    if delete and isinstance(d, dict):
        d.pop(path[-1], None)
    else:
        d[path[-1]] = value


def gen_config(rng: random.Random) -> str:
    """The tiny config with 0-3 mutations: junk values, deleted fields, semantic traps, dup keys."""
    d = _base()
    for _ in range(rng.choice((0, 1, 1, 2, 3))):
        kind = rng.random()
        svc = d["services"][0] if isinstance(d.get("services"), list) and d["services"] else None
        if kind < 0.4:
            path = rng.choice(_paths(d))
            _set(d, path, copy.deepcopy(rng.choice(JUNK)))
        elif kind < 0.55:
            _set(d, rng.choice(_paths(d)), None, delete=True)
        elif kind < 0.9 and isinstance(svc, dict):
            trap = rng.randrange(6)
            if trap == 0:
                svc["schedule"] = [
                    {"start": "08:00", "end": "20:00", "num_prefill": rng.choice((1, 600)), "num_decode": 800}
                ]
            elif trap == 1 and isinstance(d.get("cluster"), dict):
                d["cluster"]["gpu_budget"] = rng.choice((0, 1, 3, 16, 10**9))
            elif trap == 2 and isinstance(svc.get("decode"), dict):
                svc["decode"]["gpus_per_instance"] = rng.choice((8, 16, 64))
            elif trap == 3 and isinstance(svc.get("policy"), dict):
                svc["policy"]["max_instances"] = rng.choice((10**9, 10**15, 3))
                svc["policy"]["min_instances"] = rng.choice((0, 2, 10**6))
            elif trap == 4 and isinstance(svc.get("policy"), dict):
                svc["policy"]["target_per_instance"] = rng.choice((float("inf"), 1e-9, 1e12))
            elif trap == 5:
                svc["max_context_tokens"] = rng.choice((1, 100, 10**7))
        else:
            text = yaml.safe_dump(d, sort_keys=False)
            return text.replace("control_period_s: 30\n", "control_period_s: 30\n  control_period_s: 5\n")
    return yaml.safe_dump(d, sort_keys=False)


TS = ["seconds", "ms", "epoch_ms", "equal", "iso", "nan", "empty", "neg", "inf", "junk"]
TOK = ["ok", "ok", "ok", "zero", "huge", "inf", "nan", "neg", "ten", "empty"]


def gen_trace(rng: random.Random, path: Path) -> Path:
    """A tiny per-request or rate trace, sometimes broken in one cell, sometimes degenerate."""
    if rng.random() < 0.2:
        n = rng.randrange(0, 12)
        rows = [f"{i * 60},{rng.choice(['1.5', '0', '', 'inf', '-1', 'x', '3'])}" for i in range(n)]
        if rng.random() < 0.3 and rows:
            rows.append(rows[-1])
        path.write_text("window_start_s,req_per_s\n" + "\n".join(rows) + "\n")
        return path
    n = rng.choice((0, 1, 2, 5, 40, 200, 400))
    span = rng.choice((0.0, 30.0, 90.0, 200.0))
    kind = rng.choice(TS)
    header = rng.choice(
        ["timestamp,input_tokens,output_tokens", "TIMESTAMP,ContextTokens,GeneratedTokens", "timestamp,input_tokens"]
    )
    lines = [header]
    bad_row = rng.randrange(n) if n and rng.random() < 0.5 else -1
    for i in range(n):
        t = span * i / max(1, n - 1)
        ts = {
            "seconds": f"{t:.3f}",
            "ms": f"{t * 1000 * 4000:.0f}",
            "epoch_ms": f"{1_700_000_000_000 + t * 1000:.0f}",
            "equal": "5",
            "iso": f"2023-11-16 18:{15 + int(t) // 60:02d}:{int(t) % 60:02d}.1234567",
        }.get(kind, f"{t:.3f}")
        tok = ["400", "80"]
        if i == bad_row:
            ts = {"nan": "nan", "empty": "", "neg": "-5", "inf": "inf", "junk": "[red]x"}.get(kind, ts)
            tok[rng.randrange(2)] = {
                "zero": "0", "huge": "1e15", "inf": "inf", "nan": "nan", "neg": "-3", "ten": "ten", "empty": "",
            }.get(rng.choice(TOK), "400")  # fmt: skip
        lines.append(",".join([ts, *tok][: header.count(",") + 1]))
        if rng.random() < 0.02:
            lines.append("")
    path.write_text("\n".join(lines) + "\n")
    return path


def _ok_trace(tmp: Path) -> Path:
    p = tmp / "ok.csv"
    if not p.exists():
        p.write_text("timestamp,input_tokens,output_tokens\n" + "".join(f"{i / 2},400,80\n" for i in range(300)))
    return p


def gen_out(rng: random.Random, tmp: Path, i: int) -> Path:
    base = tmp / f"out{i}"
    kind = rng.randrange(5)
    if kind == 1:
        base.write_text("a file")
    elif kind == 2:
        base.mkdir()
        (base / "foreign.txt").write_text("not ours")
    elif kind == 3:
        base.mkdir()
        (base / "replay.png").write_text("old run")
    elif kind == 4:
        (tmp / f"f{i}").write_text("a file")
        return tmp / f"f{i}" / "sub"
    return base


def _cases(tmp: Path, seed: int, make: Callable[[random.Random, Path, int], list[str]]) -> Iterator[list[str]]:
    rng = random.Random(seed)
    for i in range(CASES):
        yield make(rng, tmp, i)


# --- entry points ---------------------------------------------------------------------------


def test_validate_fuzz(tmp_path: Path) -> None:
    codes = []
    for i in range(CASES):
        rng = random.Random(1000 + i)
        cfg = tmp_path / f"c{i}.yaml"
        cfg.write_text(gen_config(rng))
        args = ["validate", str(cfg)]
        if rng.random() < 0.5:
            args += ["--trace", str(gen_trace(rng, tmp_path / f"t{i}.csv"))]
            args += rng.choice([[], ["--peak-rps", rng.choice(["1e9", "0", "nan", "3", "chat=2", "x=1"])]])
            args += rng.choice([[], ["--time-unit", rng.choice(["s", "ms", "us", "h", "auto"])]])
        codes.append(_run(args))
    assert codes.count(0) >= 10 and codes.count(2) >= 50  # both paths exercised


def test_replay_fuzz(tmp_path: Path) -> None:
    codes = []
    for i in range(CASES):
        rng = random.Random(2000 + i)
        roll = rng.random()
        cfg = TINY
        if roll < 0.25:
            cfg = tmp_path / f"c{i}.yaml"
            cfg.write_text(gen_config(rng))
        trace = _ok_trace(tmp_path) if rng.random() < 0.45 else gen_trace(rng, tmp_path / f"t{i}.csv")
        out = gen_out(rng, tmp_path, i)
        args = ["replay", "--config", str(cfg), "--trace", str(trace), "--out", str(out)]
        args += ["--policy", rng.choice(["static-peak", "hpa-gpu-util", "heteroscale-paper", "nope"])]
        opts = {
            "--peak-rps": ["auto", "1e9", "0", "-1", "nan", "inf", "5", "chat=3", "nosuch=3"],
            "--skip": ["0.5", "0.999", "1", "-0.1", "nan"],
            "--placement": ["greedy", "bad"],
            "--time-unit": ["s", "ms", "us", "h"],
            "--lengths": [str(_ok_trace(tmp_path)), str(tmp_path)],
        }
        for opt, choices in opts.items():
            if rng.random() < 0.15:
                args += [opt, rng.choice(choices)]
        for flag in ("--allow-implausible", "--force"):
            if rng.random() < 0.15:
                args.append(flag)
        files = ("summary.json", "league.md", "report.md", "replay.png", "league-gpus.png", "league-tradeoff.png")
        codes.append(_run(args, out, ok_files=files))
    assert codes.count(0) >= 10 and codes.count(2) >= 50


def test_pd_curve_fuzz(tmp_path: Path) -> None:
    codes = []
    for i in range(CASES):
        rng = random.Random(3000 + i)
        cfg = TINY
        if rng.random() < 0.3:
            cfg = tmp_path / f"c{i}.yaml"
            cfg.write_text(gen_config(rng))
        args = ["pd-curve", "--config", str(cfg), "--service", rng.choice(["chat", "chat", "nosuch", "[red]x", ""])]
        if rng.random() < 0.6:
            args += [
                "--trace",
                str(_ok_trace(tmp_path) if rng.random() < 0.5 else gen_trace(rng, tmp_path / f"t{i}.csv")),
            ]
        args += ["--budget", str(rng.choice([-1, 0, 1, 2, 4, 8, 16, 10**6, 10**15]))]
        codes.append(_run(args))
    assert codes.count(0) >= 10 and codes.count(2) >= 50


def test_plan_fuzz(tmp_path: Path) -> None:
    codes = []
    for i in range(CASES):
        rng = random.Random(4000 + i)
        cfg = TINY
        if rng.random() < 0.3:
            cfg = tmp_path / f"c{i}.yaml"
            cfg.write_text(gen_config(rng))
        args = [
            "plan",
            "--config",
            str(cfg),
            "--trace",
            str(_ok_trace(tmp_path) if rng.random() < 0.6 else gen_trace(rng, tmp_path / f"t{i}.csv")),
        ]
        opts = {
            "--peak-rps": ["3", "0", "-1", "nan", "inf", "1e9", "chat=2", "x=1", "auto"],
            "--growth-per-month": ["0", "0.1", "-2", "nan", "1e9"],
            "--horizon-days": ["0", "30", "-1", "inf"],
            "--gpu-type": ["h100", "nosuch"],
            "--price": ["h100=3", "h100", "h100=x", "zz=1"],
            "--utilisation": ["0.5", "0", "-1", "2", "nan"],
        }
        for opt, choices in opts.items():
            if rng.random() < 0.3:
                args += [opt, rng.choice(choices)]
        out = None
        if rng.random() < 0.2:
            out = gen_out(rng, tmp_path, i)
            args += ["--out", str(out)]
        codes.append(_run(args, out if out is not None and not out.exists() else None))
    assert codes.count(0) >= 20 and codes.count(2) >= 30


def test_scale_options_fuzz(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Option handling of `scale` and `twin scale` (the flow itself is stubbed: it needs Prefect)."""
    import flows.scale_cluster

    def fake(**kw: Any) -> dict[str, Any]:
        assert kw["mode"] in ("apply", "dry-run", "advisory") and kw.get("backend", "twin") in ("twin", "kube")
        if kw.get("backend") == "kube":
            # A real cluster is only changed when the command line (or the config) says apply.
            assert kw["mode"] != "apply" or "apply" in os.environ.get("_FUZZ_ARGS", "")
        return {"run_id": 1, "status": kw["mode"], "changes": 0, "decisions": {}}

    monkeypatch.setattr(flows.scale_cluster, "scale_cluster", fake)
    codes = []
    for i in range(CASES):
        rng = random.Random(5000 + i)
        cmd = ["scale"] if rng.random() < 0.8 else ["twin", "scale"]
        args = list(cmd)
        if rng.random() < 0.8 or cmd == ["twin", "scale"]:
            cfg = TINY
            if rng.random() < 0.3:
                cfg = tmp_path / f"c{i}.yaml"
                cfg.write_text(gen_config(rng))
            args += ["--config", str(cfg)]
        if rng.random() < 0.5:
            args += ["--mode", rng.choice(["apply", "dry-run", "advisory", "nope", "[red]x", ""])]
        if cmd == ["scale"]:
            for flag in ("--kube", "--dry-run", "--advisory"):
                if rng.random() < 0.25:
                    args.append(flag)
            if rng.random() < 0.3:
                args += ["--backend", rng.choice(["twin", "kube", "k8s", ""])]
        monkeypatch.setenv("_FUZZ_ARGS", " ".join(args))
        code = _run(args)
        if "--kube" in args and "--config" not in args:
            assert code == 2
        codes.append(code)
    assert codes.count(0) >= 20 and codes.count(2) >= 50


@pytest.mark.parametrize(
    "case",
    ["token-outlier", "peak-rps-1e9"],
)
def test_former_hangs_finish_under_a_subprocess_timeout(tmp_path: Path, case: str) -> None:
    """The two inputs that hung the replay (issue 15 'Why' 1), as a subprocess under a timeout,
    with --allow-implausible so the replay really runs."""
    trace = tmp_path / "t.csv"
    rows = "".join(f"{i / 2},400,{10**15 if (case == 'token-outlier' and i == 100) else 80}\n" for i in range(300))
    trace.write_text("timestamp,input_tokens,output_tokens\n" + rows)
    args = ["replay", "--config", str(TINY), "--trace", str(trace), "--policy", "heteroscale-paper"]
    args += ["--out", str(tmp_path / "out"), "--allow-implausible"]
    if case == "peak-rps-1e9":
        args += ["--peak-rps", "1e9"]
    res = subprocess.run(
        [sys.executable, "-m", "heteroscale.cli", *args], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "Traceback" not in res.stderr and "warning:" in res.stderr
    assert (tmp_path / "out" / "summary.json").exists()
