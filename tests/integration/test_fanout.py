"""The league fanned out on a local Dask cluster (issue 18, item 3) returns what the sequential loop does.

Runs under the session's temporary Prefect API (`prefect_harness`): the workers report their
task runs there. A small league (the demo cluster, the first hour of the bundled trace, three
policies) through `run_league` and through the `bench_policies` flow, Dask vs sequential:
identical summary rows but the wall time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from flows.fanout import SEQUENTIAL, Engine
from flows.replay import load_service_curves, run_league
from flows.replay_flow import bench_policies_flow
from tasks.core.registry import load_config
from tests.conftest import BUNDLED_TRACE, DEMO_CONFIG

pytestmark = pytest.mark.integration

POLICIES = ["static-peak", "hpa-tps", "heteroscale-paper"]


def _rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]


def test_dask_league_equals_the_sequential_one(prefect_harness: None, data_dir: Path) -> None:
    config = load_config(DEMO_CONFIG)
    curves, _ = load_service_curves(config, str(BUNDLED_TRACE), peak_rps="auto")
    seq = run_league(config, curves, POLICIES, keep_ticks=False, placement="greedy", engine=SEQUENTIAL)
    dask = run_league(config, curves, POLICIES, keep_ticks=False, placement="greedy", engine=Engine(workers=2))
    assert [r.policy for r in dask] == POLICIES
    assert _rows([r.summary() for r in dask]) == _rows([r.summary() for r in seq])


def test_bench_flow_fanned_out_equals_sequential(prefect_harness: None, data_dir: Path, tmp_path: Path) -> None:
    kw = {"config_path": str(DEMO_CONFIG), "traces": [str(BUNDLED_TRACE)], "policies": POLICIES[:2], "hours": 0.5}
    seq = bench_policies_flow(**kw, out_dir=str(tmp_path / "seq"), engine="sequential")
    dask = bench_policies_flow(**kw, out_dir=str(tmp_path / "dask"), engine="dask")
    assert _rows(dask["results"]) == _rows(seq["results"])
    assert (tmp_path / "dask" / "AzureLLMInferenceTrace_conv" / "summary.json").exists()
