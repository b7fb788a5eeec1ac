"""Capacity planning (flows/plan_capacity.py `plan`) and the deployment list (deployments/deploy.py)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest

from flows.plan_capacity import plan, planning_utilisation
from models.config import load_config
from tests.conftest import DEMO_CONFIG

# A load the demo cluster holds at 1x and cannot hold at 4x (at its configured capacities).
PEAKS = {
    "chat": {"decode_tps": 3000.0, "prefill_tps": 16500.0},
    "code": {"decode_tps": 1300.0, "prefill_tps": 6600.0},
    "summarize": {"decode_tps": 1000.0, "prefill_tps": 6600.0},
}


@pytest.fixture(scope="module")
def demo_plan() -> dict:
    return plan(load_config(DEMO_CONFIG), peak_metrics=PEAKS)


def test_every_service_is_sized_for_its_peak_at_the_policy_headroom(demo_plan: dict) -> None:
    cfg = load_config(DEMO_CONFIG)
    for s in demo_plan["services"]:
        svc = cfg.service(s["service"])
        u = planning_utilisation(svc)
        served_d = s["num_decode"] * svc.decode.capacity_tokens_per_s[s["decode_gpu"]] * u
        served_p = s["num_prefill"] * svc.prefill.capacity_tokens_per_s[s["prefill_gpu"]] * u
        assert served_d >= PEAKS[svc.name]["decode_tps"] - 1e-6
        assert served_p >= PEAKS[svc.name]["prefill_tps"] - 1e-6
        # ... and not more than one instance above it (no gold plating).
        assert (s["num_decode"] - 1) * svc.decode.capacity_tokens_per_s[s["decode_gpu"]] * u < PEAKS[svc.name][
            "decode_tps"
        ]
        price = {g.name: g.cost_per_gpu_hour for g in cfg.gpu_types}
        gpus_p, gpus_d = s["gpus_prefill"], s["gpus_decode"]
        assert s["cost_per_day"] == pytest.approx(
            24 * (gpus_p * price[s["prefill_gpu"]] + gpus_d * price[s["decode_gpu"]])
        )
        p, d = (int(x) for x in s["pd_ratio"].split(":"))
        assert p / d == pytest.approx(s["num_prefill"] / s["num_decode"])


def test_totals_match_services_and_placement(demo_plan: dict) -> None:
    assert demo_plan["fits_cluster"] and not demo_plan["unmet_instances"]
    per_type: dict[str, int] = {}
    for s in demo_plan["services"]:
        per_type[s["prefill_gpu"]] = per_type.get(s["prefill_gpu"], 0) + s["gpus_prefill"]
        per_type[s["decode_gpu"]] = per_type.get(s["decode_gpu"], 0) + s["gpus_decode"]
    assert demo_plan["gpus_by_type"] == per_type
    placed = {g: sum(d.values()) for g, d in demo_plan["gpus_by_type_domain"].items()}
    assert placed == per_type
    assert demo_plan["cost_per_day"] == pytest.approx(sum(s["cost_per_day"] for s in demo_plan["services"]))


def test_cost_grows_with_load_and_the_cluster_runs_out() -> None:
    result = plan(load_config(DEMO_CONFIG), peak_metrics=PEAKS, sweep=(1.0, 1.5, 2.0, 4.0))
    costs = [r["cost_per_day"] for r in result["sensitivity"]]
    assert costs == sorted(costs) and costs[0] < costs[-1]
    assert result["sensitivity"][0]["fits_cluster"] and not result["sensitivity"][-1]["fits_cluster"]


def test_growth_per_month_compounds_over_the_horizon() -> None:
    r = plan(load_config(DEMO_CONFIG), peak_metrics=PEAKS, growth_per_month=0.1, horizon_days=60, sweep=(1.0,))
    assert r["growth"] == pytest.approx(1.21)
    chat = next(s for s in r["services"] if s["service"] == "chat")
    assert chat["peak_decode_tps"] == pytest.approx(PEAKS["chat"]["decode_tps"] * 1.21, rel=1e-3)


def test_prices_and_candidates_decide_the_pairing() -> None:
    cfg = load_config(DEMO_CONFIG)
    pricey_a100 = plan(cfg, peak_metrics=PEAKS, prices={"a100": 40.0}, sweep=(1.0,))
    chat = next(s for s in pricey_a100["services"] if s["service"] == "chat")
    assert (chat["prefill_gpu"], chat["decode_gpu"]) == ("h100", "h100")
    only_h100 = plan(cfg, peak_metrics=PEAKS, gpu_types=["h100"], sweep=(1.0,))
    assert set(only_h100["gpus_by_type"]) == {"h100"}


def test_bad_inputs_fail_with_a_clear_message() -> None:
    cfg = load_config(DEMO_CONFIG)
    with pytest.raises(ValueError, match="unknown GPU type"):
        plan(cfg, peak_metrics=PEAKS, gpu_types=["b200"])
    with pytest.raises(ValueError, match="capacity model"):
        plan(cfg, peak_metrics=PEAKS, slo={"chat": {"tbt_p99_s": 0.05}})
    with pytest.raises(ValueError, match="no entry for service"):
        plan(cfg, peak_metrics={"chat": PEAKS["chat"]})
    with pytest.raises(ValueError, match="give a load"):
        plan(cfg)
    # The config's own SLO is accepted (it is what the capacities were measured at).
    assert plan(cfg, peak_metrics=PEAKS, slo={"chat": {"tbt_p99_s": 0.1}}, sweep=(1.0,))["services"]


def test_one_active_deployment_per_cluster(tmp_path: Path) -> None:
    from deployments.deploy import cluster_deployments, prefect_yaml

    shutil.copy(DEMO_CONFIG, tmp_path / "demo.yaml")
    shutil.copy(DEMO_CONFIG, tmp_path / "a-variant.yaml")  # same cluster name, sorts first
    deps = {d.name: d for d in cluster_deployments(tmp_path)}
    assert set(deps) == {"demo", "a-variant"}
    assert not deps["demo"].paused and deps["a-variant"].paused
    assert deps["demo"].interval_s == 60.0 and "cluster:demo" in deps["demo"].tags
    doc = prefect_yaml(list(deps.values()))
    scheduled = [d for d in doc["deployments"] if "schedules" in d]
    assert all(d["concurrency_limit"]["limit"] == 1 for d in scheduled)
    assert sum(d["schedules"][0]["active"] for d in scheduled) == 1
    assert math.isclose(cluster_deployments(tmp_path, interval_s=30)[0].interval_s, 30)


def test_another_slo_rederives_capacities_with_the_capacity_model() -> None:
    from flows.plan_capacity import config_at_slo, plan_curves
    from tests.conftest import BUNDLED_TRACE

    cfg = load_config(DEMO_CONFIG)
    curves = plan_curves(cfg, str(BUNDLED_TRACE), {"chat": 20.0, "code": 10.0, "summarize": 8.0})
    base = plan(cfg, curves=curves, sweep=(1.0,))
    tight = plan(cfg, curves=curves, slo={"chat": {"ttft_p99_s": 1.0}}, sweep=(1.0,))
    notes = [n for n in tight["slo_capacities"] if n["service"] == "chat"]
    # A tighter TTFT costs prefill throughput per instance (less queueing allowed), decode is untouched.
    assert notes and all(n["ratio"] < 1 for n in notes if n["role"] == "prefill")
    assert all(n["ratio"] == pytest.approx(1.0) for n in notes if n["role"] == "decode")
    chat = {s["service"]: s for s in base["services"]}["chat"]
    chat_tight = {s["service"]: s for s in tight["services"]}["chat"]
    assert chat_tight["gpus_prefill"] > chat["gpus_prefill"], (chat, chat_tight)
    assert chat_tight["cost_per_day"] >= chat["cost_per_day"]
    # Other services keep the config's numbers; the policy's headroom is kept.
    new_cfg, _ = config_at_slo(cfg, {"chat": {"ttft_p99_s": 1.0}}, curves)
    assert new_cfg.service("code") == cfg.service("code")
    assert planning_utilisation(new_cfg.service("chat")) == pytest.approx(planning_utilisation(cfg.service("chat")))
    # An SLO no GPU can meet is refused, naming it.
    with pytest.raises(ValueError, match="meets it"):
        plan(cfg, curves=curves, slo={"chat": {"ttft_p99_s": 0.01}}, sweep=(1.0,))
