"""League commands: `bench policies`, `curate`, `pd-curve`, `capacity` (issue 3).

`bench policies` takes the options of `replay` (plus `--peak-rps auto`: rescale the trace so its
peak needs ~80% of the cluster's GPUs under static-peak) and writes summary.json, a markdown
table and plots (load vs GPUs per policy; GPU-hours vs SLO attainment) to `--out`.
"""

from __future__ import annotations

import json
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from heteroscale.cli import _load_curves, _print_league, _user_errors, app, bench_app, console

AUTO_GPU_SHARE = 0.8


def static_peak_gpus(cfg: Any, curves: dict[str, Any]) -> int:
    from flows.replay import initial_counts

    counts = initial_counts(cfg, curves, "static-peak")
    return sum(
        c.num_prefill * cfg.service(n).prefill.gpus_per_instance
        + c.num_decode * cfg.service(n).decode.gpus_per_instance
        for n, c in counts.items()
    )


def fit_to_cluster(cfg: Any, curves: dict[str, Any], share: float = AUTO_GPU_SHARE) -> tuple[dict[str, Any], float]:
    """Scale every curve by one factor so static-peak needs about `share` of the cluster's GPUs."""
    total = sum(p.nodes * p.gpus_per_node for p in cfg.topology.node_pools)
    goal = share * total
    lo, hi = 1e-6, 1.0
    while static_peak_gpus(cfg, {n: c.scaled(hi) for n, c in curves.items()}) < goal and hi < 1e9:
        hi *= 2
    for _ in range(50):
        mid = math.sqrt(lo * hi)
        if static_peak_gpus(cfg, {n: c.scaled(mid) for n, c in curves.items()}) <= goal:
            lo = mid
        else:
            hi = mid
    return {n: c.scaled(lo) for n, c in curves.items()}, lo


def _curves(cfg: Any, trace: list[str], lengths: list[str], peak_rps: list[str]) -> tuple[dict[str, Any], float | None]:
    auto = [p for p in peak_rps if p == "auto"]
    curves = _load_curves(cfg, trace, lengths, [p for p in peak_rps if p != "auto"])
    if not auto:
        return curves, None
    return fit_to_cluster(cfg, curves)


def plot_league(results: list[Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(figsize=(12, 4.5))
    load_ax = ax.twinx()
    first = True
    for res in results:
        by_t: dict[float, int] = {}
        rps: dict[float, float] = {}
        for t in res.twin.ticks:
            by_t[t.t_s] = by_t.get(t.t_s, 0) + t.gpus
            rps[t.t_s] = rps.get(t.t_s, 0.0) + t.req_per_s
        if not by_t:
            continue
        ts = sorted(by_t)
        hours = [(t - ts[0]) / 3600 for t in ts]
        ax.step(hours, [by_t[t] for t in ts], where="post", label=res.policy, lw=1)
        if first:
            load_ax.plot(hours, [rps[t] for t in ts], color="grey", alpha=0.3, lw=0.8)
            first = False
    ax.set_xlabel("hours into the trace")
    ax.set_ylabel("GPUs held")
    load_ax.set_ylabel("offered req/s (grey)")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    p = out / "league-gpus.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for r in (res.summary() for res in results):
        ax.scatter(r["gpu_hours"], r["slo_attainment"] * 100)
        ax.annotate(r["policy"], (r["gpu_hours"], r["slo_attainment"] * 100), fontsize=8)
    ax.set_xlabel("GPU-hours")
    ax.set_ylabel("SLO attainment (%)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    p = out / "league-tradeoff.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)
    return paths


def league_table(rows: list[dict[str, Any]]) -> str:
    head = "| policy | GPU-hours | avg GPU util | avg SM activity | SLO attainment | TTFT p99 s | TBT p99 s | scale actions |"
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['policy']} | {r['gpu_hours']:.1f} | {r['avg_gpu_util']:.1%} | {r['avg_sm_activity']:.1%} | "
            f"{r['slo_attainment']:.2%} | {r['ttft_p99_s']} | {r['tbt_p99_s']} | {r['scale_actions']} |"
        )
    return "\n".join(lines)


