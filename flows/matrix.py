"""The workload matrix: the policy league over workload shapes built from real traces.

A cell is one workload shape (`CELLS`, built by `sim.workloads` from the Azure conversation
trace and ServeGen's rate curves) replayed on one cluster config. Per cell, one rule:

  1. build the cell's curve (one curve for every service, as `heteroscale demo` does); the
     `long-context-feasible` cell first raises each service's TTFT SLO to one its p99 prompt can
     meet (`sim.workloads.feasible_ttft_slo_s`);
  2. fit the load to the cluster: one rate factor, 0.8 x the largest at which static-peak's
     fleet still places on the cluster (`fit_placeable`), with the config's targets; curate every service on the FIRST half
     (`flows.curate.curate`); fit again with the curated targets (a shape that needs 5x
     the decode instances per request must not overflow the cluster) and curate again on the
     refitted first half, from the config as given;
  3. run the league on the SECOND half (`--skip 0.5` semantics) with the curated config.

`ratio_to_floor` divides each row's cost (GPU-hours when the rows have no `cost`) by the
`oracle` row's in the same cell. Rows are the replay's summary rows, read as dicts: columns the
summary gains later travel through unchanged.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from flows.curate import Lengths, curate, service_yaml
from flows.fanout import Engine, EngineKind
from flows.replay import ALL_POLICIES, ReplayResult, run_league
from models.config import ClusterConfig, PlacementMethod, Role, parse_config
from sim import workloads as wl
from sim.sizing import initial_counts, static_peak_gpus
from sim.traces import LoadCurve, curve_from_requests, load_rates, load_requests
from sim.twin import TwinParams, engines_for
from tasks.core.placement import place_greedy
from tasks.core.topology import view_from_config

TRAIN_SHARE = 0.5
FLOOR_POLICY = "oracle"
# `--quick`: the first 20 minutes of the per-request trace (10 to curate, 10 to evaluate), six
# hours of the diurnal one, and a reduced curation grid.
QUICK_S = 1200.0
QUICK_DIURNAL_S = 6 * 3600.0
QUICK_SHARES = (0.5, 0.8)
QUICK_POLICIES = ("heteroscale-paper", "oracle")
DEFAULT_DAYS = 2.0
# Sizing: the load is scaled so that static-peak's fleet is what this share of the largest load
# it can still be placed for would need (the rest is headroom the adaptive policies may use).
PLACEABLE_SHARE = 0.8


class Cell(StrEnum):
    CONVERSATION = "conversation"
    PREFILL_HEAVY = "prefill-heavy"
    PREFILL_HEAVY_BURSTY = "prefill-heavy-bursty"
    DECODE_HEAVY = "decode-heavy"
    LONG_CONTEXT_FEASIBLE = "long-context-feasible"
    LONG_CONTEXT_CONFIG_SLO = "long-context-config-slo"
    DIURNAL = "diurnal"
    MIX_SHIFT = "mix-shift"


DESCRIPTIONS: Mapping[Cell, str] = {
    Cell.CONVERSATION: "Azure conv as is (10-s windows)",
    Cell.PREFILL_HEAVY: "Azure conv, inputs x2, outputs /8",
    Cell.PREFILL_HEAVY_BURSTY: "prefill-heavy + a 10-s burst to 6x the mean rate every 5 min",
    Cell.DECODE_HEAVY: "Azure conv, outputs x6",
    Cell.LONG_CONTEXT_FEASIBLE: "Azure conv, inputs x8, TTFT SLO raised to 1.5x the floor",
    Cell.LONG_CONTEXT_CONFIG_SLO: "Azure conv, inputs x8, the config's TTFT SLO",
    Cell.DIURNAL: "ServeGen m-small (10-min windows), Azure conv sizes",
    Cell.MIX_SHIFT: "Azure conv arrivals; conv sizes, then prefill-heavy sizes from half-way",
}


@dataclass(frozen=True)
class Sources:
    """The traces the cells are built from."""

    requests_csv: Path
    rates_csv: Path
    days: float = DEFAULT_DAYS
    quick: bool = False


def cell_curve(cell: Cell, sources: Sources, dt_s: float) -> LoadCurve:
    """The cell's load, before it is fitted to a cluster."""
    reqs = load_requests(sources.requests_csv)
    if sources.quick:
        reqs = wl.head_requests(reqs, QUICK_S)
    if cell is Cell.DIURNAL:
        curve = load_rates(sources.rates_csv, lengths=reqs, name=cell.value)
        return wl.head_curve(curve, QUICK_DIURNAL_S if sources.quick else sources.days * 86400.0)
    heavy = wl.scale_sizes(reqs, input_factor=wl.PREFILL_HEAVY[0], output_factor=wl.PREFILL_HEAVY[1])
    shaped = {
        Cell.CONVERSATION: lambda: reqs,
        Cell.PREFILL_HEAVY: lambda: heavy,
        Cell.PREFILL_HEAVY_BURSTY: lambda: wl.add_bursts(heavy),
        Cell.DECODE_HEAVY: lambda: wl.scale_sizes(
            reqs, input_factor=wl.DECODE_HEAVY[0], output_factor=wl.DECODE_HEAVY[1]
        ),
        Cell.LONG_CONTEXT_FEASIBLE: lambda: wl.scale_sizes(
            reqs, input_factor=wl.LONG_CONTEXT[0], output_factor=wl.LONG_CONTEXT[1]
        ),
        Cell.LONG_CONTEXT_CONFIG_SLO: lambda: wl.scale_sizes(
            reqs, input_factor=wl.LONG_CONTEXT[0], output_factor=wl.LONG_CONTEXT[1]
        ),
        Cell.MIX_SHIFT: lambda: wl.switch_sizes(
            reqs, heavy, wl.split_at_s(curve_from_requests(reqs, dt_s=dt_s, name="conv"), TRAIN_SHARE)
        ),
    }[cell]()
    return curve_from_requests(shaped, dt_s=dt_s, name=cell.value)


