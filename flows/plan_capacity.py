"""Capacity planning: how many GPUs of which type, where, and at what cost, for a load and SLOs.

`plan(...)` is a plain function (the CLI `heteroscale plan` calls it); `plan_capacity` is the
Prefect flow around it with table and plot artifacts. Nothing here is a second model:

- the load's peaks come from the same `LoadCurve`s the replay and the twin use (a trace, scaled
  per service) or from a forecast of the peak metrics given directly, times a growth factor
  `(1 + growth_per_month) ** (horizon_days / 30)`;
- capacity per instance is the config's `capacity_tokens_per_s` (what one instance sustains at
  the service's SLOs on each GPU type), run at the utilisation the operator already chose for the
  live policy (`target_per_instance / capacity` of the policy metric's reference type), so the
  plan and the autoscaler agree on headroom. For an SLO other than the config's, the capacity
  model re-derives them (`config_at_slo`: `flows.curate.capacity_at_slo` on the
  `sim.capacity` engines the twin uses, as a ratio new SLO / config SLO applied to the config's
  numbers);
- per service, every (prefill GPU, decode GPU) pairing among the candidate types is sized for the
  peak prefill (cache-missed) and decode token rates; the cheapest pairing whose two types can
  share a network domain at the service's affinity level wins; its instance counts give the P/D
  ratio;
- the chosen fleet is placed on the cluster's topology with `tasks.steps.place` (the same
  placement the scaling runs use: the greedy today, the ILP when it is selected there), which
  gives the GPUs per type and domain and whether the cluster holds the peak at all.

Peaks of prefill and decode are each taken over control-period averages, separately: sizing
both roles for their own peak is what a fleet that must hold its SLO at the peak needs.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.artifacts import artifact_key, publish_markdown, publish_plot, publish_table
from flows.curate import Lengths, capacity_at_slo
from flows.replay import load_service_curves
from models import settings
from models.config import AffinityLevel, ClusterConfig, Metric, PdRatio, Role, Service
from models.enums import TargetSource
from models.values import Action, Targets
from sim.live import auto_peaks
from sim.traces import LoadCurve
from sim.twin import TwinParams, engines_for
from tasks import steps
from tasks.core.registry import load_config
from tasks.core.topology import view_from_config

DEFAULT_SWEEP = (1.0, 1.25, 1.5, 2.0, 3.0)
_EPS = 1e-9


@dataclass(frozen=True)
class PeakLoad:
    """Peak token rates one service must serve (tokens/s, control-period averages)."""

    service: str
    decode_tps: float
    prefill_tps: float  # cache-missed prompt tokens/s


@dataclass(frozen=True)
class Pairing:
    """One way to serve a service: instance counts on one prefill and one decode GPU type."""

    service: str
    prefill_gpu: str
    decode_gpu: str
    num_prefill: int
    num_decode: int
    gpus_prefill: int
    gpus_decode: int
    cost_per_day: float
    colocatable: bool  # the two types share a domain at the service's affinity level

    @property
    def pd_ratio(self) -> str:
        g = math.gcd(self.num_prefill, self.num_decode) or 1
        return f"{self.num_prefill // g}:{self.num_decode // g}"

    @property
    def gpus(self) -> int:
        return self.gpus_prefill + self.gpus_decode


# --- pure sizing ---------------------------------------------------------------------------


def peaks_from_curves(config: ClusterConfig, curves: Mapping[str, LoadCurve]) -> dict[str, PeakLoad]:
    """Peak decode and cache-missed prefill token rates per service, over control periods."""
    out = {}
    for svc in config.services:
        c = curves[svc.name]
        w = max(1, round(config.cluster.control_period_s / c.dt_s))

        def peak(series: np.ndarray, w: int = w) -> float:
            series = np.nan_to_num(series)
            smooth = np.convolve(series, np.ones(w) / w, mode="valid") if len(series) >= w else series
            return float(np.max(smooth)) if len(smooth) else 0.0

        out[svc.name] = PeakLoad(
            svc.name,
            decode_tps=peak(c.req_per_s * c.mean_output_tokens),
            prefill_tps=peak(c.req_per_s * c.mean_input_tokens * (1 - svc.prefix_cache_hit)),
        )
    return out


def planning_utilisation(svc: Service) -> float:
    """Share of an instance's SLO capacity the live policy plans to use (its headroom)."""
    role = Role.DECODE if svc.policy.metric is Metric.DECODE_TPS else Role.PREFILL
    spec = svc.role(role)
    return min(1.0, svc.policy.target_per_instance / spec.capacity_tokens_per_s[spec.reference_gpu_type])


