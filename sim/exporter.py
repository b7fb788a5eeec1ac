"""The twin as a Prometheus exporter: serve a trace in (accelerated) real time, export vLLM metrics.

What it does: a `Twin` advances `tick_s` simulated seconds every `tick_s / speed` wall seconds and
exports what it served under the names a vLLM deployment exports, labelled `service`, `role`
(prefill | decode) and `model_name`, plus DCGM's `DCGM_FI_DEV_GPU_UTIL` (percent). A real
Prometheus scrapes it, so the whole loop (collector, forecast, policy) runs with no GPUs.

Contract:
  * counters are exported in simulated units per *wall* second: each tick adds
    `tokens / speed`, so `rate()` in Prometheus reads the twin's simulated tokens/s at any speed;
  * TTFT (prefill role) and inter-token latency (decode role) histograms are filled so that
    `histogram_quantile(0.99, ...)` over one tick returns the twin's p99 exactly (linear
    interpolation inside the bucket holding it); over a window it is the mix of the ticks;
  * windows the trace marks missing export nothing new (counters flat, gauges unchanged), like a
    scrape target that went quiet;
  * `truth` keeps each tick's ground truth (wall time at the tick's end, the twin's signals), so a
    test can compare what Prometheus answers with what the twin served;
  * the queue: `vllm:num_requests_waiting` per role is the twin's backlog in requests (prefill:
    cache-missed prompt tokens queued / tokens per request; decode: generation tokens queued /
    output tokens per request), a gauge at the end of each tick. Running requests are not
    modelled and not exported (`running_requests` stays None);
  * request sizes as vLLM counts them per finished request: `vllm:request_prompt_tokens`
    (prefill role) and `vllm:request_generation_tokens` (decode role) histograms' `_sum` / `_count`
    (tokens and requests served, a single +Inf bucket), scaled by 1/speed like the counters;
  * the arrival side as a Dynamo frontend exports it, per service (no role):
    `dynamo_frontend_requests_total` and `dynamo_frontend_input_sequence_tokens` (`_sum` /
    `_count`: prompt tokens before the prefix cache, requests) count what *arrived*, served or
    not, so a saturated pool reads as demand above what it served;
  * `heteroscale_twin_instances{service, role, gpu_type}` is the fleet (instances, starting ones
    included), what kube-state-metrics' replica counts would show on a real cluster;
  * with `state_path` the exporter *is* the persisted twin of `sim.live.TwinBackend`: it starts
    from that file (or seeds and writes it), writes its clock, backlogs and a heartbeat after
    every tick, and adopts the instances a scaling run applied (`cells_version` changed) within
    one tick. That closes the loop: scale_cluster -> state file -> exporter -> Prometheus ->
    scale_cluster (docs/signals.md).
"""

from __future__ import annotations

import bisect
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from models.config import ClusterConfig, Role
from models.values import ServiceSignals
from sim.live import load_cells, load_twin_state, read_state, state_lock, twin_state, write_state
from sim.sizing import initial_counts
from sim.traces import LoadCurve
from sim.twin import Twin
from tasks.core.placement import place_greedy
from tasks.core.topology import view_from_config

TTFT_BUCKETS_S = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 20.0, 40.0, 80.0)
ITL_BUCKETS_S = (0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.08, 0.1, 0.125, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0)
_FLEET_LABELS = ["service", "role", "gpu_type"]
# Observations booked per tick and histogram (only the quantile shape matters).
_OBS_PER_TICK = 100.0


