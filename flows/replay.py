"""Replay: drive the twin through a trace with a policy, the same steps as `scale_cluster`.

Every control period in simulated time the loop calls the step functions of `tasks.steps`
(collect -> forecast -> targets -> place -> apply) against the twin, the one decision code path
the Prefect flow also runs. It is not a Prefect run per tick: a 14-day replay has 20,000 periods.

`run_league` replays each policy on the same load from the same starting fleet and returns the
summary rows of the `summary.json` contract.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from collections.abc import Callable, Mapping, MutableSequence, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from flows.fanout import Engine, EngineKind, fan_out
from models.config import ClusterConfig, PlacementMethod, Role
from models.errors import is_transient
from models.values import Action, ApplyMode, Forecast, RoleCounts, ServicePolicyState
from sim.faults import FaultPlan
from sim.faults import wrap as wrap_faults
from sim.floor import FloorPlan
from sim.sizing import fit_to_cluster, initial_counts, peak_metric
from sim.traces import LoadCurve, load_curve
from sim.twin import Twin, TwinParams
from tasks import steps
from tasks.backends import ClusterBackend, SignalsBackend
from tasks.core.capacity import SloFloor, slo_floor
from tasks.core.decision_cache import DecisionCache
from tasks.core.forecast_grid import SampleHistory
from tasks.core.forecast_pinned import Pinned
from tasks.core.invariants import plan_violations
from tasks.core.placement import place_greedy
from tasks.core.policy import POLICIES, get_policy
from tasks.core.topology import view_from_config

DEFAULT_LEAGUE = ("static-peak", "hpa-gpu-util", "heteroscale-paper")
# What `heteroscale demo` replays: the baselines, the paper's policy and ours.
DEMO_LEAGUE = ("static-peak", "hpa-gpu-util", "heteroscale-paper", "heteroscale")
# Every policy, in the order the league tables list them (the registry's order).
ALL_POLICIES = tuple(POLICIES)
# `auto` re-runs its backtest selection this often in a replay; between, the method it chose
# forecasts alone (the selection scores a trailing 2-day window: an hour barely moves it).
RESELECT_EVERY_S = 3600.0


@dataclass
class ReplayResult:
    policy: str
    twin: Twin
    scale_actions: int
    wall_s: float
    unmet_periods: int
    # Fault injection (soak): periods whose collect / cluster read / apply failed, and plans
    # that broke an invariant (tasks/core/invariants.py), each with its first messages.
    failed_collects: int = 0
    failed_reads: int = 0
    failed_applies: int = 0
    invariant_violations: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        stats = self.twin.stats.values()
        gpu_s = sum(s.gpu_seconds for s in stats)
        price = {g.name: g.cost_per_gpu_hour for g in self.twin.config.gpu_types}
        cost = sum(n * price.get(g, 0.0) for s in stats for g, n in s.gpu_seconds_by_type.items()) / 3600.0
        floors = slo_floors(self.twin)
        feasible = [self.twin.stats[n] for n, f in floors.items() if f.feasible]
        feasible_s = sum(s.total_s for s in feasible)
        total_s = sum(s.total_s for s in stats)
        simulated_s = max((s.total_s for s in stats), default=0.0)
        ttft = [x for s in stats for x in s.ttft_samples]
        tbt = [x for s in stats for x in s.tbt_samples]
        return {
            "policy": self.policy,
            "gpu_hours": round(gpu_s / 3600.0, 3),
            # GPU-hours x each type's cost_per_gpu_hour: on a mixed cluster an H100 hour is not an A100's.
            "cost": round(cost, 3),
            "avg_gpu_util": round(sum(s.util_gpu_seconds for s in stats) / gpu_s, 4) if gpu_s else 0.0,
            "slo_attainment": round(sum(s.good_s for s in stats) / total_s, 4) if total_s else 0.0,
            # Over the services whose SLO some fleet can meet (None: no service's can).
            "slo_attainment_feasible": round(sum(s.good_s for s in feasible) / feasible_s, 4) if feasible_s else None,
            "slo_floor": {n: f.as_dict() for n, f in floors.items()},
            "scale_actions": self.scale_actions,
            # Control periods in which placement could not place every instance asked for.
            "unmet_periods": self.unmet_periods,
            "simulated_s": simulated_s,
            "wall_s": round(self.wall_s, 3),
            "avg_sm_activity": round(sum(s.sm_gpu_seconds for s in stats) / gpu_s, 4) if gpu_s else 0.0,
            # p99 over observed ticks of each tick's p99 (inf = a pool with no capacity).
            "ttft_p99_s": _p99(ttft),
            "tbt_p99_s": _p99(tbt),
        }


def request_sizes(curve: LoadCurve) -> tuple[float, float]:
    """Request-weighted mean (input, output) tokens of a curve's observed windows."""
    w = np.where(curve.observed, curve.req_per_s, 0.0)
    total = float(w.sum())
    if total <= 0:
        return float(np.mean(curve.mean_input_tokens)), float(np.mean(curve.mean_output_tokens))
    return float((curve.mean_input_tokens * w).sum() / total), float((curve.mean_output_tokens * w).sum() / total)


