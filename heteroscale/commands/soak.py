"""`heteroscale bench soak`: a long replay with random faults against the same replay without.

The same load, policy and placement are replayed twice: once clean, once with collects and
applies failing at random (seeded; `sim/faults.py`). Both check every plan against the safety
invariants (`tasks/core/invariants.py`). The table answers: does the loop stay safe (zero
violations) and does SLO attainment stay within a point of the fault-free run?
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from heteroscale.cli import _TRACE_HELP, _load_curves, _user_errors, bench_app, console


def soak(
    config: Any,
    curves: dict[str, Any],
    *,
    policy: str,
    collect_fail: float,
    apply_fail: float,
    seed: int,
    placement: str | None,
) -> dict[str, Any]:
    # late: CLI start-up: a command loads only what it runs (flows and prefect cost seconds)
    from flows.replay import replay
    from sim.faults import FaultPlan

    plan = FaultPlan(signals="error", signals_rate=collect_fail, apply_error_rate=apply_fail, seed=seed)
    rows = {}
    for name, faults in (("fault-free", None), ("faults", plan)):
        res = replay(
            config, curves, policy, keep_ticks=False, placement=placement, faults=faults, check_invariants=True
        )
        rows[name] = {
            **res.summary(),
            "failed_collects": res.failed_collects,
            "failed_reads": res.failed_reads,
            "failed_applies": res.failed_applies,
            "invariant_violations": len(res.invariant_violations),
            "first_violations": res.invariant_violations[:5],
        }
    clean, faulty = rows["fault-free"], rows["faults"]
    return {
        "policy": policy,
        "collect_fail": collect_fail,
        "apply_fail": apply_fail,
        "seed": seed,
        "runs": rows,
        "attainment_drop_points": round(100 * (clean["slo_attainment"] - faulty["slo_attainment"]), 3),
        "gpu_hours_change": round(faulty["gpu_hours"] / clean["gpu_hours"] - 1, 4) if clean["gpu_hours"] else None,
    }


@bench_app.command("soak")
def bench_soak(
    config: Annotated[Path, typer.Option(help="Cluster config YAML.")],
    trace: Annotated[list[str], typer.Option(help=_TRACE_HELP)],
    lengths: Annotated[list[str], typer.Option(help="[SERVICE=]PATH: request sizes for a rate trace.")] = [],  # noqa: B006
    peak_rps: Annotated[list[str], typer.Option(help="[SERVICE=]X or 'auto'.")] = [],  # noqa: B006
    policy: Annotated[str, typer.Option(help="Policy to soak.")] = "heteroscale-paper",
    collect_fail: Annotated[float, typer.Option(help="Probability a collect fails.")] = 0.05,
    apply_fail: Annotated[float, typer.Option(help="Probability an apply fails.")] = 0.02,
    seed: Annotated[int, typer.Option(help="Random seed of the faults.")] = 0,
    placement: Annotated[str | None, typer.Option(help="greedy | ilp | incremental (default: the policy's).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Replay with random collect/apply failures vs without; invariant violations and SLO drift."""
    # late: CLI start-up: a command loads only what it runs (flows and prefect cost seconds)
    from tasks.core.registry import load_config

    def run() -> dict[str, Any]:
        cfg = load_config(config)
        curves, _ = _load_curves(cfg, trace, lengths, peak_rps)
        started = time.perf_counter()
        with console.status(f"soaking {policy}"):
            out = soak(
                cfg,
                curves,
                policy=policy,
                collect_fail=collect_fail,
                apply_fail=apply_fail,
                seed=seed,
                placement=placement,
            )
        out["wall_s"] = round(time.perf_counter() - started, 2)
        return out

    result = _user_errors(run)
    if json_out:
        print(json.dumps(result, indent=2))
        return
    console.print(
        "| run | GPU-hours | SLO attainment | failed collects | failed applies | invariant violations |\n"
        "|---|---:|---:|---:|---:|---:|",
        highlight=False,
    )
    for name, r in result["runs"].items():
        console.print(
            f"| {name} | {r['gpu_hours']:.1f} | {r['slo_attainment']:.2%} | {r['failed_collects']} | "
            f"{r['failed_applies']} | {r['invariant_violations']} |",
            highlight=False,
        )
    console.print(
        f"attainment drop: {result['attainment_drop_points']:.2f} points; GPU-hours change: "
        f"{result['gpu_hours_change']:+.2%}; wall {result['wall_s']} s",
        highlight=False,
    )