def p99_bucket_counts(value: float, bounds: tuple[float, ...], n: float = _OBS_PER_TICK) -> list[float]:
    """Per-bucket counts (len(bounds) + 1, the last is +Inf) of `n` observations whose
    histogram_quantile(0.99) is exactly `value` when it lies inside the bucket range.

    histogram_quantile interpolates linearly inside the bucket (lo, hi] that holds rank 0.99 n:
    lo + (hi - lo) * (0.99 n - below) / inside. Put `below` observations in the first bucket and
    the rest in (lo, hi] with below = n (0.99 - f) / (1 - f), f = (value - lo) / (hi - lo).
    """
    counts = [0.0] * (len(bounds) + 1)
    i = bisect.bisect_left(bounds, value)
    if i >= len(bounds):
        counts[-1] = n  # above the top bucket: Prometheus answers the top bound
        return counts
    lo = bounds[i - 1] if i > 0 else 0.0
    hi = bounds[i]
    if i == 0:
        # Inside the first bucket the answer is interpolated from 0 and cannot go below
        # 0.99 x its bound: book everything there (resolution of the first bound).
        counts[0] = n
        return counts
    f = (value - lo) / (hi - lo)
    f = min(max(f, 0.0), 0.98)
    below = n * (0.99 - f) / (1.0 - f)
    counts[0] += below
    counts[i] += n - below
    return counts


@dataclass
class _RoleState:
    generation_tokens: float = 0.0
    prompt_tokens: float = 0.0
    prefix_cache_hits: float = 0.0
    prefix_cache_queries: float = 0.0
    hist_counts: list[float] = field(default_factory=list)
    hist_sum: float = 0.0
    gpu_util_pct: float | None = None
    waiting_requests: float | None = None  # gauge: the role's backlog in requests
    # Request-size histogram (prompt tokens on prefill, generation tokens on decode): _sum, _count.
    request_tokens: float = 0.0
    requests: float = 0.0
    tokens_per_request: float | None = None  # the latest known size, for ticks with no arrivals


@dataclass
class _FrontendState:
    """A Dynamo frontend's arrival counters for one service."""

    requests: float = 0.0
    input_tokens: float = 0.0


@dataclass(frozen=True)
class TruthRecord:
    wall_s: float
    sim_s: float
    signals: Mapping[str, ServiceSignals]


