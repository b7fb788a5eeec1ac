"""The steps of one scaling run, as plain functions.

`flows.scale_cluster` wraps each in a Prefect task (retries, names, observability); the replay
loop calls the very same functions every control period in simulated time. One decision code
path, two drivers. Only `read_signals` (`collect_signals`), `read_cluster` and `apply_plan` touch
a backend; the rest are pure.

Signals are read with their errors (`SignalRead`): a held service's reason names the queries
that failed for it (`explain_holds`), and a read where no query succeeded holds every service
with reason `signals-unavailable` (`hold_all`). `apply_plan` hands the backend the SLO state the
run read (`tasks.core.actuation.slo_states`), so soft scale-in decides from the same signals.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, MutableSequence
from dataclasses import replace

from models.config import ClusterConfig, PlacementMethod, Role, Service
from models.values import (
    Action,
    ApplyMode,
    ApplyResult,
    Forecast,
    PlacementPlan,
    RoleCounts,
    ServicePolicyState,
    ServiceSignals,
    SignalRead,
    SloState,
    Targets,
)
from tasks.backends import ClusterBackend, SignalsBackend
from tasks.core.capacity import EngineModel, ServiceEngines
from tasks.core.decision_cache import DecisionCache, decision_key
from tasks.core.forecast import History, get_forecaster
from tasks.core.forecast_pinned import Pinned, forecast_pinned, pin
from tasks.core.forecast_quantile import LEVELS as QUANTILE_LEVELS
from tasks.core.forecast_quantile import forecast_quantiles
from tasks.core.placement import full_due, place_greedy
from tasks.core.policy import PolicyContext, get_policy, with_schedule_floor
from tasks.core.stepprofile import OUTLOOK_S, expected_steps
from tasks.core.topology import ClusterView
from tasks.placement_runner import run_ilp, run_incremental

SIGNALS_UNAVAILABLE = "signals-unavailable"


def read_signals(backend: SignalsBackend, config: ClusterConfig, now_s: float) -> SignalRead:
    """Signals per service with the queries that failed. A backend with `read` (Prometheus)
    reports its errors; one with only `read_signals` (the twin) reports none."""
    read = getattr(backend, "read", None)
    got: SignalRead = read(config, now_s) if read is not None else SignalRead(backend.read_signals(config, now_s))
    # A service the backend said nothing about is missing, not idle.
    signals = {s.name: got.signals.get(s.name) or ServiceSignals.missing(s.name) for s in config.services}
    return SignalRead(signals=signals, errors=got.errors, queries=got.queries, wall_s=got.wall_s)


def collect_signals(backend: SignalsBackend, config: ClusterConfig, now_s: float) -> dict[str, ServiceSignals]:
    return dict(read_signals(backend, config, now_s).signals)


def explain_holds(targets: Mapping[str, Targets], read: SignalRead) -> dict[str, Targets]:
    """Held services' reasons with the queries that failed for them (query, HTTP status, URL)."""
    out = dict(targets)
    for name, t in targets.items():
        errors = read.errors_for(name)
        if t.action is Action.HOLD and errors:
            out[name] = replace(t, reason=f"{t.reason}; failed queries: " + "; ".join(map(str, errors)))
    return out


def hold_all(config: ClusterConfig, current: Mapping[str, RoleCounts], read: SignalRead) -> dict[str, Targets]:
    """Every service held at its current counts because no signal could be read."""
    why = f"{SIGNALS_UNAVAILABLE}: " + "; ".join(map(str, read.errors))
    return {
        s.name: Targets(
            s.name,
            current.get(s.name, RoleCounts(0, 0)).num_prefill,
            current.get(s.name, RoleCounts(0, 0)).num_decode,
            Action.HOLD,
            why,
            "hold",
        )
        for s in config.services
    }


def read_cluster(backend: ClusterBackend, config: ClusterConfig, now_s: float) -> ClusterView:
    return backend.read_state(config, now_s)


def extend_history(
    history: Mapping[str, History],
    signals: Mapping[str, ServiceSignals],
    config: ClusterConfig,
    now_s: float,
    *,
    keep_s: float | None = None,
) -> dict[str, MutableSequence[tuple[float, float | None]]]:
    """Append this run's policy metric per service (None when missing) and trim samples older
    than `keep_s` (default: the config's `cluster.history_window_s`, both drivers).

    A service's history given as a `deque` is extended in place and trimmed from the front (O(1)
    per call: the replay runs this 20,000 times over 14 days); any other sequence is copied into
    a new list, as the flow's history from the store is.
    """
    if keep_s is None:
        keep_s = config.cluster.history_window_s
    out: dict[str, MutableSequence[tuple[float, float | None]]] = {}
    for svc in config.services:
        sig = signals.get(svc.name)
        value = sig.get(svc.policy.metric.value) if sig is not None else None
        past = history.get(svc.name, ())
        if isinstance(past, deque):
            past.append((now_s, value))
            while past[0][0] < now_s - keep_s:
                past.popleft()
            out[svc.name] = past
        else:
            out[svc.name] = [*(h for h in past if h[0] >= now_s - keep_s), (now_s, value)]
    return out


