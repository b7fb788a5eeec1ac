"""The replay twin: a simulated P/D cluster that serves a load curve in simulated time.

It is both backends the scaling loop needs: it reports signals computed from what it served
(`read_signals`) and it holds a placement it changes on request (`read_state`, `apply`).

Model (v0, per service, per tick of `tick_s`):
  * capacity of a role = sum over its ready instances of the per-instance tokens/s of their GPU
    type (`capacity_tokens_per_s` in the config: what one instance sustains at the SLOs);
  * prefill work = req/s x input tokens x (1 - prefix-cache hit rate); decode work = req/s x
    output tokens; work above capacity queues as backlog and is served later;
  * latency: p99 TTFT and TBT are flat at low load and rise steeply as utilisation nears 1
    (M/M/1-style waiting on top of a service-time floor), plus the time to drain any backlog;
  * GPU utilisation as DCGM reports it: prefill tracks load; decode stays at 85-95% whenever it
    serves anything (KV-cache memory traffic), as the paper measured;
  * a new instance occupies its GPUs at once but serves only after `cold_start_s`.
Speed: pure Python on small dicts; a simulated hour is milliseconds per service.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from models.config import ClusterConfig, Role, Service
from models.values import (
    ApplyMode,
    ApplyResult,
    CellKey,
    Change,
    Placement,
    PlacementPlan,
    ServiceSignals,
)
from sim.traces import LoadCurve
from tasks.core.topology import ClusterView, view_from_config

# Decode GPU utilisation band (paper: 85-95% even at the daily trough).
_DECODE_UTIL_FLOOR = 0.85
_DECODE_UTIL_SPAN = 0.10
# p99 prefill time of one request relative to the mean request (Azure conv: p99/mean input ~3.6).
_P99_SIZE_FACTOR = 3.6
# Requests queued longer than this are abandoned by their clients.
_MAX_QUEUE_S = 120.0


@dataclass
class _ServiceTotals:
    """Accumulators since the last signal read."""

    window_s: float = 0.0
    observed_s: float = 0.0
    decode_tokens: float = 0.0
    prefill_tokens: float = 0.0
    ttft_p99_s: float = 0.0
    tbt_p99_s: float = 0.0
    util_p_gpu_s: float = 0.0
    util_d_gpu_s: float = 0.0
    gpus_p_s: float = 0.0
    gpus_d_s: float = 0.0
    last_observed_s: float | None = None


@dataclass
class ServiceStats:
    """Totals over the whole replay, for the league table."""

    gpu_seconds: float = 0.0
    util_gpu_seconds: float = 0.0
    good_s: float = 0.0
    total_s: float = 0.0
    ttft_p99_s_max: float = 0.0
    tbt_p99_s_max: float = 0.0


@dataclass
class TickRecord:
    t_s: float
    service: str
    req_per_s: float
    num_prefill: int
    num_decode: int
    ready_prefill: int
    ready_decode: int
    ttft_p99_s: float
    tbt_p99_s: float
    gpus: int


@dataclass
class Twin:
    config: ClusterConfig
    load: Mapping[str, LoadCurve]
    tick_s: float
    now_s: float = 0.0  # simulated clock; the load curves start at `t0_s`
    t0_s: float = 0.0
    keep_ticks: bool = True
    # cell -> list of [ready_at_s, count]; a cell's instances are ready once ready_at_s <= now.
    _cells: dict[CellKey, list[list[float]]] = field(default_factory=dict)
    _backlog_p: dict[str, float] = field(default_factory=dict)
    _backlog_d: dict[str, float] = field(default_factory=dict)
    _acc: dict[str, _ServiceTotals] = field(default_factory=dict)
    stats: dict[str, ServiceStats] = field(default_factory=dict)
    ticks: list[TickRecord] = field(default_factory=list)

    def __post_init__(self) -> None:
        missing = [s.name for s in self.config.services if s.name not in self.load]
        if missing:
            raise ValueError(f"no load curve for service(s) {missing}")
        self._view = view_from_config(self.config)
        self.now_s = max(self.now_s, self.t0_s)
        for svc in self.config.services:
            self._backlog_p[svc.name] = 0.0
            self._backlog_d[svc.name] = 0.0
            self._acc[svc.name] = _ServiceTotals()
            self.stats[svc.name] = ServiceStats()

    # --- state --------------------------------------------------------------------------

    def seed(self, placement: Placement) -> None:
        """Start with `placement` already running and ready (the fleet before the replay)."""
        self._cells = {k: [[-math.inf, float(n)]] for k, n in placement.cells.items() if n > 0}

    def placement(self) -> Placement:
        return Placement.of((k, int(sum(b[1] for b in batches))) for k, batches in self._cells.items())

    def _ready(self, key: CellKey) -> float:
        return sum(b[1] for b in self._cells.get(key, ()) if b[0] <= self.now_s)

    # --- ClusterBackend -----------------------------------------------------------------

    def read_state(self, config: ClusterConfig, now_s: float) -> ClusterView:
        return ClusterView(
            capacities=self._view.capacities,
            placement=self.placement(),
            priority_override=self._view.priority_override,
            gpu_budget=self._view.gpu_budget,
        )

    def apply(self, config: ClusterConfig, plan: PlacementPlan, mode: ApplyMode, now_s: float) -> ApplyResult:
        current = self.placement()
        keys = sorted(set(current.cells) | set(plan.placement.cells))
        changes = tuple(
            Change(k, current.cells.get(k, 0), plan.placement.cells.get(k, 0))
            for k in keys
            if current.cells.get(k, 0) != plan.placement.cells.get(k, 0)
        )
        if mode is not ApplyMode.APPLY:
            return ApplyResult(mode=mode, changes=changes, applied=False)
        cold = {s.name: s.cold_start_s for s in config.services}
        for ch in changes:
            batches = self._cells.setdefault(ch.key, [])
            if ch.after > ch.before:
                batches.append([now_s + cold[ch.key.service], float(ch.after - ch.before)])
            else:
                # Scale-in stops instances still starting first (newest first), then ready ones.
                drop = float(ch.before - ch.after)
                batches.sort(key=lambda b: b[0])
                while drop > 0 and batches:
                    take = min(drop, batches[-1][1])
                    batches[-1][1] -= take
                    drop -= take
                    if batches[-1][1] <= 0:
                        batches.pop()
            if not batches:
                del self._cells[ch.key]
        return ApplyResult(mode=mode, changes=changes, applied=True)

    # --- SignalsBackend -----------------------------------------------------------------

    def read_signals(self, config: ClusterConfig, now_s: float) -> dict[str, ServiceSignals]:
        out: dict[str, ServiceSignals] = {}
        for svc in config.services:
            acc = self._acc.get(svc.name)
            if acc is None or acc.observed_s <= 0 or acc.last_observed_s is None:
                out[svc.name] = ServiceSignals.missing(svc.name)
            else:
                w = acc.observed_s
                out[svc.name] = ServiceSignals(
                    service=svc.name,
                    sampled_at_s=acc.last_observed_s,
                    decode_tps=acc.decode_tokens / w,
                    prefill_tps=acc.prefill_tokens / w,
                    ttft_p99_s=acc.ttft_p99_s,
                    tbt_p99_s=acc.tbt_p99_s,
                    gpu_util_prefill=acc.util_p_gpu_s / acc.gpus_p_s if acc.gpus_p_s else None,
                    gpu_util_decode=acc.util_d_gpu_s / acc.gpus_d_s if acc.gpus_d_s else None,
                )
            self._acc[svc.name] = _ServiceTotals()
        return out

    # --- simulation ---------------------------------------------------------------------

    def advance(self, until_s: float) -> None:
        """Serve the load tick by tick up to `until_s`."""
        while self.now_s + self.tick_s <= until_s + 1e-9:
            for svc in self.config.services:
                self._tick(svc)
            self.now_s += self.tick_s

    def _role_capacity(self, svc: Service, role: Role) -> tuple[float, float, int, int]:
        """(tokens/s of ready instances, per-instance tokens/s of the reference type,
        ready instances, all instances) for a role."""
        spec = svc.role(role)
        cap, ready_n, all_n = 0.0, 0, 0
        for key, batches in self._cells.items():
            if key.service != svc.name or key.role is not role:
                continue
            per = spec.capacity_tokens_per_s.get(key.gpu_type, 0.0)
            for ready_at, n in batches:
                all_n += int(n)
                if ready_at <= self.now_s:
                    cap += per * n
                    ready_n += int(n)
        return cap, spec.capacity_tokens_per_s[spec.reference_gpu_type], ready_n, all_n

    def _tick(self, svc: Service) -> None:
        dt = self.tick_s
        curve = self.load[svc.name]
        i = curve.at(self.now_s - self.t0_s)
        rps = float(curve.req_per_s[i])
        observed = bool(curve.observed[i])
        in_tok = float(curve.mean_input_tokens[i])
        out_tok = float(curve.mean_output_tokens[i])

        cap_p, per_p, ready_p, all_p = self._role_capacity(svc, Role.PREFILL)
        cap_d, _per_d, ready_d, all_d = self._role_capacity(svc, Role.DECODE)

        # Prefill: cache-missed prompt tokens, plus what queued before.
        work_p = rps * in_tok * (1.0 - svc.prefix_cache_hit) * dt + self._backlog_p[svc.name]
        served_p = min(work_p, cap_p * dt)
        self._backlog_p[svc.name] = work_p - served_p
        rho_p = work_p / (cap_p * dt) if cap_p > 0 else (math.inf if work_p > 0 else 0.0)

        # Clients give up after _MAX_QUEUE_S: older backlog is dropped (and the window fails).
        if cap_p > 0 and self._backlog_p[svc.name] > cap_p * _MAX_QUEUE_S:
            self._backlog_p[svc.name] = cap_p * _MAX_QUEUE_S
        # Decode only sees the requests prefill finished.
        prompt_tokens = in_tok * (1.0 - svc.prefix_cache_hit)
        done_req = served_p / prompt_tokens if prompt_tokens > 0 else rps * dt
        work_d = done_req * out_tok + self._backlog_d[svc.name]
        served_d = min(work_d, cap_d * dt)
        self._backlog_d[svc.name] = work_d - served_d
        if cap_d > 0 and self._backlog_d[svc.name] > cap_d * _MAX_QUEUE_S:
            self._backlog_d[svc.name] = cap_d * _MAX_QUEUE_S
        rho_d = work_d / (cap_d * dt) if cap_d > 0 else (math.inf if work_d > 0 else 0.0)

        # p99 TTFT: service-time floor of a large prompt on one instance, plus queueing for one
        # of `ready_p` instances (Sakasegawa's M/M/c approximation of the mean wait, x4.6 for
        # the p99 of an exponential tail), plus draining any backlog ahead of the request.
        mean_service_s = in_tok * (1.0 - svc.prefix_cache_hit) / per_p
        floor_ttft = _P99_SIZE_FACTOR * mean_service_s
        ttft = floor_ttft
        if cap_p > 0:
            rho_c = min(rho_p, 0.99)
            c = max(ready_p, 1)
            wait = mean_service_s * rho_c ** (math.sqrt(2.0 * (c + 1)) - 1.0) / (c * (1.0 - rho_c))
            ttft += 4.6 * wait + self._backlog_p[svc.name] / cap_p
        elif work_p > 0:
            ttft = math.inf
        # Decode backlog means requests wait for a decode slot before their first token.
        if cap_d > 0:
            ttft += self._backlog_d[svc.name] / cap_d
        elif work_d > 0:
            ttft = math.inf
        # p99 TBT: flat at light load, steep towards capacity (the SLO is met at rho = 1).
        slo_tbt = svc.slo.tbt_p99_s
        rd = min(rho_d, 1.0)
        tbt = slo_tbt * (0.55 + 0.40 * rd**6)
        if rho_d > 1.0:
            tbt = slo_tbt * (0.95 + 0.5 * (min(rho_d, 4.0) - 1.0))

        util_p = min(1.0, rho_p) if cap_p > 0 else 0.0
        util_d = (_DECODE_UTIL_FLOOR + _DECODE_UTIL_SPAN * min(1.0, rho_d)) if served_d > 0 else 0.0
        gpi_p, gpi_d = svc.prefill.gpus_per_instance, svc.decode.gpus_per_instance
        gpus_ready_p, gpus_ready_d = ready_p * gpi_p, ready_d * gpi_d
        gpus_all = all_p * gpi_p + all_d * gpi_d

        acc = self._acc[svc.name]
        acc.window_s += dt
        if observed:
            acc.observed_s += dt
            acc.decode_tokens += served_d
            acc.prefill_tokens += served_p
            acc.ttft_p99_s = max(acc.ttft_p99_s, ttft)
            acc.tbt_p99_s = max(acc.tbt_p99_s, tbt)
            acc.util_p_gpu_s += util_p * gpus_ready_p * dt
            acc.util_d_gpu_s += util_d * gpus_ready_d * dt
            acc.gpus_p_s += gpus_ready_p * dt
            acc.gpus_d_s += gpus_ready_d * dt
            acc.last_observed_s = self.now_s + dt

        st = self.stats[svc.name]
        st.gpu_seconds += gpus_all * dt
        st.util_gpu_seconds += (util_p * gpus_ready_p + util_d * gpus_ready_d) * dt
        st.total_s += dt
        if ttft <= svc.slo.ttft_p99_s and tbt <= svc.slo.tbt_p99_s:
            st.good_s += dt
        st.ttft_p99_s_max = max(st.ttft_p99_s_max, ttft)
        st.tbt_p99_s_max = max(st.tbt_p99_s_max, tbt)
        if self.keep_ticks:
            self.ticks.append(
                TickRecord(
                    t_s=self.now_s,
                    service=svc.name,
                    req_per_s=rps,
                    num_prefill=all_p,
                    num_decode=all_d,
                    ready_prefill=ready_p,
                    ready_decode=ready_d,
                    ttft_p99_s=ttft,
                    tbt_p99_s=tbt,
                    gpus=gpus_all,
                )
            )