@bench_app.command("policies")
def bench_policies(
    config: Annotated[Path, typer.Option(help="Cluster config YAML.")],
    trace: Annotated[list[str], typer.Option(help="[SERVICE=]PATH: per-request or rate CSV.")],
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("league-out"),
    policy: Annotated[list[str], typer.Option(help="Policy (repeat); default all.")] = [],  # noqa: B006
    lengths: Annotated[list[str], typer.Option(help="[SERVICE=]PATH: request sizes for a rate trace.")] = [],  # noqa: B006
    peak_rps: Annotated[list[str], typer.Option(help="[SERVICE=]X or 'auto' (peak needs ~80% of GPUs).")] = [],  # noqa: B006
    placement: Annotated[str | None, typer.Option(help="Override placement for every policy: greedy | ilp.")] = None,
    skip: Annotated[float, typer.Option(help="Skip this share of the trace (use the rest: held-out).")] = 0.0,
) -> None:
    """Run every policy on the same load; write summary.json, league.md and plots."""
    from flows.replay import ALL_POLICIES, run_league
    from models.config import load_config
    from tasks.core.policy import POLICIES

    def run() -> None:
        cfg = load_config(config)
        pols = policy or list(ALL_POLICIES)
        bad = [p for p in pols if p not in POLICIES]
        if bad:
            raise ValueError(f"unknown policy {bad}; choose from {sorted(POLICIES)}")
        curves, factor = _curves(cfg, trace, lengths, peak_rps)
        if skip:
            curves = {n: split_curve(c, skip)[1] for n, c in curves.items()}
        started = time.perf_counter()
        with console.status("replaying") as status:
            results = run_league(
                cfg, curves, pols, placement=placement, progress=lambda n, f: status.update(f"replaying {n}: {f:.0%}")
            )
        wall = time.perf_counter() - started
        rows = [r.summary() for r in results]
        out.mkdir(parents=True, exist_ok=True)
        summary = {
            "results": rows,
            "cluster": cfg.cluster.name,
            "peak_rps_auto_scale": factor,
            "traces": {
                n: {"source": c.name, "scale": c.scale, "peak_req_per_s": c.peak_req_per_s, "duration_s": c.duration_s}
                for n, c in curves.items()
            },
            "wall_s_total": round(wall, 2),
            "command": "heteroscale " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        }
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        (out / "league.md").write_text(league_table(rows) + "\n")
        plot_league(results, out)
        _print_league(rows)
        console.print(league_table(rows), highlight=False)
        console.print(f"wall {wall:.1f}s; scale {factor}; outputs in {out}")

    _user_errors(run)


def split_curve(curve: Any, share: float) -> tuple[Any, Any]:
    """The first `share` of a curve and the rest (curate on one, evaluate on the other)."""
    from dataclasses import replace

    n = max(1, min(len(curve.t_s) - 1, round(len(curve.t_s) * share)))

    def part(sl: slice) -> Any:
        t = curve.t_s[sl]
        return replace(
            curve,
            t_s=t - t[0],
            req_per_s=curve.req_per_s[sl],
            mean_input_tokens=curve.mean_input_tokens[sl],
            mean_output_tokens=curve.mean_output_tokens[sl],
            observed=curve.observed[sl],
            start_epoch_s=curve.start_epoch_s + float(t[0]),
        )

    return part(slice(0, n)), part(slice(n, None))