def ttft_floors_s(
    config: ClusterConfig, lengths: Lengths, params: TwinParams | None = None
) -> dict[str, dict[str, float]]:
    """Per service and prefill GPU type, the p99 TTFT at zero load (`sim.workloads.ttft_floor_s`)."""
    params = params or TwinParams()
    engines = engines_for(config, params)
    out: dict[str, dict[str, float]] = {}
    for svc in config.services:
        kv = engines[(svc.name, Role.DECODE, svc.decode.reference_gpu_type)].kv_bytes_per_token
        out[svc.name] = {
            g: wl.ttft_floor_s(
                engines[(svc.name, Role.PREFILL, g)],
                kv,
                lengths.mean_input_tokens,
                prefix_cache_hit=svc.prefix_cache_hit,
                kv_bandwidth_gb_per_s=params.kv_bandwidth_gb_per_s,
                kv_cross_domain_loss=params.kv_cross_domain_loss,
            )
            for g in svc.prefill.gpu_types
        }
    return out


def with_feasible_ttft(config: ClusterConfig, floors: Mapping[str, Mapping[str, float]]) -> ClusterConfig:
    """Each service's TTFT SLO raised (never lowered) to `feasible_ttft_slo_s` of its best GPU's floor."""
    services = []
    for svc in config.services:
        slo_s = max(svc.slo.ttft_p99_s, wl.feasible_ttft_slo_s(min(floors[svc.name].values())))
        services.append(svc.model_copy(update={"slo": svc.slo.model_copy(update={"ttft_p99_s": slo_s})}))
    return config.model_copy(update={"services": tuple(services)})


def static_peak_places(config: ClusterConfig, curves: Mapping[str, LoadCurve]) -> bool:
    """Whether the greedy placement finds GPUs for static-peak's whole fleet on an empty cluster."""
    plan = place_greedy(config, view_from_config(config), initial_counts(config, curves, at_peak=True))
    return not plan.unmet


def fit_placeable(
    config: ClusterConfig, curves: Mapping[str, LoadCurve], share: float = PLACEABLE_SHARE
) -> tuple[dict[str, LoadCurve], float]:
    """Scale every curve by one factor: `share` x the largest factor at which static-peak's
    fleet still places (`static_peak_places`; bisection on the factor). Unlike a share of the
    GPU count (`fit_to_cluster`), this respects GPU types and affinities: a shape whose prefill
    runs only on H100 fills the H100 pools long before the cluster's GPU count."""

    def ok(f: float) -> bool:
        return static_peak_places(config, {n: c.scaled(f) for n, c in curves.items()})

    lo, hi = 1e-6, 1.0
    while ok(hi) and hi < 1e9:
        lo, hi = hi, hi * 2
    while not ok(lo) and lo > 1e-12:
        lo, hi = lo / 2, lo
    for _ in range(30):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    factor = share * lo
    return {n: c.scaled(factor) for n, c in curves.items()}, factor


def curate_all(
    config: ClusterConfig, curves: Mapping[str, LoadCurve], *, shares: Sequence[float] | None = None
) -> tuple[ClusterConfig, dict[str, dict[str, Any]]]:
    """Every service curated on its curve, one after the other (as `heteroscale curate`)."""
    current = config
    chosen: dict[str, dict[str, Any]] = {}
    for svc in config.services:
        kw = {"shares": shares} if shares else {}
        res = curate(current, svc.name, curves[svc.name], **kw)
        current = parse_config(service_yaml(current, res.service), source=f"curated:{config.cluster.name}")
        chosen[svc.name] = {
            "pd_ratio": f"{res.ratio[0]}:{res.ratio[1]}",
            "policy": res.chosen.policy,
            "target_per_instance": res.chosen.target_per_instance,
            "curate_attainment": res.chosen.slo_attainment,
        }
    return current, chosen


