"""The collector against a real Prometheus scraping the twin exporter.

Prometheus (Debian package, started on loopback with a temp config and storage dir) scrapes
`sim.exporter.TwinExporter` every second; the twin serves a smooth load ramp 60x faster than real
time. The collector's values must match the twin's ground truth over the same window within 2%.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from models.config import SIGNAL_QUERY_NAMES, ClusterConfig, SignalsProfile, load_config, parse_config
from sim.exporter import TwinExporter
from sim.traces import load_curve
from tasks.prometheus import PEAK_INTERVAL_S, collect, http_query, profile_groups
from tests.integration.prom import free_port, start_prometheus

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "deployments" / "clusters" / "demo.yaml"
AZURE = ROOT / "data" / "traces" / "azure_llm_2023" / "AzureLLMInferenceTrace_conv.csv"
WINDOW_S = 10.0  # wall seconds: rate() window of the collector


def _ramp_trace(path: Path, *, lo: float, hi: float, windows: int = 360, dt_s: float = 10.0) -> Path:
    rate = np.linspace(lo, hi, windows)
    pd.DataFrame({"window_start_s": np.arange(windows) * dt_s, "req_per_s": rate}).to_csv(path, index=False)
    return path


def _with_prometheus(cfg: ClusterConfig) -> ClusterConfig:
    data = cfg.model_dump(mode="json", exclude_none=True)
    data["prometheus"] = {"rate_window_s": WINDOW_S, "max_staleness_s": 30.0, "timeout_s": 5.0}
    return parse_config(data)


@pytest.fixture()
def running(tmp_path: Path) -> Iterator[tuple[ClusterConfig, TwinExporter, str]]:
    cfg = _with_prometheus(load_config(DEMO))
    curve = load_curve(_ramp_trace(tmp_path / "ramp.csv", lo=2.0, hi=6.0), lengths=AZURE)
    exporter = TwinExporter(cfg, {s.name: curve for s in cfg.services}, speed=60.0)
    port = free_port()
    exporter.serve(port)
    stop = threading.Event()
    thread = threading.Thread(target=exporter.run, args=(stop,), daemon=True)
    thread.start()
    prom = start_prometheus([f"127.0.0.1:{port}"], tmp_path / "prom")
    try:
        yield cfg, exporter, prom.url
    finally:
        stop.set()
        thread.join(timeout=5)
        prom.stop()


def test_collector_matches_twin_ground_truth(running: tuple[ClusterConfig, TwinExporter, str]) -> None:
    cfg, exporter, url = running
    query = http_query(url)
    # Enough scrapes for a full rate window plus margin.
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        if query("count(vllm:generation_tokens_total) > 0", None, 5) and len(exporter.truth) > 6 * (WINDOW_S + 4):
            break
        time.sleep(0.5)
    time.sleep(WINDOW_S + 3)
    # Evaluate at a time Prometheus has scraped past, with ground truth over the same window.
    at = time.time() - 2.0
    coll = collect(cfg, query, at_s=at)
    truth = exporter.truth_between(at - WINDOW_S, at)
    got = coll.to_service_signals()
    assert coll.errors == []
    assert coll.queries == len(SIGNAL_QUERY_NAMES)  # one query per signal for all three services
    for svc in cfg.services:
        g, t = got[svc.name], truth[svc.name]
        for name in ("decode_tps", "prefill_tps"):
            want, have = t.get(name), g.get(name)
            assert want is not None and want > 0
            assert have is not None, (svc.name, name, coll.readings[svc.name])
            assert abs(have - want) / want < 0.02, (svc.name, name, have, want)
        for name in ("gpu_util_prefill", "gpu_util_decode"):
            want, have = t.get(name), g.get(name)
            assert want is not None and have is not None
            assert abs(have - want) / want < 0.02, (svc.name, name, have, want)
        # Latency: the window's p99 is the mix of ticks' p99s: between their min and max.
        for name in ("ttft_p99_s", "tbt_p99_s"):
            have = g.get(name)
            ticks = [r.signals[svc.name].get(name) for r in exporter.truth if at - WINDOW_S < r.wall_s <= at]
            assert have is not None
            assert min(ticks) * 0.98 <= have <= max(ticks) * 1.02, (svc.name, name, have, min(ticks), max(ticks))
        # The twin does not model running requests: missing, never 0. Its queue is exported.
        assert g.running_requests is None and g.waiting_requests is not None
        assert coll.readings[svc.name]["decode"]["running_requests"].reason == "absent"
        # Arrivals (the Dynamo-frontend counter the exporter serves) match the twin's truth.
        want, have = t.arrival_rps, g.arrival_rps
        assert want and have is not None and abs(have - want) / want < 0.02, (svc.name, have, want)


def test_stopped_target_goes_stale_not_zero(running: tuple[ClusterConfig, TwinExporter, str]) -> None:
    cfg, _exporter, url = running
    query = http_query(url)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not query("vllm:generation_tokens_total", None, 5):
        time.sleep(0.5)
    time.sleep(WINDOW_S / 2)
    # Asked 60 s after the last sample (well past max_staleness_s = 30 s): every signal is
    # flagged stale and None, the policy input is "cannot see", not "no load".
    at = time.time()
    stale_cfg = parse_config(
        {
            **cfg.model_dump(mode="json", exclude_none=True),
            "prometheus": {"rate_window_s": WINDOW_S, "max_staleness_s": 1.0},
        }
    )
    coll = collect(stale_cfg, query, at_s=at + 60.0)
    for svc in cfg.services:
        for role in ("prefill", "decode"):
            for name, r in coll.readings[svc.name][role].items():
                assert r.value is None, (svc.name, role, name, r)
    assert any(r.stale for r in coll.readings["chat"]["decode"].values())


def test_hundred_services_cost_a_bounded_number_of_queries(tmp_path: Path) -> None:
    base = yaml.safe_load(DEMO.read_text())
    chat = next(s for s in base["services"] if s["name"] == "chat")
    base["services"] = [{**chat, "name": f"svc-{i:03d}", "affinity": "none"} for i in range(100)]
    base["topology"] = {
        "node_pools": [
            {"name": "big", "gpu_type": "a100", "nodes": 200, "gpus_per_node": 8, "s1": "s1a", "s2": "s2a"},
            {"name": "big2", "gpu_type": "h100", "nodes": 200, "gpus_per_node": 8, "s1": "s1b", "s2": "s2a"},
        ]
    }
    base["rdma_subgroups"] = []
    base["prometheus"] = {"rate_window_s": WINDOW_S}
    cfg = parse_config(base)
    curve = load_curve(_ramp_trace(tmp_path / "ramp.csv", lo=0.5, hi=1.0), lengths=AZURE)
    exporter = TwinExporter(cfg, {s.name: curve for s in cfg.services}, speed=60.0)
    port = free_port()
    exporter.serve(port)
    stop = threading.Event()
    thread = threading.Thread(target=exporter.run, args=(stop,), daemon=True)
    thread.start()
    prom = start_prometheus([f"127.0.0.1:{port}"], tmp_path / "prom")
    try:
        prom.wait_for_series("count(count by (service) (vllm:generation_tokens_total)) >= 100")
        time.sleep(WINDOW_S / 2 + 2)
        coll = collect(cfg, http_query(prom.url))
        assert coll.queries == len(SIGNAL_QUERY_NAMES), coll.queries
        assert coll.errors == []
        got = coll.to_service_signals()
        assert len(got) == 100
        assert all(s.decode_tps is not None and s.decode_tps > 0 for s in got.values())
        print(f"\n100 services: {coll.queries} queries, {coll.attempts} attempts, {coll.wall_s * 1000:.0f} ms")
    finally:
        stop.set()
        thread.join(timeout=5)
        prom.stop()


# --- demand: a saturated prefill pool reads as demand above what it served --------------------


def _step_trace(path: Path, *, lo: float, hi: float, lo_windows: int, windows: int = 360, dt_s: float = 10.0) -> Path:
    rate = np.where(np.arange(windows) < lo_windows, lo, hi)
    pd.DataFrame({"window_start_s": np.arange(windows) * dt_s, "req_per_s": rate}).to_csv(path, index=False)
    return path


def test_saturated_prefill_pool_reads_as_demand_above_capacity(tmp_path: Path) -> None:
    """The twin's fleet is seeded for 2 req/s (the first control period), then 30 req/s arrive:
    prefill saturates and queues. Through a real Prometheus the collector must see the queue,
    the arrivals and the request sizes, and the policy's demand must exceed what was served."""
    from typer.testing import CliRunner

    from heteroscale.cli import app
    from models.values import RoleCounts
    from tasks.core.policy import PolicyContext, role_demand

    cfg = _with_prometheus(load_config(DEMO))
    cfg_path = tmp_path / "demo-prom.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude_none=True)))
    period_windows = round(cfg.cluster.control_period_s / 10.0)
    curve = load_curve(_step_trace(tmp_path / "step.csv", lo=2.0, hi=30.0, lo_windows=period_windows), lengths=AZURE)
    exporter = TwinExporter(cfg, {s.name: curve for s in cfg.services}, speed=60.0)
    port = free_port()
    exporter.serve(port)
    stop = threading.Event()
    thread = threading.Thread(target=exporter.run, args=(stop,), daemon=True)
    thread.start()
    prom = start_prometheus([f"127.0.0.1:{port}"], tmp_path / "prom")
    try:
        prom.wait_for_series('vllm:num_requests_waiting{role="prefill"} > 0')
        # A full rate window of the saturated load, and the peak's first 10-s interval (aligned to
        # Prometheus' clock, up to 10 s before the window's end) inside it too.
        time.sleep(WINDOW_S + PEAK_INTERVAL_S + 2)
        query = http_query(prom.url)
        at = time.time() - 1.0
        coll = collect(cfg, query, at_s=at)
        assert coll.errors == [] and coll.queries == len(SIGNAL_QUERY_NAMES)
        truth = exporter.truth_between(at - WINDOW_S, at)
        last = [r for r in exporter.truth if r.wall_s <= at][-1].signals
        rows: list[str] = []
        for name, sig in coll.to_service_signals().items():
            served = sig.prefill_tps
            assert served is not None and served > 0, (name, coll.readings[name]["prefill"])
            # The queue: waiting requests, and in cache-missed prompt tokens (PromQL-derived).
            assert sig.waiting_requests is not None and sig.waiting_requests > 0, name
            assert sig.queued_prompt_tokens is not None and sig.queued_prompt_tokens > 0, name
            want_q = last[name].queued_prompt_tokens
            assert want_q and 0.5 < sig.queued_prompt_tokens / want_q < 2.0, (name, sig.queued_prompt_tokens, want_q)
            # Arrivals and sizes as the twin offered them; the frontend counted more than was served.
            t = truth[name]
            for field in ("arrival_rps", "arrival_prompt_tps", "mean_input_tokens", "mean_output_tokens"):
                want, have = t.get(field), sig.get(field)
                assert want and have is not None and abs(have - want) / want < 0.05, (name, field, have, want)
            assert sig.arrival_peak_rps is not None and sig.arrival_peak_rps >= 0.9 * sig.arrival_rps
            hit = sig.prefix_cache_hit_rate
            assert hit is not None and abs(hit - cfg.service(name).prefix_cache_hit) < 0.01
            assert sig.arrival_prompt_tps * (1 - hit) > 1.5 * served, (name, sig.arrival_prompt_tps, served)
            # The policy's demand: above what the saturated pool served, never "load = capacity".
            ctx = PolicyContext(
                service=cfg.service(name),
                now_s=at,
                signals=sig,
                current=RoleCounts(1, 1),
                control_period_s=cfg.cluster.control_period_s,
            )
            demand = role_demand(ctx)
            assert demand is not None and demand.prefill_tps is not None
            assert demand.prefill_tps > 1.5 * served, (name, demand)
            assert "queue" in demand.why and "prefill arrivals" in demand.why
            rows.append(
                f"{name}: served {served:.0f} tok/s, demand {demand.prefill_tps:.0f}, waiting "
                f"{sig.waiting_requests:.0f} req, queued {sig.queued_prompt_tokens:.0f} tok (twin {want_q:.0f})"
            )

        # `heteroscale collect --json` shows the queue and the arrival side.
        res = CliRunner().invoke(app, ["collect", "--config", str(cfg_path), "--prometheus-url", prom.url, "--json"])
        assert res.exit_code == 0, res.output
        out = json.loads(res.output)
        chat = out["services"]["chat"]
        assert chat["prefill"]["waiting_requests"]["value"] > 0
        assert chat["prefill"]["queued_prompt_tokens"]["value"] > 0
        assert chat["prefill"]["arrival_rps"]["value"] > 0
        assert chat["decode"]["mean_output_tokens"]["value"] > 0

        # Every profile's PromQL is valid PromQL (SGLang and Dynamo series are absent here: empty).
        for profile in SignalsProfile:
            data = cfg.model_dump(mode="json", exclude_none=True)
            for svc in data["services"]:
                svc["signals"] = {"profile": profile.value}
            for g in profile_groups(parse_config(data)):
                for promql in g.queries().values():
                    query(promql, at, 5.0)  # raises PermanentQueryError on a parse error
        print(f"\nsaturated pool: {coll.queries} queries, {coll.wall_s * 1000:.0f} ms; " + "; ".join(rows))
    finally:
        stop.set()
        thread.join(timeout=5)
        prom.stop()


