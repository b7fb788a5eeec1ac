"""Layers run one way: import-linter's contracts (pyproject.toml) and the shared import graph
checker (function-level imports counted) both hold.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMPORT_GRAPH = ROOT.parent / "shared" / "tools" / "import_graph.py"


def test_import_linter_contracts_are_kept() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    res = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"lint-imports:\n{res.stdout[-3000:]}\n{res.stderr[-2000:]}"


def test_import_graph_has_no_cycle_and_no_upward_import() -> None:
    if not IMPORT_GRAPH.exists():
        pytest.skip(f"{IMPORT_GRAPH} is not there (it ships beside the repository, not in it)")
    res = subprocess.run(
        [sys.executable, str(IMPORT_GRAPH)], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    assert res.stdout.strip().splitlines()[-1] == "cycles=0 upward=0", res.stdout