def forecast_load(
    config: ClusterConfig,
    history: Mapping[str, History],
    *,
    forecaster: str | Mapping[str, str] | None = None,
    pins: Mapping[str, Pinned] | None = None,
) -> dict[str, Forecast]:
    """Expected policy metric when instances started now become Ready (cold start + period).

    `forecaster` overrides each service's `policy.forecaster`, for all services or per service
    name ("auto" = chosen by a rolling-origin backtest on the service's own history; the method
    used is recorded as "auto:<name>"). Each forecast also carries the quantiles of the metric at
    the horizon (`forecast_quantile.LEVELS` and the service's `policy.risk`) from the method's own
    rolling-origin errors; none when the history holds too few.

    With `policy.steps.enabled`, the forecast also lists the upward steps the service's daily step
    profile expects from the last sample to `OUTLOOK_S` past the horizon (`Forecast.steps`,
    tasks/core/stepprofile.py): the replay reuses a forecast for up to a trace window.

    `pins` (an approximation, off unless given; `tasks/core/forecast_pinned.py`): a service whose
    forecaster is its pin's method forecasts from the last origin with the pinned ridge
    coefficients and quantile calibration of the last selection (`pin_forecasts`).
    """
    out: dict[str, Forecast] = {}
    for svc in config.services:
        override = forecaster.get(svc.name) if isinstance(forecaster, Mapping) else forecaster
        name = override or svc.policy.forecaster
        get_forecaster(name)  # unknown names fail here with the list of valid ones
        horizon = svc.cold_start_s + config.cluster.control_period_s
        levels = tuple(sorted({*QUANTILE_LEVELS, *((svc.policy.risk,) if svc.policy.risk is not None else ())}))
        past = history.get(svc.name, ())
        pinned = pins.get(svc.name) if pins else None
        if pinned is not None and pinned.method == name:
            value, method, quantiles = forecast_pinned(pinned, past, horizon, levels)
        else:
            value, method, quantiles = forecast_quantiles(name, past, horizon, levels)
        steps = ()
        if svc.policy.steps.enabled and past:
            steps = expected_steps(past, past[-1][0], horizon + OUTLOOK_S, svc.policy.steps)
        out[svc.name] = Forecast(svc.name, svc.policy.metric.value, value, horizon, method, quantiles, steps)
    return out


def pin_forecasts(
    config: ClusterConfig, history: Mapping[str, History], forecasts: Mapping[str, Forecast]
) -> dict[str, Pinned]:
    """The pins of an `auto` selection's forecasts (`forecast_pinned.pin`), for `forecast_load(pins=)`
    until the next selection; services whose forecast was not an `auto` choice get none."""
    out: dict[str, Pinned] = {}
    for svc in config.services:
        f = forecasts.get(svc.name)
        if f is None:
            continue
        p = pin(f.method, f.value, f.quantiles, history.get(svc.name, ()), f.horizon_s)
        if p is not None:
            out[svc.name] = p
    return out


def current_counts(config: ClusterConfig, view: ClusterView) -> dict[str, RoleCounts]:
    """Instances per service and role in reference-GPU units (rounded), starting ones included."""
    units: dict[tuple[str, Role], float] = {}
    specs = {(svc.name, role): svc.role(role) for svc in config.services for role in Role}
    # One pass over the cells (not one per service): the replay calls this every period.
    for k, n in view.placement.cells.items():
        spec = specs.get((k.service, k.role))
        if spec is not None and k.gpu_type in spec.capacity_tokens_per_s:
            units[(k.service, k.role)] = units.get((k.service, k.role), 0.0) + n * spec.weight(k.gpu_type)
    return {
        svc.name: RoleCounts(
            round(units.get((svc.name, Role.PREFILL), 0.0)), round(units.get((svc.name, Role.DECODE), 0.0))
        )
        for svc in config.services
    }


def service_engines(svc: Service, engines: Mapping[tuple[str, Role, str], EngineModel]) -> ServiceEngines | None:
    """One service's engines by (role, GPU type); None when the model lacks any of them."""
    keys = [(role, g) for role in Role for g in svc.role(role).gpu_types]
    if any((svc.name, r, g) not in engines for r, g in keys):
        return None
    return {(r, g): engines[(svc.name, r, g)] for r, g in keys}