# --- history at start-up: one range query per signal group, recorded in the store -----------


def _daily_tps(svc_index: int, t_s: np.ndarray) -> np.ndarray:
    """A known decode-TPS history: a daily wave around a per-service base."""
    return (300.0 + 150.0 * svc_index) * (1.0 + 0.4 * np.sin(2 * np.pi * t_s / 86400.0))


def test_fresh_store_history_is_bootstrapped_from_prometheus(
    prefect_harness: None, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.scale_cluster import scale_cluster
    from models import settings
    from tasks.prometheus import PrometheusSignals
    from tasks.store import Store
    from tests.integration.prom import backfill

    cfg = parse_config(
        {
            **load_config(DEMO).model_dump(mode="json", exclude_none=True),
            "prometheus": {"rate_window_s": 120.0, "max_staleness_s": 600.0},
        }
    )
    step = cfg.cluster.control_period_s
    # 26 h of vLLM decode counters (60 s scrapes) ending a minute ago, written as TSDB blocks.
    end = float(int(time.time()) // 60 * 60 - 60)
    ts = np.arange(end - 26 * 3600.0, end + 1, step)
    lines = ["# TYPE vllm:generation_tokens counter"]
    for i, svc in enumerate(cfg.services):
        total = np.cumsum(_daily_tps(i, ts) * step)
        lbl = f'service="{svc.name}",role="decode",model_name="m"'
        lines += [f"vllm:generation_tokens_total{{{lbl}}} {v:.3f} {t:.0f}" for t, v in zip(ts, total, strict=True)]
    backfill("\n".join(lines) + "\n# EOF\n", tmp_path / "prom")
    prom = start_prometheus([], tmp_path / "prom", retention="30d")
    try:
        prom.wait_for_series("vllm:generation_tokens_total")
        # One range query for the three services (one signal group), values as backfilled.
        fetch = PrometheusSignals(cfg, url=prom.url).read_history(cfg, now_s=time.time())
        assert fetch.queries == 1 and fetch.errors == []
        assert set(fetch.samples) == {"chat", "code", "summarize"}
        for i, svc in enumerate(cfg.services):
            got = [(t, v) for t, v in fetch.samples[svc.name] if v is not None and t <= end - 2 * step]
            assert len(got) >= 1300, len(got)  # a day at the control period, minus the edges
            for t, v in got[:: len(got) // 10]:
                # rate() over 120 s = the mean of the two increments before t.
                want = float(np.mean(_daily_tps(i, np.array([t - step, t]))))
                assert abs(v - want) / want < 0.02, (svc.name, t, v, want)

        # The flow on a fresh store fills the history from Prometheus and records it.
        config_path = tmp_path / "demo-prom.yaml"
        config_path.write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude_none=True)))
        monkeypatch.setenv("HETEROSCALE_PROMETHEUS_URL", prom.url)
        started = time.perf_counter()
        scale_cluster(config_path=str(config_path), backend="twin", signals_backend="prometheus", mode="dry-run")
        first_s = time.perf_counter() - started
        store = Store(settings.database_url())
        hist = store.history("demo", -1e12)
        for i, svc in enumerate(cfg.services):
            # Recorded at bounded resolution (a day in <= 240 bucket means) plus this run's sample.
            valid = [(t, v) for t, v in hist[svc.name][:-1] if v is not None]
            assert 200 <= len(valid) <= 241, (svc.name, len(valid))
            assert valid[-1][0] - valid[0][0] > 23 * 3600.0
            # Bucket means of the daily wave: within its range, and not flat (the shape survived).
            vals = np.array([v for _t, v in valid])
            base = 300.0 + 150.0 * i
            assert vals.min() > 0.55 * base and vals.max() < 1.45 * base and vals.max() > 1.3 * vals.min()
        # The next run finds the history in the store: no second bootstrap, one sample per service.
        scale_cluster(config_path=str(config_path), backend="twin", signals_backend="prometheus", mode="dry-run")
        again = store.history("demo", -1e12)
        assert {n: len(h) for n, h in again.items()} == {n: len(h) + 1 for n, h in hist.items()}
        print(f"\nbootstrap: {len(hist['chat'])} samples per service, first run {first_s:.1f} s")
    finally:
        prom.stop()