def slo_floors(twin: Twin) -> dict[str, SloFloor]:
    """Each service's latency floor at its curve's request sizes on the twin's engines."""
    out = {}
    for svc in twin.config.services:
        engines = {(role, g): twin.engines[(svc.name, role, g)] for role in Role for g in svc.role(role).gpu_types}
        mean_in, mean_out = request_sizes(twin.load[svc.name])
        out[svc.name] = slo_floor(svc, engines, mean_in, mean_out, bandwidth_gb_per_s=twin.params.kv_bandwidth_gb_per_s)
    return out


def _p99(samples: Sequence[float]) -> float | None:
    """Nearest-rank p99 (an infinite sample, a pool with no capacity, stays infinite)."""
    if not samples:
        return None
    v = sorted(samples)[max(0, math.ceil(0.99 * len(samples)) - 1)]
    return round(v, 4) if math.isfinite(v) else v


def replay(
    config: ClusterConfig,
    curves: Mapping[str, LoadCurve],
    policy: str,
    *,
    tick_s: float | None = None,
    keep_ticks: bool = True,
    progress: Callable[[float], None] | None = None,
    twin_params: TwinParams | None = None,
    history_keep_s: float | None = None,
    placement: PlacementMethod | str | None = None,
    forecast_every_s: float | None = None,
    reselect_every_s: float = RESELECT_EVERY_S,
    faults: FaultPlan | None = None,
    check_invariants: bool = False,
    skip_unchanged: bool = True,
    pin_between_selections: bool = False,
) -> ReplayResult:
    """Replay one policy. `placement` overrides the policy's own (`PolicySpec.placement`; e.g. the
    greedy for a long replay: the ILP takes 0.3-0.5 s a solve).

    `forecast_every_s` (default: the coarsest of the control period and the traces' finest
    window) is how often the forecast is recomputed; between, the last one is reused. A rate
    trace in 10-minute windows offers the same load for ten 60-s periods, so re-running the
    forecaster every period costs ten times as much for the same information. `auto` re-selects
    its method every `reselect_every_s`; in between, the method it chose forecasts alone. Pass
    the control period for both to get the Prefect flow's exact per-period behaviour (the
    effect on the league is measured in docs/twin.md).

    `faults` wraps the twin in `sim.faults` injectors (the soak): a failed collect, cluster read
    or apply loses that period's decision, as a failed `scale_cluster` run would.
    `check_invariants` checks every plan with `tasks.core.invariants.plan_violations`.
    `skip_unchanged` puts a `tasks.core.decision_cache.DecisionCache` in front of the policy
    call: a service whose inputs did not change since a decision that provably cannot change
    (a hold that left the policy state as it was, every clock comparison long settled) gets that
    decision back without the call. Same decisions as False (tested); False is the plain loop.
    `pin_between_selections` (an approximation, off by default; docs/twin.md): between two `auto`
    selections, forecast from the last origin with the selection's ridge coefficients and quantile
    calibration (`steps.pin_forecasts`, `tasks/core/forecast_pinned.py`) instead of refitting.
    `history_keep_s` overrides the config's `cluster.history_window_s`, the window the flow keeps
    too; the history is a deque extended in place (O(1) a period).
    """
    spec = get_policy(policy)  # unknown names fail here with the list of valid ones
    started = time.perf_counter()
    period = config.cluster.control_period_s
    dt = tick_s or min(period, *(c.dt_s for c in curves.values()))
    if period % dt > 1e-9:
        dt = period / math.ceil(period / dt)
    t0 = next(iter(curves.values())).start_epoch_s
    duration = max(c.duration_s for c in curves.values())
    twin = Twin(
        config=config, load=curves, tick_s=dt, t0_s=t0, keep_ticks=keep_ticks, params=twin_params or TwinParams()
    )
    start = initial_counts(config, curves, at_peak=spec.sized_for_peak)
    floor0: FloorPlan | None = None
    if not spec.sized_for_peak:
        # The starting fleet also serves the first cold start's load per role at the SLO: sized for
        # decode at the curated ratio alone, a prefill-heavy load starts with one prefill instance
        # and a backlog that every policy (the oracle too) spends its first minutes draining.
        floor0 = FloorPlan(
            config.services, twin.engines, curves, period, bandwidth_gb_per_s=twin.params.kv_bandwidth_gb_per_s
        )
        first = floor0.targets(t0, t0)[1]
        start = {
            n: RoleCounts(max(c.num_prefill, first[n].num_prefill), max(c.num_decode, first[n].num_decode))
            for n, c in start.items()
        }
    seed = place_greedy(config, view_from_config(config), start)
    twin.seed(seed.placement)
    signals_src: SignalsBackend = twin
    cluster: ClusterBackend = twin
    if faults is not None:
        signals_src, cluster = wrap_faults(twin, twin, faults)
    failed = {"collect": 0, "read": 0, "apply": 0}
    violations: list[str] = []

    peaks = peak_metric(config, curves)
    floor = floor0 if spec.needs_foresight else None
    need: dict[str, RoleCounts] = {}
    keep: dict[str, RoleCounts] = {}
    # Deques: extend_history appends and trims them in place.
    # Sample histories: deques that also keep their samples as arrays (the forecasters' grid).
    history: dict[str, MutableSequence[tuple[float, float | None]]] = {s.name: SampleHistory() for s in config.services}
    cache = DecisionCache() if skip_unchanged else None
    uses_forecast = spec.uses_forecast
    every = forecast_every_s or max(period, min(c.dt_s for c in curves.values()))
    forecasts: dict[str, Forecast] = {}
    chosen: dict[str, str] = {}  # service -> method `auto` chose at the last selection
    pins: dict[str, Pinned] = {}  # its pins (pin_between_selections)
    next_forecast = next_select = t0
    states: dict[str, ServicePolicyState] = {}
    actions = unmet_periods = 0
    now = t0
    end = t0 + duration
    while now + period <= end + 1e-9:
        now += period
        twin.advance(now)
        try:
            signals = steps.collect_signals(signals_src, config, now)
        except Exception as exc:
            _transient_or_raise(exc, "collect signals")
            failed["collect"] += 1
            continue
        history = steps.extend_history(history, signals, config, now, keep_s=history_keep_s)
        if floor is not None:
            need, keep = floor.targets(now, t0)
        if uses_forecast and now - period >= next_forecast - 1e-9:
            # First period served of a new trace window: new load information, new forecast.
            select = now - period >= next_select - 1e-9
            pinned = pins if pin_between_selections and not select else None
            forecasts = steps.forecast_load(config, history, forecaster=None if select else chosen, pins=pinned)
            if select:
                chosen = {
                    n: f.method.removeprefix("auto:") for n, f in forecasts.items() if f.method.startswith("auto:")
                }
                if pin_between_selections:
                    pins = steps.pin_forecasts(config, history, forecasts)
                next_select = _next_time(next_select, now - period, reselect_every_s)
            next_forecast = _next_time(next_forecast, now - period, every)
        try:
            view = steps.read_cluster(cluster, config, now)
        except Exception as exc:
            _transient_or_raise(exc, "read cluster")
            failed["read"] += 1
            continue
        targets, new_states = steps.compute_targets(
            config,
            view,
            signals,
            forecasts,
            states,
            now,
            policy=policy,
            peak_metric=peaks,
            engines=twin.engines,
            floor_need=need,
            floor_keep=keep,
            cache=cache,
        )
        plan = steps.place(config, view, targets, method=placement or spec.placement, now_s=now)
        if check_invariants:
            broken = plan_violations(config, view, signals, targets, plan, now)
            if broken:
                violations += [f"t={now - t0:.0f}s: {b}" for b in broken]
                continue  # as in the flow: a plan that breaks an invariant is never applied
        try:
            result = steps.apply_plan(cluster, config, plan, ApplyMode.APPLY, now)
        except Exception as exc:
            _transient_or_raise(exc, "apply")
            failed["apply"] += 1
            continue  # the policy state (cooldowns) is kept only when the apply succeeded
        states = new_states
        changed = {ch.key.service for ch in result.changes}
        actions += sum(1 for t in targets.values() if t.action is not Action.HOLD and t.service in changed)
        unmet_periods += bool(plan.unmet)
        if progress is not None:
            progress((now - t0) / duration)
    return ReplayResult(
        policy,
        twin,
        actions,
        time.perf_counter() - started,
        unmet_periods,
        failed_collects=failed["collect"],
        failed_reads=failed["read"],
        failed_applies=failed["apply"],
        invariant_violations=violations,
    )