def _colocatable(config: ClusterConfig, svc: Service, a: str, b: str) -> bool:
    if svc.affinity is AffinityLevel.NONE:
        return True
    types: dict[str, set[str]] = defaultdict(set)
    for pool in config.topology.node_pools:
        types[pool.s1 if svc.affinity is AffinityLevel.S1 else pool.s2].add(pool.gpu_type)
    return any(a in t and b in t for t in types.values())


def pairings(
    config: ClusterConfig,
    svc: Service,
    load: PeakLoad,
    *,
    candidates: Sequence[str],
    prices: Mapping[str, float],
    utilisation: float,
) -> list[Pairing]:
    """Every candidate (prefill GPU, decode GPU) sizing for `load`, cheapest first."""
    out = []
    for p in candidates:
        if p not in svc.prefill.capacity_tokens_per_s:
            continue
        for d in candidates:
            if d not in svc.decode.capacity_tokens_per_s:
                continue
            n_p = math.ceil(load.prefill_tps / (svc.prefill.capacity_tokens_per_s[p] * utilisation) - _EPS)
            n_d = math.ceil(load.decode_tps / (svc.decode.capacity_tokens_per_s[d] * utilisation) - _EPS)
            # A served model keeps at least one instance of each role (P and D scale together).
            n_p, n_d = max(1, n_p), max(1, n_d)
            g_p, g_d = n_p * svc.prefill.gpus_per_instance, n_d * svc.decode.gpus_per_instance
            out.append(
                Pairing(
                    service=svc.name,
                    prefill_gpu=p,
                    decode_gpu=d,
                    num_prefill=n_p,
                    num_decode=n_d,
                    gpus_prefill=g_p,
                    gpus_decode=g_d,
                    cost_per_day=round(24.0 * (g_p * prices[p] + g_d * prices[d]), 2),
                    colocatable=_colocatable(config, svc, p, d),
                )
            )
    return sorted(out, key=lambda x: (not x.colocatable, x.cost_per_day, x.gpus, x.prefill_gpu, x.decode_gpu))


def planned_config(config: ClusterConfig, chosen: Mapping[str, Pairing], prices: Mapping[str, float]) -> ClusterConfig:
    """The config restricted to each service's chosen pairing, at the planning prices."""
    services = []
    for svc in config.services:
        pick = chosen[svc.name]
        services.append(
            svc.model_copy(
                update={
                    "prefill": svc.prefill.model_copy(update={"gpu_types": (pick.prefill_gpu,)}),
                    "decode": svc.decode.model_copy(update={"gpu_types": (pick.decode_gpu,)}),
                    "pd_ratio": PdRatio(prefill=pick.num_prefill, decode=pick.num_decode),
                    "policy": svc.policy.model_copy(
                        update={"max_instances": max(svc.policy.max_instances, pick.num_prefill + pick.num_decode)}
                    ),
                }
            )
        )
    gpus = tuple(g.model_copy(update={"cost_per_gpu_hour": prices[g.name]}) for g in config.gpu_types)
    return config.model_copy(update={"services": tuple(services), "gpu_types": gpus})


