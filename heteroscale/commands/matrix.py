"""`heteroscale bench matrix`: the policy league over workload shapes (issue 13, item 7).

The cells and the protocol (fit, curate on the first half, league on the second) are
`flows.matrix`; this module runs them, writes each cell's replay outputs (`cells/<cell>/`,
`flows.league.write_outputs`) and reads the rows back from that `summary.json` as plain
dicts, so columns the summary gains (`cost`, `slo_attainment_feasible`, `slo_floor`) show up
here when present. Writes `matrix.json`, `matrix.md` and `matrix.png` to `--out`.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from heteroscale.cli import _ADDRESS_HELP, _ENGINE_HELP, _WORKERS_HELP, _user_errors, bench_app, console, err

# The bundled data (data/ beside the package), without importing the settings module.
_ROOT = Path(__file__).resolve().parents[2]
_REQUESTS = _ROOT / "data" / "traces" / "azure_llm_2023" / "AzureLLMInferenceTrace_conv.csv"
_RATES = _ROOT / "data" / "traces" / "servegen" / "servegen_m-small_10min.csv"
_CONFIG = _ROOT / "deployments" / "clusters" / "demo.yaml"
_CELLS_HELP = (
    "Cell to run (repeat; default all): conversation, prefill-heavy, prefill-heavy-bursty, decode-heavy, "
    "long-context-feasible, long-context-config-slo, diurnal, mix-shift."
)
# Summary keys copied from each cell's summary.json besides its rows (present once the summary has them).
_SUMMARY_EXTRAS = ("slo_floor",)


# --- columns: fixed ones, then those present in the rows --------------------------------------


def _pct(v: Any, digits: int = 2) -> str:
    return "—" if not isinstance(v, int | float) else f"{v:.{digits}%}"


def _num(v: Any, fmt: str) -> str:
    return "—" if not isinstance(v, int | float) else format(v, fmt)


def _feasible(cell: Mapping[str, Any], row: Mapping[str, Any]) -> str:
    floor = row.get("slo_floor", cell.get("slo_floor"))
    if not isinstance(floor, Mapping) or not floor:
        return "—"
    flags = [v.get("feasible") for v in floor.values() if isinstance(v, Mapping)]
    return "—" if not flags else ("yes" if all(flags) else "no")


def columns(cells: Sequence[Mapping[str, Any]]) -> list[tuple[str, Any]]:
    """(header, row -> text) for the matrix table; optional columns only when some row has the key."""
    rows = [r for c in cells for r in c["rows"]]
    has = {k for r in rows for k in r}
    cols: list[tuple[str, Any]] = [
        ("cell", lambda c, r: c["cell"]),
        ("policy", lambda c, r: r["policy"]),
        ("GPU-hours", lambda c, r: _num(r.get("gpu_hours"), ".1f")),
    ]
    if "cost" in has:
        cols.append(("cost", lambda c, r: _num(r.get("cost"), ",.0f")))
    cols.append(("SLO attainment", lambda c, r: _pct(r.get("slo_attainment"))))
    if "slo_attainment_feasible" in has:
        cols.append(("attainment (feasible)", lambda c, r: _pct(r.get("slo_attainment_feasible"))))
    if "slo_floor" in has or any("slo_floor" in c for c in cells):
        cols.append(("SLO feasible", _feasible))
    cols += [
        ("TTFT p99 s", lambda c, r: _num(r.get("ttft_p99_s"), ".3g")),
        ("unmet periods", lambda c, r: _num(r.get("unmet_periods"), "d")),
        ("ratio to floor", lambda c, r: _num(r.get("ratio_to_floor"), ".2f")),
    ]
    return cols


def markdown(cells: Sequence[Mapping[str, Any]]) -> str:
    cols = columns(cells)
    right = [h not in ("cell", "policy") for h, _ in cols]
    lines = ["| " + " | ".join(h for h, _ in cols) + " |", "|" + "|".join("---:" if r else "---" for r in right) + "|"]
    for c in cells:
        for r in c["rows"]:
            lines.append("| " + " | ".join(str(f(c, r)) for _, f in cols) + " |")
    return "\n".join(lines)


def cells_markdown(cells: Sequence[Mapping[str, Any]]) -> str:
    """What each cell was: its shape on the evaluation half, load, SLOs, curation and wall time."""
    lines = [
        "| cell | shape | mean in / out tokens (evaluated) | peak/mean req/s | load x | static-peak GPUs | "
        "TTFT SLO s (per service) | TTFT floor s, best GPU (evaluated sizes) | curated P:D | wall s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for c in cells:
        ev = c["shape"]["evaluate"]
        slo = "/".join(f"{v:g}" for v in c["ttft_slo_s"].values())
        floor = "/".join(f"{min(f.values()):.2f}" for f in c["ttft_floor_s"].values())
        pd = "/".join(v["pd_ratio"] for v in c["curate"].values())
        lines.append(
            f"| {c['cell']} | {c['description']} | {ev['mean_input_tokens']:.0f} / {ev['mean_output_tokens']:.0f} | "
            f"{ev['peak_to_mean_rps']:.2f} | {c['load_factor']:.3g} | {c['static_peak_gpu_share']:.0%} | {slo} | "
            f"{floor} | {pd} | {c['wall_s']:.1f} |"
        )
    return "\n".join(lines)


def print_table(cells: Sequence[Mapping[str, Any]]) -> None:
    cols = columns(cells)
    t = Table(title="workload matrix (league on the second half of each cell)")
    for h, _ in cols:
        t.add_column(h, justify="left" if h in ("cell", "policy") else "right", no_wrap=h == "cell")
    for i, c in enumerate(cells):
        for j, r in enumerate(c["rows"]):
            t.add_row(*(str(f(c, r)) for _, f in cols), end_section=j == len(c["rows"]) - 1 and i < len(cells) - 1)
    console.print(t)


def plot(cells: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Two heatmaps, cells x policies: SLO attainment and cost (or GPU-hours) over the floor's."""
    # late: CLI start-up: a command loads only what it runs (flows and prefect cost seconds)
    import matplotlib

    matplotlib.use("Agg")
    # late: CLI start-up: a command loads only what it runs (flows and prefect cost seconds)
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import LogNorm

    policies: list[str] = []
    for c in cells:
        policies += [r["policy"] for r in c["rows"] if r["policy"] not in policies]
    names = [c["cell"] for c in cells]
    att = np.full((len(cells), len(policies)), np.nan)
    ratio = np.full_like(att, np.nan)
    for i, c in enumerate(cells):
        for r in c["rows"]:
            j = policies.index(r["policy"])
            if isinstance(r.get("slo_attainment"), int | float):
                att[i, j] = 100 * r["slo_attainment"]
            if isinstance(r.get("ratio_to_floor"), int | float) and r["ratio_to_floor"] > 0:
                ratio[i, j] = r["ratio_to_floor"]
    has_cost = any("cost" in r for c in cells for r in c["rows"])
    fig, axes = plt.subplots(2, 1, figsize=(3.0 + 1.25 * len(policies), 2.2 + 0.84 * len(cells)), sharex=True)
    panels = (
        (
            axes[0],
            att,
            "SLO attainment, % (colour clips below 80%)",
            plt.get_cmap("RdYlGn"),
            matplotlib.colors.Normalize(80, 100),
            "{:.1f}",
        ),
        (
            axes[1],
            ratio,
            f"{'cost' if has_cost else 'GPU-hours'} / the oracle's in the same cell (blue: cheaper)",
            plt.get_cmap("coolwarm"),
            LogNorm(1 / 3, 3),
            "{:.2f}",
        ),
    )
    for ax, data, title, cmap, norm, fmt in panels:
        cmap = cmap.with_extremes(bad="#dddddd")
        ax.imshow(np.ma.masked_invalid(data), cmap=cmap, norm=norm, aspect="auto")
        ax.set_yticks(range(len(names)), names, fontsize=9)
        ax.set_title(title, fontsize=10)
        for i in range(len(names)):
            for j in range(len(policies)):
                v = data[i, j]
                r, g, b, _ = cmap(norm(v)) if not np.isnan(v) else (1, 1, 1, 1)
                dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
                text = "—" if np.isnan(v) else fmt.format(v)
                ax.text(j, i, text, ha="center", va="center", fontsize=9, color="white" if dark else "black")
    axes[1].set_xticks(range(len(policies)), policies, rotation=25, ha="right", fontsize=9)
    fig.suptitle("workload matrix: the league on each cell's second half", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --- the command ---------------------------------------------------------------------------


def run_matrix(
    config_path: Path,
    cells: Sequence[str],
    policies: Sequence[str],
    out: Path,
    *,
    requests_csv: Path,
    rates_csv: Path,
    days: float,
    quick: bool,
    placement: str,
    command: str = "",
    engine: Any = None,
) -> dict[str, Any]:
    """Run the cells, write every output, return the `matrix.json` document."""
    # late: CLI start-up: a command loads only what it runs (flows and prefect cost seconds)
    from flows.league import write_outputs
    from flows.matrix import QUICK_POLICIES, Cell, Sources, run_cell, with_floor_ratio
    from flows.replay import ALL_POLICIES
    from models.config import PlacementMethod, load_config
    from tasks.core.policy import POLICIES

    cfg = load_config(config_path)
    known = [c.value for c in Cell]
    bad = [c for c in cells if c not in known]
    if bad:
        raise ValueError(f"unknown cell {bad}; choose from {known}")
    chosen_cells = [Cell(c) for c in (cells or known)]
    default_pols = QUICK_POLICIES if quick else (*ALL_POLICIES, *sorted(set(POLICIES) - set(ALL_POLICIES)))
    pols = list(policies or default_pols)
    bad = [p for p in pols if p not in POLICIES]
    if bad:
        raise ValueError(f"unknown policy {bad}; choose from {sorted(POLICIES)}")
    if placement not in {m.value for m in PlacementMethod}:
        raise ValueError(f"--placement must be one of {[m.value for m in PlacementMethod]}, got {placement!r}")
    if days <= 0:
        raise ValueError(f"--days must be positive, got {days}")
    sources = Sources(requests_csv, rates_csv, days=days, quick=quick)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    docs = []
    for i, cell in enumerate(chosen_cells, 1):
        tag = f"[{i}/{len(chosen_cells)} {cell.value}]"
        t0 = time.perf_counter()

        def say(msg: str, tag: str = tag, t0: float = t0) -> None:
            err.print(f"{tag} {time.perf_counter() - t0:6.1f} s  {msg}", highlight=False)

        res = run_cell(cfg, cell, sources, pols, placement=placement, progress=say, engine=engine)
        cell_dir = out / "cells" / cell.value
        write_outputs(res.results, res.config, res.curves, cell_dir, command=command, extra={"skip": 0.5, **res.info})
        summary = json.loads((cell_dir / "summary.json").read_text())
        doc = {"cell": cell.value, **res.info, "rows": with_floor_ratio(summary["results"])}
        doc |= {k: summary[k] for k in _SUMMARY_EXTRAS if k in summary}
        docs.append(doc)
        say(f"done in {res.info['wall_s']:.1f} s (curate {res.info['curate_wall_s']:.1f} s)")
    document = {
        "command": command,
        "config": str(config_path),
        "requests_trace": str(requests_csv),
        "rate_trace": str(rates_csv),
        "days": days,
        "quick": quick,
        "placement": placement,
        "policies": pols,
        "sizing": "load x 0.8 of the largest factor at which static-peak's fleet places (flows.matrix.fit_placeable)",
        "protocol": "curate on the first half of each cell, league on the second half",
        "wall_s_total": round(time.perf_counter() - started, 1),
        "cells": docs,
    }
    (out / "matrix.json").write_text(json.dumps(document, indent=2))
    (out / "matrix.md").write_text(
        "# Workload matrix\n\n"
        + (f"Command: `{command}`\n\n" if command else "")
        + markdown(docs)
        + "\n\n## Cells\n\n"
        + cells_markdown(docs)
        + f"\n\nTotal wall time {document['wall_s_total']:.0f} s.\n\n![matrix](matrix.png)\n"
    )
    plot(docs, out / "matrix.png")
    return document


@bench_app.command("matrix")
def bench_matrix(
    config: Annotated[Path, typer.Option(help="Cluster config YAML.")] = _CONFIG,
    cells: Annotated[list[str], typer.Option("--cells", help=_CELLS_HELP)] = [],  # noqa: B006
    policies: Annotated[list[str], typer.Option("--policies", help="Policy (repeat); default all.")] = [],  # noqa: B006
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("matrix-out"),
    json_out: Annotated[bool, typer.Option("--json", help="Print matrix.json to stdout instead of the table.")] = False,
    quick: Annotated[
        bool, typer.Option("--quick", help="Tiny cells (20 min of trace, 6 h diurnal), 2 policies: a smoke test.")
    ] = False,
    days: Annotated[float, typer.Option(help="Days of the diurnal (ServeGen) cell.")] = 2.0,
    trace: Annotated[Path, typer.Option(help="Per-request trace the shapes are built from.")] = _REQUESTS,
    rates: Annotated[Path, typer.Option(help="Rate trace of the diurnal cell.")] = _RATES,
    placement: Annotated[str, typer.Option(help="Placement for every policy (greedy | ilp | incremental).")] = "greedy",
    engine: Annotated[str, typer.Option(help=_ENGINE_HELP)] = "dask",
    dask_address: Annotated[str | None, typer.Option(help=_ADDRESS_HELP)] = None,
    workers: Annotated[int, typer.Option(help=_WORKERS_HELP)] = 2,
) -> None:
    """The policy league over workload shapes: per cell x policy GPU-hours, attainment, ratio to the floor."""
    from flows.fanout import Engine

    cmd = "heteroscale " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    eng = _user_errors(lambda: Engine.of("dask" if dask_address else engine, dask_address, workers))
    doc = _user_errors(
        lambda: run_matrix(
            config,
            cells,
            policies,
            out,
            requests_csv=trace,
            rates_csv=rates,
            days=days,
            quick=quick,
            placement=placement,
            command=cmd,
            engine=eng,
        )
    )
    if json_out:
        print(json.dumps(doc, indent=2))
        return
    print_table(doc["cells"])
    console.print(f"matrix: {out / 'matrix.md'}, {out / 'matrix.json'}, {out / 'matrix.png'}", highlight=False)
    console.print(f"wall time {doc['wall_s_total']:.0f} s", highlight=False)