def _transient_or_raise(exc: Exception, step: str) -> None:
    """The Prefect tasks' retry predicate (`models.errors.is_transient`): a transient failure
    loses this period's decision, as a failed run would; anything else is a bug and fails the
    replay at once, naming the step."""
    if not is_transient(exc):
        exc.add_note(f"in replay step {step!r}")
        raise exc


def _next_time(last: float, now: float, every: float) -> float:
    """The first `last + k * every` (k >= 1) after `now`."""
    return last + every * (math.floor((now - last) / every + 1e-9) + 1)


def replay_weight(policy: str) -> float:
    """A replay's relative run time, for the fan-out's submission order: the policies that
    forecast spend about half their replay in it (docs/twin.md), so they go first."""
    return 2.0 if get_policy(policy).uses_forecast else 1.0


def run_league(
    config: ClusterConfig,
    curves: Mapping[str, LoadCurve],
    policies: Sequence[str] = DEFAULT_LEAGUE,
    *,
    keep_ticks: bool = True,
    progress: Callable[[str, float], None] | None = None,
    twin_params: TwinParams | None = None,
    placement: PlacementMethod | str | None = None,
    engine: Engine | None = None,
) -> list[ReplayResult]:
    """Each policy replayed on the same load, in `policies` order. `engine` (`flows.fanout`): the
    replays as Prefect tasks on a Dask cluster (no per-replay `progress` then); None or
    sequential: one after the other here."""
    if engine is not None and engine.kind is not EngineKind.SEQUENTIAL:
        calls = [
            (
                f"replay {name}",
                {
                    "config": config,
                    "curves": curves,
                    "policy": name,
                    "keep_ticks": keep_ticks,
                    "twin_params": twin_params,
                    "placement": placement,
                },
            )
            for name in policies
        ]
        return fan_out(replay, calls, engine, weights=[replay_weight(name) for name in policies])
    results = []
    for name in policies:
        cb = (lambda f, n=name: progress(n, f)) if progress else None
        results.append(
            replay(
                config, curves, name, keep_ticks=keep_ticks, progress=cb, twin_params=twin_params, placement=placement
            )
        )
    return results