def place_fleet(config: ClusterConfig, chosen: Mapping[str, Pairing]) -> dict[str, Any]:
    """Place the chosen fleet on the cluster's topology with the scaling runs' placement."""

    targets = {
        name: Targets(name, p.num_prefill, p.num_decode, Action.SCALE_OUT, "capacity plan at peak", TargetSource.PLAN)
        for name, p in chosen.items()
    }
    plan = steps.place(config, view_from_config(config), targets)
    s2_of = {pool.s1: pool.s2 for pool in config.topology.node_pools}
    by_domain: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for k, n in plan.placement.cells.items():
        gpi = config.service(k.service).role(k.role).gpus_per_instance
        by_domain[k.gpu_type][f"{s2_of[k.s1]}/{k.s1}"] += n * gpi
    unmet = {f"{s}/{r.value}": math.ceil(v - _EPS) for (s, r), v in plan.unmet.items() if v > _EPS}
    return {
        "method": plan.method,
        "gpus_by_type_domain": {g: dict(sorted(d.items())) for g, d in sorted(by_domain.items())},
        "unmet_instances": unmet,
        "fits": not unmet,
    }


def size_fleet(
    config: ClusterConfig,
    peaks: Mapping[str, PeakLoad],
    *,
    growth: float,
    candidates: Sequence[str],
    prices: Mapping[str, float],
    utilisation: float | None = None,
) -> dict[str, Any]:
    """Cheapest colocatable pairing per service at `growth` x the peaks, and its placement.

    When the cheapest pairings do not fit the topology (a domain lacks one of the types), the
    short service whose next pairing costs the least extra moves to it, and the fleet is placed
    again, until it fits or no service has another pairing; then the attempt with the fewest
    unplaced instances is reported.
    """
    alternatives: dict[str, list[Pairing]] = {}
    for svc in config.services:
        base = peaks[svc.name]
        load = PeakLoad(svc.name, base.decode_tps * growth, base.prefill_tps * growth)
        u = utilisation if utilisation is not None else planning_utilisation(svc)
        options = pairings(config, svc, load, candidates=candidates, prices=prices, utilisation=u)
        if not options:
            raise ValueError(
                f"service {svc.name!r}: no candidate GPU type has a capacity for both roles "
                f"(candidates {list(candidates)}; prefill knows {sorted(svc.prefill.capacity_tokens_per_s)}, "
                f"decode knows {sorted(svc.decode.capacity_tokens_per_s)})"
            )
        alternatives[svc.name] = options
    idx = dict.fromkeys(alternatives, 0)
    best: tuple[int, dict[str, Pairing], dict[str, Any]] | None = None
    for _ in range(sum(len(a) for a in alternatives.values())):
        chosen = {n: alternatives[n][i] for n, i in idx.items()}
        placement = place_fleet(planned_config(config, chosen, prices), chosen)
        short_total = sum(placement["unmet_instances"].values())
        if best is None or short_total < best[0]:
            best = (short_total, chosen, placement)
        if placement["fits"]:
            break
        short = {k.split("/")[0] for k in placement["unmet_instances"]}
        movable = [n for n in short if idx[n] + 1 < len(alternatives[n])]
        if not movable:
            break
        step = min(
            movable,
            key=lambda n: (alternatives[n][idx[n] + 1].cost_per_day - alternatives[n][idx[n]].cost_per_day, n),
        )
        idx[step] += 1
    assert best is not None
    _, chosen, placement = best
    gpus_by_type: dict[str, int] = defaultdict(int)
    for p in chosen.values():
        gpus_by_type[p.prefill_gpu] += p.gpus_prefill
        gpus_by_type[p.decode_gpu] += p.gpus_decode
    return {
        "growth": growth,
        "chosen": chosen,
        "alternatives": alternatives,
        "gpus_by_type": dict(sorted(gpus_by_type.items())),
        "gpus_total": sum(gpus_by_type.values()),
        "cost_per_day": round(sum(p.cost_per_day for p in chosen.values()), 2),
        **placement,
    }


