"""Layers run one way: import-linter's contracts (pyproject.toml) and the shared import graph
checker (function-level imports counted) both hold.

The placement split (tasks/core/placement/, another branch) removes the last offenders, the
`time`/`threading` imports of tasks/core/ilp.py and the ilp <-> polish cycle; until it lands,
offences confined to those files are an expected failure, anything else fails.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMPORT_GRAPH = ROOT.parent / "shared" / "tools" / "import_graph.py"
PLACEMENT = ("tasks.core.ilp", "tasks.core.polish", "tasks.core.greedy", "tasks.core.realize")


def test_import_linter_contracts_are_kept() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    res = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    if res.returncode == 0:
        return
    offenders = re.findall(r"^-\s+(\S+) ->", res.stdout, flags=re.M)
    if offenders and all(o.startswith(PLACEMENT) for o in offenders):
        pytest.xfail(f"only the placement files break a contract (the placement split fixes them): {offenders}")
    pytest.fail(f"lint-imports:\n{res.stdout[-3000:]}\n{res.stderr[-2000:]}")


def test_import_graph_has_no_cycle_and_no_upward_import() -> None:
    if not IMPORT_GRAPH.exists():
        pytest.skip(f"{IMPORT_GRAPH} is not there (it ships beside the repository, not in it)")
    res = subprocess.run(
        [sys.executable, str(IMPORT_GRAPH)], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    last = res.stdout.strip().splitlines()[-1]
    if last == "cycles=0 upward=0":
        return
    problems = [line for line in res.stdout.splitlines()[:-1] if line.strip()]
    if problems == ["cycle: tasks.core.ilp tasks.core.polish"]:
        pytest.xfail("only the ilp <-> polish cycle, which the placement split removes")
    pytest.fail(res.stdout)