def compute_targets(
    config: ClusterConfig,
    view: ClusterView,
    signals: Mapping[str, ServiceSignals],
    forecasts: Mapping[str, Forecast],
    states: Mapping[str, ServicePolicyState],
    now_s: float,
    *,
    policy: str | None = None,
    peak_metric: Mapping[str, float] | None = None,
    engines: Mapping[tuple[str, Role, str], EngineModel] | None = None,
    floor_need: Mapping[str, RoleCounts] | None = None,
    floor_keep: Mapping[str, RoleCounts] | None = None,
    cache: DecisionCache | None = None,
) -> tuple[dict[str, Targets], dict[str, ServicePolicyState]]:
    """Each service's policy decision. `policy` overrides the configured one (replay league).

    `engines` (the capacity model by (service, role, GPU type)) lets SLO-grounded policies size
    for the request sizes observed now; `floor_need`/`floor_keep` are the oracle's hindsight.
    `cache` (one run, one config: the replay's): a service whose inputs did not change since a
    decision that provably cannot change gets that decision back without a policy call
    (`tasks.core.decision_cache` states the rule)."""
    if cache is not None:
        current = cache.current_counts(view.placement, lambda: current_counts(config, view))
    else:
        current = current_counts(config, view)
    targets: dict[str, Targets] = {}
    new_states: dict[str, ServicePolicyState] = {}
    for svc in config.services:
        name = policy or svc.policy.name
        state = states.get(svc.name, ServicePolicyState())
        key = None
        if cache is not None:
            key = decision_key(
                name,
                signals.get(svc.name) or ServiceSignals.missing(svc.name),
                now_s,
                current[svc.name],
                forecasts.get(svc.name),
                state,
                floor_need=(floor_need or {}).get(svc.name),
                floor_keep=(floor_keep or {}).get(svc.name),
                peak_metric=(peak_metric or {}).get(svc.name),
            )
            hit = cache.get(svc, key)
            if hit is not None:
                targets[svc.name], new_states[svc.name] = hit
                continue
        decide = get_policy(name).decide
        ctx = PolicyContext(
            service=svc,
            now_s=now_s,
            signals=signals.get(svc.name) or ServiceSignals.missing(svc.name),
            current=current[svc.name],
            forecast=forecasts.get(svc.name),
            timezone=config.cluster.timezone,
            peak_metric=(peak_metric or {}).get(svc.name),
            control_period_s=config.cluster.control_period_s,
            engines=service_engines(svc, engines) if engines is not None else None,
            floor_need=(floor_need or {}).get(svc.name),
            floor_keep=(floor_keep or {}).get(svc.name),
        )
        decision = with_schedule_floor(ctx, state, decide(ctx, state))
        targets[svc.name], new_states[svc.name] = decision
        if cache is not None and key is not None:
            cache.put(svc, key, decision, now_s)
    return targets, new_states


def place(
    config: ClusterConfig,
    view: ClusterView,
    targets: Mapping[str, Targets],
    *,
    method: PlacementMethod | str | None = None,
    now_s: float | None = None,
) -> PlacementPlan:
    """Placement for the services whose counts change; the others keep their cells.

    `method` (ilp | greedy | incremental) overrides `cluster.placement.method`; the ILP falls back
    to the greedy on any solver failure and says why in the plan's reason. `incremental` solves a
    small MIP over the changing services and re-optimises the whole fleet in the period ending at
    `now_s` that crosses a multiple of `cluster.placement.full_every_s` (never without `now_s`),
    or when the small MIP cannot place (tasks/core/placement/incremental.py).
    """
    moving = {name: t.counts for name, t in targets.items() if t.action is not Action.HOLD}
    chosen = PlacementMethod(method) if method is not None else config.cluster.placement.method
    st = config.cluster.placement
    full = (
        chosen is PlacementMethod.INCREMENTAL
        and now_s is not None
        and full_due(now_s, config.cluster.control_period_s, st.full_every_s)
    )
    if not moving and not full:
        return PlacementPlan(placement=view.placement, method="none", reason="no service changes")
    if chosen is PlacementMethod.INCREMENTAL:
        held = {name: t.counts for name, t in targets.items() if t.action is Action.HOLD}
        return run_incremental(config, view, moving, held=held, full=full)
    if chosen is PlacementMethod.ILP:
        return run_ilp(config, view, moving)
    return place_greedy(config, view, moving)


def apply_plan(
    backend: ClusterBackend,
    config: ClusterConfig,
    plan: PlacementPlan,
    mode: ApplyMode,
    now_s: float,
    *,
    slo: Mapping[str, SloState] | None = None,
) -> ApplyResult:
    return backend.apply(config, plan, mode, now_s, slo=slo)