def _slo_changes(config: ClusterConfig, slo: Mapping[str, Mapping[str, float]] | None) -> dict[str, dict[str, float]]:
    """Services whose requested SLO differs from the config's -> the full new SLO."""
    out: dict[str, dict[str, float]] = {}
    for name, want in (slo or {}).items():
        svc = config.service(name)
        have = {"ttft_p99_s": svc.slo.ttft_p99_s, "tbt_p99_s": svc.slo.tbt_p99_s}
        unknown = set(want) - set(have)
        if unknown:
            raise ValueError(f"slo for {name!r}: unknown key(s) {sorted(unknown)}; use ttft_p99_s, tbt_p99_s")
        if any(float(v) <= 0 for v in want.values()):
            raise ValueError(f"slo for {name!r}: targets must be positive seconds, got {dict(want)}")
        if any(abs(float(v) - have[k]) > 1e-9 for k, v in want.items()):
            out[name] = {**have, **{k: float(v) for k, v in want.items()}}
    return out


def config_at_slo(
    config: ClusterConfig,
    slo: Mapping[str, Mapping[str, float]] | None,
    curves: Mapping[str, LoadCurve] | None,
    *,
    engines: Any = None,
) -> tuple[ClusterConfig, list[dict[str, Any]]]:
    """The config with each service's capacities re-derived at the requested SLO.

    The capacity model (`flows.curate.capacity_at_slo` on `sim.capacity` engines, the ones
    the twin and curation use) gives each (role, GPU type)'s tokens/s at the config's SLO and at
    the new one; the config's `capacity_tokens_per_s` is scaled by that ratio (the config's
    measured numbers stay the anchor; the model says how they move with the SLO), and
    `target_per_instance` with it, so the plan keeps the policy's headroom. Request sizes come
    from the trace (`curves`). Returns the new config and one note per changed (service, role,
    GPU type)."""
    changes = _slo_changes(config, slo)
    if not changes:
        return config, []
    if curves is None:
        raise ValueError(
            "an SLO other than the config's needs request sizes for the capacity model: give a trace, "
            "not only peak_metrics"
        )

    if engines is None:
        engines = engines_for(config, TwinParams())
    notes: list[dict[str, Any]] = []
    services = []
    for svc in config.services:
        if svc.name not in changes:
            services.append(svc)
            continue
        new_svc = svc.model_copy(update={"slo": svc.slo.model_copy(update=changes[svc.name])})
        lengths = Lengths.of(curves[svc.name])
        old_cap, new_cap = capacity_at_slo(svc, engines, lengths), capacity_at_slo(new_svc, engines, lengths)
        specs = {}
        for role in Role:
            spec = svc.role(role)
            caps = {}
            for gpu, configured in spec.capacity_tokens_per_s.items():
                ratio = new_cap[role][gpu] / old_cap[role][gpu] if old_cap[role][gpu] > 0 else 0.0
                if ratio <= 0:
                    raise ValueError(
                        f"slo for {svc.name!r} {changes[svc.name]}: no {role.value} instance on {gpu} meets it "
                        "(capacity model); loosen the SLO or drop that GPU type"
                    )
                caps[gpu] = configured * ratio
                notes.append(
                    {"service": svc.name, "role": role.value, "gpu_type": gpu, "capacity_tokens_per_s": round(caps[gpu], 1),
                     "was": configured, "ratio": round(ratio, 4)}
                )  # fmt: skip
            specs[role.value] = spec.model_copy(update={"capacity_tokens_per_s": caps})
        metric_role = Role.DECODE if svc.policy.metric is Metric.DECODE_TPS else Role.PREFILL
        ref = svc.role(metric_role).reference_gpu_type
        scale = specs[metric_role.value].capacity_tokens_per_s[ref] / svc.role(metric_role).capacity_tokens_per_s[ref]
        policy = svc.policy.model_copy(update={"target_per_instance": svc.policy.target_per_instance * scale})
        services.append(new_svc.model_copy(update={**specs, "policy": policy}))
    return config.model_copy(update={"services": tuple(services)}), notes