# --- the closed loop: flow -> twin state -> exporter -> Prometheus -> flow --------------------


def test_closed_loop_flow_prometheus_exporter(
    prefect_harness: None, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.scale_cluster import scale_cluster
    from models import settings
    from sim.live import is_live, read_state
    from tasks import steps
    from tasks.store import Store

    cfg = _with_prometheus(load_config(DEMO))
    config_path = tmp_path / "demo-prom.yaml"
    config_path.write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude_none=True)))
    state_path = data_dir / "twin" / f"{cfg.cluster.name}.json"
    # Two simulated hours of a 2 -> 20 req/s ramp at 60x: two wall minutes, one lap for the test;
    # the fleet is seeded for 2 req/s, so the first run must scale out.
    curve = load_curve(_ramp_trace(tmp_path / "ramp.csv", lo=2.0, hi=20.0, windows=720), lengths=AZURE)
    exporter = TwinExporter(cfg, {s.name: curve for s in cfg.services}, speed=60.0, state_path=state_path)
    port = free_port()
    exporter.serve(port)
    stop = threading.Event()
    thread = threading.Thread(target=exporter.run, args=(stop,), daemon=True)
    thread.start()
    prom = start_prometheus([f"127.0.0.1:{port}"], tmp_path / "prom")
    monkeypatch.setenv("HETEROSCALE_PROMETHEUS_URL", prom.url)
    store = Store(settings.database_url())

    def run_and_check() -> dict:
        before = time.time()
        out = scale_cluster(config_path=str(config_path), backend="twin", signals_backend="prometheus")
        after = time.time()
        # The flow's twin was live (it served nothing itself), so a value it holds came from
        # Prometheus; it matches the exporter's truth over the rate window at the query instant.
        assert is_live(read_state(state_path))
        ends = [r.wall_s for r in exporter.truth if before - 1.0 <= r.wall_s <= after]
        for d in store.decisions(out["run_id"]):
            assert d.metric_value is not None, d
            errs = []
            for end in ends:
                want = exporter.truth_between(end - WINDOW_S, end)[d.service].decode_tps
                assert want
                errs.append(abs(d.metric_value - want) / want)
            assert min(errs) < 0.02, (d.service, d.metric_value, min(errs))
        return out

    try:
        prom.wait_for_series("count(heteroscale_twin_instances) > 0")
        time.sleep(WINDOW_S + 8)  # a full rate window; the ramp has grown well past the seeded fleet
        fleet0 = exporter.twin.placement()
        first = run_and_check()
        assert first["status"] == "applied" and first["changes"] > 0, (first, store.runs()[0].summary)
        applied = {(c.service, c.role, c.gpu_type, c.s1): c.replicas_after for c in store.changes(first["run_id"])}
        # The exporter adopts the applied fleet within a tick, and Prometheus sees it.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and exporter.twin.placement() == fleet0:
            time.sleep(0.1)
        fleet1 = exporter.twin.placement()
        assert fleet1 != fleet0
        got = {(k.service, k.role.value, k.gpu_type, k.s1): n for k, n in fleet1.cells.items()}
        assert all(got.get(k, 0) == n for k, n in applied.items()), (applied, got)
        per_role: dict[tuple[str, str], int] = {}
        for k, n in fleet1.cells.items():
            per_role[(k.service, k.role.value)] = per_role.get((k.service, k.role.value), 0) + n
        query = http_query(prom.url)
        deadline = time.monotonic() + 10
        seen: dict[tuple[str, str], int] = {}
        while time.monotonic() < deadline:
            ans = query("sum by (service, role) (heteroscale_twin_instances)", None, 5)
            seen = {(a["metric"]["service"], a["metric"]["role"]): int(float(a["value"][1])) for a in ans}
            if seen == per_role:
                break
            time.sleep(0.5)
        assert seen == per_role
        # The second run starts from the fleet the first one applied, as the exporter serves it.
        served = steps.current_counts(cfg, exporter.twin.read_state(cfg, 0.0))
        second = run_and_check()
        before2 = {d.service: (d.num_prefill_before, d.num_decode_before) for d in store.decisions(second["run_id"])}
        assert before2 == {n: (c.num_prefill, c.num_decode) for n, c in served.items()}
        assert before2 != {
            n: (c.num_prefill, c.num_decode) for n, c in steps.current_counts(cfg, _view(cfg, fleet0)).items()
        }
    finally:
        stop.set()
        thread.join(timeout=5)
        prom.stop()


def _view(cfg: ClusterConfig, placement: object) -> object:
    from tasks.core.topology import ClusterView, view_from_config

    base = view_from_config(cfg)
    return ClusterView(
        capacities=base.capacities,
        placement=placement,  # type: ignore[arg-type]
        priority_override=base.priority_override,
        gpu_budget=base.gpu_budget,
    )
