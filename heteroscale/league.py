"""Replay outputs: `summary.json`, the plot of load and P/D counts, and the markdown report."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from flows.replay import ReplayResult
from models.config import ClusterConfig
from sim.traces import LoadCurve

SUMMARY_KEYS = ("policy", "gpu_hours", "avg_gpu_util", "slo_attainment", "scale_actions", "simulated_s", "wall_s")


def table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The league as a markdown table."""
    head = "| policy | GPU-hours | avg GPU util | SLO attainment | scale actions | wall s |"
    lines = [head, "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['policy']} | {r['gpu_hours']:.1f} | {r['avg_gpu_util']:.1%} | "
            f"{r['slo_attainment']:.1%} | {r['scale_actions']} | {r['wall_s']:.2f} |"
        )
    return "\n".join(lines)


def plot(results: Sequence[ReplayResult], config: ClusterConfig, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    services = [s.name for s in config.services]
    fig, axes = plt.subplots(len(services), 2, figsize=(13, 3.0 * len(services)), squeeze=False, sharex=True)
    for row, name in enumerate(services):
        ax_p, ax_d = axes[row]
        for res in results:
            ticks = [t for t in res.twin.ticks if t.service == name]
            if not ticks:
                continue
            t0 = ticks[0].t_s
            hours = [(t.t_s - t0) / 3600 for t in ticks]
            ax_p.step(hours, [t.num_prefill for t in ticks], where="post", label=res.policy)
            ax_d.step(hours, [t.num_decode for t in ticks], where="post", label=res.policy)
        for ax, role in ((ax_p, "prefill"), (ax_d, "decode")):
            ax.set_ylabel(f"{name}\n{role} instances")
            ax.grid(alpha=0.3)
            ticks0 = [t for t in results[0].twin.ticks if t.service == name] if results else []
            if ticks0:
                t0 = ticks0[0].t_s
                load = ax.twinx()
                load.plot(
                    [(t.t_s - t0) / 3600 for t in ticks0],
                    [t.req_per_s for t in ticks0],
                    color="grey",
                    alpha=0.35,
                    lw=0.8,
                )
                load.set_ylabel("req/s", color="grey")
        if row == 0:
            ax_p.legend(loc="upper left", fontsize=8)
            ax_p.set_title("prefill instances (lines) and offered load (grey)")
            ax_d.set_title("decode instances (lines) and offered load (grey)")
    for ax in axes[-1]:
        ax.set_xlabel("hours into the trace")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_outputs(
    results: Sequence[ReplayResult],
    config: ClusterConfig,
    curves: Mapping[str, LoadCurve],
    out_dir: Path,
    *,
    command: str = "",
) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [r.summary() for r in results]
    summary = {
        "results": rows,
        "cluster": config.cluster.name,
        "traces": {
            n: {"source": c.name, "scale": c.scale, "peak_req_per_s": c.peak_req_per_s, "duration_s": c.duration_s}
            for n, c in curves.items()
        },
    }
    summary_path = out_dir / "summary.json"
    summary_path.write_text(json.dumps(summary, indent=2))
    plot_path = plot(results, config, out_dir / "replay.png")
    per_service = [
        "| policy | service | GPU-hours | SLO attainment | worst TTFT p99 s | worst TBT p99 s |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in results:
        for name, st in r.twin.stats.items():
            per_service.append(
                f"| {r.policy} | {name} | {st.gpu_seconds / 3600:.1f} | "
                f"{(st.good_s / st.total_s if st.total_s else 0):.1%} | {st.ttft_p99_s_max:.2f} | {st.tbt_p99_s_max:.3f} |"
            )
    report = [
        f"# Replay report — cluster `{config.cluster.name}`",
        "",
        f"Command: `{command}`" if command else "",
        "",
        "## League",
        "",
        table(rows),
        "",
        "GPU-hours count every GPU held, starting instances included. Average GPU utilisation is the",
        "DCGM-style utilisation the twin reports (decode stays at 85-95% whenever it serves). SLO",
        "attainment is the share of time windows whose p99 TTFT and TBT are both within target.",
        "",
        "## Per service",
        "",
        *per_service,
        "",
        "## Load and instances",
        "",
        f"![load and instances]({plot_path.name})",
        "",
        "## Traces",
        "",
        *[
            f"- `{n}`: {c.name}, peak {c.peak_req_per_s:.1f} req/s (x{c.scale:.3g} of the source), {c.duration_s / 3600:.2f} h"
            for n, c in curves.items()
        ],
    ]
    report_path = out_dir / "report.md"
    report_path.write_text("\n".join(report) + "\n")
    return {"summary": summary_path, "plot": plot_path, "report": report_path}
