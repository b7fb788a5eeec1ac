"""`heteroscale bench replay`: replay speed at fleet scale (issue 18, item 4).

The fleet and the measurement are `sim.fleet` and `flows.fleet_bench`; this module parses the
options and prints the table (or the JSON document).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from heteroscale.cli import _user_errors, bench_app, console, err


@bench_app.command("replay")
def bench_replay_cmd(
    services: Annotated[int, typer.Option(help="Services in the synthetic fleet (~170 GPUs each).")] = 10,
    days: Annotated[float, typer.Option(help="Days of ServeGen load to replay (at most 14).")] = 14.0,
    policy: Annotated[list[str], typer.Option(help="Policy (repeat); default heteroscale-paper.")] = [],  # noqa: B006
    placement: Annotated[
        str | None, typer.Option(help="greedy | ilp | incremental for every policy; 'policy': its own.")
    ] = "greedy",
    seed: Annotated[int, typer.Option(help="Seed of the synthetic cluster and service sizes.")] = 1,
    profile: Annotated[Path | None, typer.Option(help="Profile each replay; <policy>.prof/.txt here.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    plain: Annotated[
        bool, typer.Option("--plain", help="Call the policy for every service every period (no decision cache).")
    ] = False,
    reselect_every_s: Annotated[
        float | None,
        typer.Option(
            help="How often `auto` re-selects its method, s (default: the replay's, hourly). Changes decisions."
        ),
    ] = None,
    pin_between_selections: Annotated[
        bool,
        typer.Option(
            "--pin-between-selections",
            help="Between auto's selections forecast from the last origin with the pinned fit. Changes decisions.",
        ),
    ] = False,
) -> None:
    """Replay a synthetic N-service fleet for D days: wall s, service-days/s, peak RSS per policy."""
    from flows.fleet_bench import DEFAULT_POLICIES, bench_replay

    doc = _user_errors(
        lambda: bench_replay(
            services=services,
            days=days,
            policies=policy or list(DEFAULT_POLICIES),
            placement=None if placement == "policy" else placement,
            seed=seed,
            profile_dir=profile,
            skip_unchanged=not plain,
            reselect_every_s=reselect_every_s,
            pin_between_selections=pin_between_selections,
            progress=lambda msg: err.print(msg, highlight=False),
        )
    )
    if json_out:
        print(json.dumps(doc, indent=2))
        return
    t = Table(
        title=f"replay, {doc['services']} services x {doc['days']:g} days, {doc['gpus']} GPUs, "
        f"placement {doc['placement']}{' (profiled)' if doc['profiled'] else ''}{' (plain loop)' if plain else ''}"
    )
    cols = (
        "policy",
        "wall s",
        "CPU s",
        "service-days/s",
        "peak RSS MB",
        "GPU-hours",
        "SLO attainment",
        "unmet periods",
    )
    for c in cols:
        t.add_column(c, justify="left" if c == "policy" else "right")
    for r in doc["rows"]:
        t.add_row(
            r["policy"],
            f"{r['wall_s']:.2f}",
            f"{r['cpu_s']:.2f}",
            f"{r['service_days_per_s']:.2f}",
            f"{r['peak_rss_mb']:.0f}",
            f"{r['gpu_hours']:.1f}",
            f"{r['slo_attainment']:.2%}",
            str(r["unmet_periods"]),
        )
    console.print(t)
    console.print(f"fleet built in {doc['build_s']:.1f} s (not in the wall times)", highlight=False)
