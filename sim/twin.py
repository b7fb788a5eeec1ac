"""The replay twin: a simulated P/D cluster that serves a load curve in simulated time.

It is both backends the scaling loop needs: it reports signals computed from what it served
(`read_signals`) and it holds a placement it changes on request (`read_state`, `apply`).

Model (per service, per tick of `tick_s`); latencies come from measured GPU data, never from
the SLO (the twin does not know the targets it is judged against):
  * every instance runs an engine fitted by `sim.capacity` (aiconfigurator-core's kernel tables,
    or the user's pressure-test CSV; when neither covers the model/GPU, an engine is derived from
    the config's `capacity_tokens_per_s`, see `config_engine`);
  * prefill work = req/s x input tokens x (1 - prefix-cache hit rate); a busy prefill instance
    processes prompt tokens at its batched rate; work above capacity queues as backlog;
  * p99 TTFT = prefill of the p99 prompt + M/M/c wait (Sakasegawa) for `ready` prefill
    instances + draining any prefill backlog + KV transfer of the p99 prompt (slower by
    `kv_cross_domain_loss` for the share of traffic whose P and D sit in different network
    domains) + waiting for a decode slot when decode is backlogged. Flat at low load, a cliff
    as the pool nears saturation;
  * decode: the mean batch per instance follows from Little's law with the measured step time
    (step(b) = d0 + d1 b + d2 b L); capacity is the KV-memory batch limit; p99 TBT is the step
    time of the p99 batch (Poisson fluctuation); past the limit vLLM preempts and recomputes
    sequences, which puts a recompute (prefill of the context) into the p99 gap: the TBT cliff;
  * GPU utilisation as DCGM reports it (share of time a kernel runs): prefill tracks load;
    decode = 0.95 x P(batch non-empty), so it stays at ~95% even at the trough, as the paper
    measured. SM activity: prefill 0.85 x util (compute-bound); decode util x (0.25 + 0.5 x
    batch / batch limit) (memory-bound: low and barely moving);
  * a new instance occupies its GPUs at once but serves only after `cold_start_s`, and then only
    once the startup skew guard (tasks/core/skew.py, `TwinParams.skew_guard`) admits it: at each
    `apply` (a scaling run, where the Kubernetes backend relabels pods) per deployment group, with
    starting instances admitted ahead of readiness when any Ready order keeps the group's ratio
    in the band. Held instances hold GPUs and count in the placement but do not serve.
Speed: pure Python on small dicts; a simulated day is tens of milliseconds per service.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from models.config import AffinityLevel, ClusterConfig, Role, Service
from models.values import (
    ActuationRecord,
    ApplyMode,
    ApplyResult,
    CellKey,
    Change,
    Placement,
    PlacementPlan,
    ServiceSignals,
    SloState,
)
from sim import capacity as cap
from sim.capacity import CapacityError
from sim.traces import LoadCurve
from tasks.core import capacity as model
from tasks.core.capacity import EngineModel, config_engine
from tasks.core.skew import GuardGroup, GuardPod, decide_group
from tasks.core.topology import ANY_DOMAIN, ClusterView, view_from_config

# DCGM "GPU utilisation" of a decode engine that always has a step in flight: host-side
# scheduling leaves ~5% of wall time without a kernel.
_DECODE_UTIL_MAX = 0.95
_PREFILL_SM_PER_UTIL = 0.85
_DECODE_SM_BASE = 0.25
_DECODE_SM_SPAN = 0.50
# Requests queued longer than this are abandoned by their clients.
_MAX_QUEUE_S = 120.0
# Offered decode load this far above the batch limit makes preemption common enough to reach p99.
_PREEMPT_RHO = 1.01


@dataclass(frozen=True)
class TwinParams:
    """Knobs of the twin that are properties of the cluster, not of a service's config."""

    perf_csv: str | None = None  # user pressure-test table (sim.capacity layouts)
    use_aiconfigurator: bool = True
    kv_bandwidth_gb_per_s: float = 25.0  # per instance RDMA (200 Gb/s NIC)
    kv_cross_domain_loss: float = 0.2  # paper: ~20% bandwidth lost across switches
    kv_domain_level: str = "S1"  # P and D under different S1 (leaf) switches pay the loss
    # New instances serve only once the startup skew guard admits them (at a scaling run), as
    # on Kubernetes; False = they serve the moment they are Ready.
    skew_guard: bool = True


