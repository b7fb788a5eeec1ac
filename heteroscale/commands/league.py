"""Capacity and curation commands: `curate` (the paper's Algorithm 1), `pd-curve`, `capacity`.

`bench policies` lives beside `replay` in heteroscale/cli.py: they share one implementation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
import yaml

from heteroscale.cli import UsageError, _load_curves, _user_errors, app, console


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
    # late: CLI start-up: a command loads only what it runs (flows and prefect cost seconds)
    from flows.curate import curate, service_yaml
    from tasks.core.registry import load_config, parse_config

    def run() -> None:
        if out.is_dir():
            raise UsageError(f"--out {out}: is a directory; give the curated config's file name")
        if not 0 < train < 1:
            raise UsageError(f"--train must be a share in (0, 1), got {train:g}")
        cfg = load_config(config)
        known = [s.name for s in cfg.services]
        unknown = [n for n in service if n not in known]
        if unknown:
            raise UsageError(f"--service {unknown}: no such service in {config}; services are {known}")
        curves, _ = _load_curves(cfg, trace, lengths, peak_rps)
        names = service or known
        current = cfg
        for name in names:
            part, _rest = curves[name].split(train)
            res = curate(current, name, part)
            current = parse_config(service_yaml(current, res.service), source=str(out))
            console.print(
                f"{name}: P:D {res.ratio[0]}:{res.ratio[1]}, decode capacity at SLO "
                f"{res.decode_capacity_at_slo:.0f} tok/s -> {res.chosen.policy} target {res.service.policy.target_per_instance:g}, "
                f"slo_headroom {res.service.policy.slo_headroom:g} "
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
    # late: CLI start-up: a command loads only what it runs (flows and prefect cost seconds)
    from flows.curate import Lengths, pd_curve
    from models import settings
    from sim.traces import load_requests
    from sim.twin import TwinParams, engines_for
    from tasks.core.registry import load_config

    def run() -> None:
        if budget < 2:
            raise UsageError(f"--budget {budget}: needs at least 2 instances (one prefill, one decode)")
        cfg = load_config(config)
        known = [s.name for s in cfg.services]
        if service not in known:
            raise UsageError(f"--service {service!r}: no such service in {config}; services are {known}")
        # Bounded work: the curve tries every split of the budget, and no split above the cluster's GPUs is real.
        gpus = sum(p.nodes * p.gpus_per_node for p in cfg.topology.node_pools)
        if budget > gpus:
            raise UsageError(f"--budget {budget}: more instances than the cluster's {gpus} GPUs could hold")
        svc = cfg.service(service)
        req = load_requests(trace or settings.BUNDLED_TRACE)
        lens = Lengths(float(req["input_tokens"].mean()), float(req["output_tokens"].mean()))
        rows = pd_curve(svc, engines_for(cfg, TwinParams()), lens, budget)
        best = max((r[2] for r in rows), default=0.0)
        if best <= 0:
            raise UsageError(
                f"no P/D split of {budget} instances serves {service!r} within its SLOs at these request sizes"
            )
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
    # late: CLI start-up: a command loads only what it runs (flows and prefect cost seconds)
    from flows.curate import Lengths, capacity_at_slo
    from models import settings
    from models.config import Role
    from sim.capacity import validate_against_splitwise
    from sim.traces import load_requests
    from sim.twin import TwinParams, engines_for
    from tasks.core.registry import load_config

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