@app.command("curate")
def curate_cmd(
    config: Annotated[Path, typer.Option(help="Cluster config YAML.")],
    trace: Annotated[list[str], typer.Option(help="[SERVICE=]PATH: per-request or rate CSV.")],
    service: Annotated[list[str], typer.Option(help="Service to curate (repeat; default all).")] = [],  # noqa: B006
    lengths: Annotated[list[str], typer.Option(help="[SERVICE=]PATH: request sizes for a rate trace.")] = [],  # noqa: B006
    peak_rps: Annotated[list[str], typer.Option(help="[SERVICE=]X or 'auto'.")] = [],  # noqa: B006
    train: Annotated[float, typer.Option(help="Share of the trace to curate on (the rest is for evaluation).")] = 0.5,
    out: Annotated[Path, typer.Option(help="Curated config YAML to write.")] = Path("curated.yaml"),
) -> None:
    """Algorithm 1: best P/D ratio and target from the capacity model, candidates replayed."""
    from models.config import load_config, parse_config
    from tasks.core.curate import curate, service_yaml

    def run() -> None:
        cfg = load_config(config)
        curves, _ = _curves(cfg, trace, lengths, peak_rps)
        names = service or [s.name for s in cfg.services]
        current = cfg
        for name in names:
            part, _rest = split_curve(curves[name], train)
            res = curate(current, name, part)
            current = parse_config(service_yaml(current, res.service), source=str(out))
            console.print(
                f"{name}: P:D {res.ratio[0]}:{res.ratio[1]}, decode capacity at SLO "
                f"{res.decode_capacity_at_slo:.0f} tok/s -> {res.chosen.policy} target {res.chosen.target_per_instance:g} "
                f"({res.chosen.gpu_hours:.1f} GPU-h, {res.chosen.slo_attainment:.2%} on the first {train:.0%})",
                highlight=False,
            )
        out.write_text(yaml.safe_dump(current.model_dump(mode="json"), sort_keys=False))
        console.print(f"curated config: {out}")

    _user_errors(run)


@app.command("pd-curve")
def pd_curve_cmd(
    config: Annotated[Path, typer.Option(help="Cluster config YAML.")],
    service: Annotated[str, typer.Option(help="Service.")],
    trace: Annotated[str, typer.Option(help="Per-request trace for request sizes.")] = "",
    budget: Annotated[int, typer.Option(help="Reference instances to split.")] = 16,
) -> None:
    """Throughput within the SLOs of every P/D split of a fixed instance budget."""
    from heteroscale import settings
    from models.config import load_config
    from sim.traces import load_requests
    from sim.twin import TwinParams, engines_for
    from tasks.core.curate import Lengths, pd_curve

    def run() -> None:
        cfg = load_config(config)
        svc = cfg.service(service)
        req = load_requests(trace or settings.BUNDLED_TRACE)
        lens = Lengths(float(req["input_tokens"].mean()), float(req["output_tokens"].mean()))
        rows = pd_curve(svc, engines_for(cfg, TwinParams()), lens, budget)
        best = max(r[2] for r in rows)
        worst = min(r[2] for r in rows if r[2] > 0)
        for p, d, rps in rows:
            console.print(f"{p:3d}P {d:3d}D  {rps:8.2f} req/s  {'#' * round(40 * rps / best)}", highlight=False)
        console.print(f"best/worst = {best / worst:.2f}x", highlight=False)

    _user_errors(run)


@app.command("capacity")
def capacity_cmd(
    config: Annotated[Path, typer.Option(help="Cluster config YAML.")],
    trace: Annotated[str, typer.Option(help="Per-request trace for request sizes.")] = "",
    validate: Annotated[str, typer.Option(help="Splitwise perf_model.csv to validate against.")] = "",
) -> None:
    """Per-instance tokens/s at each service's SLOs from the capacity model (vs the config)."""
    from heteroscale import settings
    from models.config import Role, load_config
    from sim.capacity import validate_against_splitwise
    from sim.traces import load_requests
    from sim.twin import TwinParams, engines_for
    from tasks.core.curate import Lengths, capacity_at_slo

    def run() -> None:
        if validate:
            console.print(validate_against_splitwise(validate).to_string(index=False, float_format="{:.3f}".format))
            return
        cfg = load_config(config)
        req = load_requests(trace or settings.BUNDLED_TRACE)
        lens = Lengths(float(req["input_tokens"].mean()), float(req["output_tokens"].mean()))
        engines = engines_for(cfg, TwinParams())
        for svc in cfg.services:
            caps = capacity_at_slo(svc, engines, lens)
            for role in Role:
                for g, v in caps[role].items():
                    console.print(
                        f"{svc.name:10s} {role.value:8s} {g:6s} {v:9.1f} tok/s at SLO "
                        f"(config {svc.role(role).capacity_tokens_per_s[g]:g}; engine "
                        f"{engines[(svc.name, role, g)].source})",
                        highlight=False,
                    )

    _user_errors(run)
