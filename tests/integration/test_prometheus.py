"""The collector against a real Prometheus scraping the twin exporter.

Prometheus (Debian package, started on loopback with a temp config and storage dir) scrapes
`sim.exporter.TwinExporter` every second; the twin serves a smooth load ramp 60x faster than real
time. The collector's values must match the twin's ground truth over the same window within 2%.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from models.config import ClusterConfig, load_config, parse_config
from sim.exporter import TwinExporter
from sim.traces import load_curve
from tasks.prometheus import collect, http_query
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
    assert coll.queries == 9  # one query per signal (+2 freshness) for all three services
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
        # The twin does not model request queues: those are missing, never 0.
        assert g.running_requests is None and g.waiting_requests is None
        assert coll.readings[svc.name]["decode"]["running_requests"].reason == "absent"


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
        assert coll.queries == 9, coll.queries
        assert coll.errors == []
        got = coll.to_service_signals()
        assert len(got) == 100
        assert all(s.decode_tps is not None and s.decode_tps > 0 for s in got.values())
        print(f"\n100 services: {coll.queries} queries, {coll.attempts} attempts, {coll.wall_s * 1000:.0f} ms")
    finally:
        stop.set()
        thread.join(timeout=5)
        prom.stop()
