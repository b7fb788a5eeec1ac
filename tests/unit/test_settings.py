"""Settings live in the package, not in the Makefile (issue 15 item 7): the console script
applies the Prefect settings itself, and finds the same store from any directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from models import settings

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(sys.executable).with_name("heteroscale")


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment without anything the Makefile or conftest would have set."""
    drop = ("PREFECT_", "HETEROSCALE_", "DO_NOT_TRACK", "XDG_DATA_HOME")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    return {**env, **extra}


def test_prefect_defaults_are_applied_before_prefect_reads_them_and_the_user_wins(tmp_path: Path) -> None:
    code = (
        "import sys; from heteroscale.__main__ import apply_prefect_defaults; apply_prefect_defaults(); "
        "from prefect.settings import get_current_settings as g; s = g(); "
        "print(s.server.analytics_enabled, s.server.ephemeral.startup_timeout_seconds, "
        "s.telemetry.enable_resource_metrics)"
    )
    env = _clean_env(PREFECT_HOME=str(tmp_path / "prefect"))
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert out.stdout.split() == ["False", "90", "False"], out.stderr[-2000:]
    env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "33"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert out.stdout.split() == ["False", "33", "False"], out.stderr[-2000:]


def test_data_dir_is_per_user_unless_set(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("HETEROSCALE_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert settings.data_dir() == tmp_path / "xdg" / "heteroscale"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/ignored")
    assert settings.data_dir() == Path.home() / ".local" / "share" / "heteroscale"
    monkeypatch.setenv("HETEROSCALE_DATA_DIR", str(tmp_path / "mine"))
    assert settings.data_dir() == tmp_path / "mine"


@pytest.mark.skipif(not SCRIPT.exists(), reason="the console script is installed by `make setup`")
def test_runs_reads_the_same_store_from_any_directory_and_says_which(tmp_path: Path) -> None:
    env = _clean_env(XDG_DATA_HOME=str(tmp_path / "xdg"), PREFECT_HOME=str(tmp_path / "prefect"))
    shown = []
    for cwd in (tmp_path, ROOT):
        out = subprocess.run([str(SCRIPT), "runs"], env=env, cwd=cwd, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        shown.append(next(line for line in out.stdout.splitlines() if line.startswith("store:")))
    assert shown[0] == shown[1] == f"store: sqlite:///{tmp_path / 'xdg' / 'heteroscale' / 'heteroscale.db'}"