# --- loading the load: one function for the CLI and the flows ------------------------------


def per_service_values(values: Sequence[str], services: Sequence[str], what: str) -> dict[str, str]:
    """`[SERVICE=]VALUE` options: a bare value applies to every service not named explicitly."""

    explicit: dict[str, str] = {}
    default: str | None = None
    for v in values:
        name, sep, rest = v.partition("=")
        if sep and name in services:
            explicit[name] = rest
        elif sep and name and "/" not in name and not Path(v).exists():
            raise ValueError(f"{what} {v!r}: no service {name!r}; services are {list(services)}")
        else:
            default = v
    out = {s: explicit.get(s, default) for s in services}
    missing = [s for s, v in out.items() if v is None]
    if values and missing:
        raise ValueError(f"{what}: no value for service(s) {missing}; give SERVICE=VALUE or a bare VALUE")
    return {s: v for s, v in out.items() if v is not None}


def trace_shift_s(trace: str) -> float:
    """Seconds of `PATH@SHIFT` (SHIFT like 7h, 90m, 600s or 600); 0 without a suffix."""

    m = re.fullmatch(r".*@(\d+(?:\.\d+)?)([hms]?)", trace)
    if m is None:
        return 0.0
    return float(m.group(1)) * {"h": 3600.0, "m": 60.0, "s": 1.0, "": 1.0}[m.group(2)]