@dataclass
class CellResult:
    cell: Cell
    results: list[ReplayResult]
    config: ClusterConfig  # the curated config the league ran with
    curves: dict[str, LoadCurve]  # the evaluation half
    info: dict[str, Any] = field(default_factory=dict)


Progress = Callable[[str], None]


def run_cell(
    config: ClusterConfig,
    cell: Cell,
    sources: Sources,
    policies: Sequence[str] = ALL_POLICIES,
    *,
    placement: PlacementMethod | str | None = PlacementMethod.GREEDY,
    progress: Progress | None = None,
    engine: Engine | None = None,
) -> CellResult:
    """One cell of the matrix: shape, fit, curate on the first half, league on the second."""
    say = progress or (lambda _msg: None)
    started = time.perf_counter()
    dt = min(10.0, config.cluster.control_period_s)
    curve = cell_curve(cell, sources, dt)
    names = [s.name for s in config.services]
    curves = {n: curve for n in names}
    first_all, second_all = curve.split(TRAIN_SHARE)
    floors = ttft_floors_s(config, Lengths.of(curve))
    base = with_feasible_ttft(config, floors) if cell is Cell.LONG_CONTEXT_FEASIBLE else config
    shares = QUICK_SHARES if sources.quick else None

    fitted, factor = fit_placeable(base, curves)
    say(f"curate (pass 1, load x{factor:.3g})")
    curated, _ = curate_all(base, {n: c.split(TRAIN_SHARE)[0] for n, c in fitted.items()}, shares=shares)
    fitted, factor = fit_placeable(curated, curves)
    say(f"curate (pass 2, load x{factor:.3g})")
    curated, chosen = curate_all(base, {n: c.split(TRAIN_SHARE)[0] for n, c in fitted.items()}, shares=shares)
    curate_s = time.perf_counter() - started

    evaluation = {n: c.split(TRAIN_SHARE)[1] for n, c in fitted.items()}
    total_gpus = sum(p.nodes * p.gpus_per_node for p in config.topology.node_pools)
    seen: set[str] = set()

    def league_progress(policy: str, _frac: float) -> None:
        if policy not in seen:
            seen.add(policy)
            say(f"league: {policy} ({len(seen)}/{len(policies)})")

    if engine is not None and engine.kind is not EngineKind.SEQUENTIAL:
        say(f"league: {len(policies)} policies on {engine.describe()}")
    results = run_league(
        curated, evaluation, policies, keep_ticks=False, placement=placement, progress=league_progress, engine=engine
    )
    info = {
        "description": DESCRIPTIONS[cell],
        "load_factor": factor,
        "peak_req_per_s": next(iter(fitted.values())).peak_req_per_s,
        "static_peak_gpu_share": round(static_peak_gpus(curated, fitted) / total_gpus, 3),
        "curate": chosen,
        "ttft_slo_s": {s.name: s.slo.ttft_p99_s for s in curated.services},
        # On the evaluated half's sizes (the SLO above was raised on the whole cell's).
        "ttft_floor_s": {
            n: {g: round(v, 3) for g, v in f.items()} for n, f in ttft_floors_s(config, Lengths.of(second_all)).items()
        },
        "shape": {
            "all": _stats(curve),
            "curate": _stats(first_all),
            "evaluate": _stats(second_all),
        },
        "curate_wall_s": round(curate_s, 2),
        "wall_s": round(time.perf_counter() - started, 2),
    }
    return CellResult(cell, results, curated, evaluation, info)


def _stats(curve: LoadCurve) -> dict[str, float]:
    s = wl.ShapeStats.of(curve)
    return {
        "mean_input_tokens": round(s.mean_input_tokens, 1),
        "mean_output_tokens": round(s.mean_output_tokens, 1),
        "peak_to_mean_rps": round(s.peak_to_mean_rps, 2),
        "duration_s": s.duration_s,
    }


def cost_of(row: Mapping[str, Any]) -> float | None:
    """What the floor ratio compares: `cost` when the row has it, else GPU-hours."""
    v = row.get("cost", row.get("gpu_hours"))
    return float(v) if isinstance(v, int | float) and math.isfinite(v) else None


def with_floor_ratio(rows: Sequence[Mapping[str, Any]], floor_policy: str = FLOOR_POLICY) -> list[dict[str, Any]]:
    """Rows with `ratio_to_floor` (None when the floor was not run or cost nothing)."""
    floor = next((cost_of(r) for r in rows if r.get("policy") == floor_policy), None)
    out = []
    for r in rows:
        c = cost_of(r)
        ratio = round(c / floor, 3) if c is not None and floor else None
        out.append({**r, "ratio_to_floor": ratio})
    return out