def engines_for(config: ClusterConfig, params: TwinParams) -> dict[tuple[str, Role, str], EngineModel]:
    """The engine of every (service, role, GPU type) the config can run."""
    out: dict[tuple[str, Role, str], EngineModel] = {}
    for svc in config.services:
        for role in Role:
            spec = svc.role(role)
            for gpu in spec.gpu_types:
                engine = None
                if params.use_aiconfigurator or params.perf_csv:
                    try:
                        if params.use_aiconfigurator:
                            engine = cap.engine_for(svc.model, gpu, spec.gpus_per_instance, params.perf_csv)
                        else:
                            engine = _csv_only(svc.model, gpu, spec.gpus_per_instance, params.perf_csv)
                    except CapacityError:
                        engine = None
                out[(svc.name, role, gpu)] = engine or config_engine(svc, role, gpu)
    return out


def _csv_only(model: str, gpu: str, tp: int, perf_csv: str | None) -> EngineModel | None:
    if perf_csv is None:
        return None
    table = cap.perf_from_csv(perf_csv)
    if not ((table["gpu"] == gpu) & (table["tp"] == tp)).any():
        return None
    return cap.fit_engine(table, gpu=gpu, tp=tp, model=model, source=f"csv:{perf_csv}")


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
    # Arrival side (the frontend's counters) and the prefill queue.
    arrived_requests: float = 0.0
    peak_rps: float = 0.0  # highest tick arrival rate (the twin's tick is the short interval)
    arrived_prompt_tokens: float = 0.0  # before the prefix cache
    arrived_output_tokens: float = 0.0
    queue_start_tokens: float | None = None  # cache-missed prompt tokens queued when the window opened
    queue_end_tokens: float = 0.0
    queue_end_requests: float = 0.0


@dataclass
class ServiceStats:
    """Totals over the whole replay, for the league table."""

    gpu_seconds: float = 0.0
    gpu_seconds_by_type: dict[str, float] = field(default_factory=dict)
    util_gpu_seconds: float = 0.0
    sm_gpu_seconds: float = 0.0
    good_s: float = 0.0
    total_s: float = 0.0
    ttft_p99_s_max: float = 0.0
    tbt_p99_s_max: float = 0.0
    # Per-tick p99 latencies of observed ticks (the replay-wide p99 is taken over these).
    ttft_samples: list[float] = field(default_factory=list)
    tbt_samples: list[float] = field(default_factory=list)


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
    util_prefill: float = 0.0
    util_decode: float = 0.0
    decode_tps: float = 0.0
    waiting_requests: float = 0.0


