"""The `replay` and `bench_policies` flows finish on the bundled trace and publish their league.

Runs under the session's temporary Prefect API (`prefect_harness`); artifacts are read back
through the Prefect client API, as the UI reads them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from flows.replay_flow import bench_policies_flow, replay_flow
from tests.conftest import BUNDLED_TRACE, DEMO_CONFIG

pytestmark = pytest.mark.integration


def _artifacts(flow_run_id: Any) -> dict[str, Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as c:
        arts = c.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return {a.key: a for a in arts}


def test_replay_flow_finishes_and_publishes_its_league(prefect_harness: None, data_dir: Path, tmp_path: Path) -> None:
    started = time.perf_counter()
    state = replay_flow(
        config_path=str(DEMO_CONFIG), trace=str(BUNDLED_TRACE), out_dir=str(tmp_path / "out"), return_state=True
    )
    wall = time.perf_counter() - started
    assert state.is_completed(), state
    out = state.result()
    policies = ["static-peak", "hpa-gpu-util", "heteroscale-paper"]
    assert [r["policy"] for r in out["results"]] == policies
    assert all(r["gpu_hours"] > 0 and r["simulated_s"] > 3000 for r in out["results"])
    assert Path(out["summary"]).exists() and (tmp_path / "out" / "report.md").exists()

    arts = _artifacts(state.state_details.flow_run_id)
    league = arts["replay-league-demo"]
    assert league.type == "table"
    rows = json.loads(league.data)
    assert [r["policy"] for r in rows] == policies
    assert {"gpu_hours", "slo_attainment", "avg_gpu_util"} <= set(rows[0])
    assert arts["replay-report-demo"].type == "markdown" and "static-peak" in arts["replay-report-demo"].data
    assert "replay-plot-demo" in arts
    print(f"\nreplay flow on the bundled trace: {wall:.1f} s")


def test_bench_flow_window_and_placement(prefect_harness: None, data_dir: Path, tmp_path: Path) -> None:
    state = bench_policies_flow(
        config_path=str(DEMO_CONFIG),
        traces=[str(BUNDLED_TRACE)],
        policies=["heteroscale"],
        hours=0.5,  # the first half hour only
        placement="greedy",
        out_dir=str(tmp_path / "bench"),
        return_state=True,
    )
    assert state.is_completed(), state
    rows = json.loads(_artifacts(state.state_details.flow_run_id)["bench-policies-demo"].data)
    assert len(rows) == 1 and rows[0]["policy"] == "heteroscale"
    assert rows[0]["simulated_s"] <= 1800.0 + 1e-6
    # A bad parameter fails the run at once, naming the valid choices.
    with pytest.raises(ValueError, match="unknown placement"):
        bench_policies_flow(config_path=str(DEMO_CONFIG), placement="magic")