def plan(
    config: ClusterConfig,
    *,
    curves: Mapping[str, LoadCurve] | None = None,
    peak_metrics: Mapping[str, Mapping[str, float]] | None = None,
    growth_per_month: float = 0.0,
    horizon_days: float = 0.0,
    slo: Mapping[str, Mapping[str, float]] | None = None,
    gpu_types: Sequence[str] | None = None,
    prices: Mapping[str, float] | None = None,
    utilisation: float | None = None,
    sweep: Sequence[float] = DEFAULT_SWEEP,
) -> dict[str, Any]:
    """The capacity plan (JSON-ready). Give `curves` (a trace) or `peak_metrics` (a forecast:
    service -> {decode_tps, prefill_tps})."""
    known = [g.name for g in config.gpu_types]
    candidates = list(gpu_types or known)
    bad = [g for g in candidates if g not in known]
    if bad:
        raise ValueError(f"unknown GPU type(s) {bad}; the config declares {known}")
    price = {g.name: g.cost_per_gpu_hour for g in config.gpu_types} | dict(prices or {})
    if any(v < 0 for v in price.values()):
        raise ValueError(f"prices must be >= 0 $/GPU-hour, got {price}")
    if utilisation is not None and not 0 < utilisation <= 1:
        raise ValueError(f"utilisation must be in (0, 1], got {utilisation}")
    if growth_per_month <= -1 or horizon_days < 0:
        raise ValueError("growth_per_month must be > -1 and horizon_days >= 0")
    config, slo_notes = config_at_slo(config, slo, curves)
    if peak_metrics is not None:
        missing = [s.name for s in config.services if s.name not in peak_metrics]
        if missing:
            raise ValueError(f"peak_metrics has no entry for service(s) {missing}")
        peaks = {
            n: PeakLoad(n, float(v.get("decode_tps", 0.0)), float(v.get("prefill_tps", 0.0)))
            for n, v in peak_metrics.items()
            if n in {s.name for s in config.services}
        }
    elif curves is not None:
        peaks = peaks_from_curves(config, curves)
    else:
        raise ValueError("give a load: a trace (curves) or a forecast of the peaks (peak_metrics)")
    growth = (1.0 + growth_per_month) ** (horizon_days / 30.0)
    main = size_fleet(config, peaks, growth=growth, candidates=candidates, prices=price, utilisation=utilisation)
    capacity: dict[str, int] = defaultdict(int)
    for pool in config.topology.node_pools:
        capacity[pool.gpu_type] += pool.nodes * pool.gpus_per_node
    sensitivity = []
    for m in sweep:
        s = size_fleet(config, peaks, growth=growth * m, candidates=candidates, prices=price, utilisation=utilisation)
        sensitivity.append(
            {
                "growth": round(growth * m, 4),
                **{f"gpus_{g}": s["gpus_by_type"].get(g, 0) for g in candidates},
                "gpus_total": s["gpus_total"],
                "cost_per_day": s["cost_per_day"],
                "fits_cluster": s["fits"],
                "pairings": ", ".join(f"{n}:{p.prefill_gpu}/{p.decode_gpu}" for n, p in s["chosen"].items()),
            }
        )
    services = []
    for svc in config.services:
        pick: Pairing = main["chosen"][svc.name]
        services.append(
            {
                "service": svc.name,
                "peak_decode_tps": round(peaks[svc.name].decode_tps * growth, 1),
                "peak_prefill_tps": round(peaks[svc.name].prefill_tps * growth, 1),
                "utilisation": round(utilisation or planning_utilisation(svc), 4),
                **{k: v for k, v in asdict(pick).items() if k not in ("service", "colocatable")},
                "pd_ratio": pick.pd_ratio,
                "configured_pd_ratio": f"{svc.pd_ratio.prefill:g}:{svc.pd_ratio.decode:g}",
                "colocatable": pick.colocatable,
                "alternatives": [
                    {
                        "pairing": f"{a.prefill_gpu}/{a.decode_gpu}",
                        "num_prefill": a.num_prefill,
                        "num_decode": a.num_decode,
                        "gpus": a.gpus,
                        "cost_per_day": a.cost_per_day,
                        "colocatable": a.colocatable,
                    }
                    for a in main["alternatives"][svc.name]
                ],
            }
        )
    return {
        "cluster": config.cluster.name,
        "growth": round(growth, 4),
        "growth_per_month": growth_per_month,
        "horizon_days": horizon_days,
        "candidate_gpu_types": candidates,
        "prices_per_gpu_hour": {g: price[g] for g in candidates},
        "services": services,
        "gpus_by_type": main["gpus_by_type"],
        "gpus_total": main["gpus_total"],
        "cluster_gpus_by_type": dict(sorted(capacity.items())),
        "gpus_by_type_domain": main["gpus_by_type_domain"],
        "placement_method": main["method"],
        "fits_cluster": main["fits"],
        "unmet_instances": main["unmet_instances"],
        "cost_per_day": main["cost_per_day"],
        "sensitivity": sensitivity,
        # Capacities re-derived by the capacity model for SLOs other than the config's.
        "slo_capacities": slo_notes,
    }