@dataclass
class Twin:
    config: ClusterConfig
    load: Mapping[str, LoadCurve]
    tick_s: float
    now_s: float = 0.0  # simulated clock; the load curves start at `t0_s`
    t0_s: float = 0.0
    keep_ticks: bool = True
    params: TwinParams = field(default_factory=TwinParams)
    # cell -> list of [ready_at_s, count, serving]; a cell's instances are ready once ready_at_s <=
    # now and serve once ready and admitted (`serving` of the batch's `count` admitted by the guard).
    _cells: dict[CellKey, list[list[float]]] = field(default_factory=dict)
    _backlog_p: dict[str, float] = field(default_factory=dict)
    _backlog_d: dict[str, float] = field(default_factory=dict)
    _acc: dict[str, _ServiceTotals] = field(default_factory=dict)
    _cross: dict[str, float] = field(default_factory=dict)
    stats: dict[str, ServiceStats] = field(default_factory=dict)
    ticks: list[TickRecord] = field(default_factory=list)
    _by_role: dict[tuple[str, Role], list[tuple[str, list[list[float]]]]] = field(default_factory=dict)
    # (service, role) -> (serving instances per GPU type, serving, all, GPUs per type): valid until
    # `_pools_until_s` (the next admitted instance to become Ready) or the next change.
    _pools: dict[tuple[str, Role], tuple[dict[str, float], int, int, dict[str, float]]] = field(default_factory=dict)
    _pools_until_s: float = -math.inf
    _groups: dict[tuple[str, str], list[CellKey]] = field(default_factory=dict)
    _held: set[tuple[str, str]] = field(default_factory=set)  # groups with instances the guard holds
    _placement: Placement | None = None  # `placement()`, until the cells change
    # Reuse a tick's queueing-model result when its inputs repeat exactly (`_tick`); False: always
    # recompute (the same numbers, tested).
    memo_ticks: bool = True
    _served: dict[str, tuple[Any, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = [s.name for s in self.config.services if s.name not in self.load]
        if missing:
            raise ValueError(f"no load curve for service(s) {missing}")
        self._view = view_from_config(self.config)
        self._s2_of = self._view.s2_of()
        self.engines = engines_for(self.config, self.params)
        self.now_s = max(self.now_s, self.t0_s)
        for svc in self.config.services:
            self._backlog_p[svc.name] = 0.0
            self._backlog_d[svc.name] = 0.0
            self._acc[svc.name] = _ServiceTotals()
            self.stats[svc.name] = ServiceStats()
            self._cross[svc.name] = 0.0

    # --- state --------------------------------------------------------------------------

    def seed(self, placement: Placement) -> None:
        """Start with `placement` already running and ready (the fleet before the replay)."""
        self._cells = {k: [[-math.inf, float(n), float(n)]] for k, n in placement.cells.items() if n > 0}
        self._update_cross()

    def _reindex(self) -> None:
        """(service, role) -> its cells' batch lists: a tick reads its pools without scanning
        every service's cells (rebuilt on every change; the lists are shared, not copied)."""
        index: dict[tuple[str, Role], list[tuple[str, list[list[float]]]]] = {}
        groups: dict[tuple[str, str], list[CellKey]] = {}
        held: set[tuple[str, str]] = set()
        affinity = {s.name: s.affinity for s in self.config.services}
        for key, batches in self._cells.items():
            index.setdefault((key.service, key.role), []).append((key.gpu_type, batches))
            level = affinity.get(key.service)
            if level is None:
                continue
            dom = key.s1 if level is AffinityLevel.S1 else self._s2_of.get(key.s1, key.s1)
            dom = ANY_DOMAIN if level is AffinityLevel.NONE else dom
            groups.setdefault((key.service, dom), []).append(key)
            if any(b[2] < b[1] for b in batches):
                held.add((key.service, dom))
        self._by_role = index
        self._groups = groups
        self._held = held
        self._pools = {}
        self._placement = None

    def cells_changed(self) -> None:
        """Call after changing `_cells` (or ready times) from outside: rebuilds indexes and caches."""
        self._update_cross()

    def placement(self) -> Placement:
        """Instances per cell (starting ones included). Cached until the cells change (every
        change ends in `_reindex`): the replay reads it twice a period, mostly unchanged."""
        if self._placement is None:
            self._placement = Placement.of((k, int(sum(b[1] for b in batches))) for k, batches in self._cells.items())
        return self._placement

    def _ready(self, key: CellKey) -> float:
        return sum(b[1] for b in self._cells.get(key, ()) if b[0] <= self.now_s)

    def serving(self, key: CellKey) -> float:
        """Instances of a cell that serve now: Ready and admitted by the startup skew guard."""
        return sum(min(b[2], b[1]) for b in self._cells.get(key, ()) if b[0] <= self.now_s)

    def group_serving_units(self) -> dict[tuple[str, str], tuple[float, float]]:
        """(service, group domain) -> serving (prefill, decode) in reference units."""
        out: dict[tuple[str, str], tuple[float, float]] = {}
        for (service, dom), keys in self._groups.items():
            svc = self.config.service(service)
            units = {r: 0.0 for r in Role}
            for k in keys:
                units[k.role] += self.serving(k) * svc.role(k.role).weight(k.gpu_type)
            out[(service, dom)] = (units[Role.PREFILL], units[Role.DECODE])
        return out

    def _update_cross(self) -> None:
        """Share of each service's traffic whose prefill and decode sit in different domains
        (requests are routed to a decode instance in the prefill's domain whenever one exists).
        Every change of the cells ends here (sim.live's loader too), so the pool index is rebuilt."""
        self._reindex()
        shares: dict[str, dict[Role, dict[str, float]]] = {}
        for key, batches in self._cells.items():
            dom = key.s1 if self.params.kv_domain_level == "S1" else self._s2_of.get(key.s1, key.s1)
            n = sum(b[1] for b in batches)
            role_map = shares.setdefault(key.service, {Role.PREFILL: {}, Role.DECODE: {}})[key.role]
            role_map[dom] = role_map.get(dom, 0.0) + n
        for svc in self.config.services:
            roles = shares.get(svc.name)
            if not roles or not roles[Role.PREFILL] or not roles[Role.DECODE]:
                self._cross[svc.name] = 0.0
                continue
            tp, td = sum(roles[Role.PREFILL].values()), sum(roles[Role.DECODE].values())
            same = sum(min(n / tp, roles[Role.DECODE].get(d, 0.0) / td) for d, n in roles[Role.PREFILL].items())
            self._cross[svc.name] = max(0.0, 1.0 - same)

    def cross_domain_share(self, service: str) -> float:
        return self._cross[service]

    # --- ClusterBackend -----------------------------------------------------------------

    def read_state(self, config: ClusterConfig, now_s: float) -> ClusterView:
        return ClusterView(
            capacities=self._view.capacities,
            placement=self.placement(),
            priority_override=self._view.priority_override,
            gpu_budget=self._view.gpu_budget,
        )

    def apply(
        self,
        config: ClusterConfig,
        plan: PlacementPlan,
        mode: ApplyMode,
        now_s: float,
        *,
        slo: Mapping[str, SloState] | None = None,  # no soft scale-in in the twin: unused
    ) -> ApplyResult:
        current = self.placement()
        if plan.placement is current or plan.placement.cells == current.cells:
            changes: tuple[Change, ...] = ()  # the usual period: nothing moves (no sort of every cell)
        else:
            keys = sorted(set(current.cells) | set(plan.placement.cells))
            changes = tuple(
                Change(k, current.cells.get(k, 0), plan.placement.cells.get(k, 0))
                for k in keys
                if current.cells.get(k, 0) != plan.placement.cells.get(k, 0)
            )
        if mode is not ApplyMode.APPLY:
            return ApplyResult(mode=mode, changes=changes, applied=False)
        cold = {s.name: s.cold_start_s for s in config.services}
        guard = self.params.skew_guard
        for ch in changes:
            batches = self._cells.setdefault(ch.key, [])
            if ch.after > ch.before:
                n = float(ch.after - ch.before)
                batches.append([now_s + cold[ch.key.service], n, 0.0 if guard else n])
            else:
                # Scale-in stops instances still starting first (newest first), then ready ones.
                drop = float(ch.before - ch.after)
                batches.sort(key=lambda b: b[0])
                while drop > 0 and batches:
                    take = min(drop, batches[-1][1])
                    batches[-1][1] -= take
                    batches[-1][2] = min(batches[-1][2], batches[-1][1])
                    drop -= take
                    if batches[-1][1] <= 0:
                        batches.pop()
            if not batches:
                del self._cells[ch.key]
        if changes:
            self._update_cross()
        records = self._guard(now_s) if guard else ()
        return ApplyResult(mode=mode, changes=changes, applied=True, actions=records)

    def _guard(self, now_s: float) -> tuple[ActuationRecord, ...]:
        """The startup skew guard over the twin's groups (one pod per held instance; the serving
        instances of a batch as one pod of their summed units). Records its admissions."""
        records: list[ActuationRecord] = []
        changed = False
        for service, dom in sorted(self._held):
            keys = self._groups.get((service, dom), [])
            if not any(b[2] < b[1] for k in keys for b in self._cells.get(k, ())):
                self._held.discard((service, dom))
                continue
            svc = self.config.service(service)
            pods: list[GuardPod] = []
            for k in keys:
                w = svc.role(k.role).weight(k.gpu_type)
                for j, (ready_at, n, on) in enumerate(self._cells.get(k, ())):
                    ready = ready_at <= now_s
                    if on > 0:
                        pods.append(GuardPod(f"{j}", k, on * w, ready, True, ready_at))
                    pods += [GuardPod(f"{j}.{i}", k, w, ready, False, ready_at) for i in range(round(n - on))]
            v = decide_group(
                GuardGroup(service, dom, tuple(pods)),
                prefill_per_decode=svc.pd_ratio.prefill_per_decode,
                tolerance=svc.policy.startup_skew_tolerance,
            )
            for q in v.admit:
                self._cells[q.key][int(q.name.split(".")[0])][2] += 1.0
                changed = True
            per_cell: dict[tuple[str, CellKey], int] = {}
            for kind, sel in (("admit", v.admit), ("hold-skew", v.held)):
                for q in sel:
                    per_cell[(kind, q.key)] = per_cell.get((kind, q.key), 0) + 1
            records += [ActuationRecord(kind, "twin", str(k), n, v.reason) for (kind, k), n in sorted(per_cell.items())]
        if changed:
            self._pools = {}
        return tuple(records)

    # --- SignalsBackend -----------------------------------------------------------------

    def read_signals(self, config: ClusterConfig, now_s: float) -> dict[str, ServiceSignals]:
        out: dict[str, ServiceSignals] = {}
        for svc in config.services:
            acc = self._acc.get(svc.name)
            if acc is None or acc.observed_s <= 0 or acc.last_observed_s is None:
                out[svc.name] = ServiceSignals.missing(svc.name)
            else:
                w = acc.observed_s
                reqs = acc.arrived_requests
                q0 = acc.queue_start_tokens if acc.queue_start_tokens is not None else acc.queue_end_tokens
                out[svc.name] = ServiceSignals(
                    service=svc.name,
                    sampled_at_s=acc.last_observed_s,
                    decode_tps=acc.decode_tokens / w,
                    prefill_tps=acc.prefill_tokens / w,
                    ttft_p99_s=acc.ttft_p99_s,
                    tbt_p99_s=acc.tbt_p99_s,
                    gpu_util_prefill=acc.util_p_gpu_s / acc.gpus_p_s if acc.gpus_p_s else None,
                    gpu_util_decode=acc.util_d_gpu_s / acc.gpus_d_s if acc.gpus_d_s else None,
                    waiting_requests=acc.queue_end_requests,
                    queued_prompt_tokens=acc.queue_end_tokens,
                    queue_growth_tps=(acc.queue_end_tokens - q0) / acc.window_s if acc.window_s else None,
                    arrival_rps=reqs / w,
                    arrival_peak_rps=acc.peak_rps,
                    arrival_prompt_tps=acc.arrived_prompt_tokens / w,
                    # Sizes need requests to average over: none arrived, none known.
                    mean_input_tokens=acc.arrived_prompt_tokens / reqs if reqs > 0 else None,
                    mean_output_tokens=acc.arrived_output_tokens / reqs if reqs > 0 else None,
                    prefix_cache_hit_rate=svc.prefix_cache_hit,
                )
            # The next window's queue starts where this one's ended.
            self._acc[svc.name] = _ServiceTotals(queue_start_tokens=self._backlog_p[svc.name])
        return out

    # --- simulation ---------------------------------------------------------------------

    def advance(self, until_s: float) -> None:
        """Serve the load tick by tick up to `until_s`."""
        while self.now_s + self.tick_s <= until_s + 1e-9:
            for svc in self.config.services:
                self._tick(svc)
            self.now_s += self.tick_s

    def _pool(self, svc: Service, role: Role, gpus_by_type: dict[str, float]) -> tuple[dict[str, float], int, int]:
        """(serving instances per GPU type, serving instances, all instances) of a role; adds the
        GPUs the role holds (starting and held instances too) to `gpus_by_type`. Serving = Ready
        and admitted. Cached until an admitted instance becomes Ready or the cells change."""
        if self.now_s >= self._pools_until_s:
            self._pools = {}
        hit = self._pools.get((svc.name, role))
        if hit is None:
            if not self._pools:
                self._pools_until_s = min(
                    (b[0] for bs in self._cells.values() for b in bs if b[0] > self.now_s and b[2] > 0),
                    default=math.inf,
                )
            ready: dict[str, float] = {}
            gpus: dict[str, float] = {}
            ready_n = all_n = 0
            gpi = svc.role(role).gpus_per_instance
            for gpu_type, batches in self._by_role.get((svc.name, role), ()):
                for ready_at, n, on in batches:
                    all_n += int(n)
                    gpus[gpu_type] = gpus.get(gpu_type, 0.0) + n * gpi
                    if ready_at <= self.now_s and on > 0:
                        ready[gpu_type] = ready.get(gpu_type, 0.0) + min(on, n)
                        ready_n += int(min(on, n))
            hit = self._pools[(svc.name, role)] = (ready, ready_n, all_n, gpus)
        for gpu_type, g in hit[3].items():
            gpus_by_type[gpu_type] = gpus_by_type.get(gpu_type, 0.0) + g
        return hit[0], hit[1], hit[2]

    def _tick(self, svc: Service) -> None:
        dt = self.tick_s
        curve = self.load[svc.name]
        i = curve.at(self.now_s - self.t0_s)
        rps = float(curve.req_per_s[i])
        observed = bool(curve.observed[i])
        in_tok = float(curve.mean_input_tokens[i])
        out_tok = float(curve.mean_output_tokens[i])

        all_by_type: dict[str, float] = {}
        ready_p, n_ready_p, all_p = self._pool(svc, Role.PREFILL, all_by_type)
        ready_d, n_ready_d, all_d = self._pool(svc, Role.DECODE, all_by_type)
        backlog_p0, backlog_d0, cross = self._backlog_p[svc.name], self._backlog_d[svc.name], self._cross[svc.name]
        # The queueing model is a pure function of these; at steady load (a 10-minute trace window
        # is ten 60-s ticks of the same rate) most ticks repeat the last one's inputs exactly.
        memo = self._served.get(svc.name) if self.memo_ticks else None
        if (
            memo is not None
            and memo[0] == i
            and memo[3] == backlog_p0
            and memo[4] == backlog_d0
            and memo[5] == cross
            and memo[6] == n_ready_p
            and memo[7] == n_ready_d
            # By value: the pool cache is rebuilt for every service whenever any cell changes.
            and memo[1] == ready_p
            and memo[2] == ready_d
        ):
            out = memo[8]
        else:
            out = self._serve(svc, i, ready_p, n_ready_p, ready_d, n_ready_d, backlog_p0, backlog_d0)
            if self.memo_ticks:
                self._served[svc.name] = (i, ready_p, ready_d, backlog_p0, backlog_d0, cross, n_ready_p, n_ready_d, out)
        served_p, served_d, backlog_p, backlog_d, waiting, ttft, tbt, util_p, util_d, sm_p, sm_d = out
        self._backlog_p[svc.name] = backlog_p
        self._backlog_d[svc.name] = backlog_d
        gpi_p, gpi_d = svc.prefill.gpus_per_instance, svc.decode.gpus_per_instance
        gpus_ready_p, gpus_ready_d = n_ready_p * gpi_p, n_ready_d * gpi_d
        gpus_all = all_p * gpi_p + all_d * gpi_d

        acc = self._acc[svc.name]
        acc.window_s += dt
        st = self.stats[svc.name]
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
            acc.arrived_requests += rps * dt
            acc.peak_rps = max(acc.peak_rps, rps)
            acc.arrived_prompt_tokens += rps * in_tok * dt
            acc.arrived_output_tokens += rps * out_tok * dt
        acc.queue_end_tokens = backlog_p
        acc.queue_end_requests = waiting
        if acc.queue_start_tokens is None:
            acc.queue_start_tokens = 0.0
            st.ttft_samples.append(ttft)
            st.tbt_samples.append(tbt)

        st.gpu_seconds += gpus_all * dt
        for g, n in all_by_type.items():
            st.gpu_seconds_by_type[g] = st.gpu_seconds_by_type.get(g, 0.0) + n * dt
        st.util_gpu_seconds += (util_p * gpus_ready_p + util_d * gpus_ready_d) * dt
        st.sm_gpu_seconds += (sm_p * gpus_ready_p + sm_d * gpus_ready_d) * dt
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
                    ready_prefill=n_ready_p,
                    ready_decode=n_ready_d,
                    ttft_p99_s=ttft,
                    tbt_p99_s=tbt,
                    gpus=gpus_all,
                    util_prefill=util_p,
                    util_decode=util_d,
                    decode_tps=served_d / dt,
                    waiting_requests=waiting,
                )
            )

    def _serve(
        self,
        svc: Service,
        i: int,
        ready_p: dict[str, float],
        n_ready_p: int,
        ready_d: dict[str, float],
        n_ready_d: int,
        backlog_p: float,
        backlog_d: float,
    ) -> tuple[float, ...]:
        """One tick of the queueing model for one service: a pure function of the load window `i`,
        the serving pools, the backlogs carried in and the cross-domain share. Returns (served
        prefill tokens, served decode tokens, prefill backlog, decode backlog, waiting requests,
        p99 TTFT, p99 TBT, prefill util, decode util, prefill SM, decode SM)."""
        dt = self.tick_s
        curve = self.load[svc.name]
        rps = float(curve.req_per_s[i])
        in_tok = float(curve.mean_input_tokens[i])
        out_tok = float(curve.mean_output_tokens[i])
        prompt = in_tok * (1.0 - svc.prefix_cache_hit)
        ctx_len = in_tok + out_tok / 2.0
        eng = self.engines

        # --- prefill: cache-missed prompt tokens, plus what queued before.
        cap_p = sum(
            n * model.prefill_tokens_per_s(eng[(svc.name, Role.PREFILL, g)], max(prompt, 1.0))
            for g, n in ready_p.items()
        )
        work_p = rps * prompt * dt + backlog_p
        served_p = min(work_p, cap_p * dt)
        backlog_p = work_p - served_p
        if cap_p > 0 and backlog_p > cap_p * _MAX_QUEUE_S:
            backlog_p = cap_p * _MAX_QUEUE_S  # clients gave up (and this window fails)
        waiting = backlog_p / prompt if prompt > 0 else 0.0
        rho_p = work_p / (cap_p * dt) if cap_p > 0 else (math.inf if work_p > 0 else 0.0)

        if cap_p > 0:
            # p99 is set by the slowest GPU type serving prefill.
            ttft = max(
                model.prefill_ttft_p99_s(
                    eng[(svc.name, Role.PREFILL, g)], min(rho_p, 0.99), n_ready_p, max(prompt, 1.0)
                )
                for g in ready_p
            )
            ttft += backlog_p / cap_p
        else:
            ttft = math.inf if work_p > 0 else 0.0
        # KV transfer of the p99 prompt (the whole prompt's KV, cache hits included).
        kv_bytes = eng[(svc.name, Role.DECODE, svc.decode.reference_gpu_type)].kv_bytes_per_token
        bw = self.params.kv_bandwidth_gb_per_s * 1e9 * (1.0 - self.params.kv_cross_domain_loss * self._cross[svc.name])
        ttft += kv_bytes * in_tok * model.P99_INPUT_FACTOR / bw

        # --- decode: only the requests prefill finished arrive.
        done_req = served_p / prompt if prompt > 0 else rps * dt
        work_d = done_req * out_tok + backlog_d
        caps_d = {g: model.decode_capacity(eng[(svc.name, Role.DECODE, g)], ctx_len) for g in ready_d}
        cap_d = sum(caps_d[g] * n for g, n in ready_d.items())
        served_d = min(work_d, cap_d * dt)
        backlog_d = work_d - served_d
        if cap_d > 0 and backlog_d > cap_d * _MAX_QUEUE_S:
            backlog_d = cap_d * _MAX_QUEUE_S
        rho_d = work_d / (cap_d * dt) if cap_d > 0 else (math.inf if work_d > 0 else 0.0)

        tbt = 0.0
        batch_frac = 0.0
        mean_batch = 0.0
        if cap_d > 0:
            for g, n in ready_d.items():
                e = eng[(svc.name, Role.DECODE, g)]
                bmax = e.max_batch(ctx_len)
                # Each instance gets traffic in proportion to its capacity.
                r_i = min(rho_d, 1.0) * caps_d[g]
                b = min(model.decode_batch(e, r_i, ctx_len), float(bmax))
                tbt_g = model.decode_tbt_p99_s(e, b, ctx_len) if served_d > 0 else 0.0
                if rho_d > _PREEMPT_RHO:
                    tbt_g += e.prefill_s(1, ctx_len)  # a preempted sequence is recomputed
                tbt = max(tbt, tbt_g)
                mean_batch += b * n
                batch_frac += b / bmax * n
            mean_batch /= n_ready_d
            batch_frac /= n_ready_d
            ttft += backlog_d / cap_d  # waiting for a decode slot before the first token
        elif work_d > 0:
            ttft = tbt = math.inf

        util_p = min(1.0, rho_p) if cap_p > 0 else 0.0
        util_d = _DECODE_UTIL_MAX * (1.0 - math.exp(-mean_batch)) if cap_d > 0 else 0.0
        sm_p = _PREFILL_SM_PER_UTIL * util_p
        sm_d = util_d * (_DECODE_SM_BASE + _DECODE_SM_SPAN * batch_frac)
        return served_p, served_d, backlog_p, backlog_d, waiting, ttft, tbt, util_p, util_d, sm_p, sm_d