def rolled_curve(curve: LoadCurve, shift_s: float) -> LoadCurve:
    """The curve `shift_s` later, wrapped around its end (the first hours come from the last day)."""
    k = round(shift_s / curve.dt_s) % max(1, len(curve.t_s))
    fields = ("req_per_s", "mean_input_tokens", "mean_output_tokens", "observed")
    return dataclasses.replace(
        curve, name=f"{curve.name}@{shift_s / 3600:g}h", **{f: np.roll(getattr(curve, f), k) for f in fields}
    )


def load_service_curves(
    config: ClusterConfig,
    trace: str | Sequence[str],
    lengths: str | Sequence[str] | None = None,
    peak_rps: str | Sequence[str] | Mapping[str, float] | None = None,
    *,
    time_unit: str = "auto",
) -> tuple[dict[str, LoadCurve], float | None]:
    """One curve per service and the `auto` scale factor (None unless `peak_rps` is "auto").

    `trace` / `lengths`: one path for all or `[SERVICE=]PATH` items (`PATH@SHIFT`, e.g. `@7h`: the
    same load shape that many hours later, another time zone); `peak_rps`: "auto" (fit the
    load to the cluster, `fit_to_cluster`), `{service: req/s}` or `[SERVICE=]X` items, or None
    (the trace as it is); `time_unit`: of numeric timestamps (sim.traces.load_curve). Each
    distinct (trace, lengths) is read once."""
    names = [s.name for s in config.services]

    def as_list(v: str | Sequence[str] | None) -> list[str]:
        return [v] if isinstance(v, str) else list(v or [])

    auto = peak_rps == "auto" or (not isinstance(peak_rps, str | Mapping) and "auto" in (peak_rps or []))
    traces = per_service_values(as_list(trace), names, "--trace")
    shifts = {n: trace_shift_s(t) for n, t in traces.items()}
    traces = {n: t.rsplit("@", 1)[0] if shifts[n] else t for n, t in traces.items()}
    lens = per_service_values(as_list(lengths), names, "--lengths") if lengths else {}
    if isinstance(peak_rps, Mapping):
        peaks: dict[str, str | float] = dict(peak_rps)
    elif auto or peak_rps is None:
        peaks = {}
    else:
        peaks = dict(per_service_values([p for p in as_list(peak_rps) if p != "auto"], names, "--peak-rps"))
    dt = min(10.0, config.cluster.control_period_s)
    cache: dict[tuple[str, str | None], LoadCurve] = {}
    curves = {}
    for name in names:
        if name not in traces:
            raise ValueError(f"no trace for service {name!r}; give one trace or one per service")
        key = (traces[name], lens.get(name))
        if key not in cache:
            cache[key] = load_curve(key[0], lengths=key[1], dt_s=dt, time_unit=time_unit)
        curve = cache[key]
        if name in peaks:
            try:
                peak = float(peaks[name])
            except ValueError:
                raise ValueError(f"--peak-rps for {name}: {peaks[name]!r} is not a number or 'auto'") from None
            curve = curve.scaled_to_peak(peak)
        if shifts[name]:
            curve = rolled_curve(curve, shifts[name])
        curves[name] = curve
    if auto:
        return fit_to_cluster(config, curves)
    return curves, None