def markdown(result: Mapping[str, Any]) -> str:
    """The plan as the markdown an operator reads (artifact and docs)."""
    lines = [
        f"# Capacity plan · {result['cluster']} · growth x{result['growth']:g}",
        "",
        f"**{result['gpus_total']} GPUs** ({', '.join(f'{n} {g}' for g, n in result['gpus_by_type'].items())}), "
        f"**${result['cost_per_day']:,.0f}/day**; fits the cluster: **{'yes' if result['fits_cluster'] else 'no'}**"
        + (f" (short: {result['unmet_instances']})" if result["unmet_instances"] else ""),
        "",
        "| service | peak decode tok/s | peak prefill tok/s | pairing P/D GPU | P | D | P/D ratio (config) | GPUs | $/day |",
        "|---|---:|---:|---|---:|---:|---|---:|---:|",
    ]
    for s in result["services"]:
        lines.append(
            f"| {s['service']} | {s['peak_decode_tps']:,.0f} | {s['peak_prefill_tps']:,.0f} | "
            f"{s['prefill_gpu']}/{s['decode_gpu']} | {s['num_prefill']} | {s['num_decode']} | "
            f"{s['pd_ratio']} ({s['configured_pd_ratio']}) | {s['gpus_prefill'] + s['gpus_decode']} | "
            f"{s['cost_per_day']:,.0f} |"
        )
    lines += ["", "**GPUs per type and domain (S2/S1)**", "", "| GPU | domain | GPUs |", "|---|---|---:|"]
    for g, doms in result["gpus_by_type_domain"].items():
        lines += [f"| {g} | {d} | {n} |" for d, n in doms.items()]
    gpu_cols = [k for k in (result["sensitivity"][0] if result["sensitivity"] else {}) if k.startswith("gpus_")]
    lines += [
        "",
        "**How the answer changes with growth**",
        "",
        "| growth | " + " | ".join(gpu_cols) + " | $/day | fits |",
        "|---:|" + "---:|" * len(gpu_cols) + "---:|---|",
    ]
    for r in result["sensitivity"]:
        lines.append(
            f"| x{r['growth']:g} | "
            + " | ".join(str(r[c]) for c in gpu_cols)
            + f" | {r['cost_per_day']:,.0f} | {'yes' if r['fits_cluster'] else 'no'} |"
        )
    return "\n".join(lines)