class TwinExporter(Collector):
    """A twin serving in accelerated real time, exported as vLLM + DCGM metrics."""

    def __init__(
        self,
        config: ClusterConfig,
        curves: Mapping[str, LoadCurve],
        *,
        speed: float = 1.0,
        tick_s: float | None = None,
        clock: Callable[[], float] = time.time,
        keep_truth_s: float = 3600.0,
        state_path: Path | None = None,
    ) -> None:
        if speed <= 0:
            raise ValueError(f"--speed must be positive, got {speed}")
        self.config = config
        self.speed = speed
        self.tick_s = tick_s or min(10.0, config.cluster.control_period_s, *(c.dt_s for c in curves.values()))
        self.clock = clock
        self.duration_s = max(c.duration_s for c in curves.values())
        self.twin = Twin(config=config, load=curves, tick_s=self.tick_s, keep_ticks=False)
        seed = place_greedy(config, view_from_config(config), initial_counts(config, curves))
        self.twin.seed(seed.placement)
        self.state_path = state_path
        self._cells_version = 0
        if state_path is not None:
            self._open_state(state_path)
        self.keep_truth_s = keep_truth_s
        self.truth: list[TruthRecord] = []
        self._lock = threading.Lock()
        self._state = {
            (s.name, r): _RoleState(hist_counts=[0.0] * (len(self._bounds(r)) + 1))
            for s in config.services
            for r in Role
        }
        self._frontend = {s.name: _FrontendState() for s in config.services}
        self.registry = CollectorRegistry()
        self.registry.register(self)

    @staticmethod
    def _bounds(role: Role) -> tuple[float, ...]:
        return TTFT_BUCKETS_S if role is Role.PREFILL else ITL_BUCKETS_S

    # --- the shared state file ------------------------------------------------------------

    def _open_state(self, path: Path) -> None:

        with state_lock(path):
            state = read_state(path)
            if state is not None:
                load_twin_state(self.twin, self.config, state)
                self._cells_version = int(state.get("cells_version", 0))
            write_state(path, self._state_json())

    def _state_json(self) -> dict[str, object]:

        beat = {"wall_s": time.time(), "pid": os.getpid(), "speed": self.speed}
        return {**twin_state(self.twin), "cells_version": self._cells_version, "live": beat}

    def _sync(self) -> None:
        """Adopt instances a scaling run applied since the last tick; publish clock and heartbeat."""

        assert self.state_path is not None
        with state_lock(self.state_path):
            state = read_state(self.state_path) or {}
            version = int(state.get("cells_version", self._cells_version))
            if version != self._cells_version:
                with self._lock:  # a scrape reads the fleet
                    load_cells(self.twin, self.config, state.get("cells", []))
                    self._clamp_ready_times()
                self._cells_version = version
            write_state(self.state_path, self._state_json())

    def _clamp_ready_times(self) -> None:
        # A run that applied just before the trace looped wrote ready times of the old lap.
        cold = {s.name: s.cold_start_s for s in self.config.services}
        for key, batches in self.twin._cells.items():
            for b in batches:
                b[0] = min(b[0], self.twin.now_s + cold[key.service])
        self.twin.cells_changed()

    # --- simulation ---------------------------------------------------------------------

    def step(self) -> TruthRecord:
        """Serve one tick and book it into the exported metrics."""
        if self.twin.now_s + self.tick_s > self.duration_s + 1e-9:
            self.twin.now_s = 0.0  # loop over the trace, as the twin backend does
            for batches in self.twin._cells.values():
                for b in batches:
                    b[0] = min(b[0], 0.0)  # instances starting at the lap's end are ready now
            self.twin.cells_changed()
        if self.state_path is not None:
            self._sync()
        self.twin.advance(self.twin.now_s + self.tick_s)
        signals = self.twin.read_signals(self.config, self.twin.now_s)
        with self._lock:
            for svc in self.config.services:
                sig = signals[svc.name]
                if sig.sampled_at_s is None:
                    continue  # a missing window: nothing new to export
                dt_wall = self.tick_s / self.speed
                p, d = self._state[(svc.name, Role.PREFILL)], self._state[(svc.name, Role.DECODE)]
                d.generation_tokens += (sig.decode_tps or 0.0) * dt_wall
                missed = (sig.prefill_tps or 0.0) * dt_wall
                prompt = missed / (1.0 - svc.prefix_cache_hit) if svc.prefix_cache_hit < 1 else missed
                p.prompt_tokens += prompt
                p.prefix_cache_queries += prompt
                p.prefix_cache_hits += prompt - missed
                for st, role, value in ((p, Role.PREFILL, sig.ttft_p99_s), (d, Role.DECODE, sig.tbt_p99_s)):
                    if value is not None and math.isfinite(value):
                        for i, c in enumerate(p99_bucket_counts(value, self._bounds(role))):
                            st.hist_counts[i] += c
                        st.hist_sum += value * _OBS_PER_TICK
                p.gpu_util_pct = None if sig.gpu_util_prefill is None else 100.0 * sig.gpu_util_prefill
                d.gpu_util_pct = None if sig.gpu_util_decode is None else 100.0 * sig.gpu_util_decode
                self._book_demand(svc.name, sig, prompt, (sig.decode_tps or 0.0) * dt_wall, dt_wall)
            rec = TruthRecord(wall_s=self.clock(), sim_s=self.twin.now_s, signals=signals)
            self.truth.append(rec)
            cutoff = rec.wall_s - self.keep_truth_s
            while self.truth and self.truth[0].wall_s < cutoff:
                self.truth.pop(0)
        return rec

    def _book_demand(self, service: str, sig: ServiceSignals, prompt: float, generated: float, dt_wall: float) -> None:
        """The queue, request sizes and arrivals of one tick (caller holds the lock)."""
        p, d = self._state[(service, Role.PREFILL)], self._state[(service, Role.DECODE)]
        p.tokens_per_request = sig.mean_input_tokens or p.tokens_per_request
        d.tokens_per_request = sig.mean_output_tokens or d.tokens_per_request
        for st, tokens in ((p, prompt), (d, generated)):
            if st.tokens_per_request:
                st.request_tokens += tokens
                st.requests += tokens / st.tokens_per_request
        p.waiting_requests = sig.waiting_requests
        if d.tokens_per_request:
            d.waiting_requests = self.twin._backlog_d[service] / d.tokens_per_request
        fe = self._frontend[service]
        fe.requests += (sig.arrival_rps or 0.0) * dt_wall
        fe.input_tokens += (sig.arrival_prompt_tps or 0.0) * dt_wall

    def run(self, stop: threading.Event, *, max_wall_s: float | None = None) -> None:
        """Step in accelerated real time until `stop` is set (or `max_wall_s` passed)."""
        start = time.monotonic()
        ticks = 0
        while not stop.is_set():
            self.step()
            ticks += 1
            due = start + ticks * self.tick_s / self.speed
            if max_wall_s is not None and time.monotonic() - start >= max_wall_s:
                return
            stop.wait(max(0.0, due - time.monotonic()))

    def serve(self, port: int, addr: str = "127.0.0.1") -> ThreadingHTTPServer:
        """Serve /metrics in the classic text format in a daemon thread.

        Always text 0.0.4, never OpenMetrics: prometheus-client's OpenMetrics output rewrites
        `vllm:` names to `vllm_` for scrapers that do not ask for UTF-8 names (Prometheus 2.x),
        which is not what a vLLM deployment's series are called.
        """
        registry = self.registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = generate_latest(registry)
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE_LATEST)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # one line per scrape is noise

        server = ThreadingHTTPServer((addr, port), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, name="twin-exporter", daemon=True).start()
        return server

    # --- exposition ---------------------------------------------------------------------

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        labels = ["service", "role", "model_name"]
        gen = CounterMetricFamily("vllm:generation_tokens", "Generation tokens (simulated per wall s).", labels=labels)
        prompt = CounterMetricFamily("vllm:prompt_tokens", "Prompt tokens (simulated per wall s).", labels=labels)
        hits = CounterMetricFamily("vllm:prefix_cache_hits", "Prefix-cache hit tokens.", labels=labels)
        queries = CounterMetricFamily("vllm:prefix_cache_queries", "Prefix-cache queried tokens.", labels=labels)
        ttft = HistogramMetricFamily("vllm:time_to_first_token_seconds", "TTFT (twin p99 shape).", labels=labels)
        itl = HistogramMetricFamily("vllm:inter_token_latency_seconds", "Inter-token latency.", labels=labels)
        util = GaugeMetricFamily("DCGM_FI_DEV_GPU_UTIL", "GPU utilisation, percent.", labels=[*labels, "gpu"])
        waiting = GaugeMetricFamily("vllm:num_requests_waiting", "Requests queued (the twin's backlog).", labels=labels)
        sizes = {
            Role.PREFILL: HistogramMetricFamily(
                "vllm:request_prompt_tokens", "Prompt tokens per request.", labels=labels
            ),
            Role.DECODE: HistogramMetricFamily(
                "vllm:request_generation_tokens", "Generation tokens per request.", labels=labels
            ),
        }
        fe_labels = ["service", "model"]
        fe_requests = CounterMetricFamily("dynamo_frontend_requests", "Requests arrived.", labels=fe_labels)
        fe_input = HistogramMetricFamily(
            "dynamo_frontend_input_sequence_tokens", "Prompt tokens per arrived request.", labels=fe_labels
        )
        fleet = GaugeMetricFamily(
            "heteroscale_twin_instances", "Instances of the twin (starting ones included).", labels=_FLEET_LABELS
        )
        with self._lock:
            per: dict[tuple[str, str, str], int] = {}
            for key, n in self.twin.placement().cells.items():
                k = (key.service, key.role.value, key.gpu_type)
                per[k] = per.get(k, 0) + n
            for k, n in sorted(per.items()):
                fleet.add_metric(list(k), float(n))
            for svc in self.config.services:
                for role in Role:
                    st = self._state[(svc.name, role)]
                    lv = [svc.name, role.value, svc.model]
                    gen.add_metric(lv, st.generation_tokens)
                    prompt.add_metric(lv, st.prompt_tokens)
                    hits.add_metric(lv, st.prefix_cache_hits)
                    queries.add_metric(lv, st.prefix_cache_queries)
                    bounds = self._bounds(role)
                    cum, buckets = 0.0, []
                    for b, c in zip((*bounds, math.inf), st.hist_counts, strict=True):
                        cum += c
                        buckets.append(("+Inf" if math.isinf(b) else repr(b), cum))
                    (ttft if role is Role.PREFILL else itl).add_metric(lv, buckets, st.hist_sum)
                    if st.gpu_util_pct is not None:
                        util.add_metric([*lv, "0"], st.gpu_util_pct)
                    if st.waiting_requests is not None:
                        waiting.add_metric(lv, st.waiting_requests)
                    sizes[role].add_metric(lv, [("+Inf", st.requests)], st.request_tokens)
                fe = self._frontend[svc.name]
                fe_requests.add_metric([svc.name, svc.model], fe.requests)
                fe_input.add_metric([svc.name, svc.model], [("+Inf", fe.requests)], fe.input_tokens)
        yield from (gen, prompt, hits, queries, ttft, itl, util, waiting, *sizes.values(), fe_requests, fe_input, fleet)

    # --- ground truth -------------------------------------------------------------------

    def truth_between(self, start_wall_s: float, end_wall_s: float) -> dict[str, ServiceSignals]:
        """Mean of each service's per-tick signals over ticks ending in (start, end]: what a
        rate() over that window should read. Latencies: the max of the ticks' p99s."""
        with self._lock:
            recs = [r for r in self.truth if start_wall_s < r.wall_s <= end_wall_s]
        out: dict[str, ServiceSignals] = {}
        for svc in self.config.services:
            sigs = [r.signals[svc.name] for r in recs if r.signals[svc.name].sampled_at_s is not None]
            if not sigs:
                out[svc.name] = ServiceSignals.missing(svc.name)
                continue

            def mean(name: str, sigs: list[ServiceSignals] = sigs) -> float | None:
                vals = [v for s in sigs if (v := s.get(name)) is not None]
                return sum(vals) / len(vals) if vals else None

            def top(name: str, sigs: list[ServiceSignals] = sigs) -> float | None:
                vals = [v for s in sigs if (v := s.get(name)) is not None]
                return max(vals) if vals else None

            out[svc.name] = ServiceSignals(
                service=svc.name,
                sampled_at_s=sigs[-1].sampled_at_s,
                decode_tps=mean("decode_tps"),
                prefill_tps=mean("prefill_tps"),
                ttft_p99_s=top("ttft_p99_s"),
                tbt_p99_s=top("tbt_p99_s"),
                gpu_util_prefill=mean("gpu_util_prefill"),
                gpu_util_decode=mean("gpu_util_decode"),
                waiting_requests=sigs[-1].waiting_requests,  # a gauge: the window's last value
                queued_prompt_tokens=sigs[-1].queued_prompt_tokens,
                arrival_rps=mean("arrival_rps"),
                arrival_prompt_tps=mean("arrival_prompt_tps"),
                mean_input_tokens=mean("mean_input_tokens"),
                mean_output_tokens=mean("mean_output_tokens"),
                prefix_cache_hit_rate=mean("prefix_cache_hit_rate"),
            )
        return out
