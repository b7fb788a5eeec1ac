"""Issue 15 item 3: configs that parsed but gave confident wrong numbers are refused by
`load_config`, each with one line naming the file, the field path and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from heteroscale.cli import app
from models.config import ConfigError, load_config
from tests.builders import config_dict, service_dict
from tests.conftest import DEMO_CONFIG

runner = CliRunner()


def _write(tmp_path: Path, data: dict) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


def _error(tmp_path: Path, data: dict) -> str:
    p = _write(tmp_path, data)
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    msg = str(exc.value)
    assert str(p) in msg
    return msg


def test_infinite_target_is_refused(tmp_path: Path) -> None:
    text = DEMO_CONFIG.read_text().replace("target_per_instance: 206.5", "target_per_instance: .inf", 1)
    p = tmp_path / "inf.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=r"services\[0\]\.policy\.target_per_instance: Input should be a finite"):
        load_config(p)


def test_gpu_type_no_node_pool_has_is_refused(tmp_path: Path) -> None:
    d = config_dict()
    d["gpu_types"].append({"name": "b200", "memory_gib": 192, "cost_per_gpu_hour": 9.0})
    d["services"] = [service_dict(decode={"gpu_types": ["b200"], "capacity_tokens_per_s": {"b200": 3000}})]
    msg = _error(tmp_path, d)
    assert "services[0].decode.gpu_types: no node pool has GPU type(s) ['b200']" in msg


def test_gpu_type_supplied_by_discovery_only_warns(tmp_path: Path) -> None:
    d = config_dict()
    d["gpu_types"].append({"name": "b200", "memory_gib": 192, "cost_per_gpu_hour": 9.0})
    d["kubernetes"] = {"gpu_type_values": {"b200": ["NVIDIA-B200"]}}
    d["services"] = [
        service_dict(decode={"gpu_types": ["a100", "b200"], "capacity_tokens_per_s": {"a100": 950, "b200": 3000}})
    ]
    with pytest.warns(UserWarning, match=r"services\[0\]\.decode\.gpu_types \['b200'\] have no node pool"):
        load_config(_write(tmp_path, d))


def test_schedule_outside_the_bounds_is_refused(tmp_path: Path) -> None:
    window = {"start": "08:00", "end": "20:00", "num_prefill": 600, "num_decode": 800}
    d = config_dict(services=[service_dict(policy={"max_instances": 80}, schedule=[window])])
    msg = _error(tmp_path, d)
    assert "services[0]: schedule[0] asks for 600P + 800D = 1400 instances" in msg and "[3, 80]" in msg


@pytest.mark.parametrize("budget", [0, 5])
def test_gpu_budget_below_the_minimum_fleet_is_refused(tmp_path: Path, budget: int) -> None:
    msg = _error(tmp_path, config_dict(cluster={"name": "test", "gpu_budget": budget}))
    assert "cluster.gpu_budget" in msg


def test_instance_larger_than_any_node_is_refused(tmp_path: Path) -> None:
    d = config_dict(services=[service_dict(prefill={"gpus_per_instance": 16})])
    msg = _error(tmp_path, d)
    assert "services[0].prefill.gpu_types: gpus_per_instance 16 is more than any node" in msg


def test_duplicate_yaml_keys_are_refused(tmp_path: Path) -> None:
    p = tmp_path / "dup.yaml"
    p.write_text(
        DEMO_CONFIG.read_text().replace("  control_period_s: 60\n", "  control_period_s: 60\n  control_period_s: 5\n")
    )
    with pytest.raises(ConfigError, match=r"duplicate key 'control_period_s' \(first at line \d+\)"):
        load_config(p)


def test_every_bundled_config_is_still_valid() -> None:
    for p in sorted(DEMO_CONFIG.parent.glob("*.yaml")):
        load_config(p)


def test_validate_trace_checks_the_rate_against_the_cluster(tmp_path: Path) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text("timestamp,input_tokens,output_tokens\n" + "".join(f"{i},500,100\n" for i in range(300)))
    res = runner.invoke(app, ["validate", str(DEMO_CONFIG), "--trace", str(trace)])
    assert res.exit_code == 0, res.output
    assert "of the ~" in res.output and "whole cluster could serve" in res.output
    res = runner.invoke(app, ["validate", str(DEMO_CONFIG), "--trace", str(trace), "--peak-rps", "1e6"])
    assert res.exit_code == 2 and "what the whole cluster could serve" in res.output
    assert "Traceback" not in res.output