def plot(result: Mapping[str, Any], path: Path) -> Path:
    """GPUs per type (stacked) and cost per day against growth; cluster size as dashed lines."""
    # late: matplotlib: ~0.5 s, plots only
    import matplotlib

    matplotlib.use("Agg")
    # late: matplotlib: ~0.5 s, plots only
    import matplotlib.pyplot as plt

    rows = result["sensitivity"]
    labels = [f"x{r['growth']:g}" for r in rows]
    fig, (ax_g, ax_c) = plt.subplots(1, 2, figsize=(10, 3.6))
    bottom = np.zeros(len(rows))
    for g in result["candidate_gpu_types"]:
        vals = np.array([r.get(f"gpus_{g}", 0) for r in rows], dtype=float)
        ax_g.bar(labels, vals, bottom=bottom, label=g)
        bottom += vals
    total_cluster = sum(result["cluster_gpus_by_type"].values())
    ax_g.axhline(total_cluster, ls="--", color="grey", lw=1, label=f"cluster ({total_cluster})")
    ax_g.set_title("GPUs needed at peak")
    ax_g.set_xlabel("load growth")
    ax_g.legend(fontsize=8)
    ax_c.plot(labels, [r["cost_per_day"] for r in rows], marker="o")
    ax_c.set_title("cost per day ($)")
    ax_c.set_xlabel("load growth")
    ax_c.grid(alpha=0.3)
    fig.suptitle(f"capacity plan · {result['cluster']}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


# --- the Prefect flow ----------------------------------------------------------------------


def plan_curves(config: ClusterConfig, trace: str, peak_rps: Mapping[str, float] | None) -> dict[str, LoadCurve]:
    """The load to plan for: `trace` scaled per service to `peak_rps` (default: each service's
    peak at which it needs about half its `max_instances`, as the twin backend serves it)."""

    if peak_rps is None:
        base, _ = load_service_curves(config, trace)
        peak_rps = auto_peaks(config, next(iter(base.values())))
    return load_service_curves(config, trace, None, peak_rps)[0]


@task(name="load traces", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=1)
def _curves_task(config: ClusterConfig, trace: str, peak_rps: dict[str, float] | None) -> dict[str, LoadCurve]:
    return plan_curves(config, trace, peak_rps)


@task(name="size and place fleet", cache_policy=NO_CACHE, timeout_seconds=600)
def _plan_task(config: ClusterConfig, **kwargs: Any) -> dict[str, Any]:
    return plan(config, **kwargs)


@flow(name="plan_capacity")
def plan_capacity(
    config_path: str = str(settings.DEMO_CONFIG),
    trace: str | None = str(settings.BUNDLED_TRACE),
    peak_rps: dict[str, float] | None = None,
    peak_metrics: dict[str, dict[str, float]] | None = None,
    growth_per_month: float = 0.0,
    horizon_days: float = 0.0,
    slo: dict[str, dict[str, float]] | None = None,
    gpu_types: list[str] | None = None,
    prices: dict[str, float] | None = None,
    utilisation: float | None = None,
    sweep: list[float] | None = None,
    out_dir: str | None = None,
) -> dict[str, Any]:
    """GPUs per type and domain at peak, cost per day, P/D ratio and pairing per service.

    Load: `trace` (scaled per service to `peak_rps`, default: the twin's auto peaks) or
    `peak_metrics` (service -> {decode_tps, prefill_tps}, a forecast), which wins when given.
    """

    config = load_config(config_path)
    curves = _curves_task(config, trace, peak_rps) if peak_metrics is None and trace else None
    result = _plan_task(
        config,
        curves=curves,
        peak_metrics=peak_metrics,
        growth_per_month=growth_per_month,
        horizon_days=horizon_days,
        slo=slo,
        gpu_types=gpu_types,
        prices=prices,
        utilisation=utilisation,
        sweep=tuple(sweep or DEFAULT_SWEEP),
    )
    name = config.cluster.name
    publish_markdown(markdown(result), key=artifact_key("plan", name), description=f"capacity plan · {name}")
    publish_table(
        [{k: v for k, v in s.items() if k != "alternatives"} for s in result["services"]],
        key=artifact_key("plan-services", name),
        description="per service at peak",
    )
    publish_table(result["sensitivity"], key=artifact_key("plan-growth", name), description="answer vs growth")
    if out_dir:
        out = Path(out_dir)
    else:
        # late: prefect: ~2 s at import, flow runs only
        from prefect.runtime import flow_run

        out = settings.data_dir() / "plan" / str(flow_run.get_id() or "local")
    publish_plot(plot(result, out / "plan.png"), key=artifact_key("plan-plot", name), title=f"capacity plan · {name}")
    return result
