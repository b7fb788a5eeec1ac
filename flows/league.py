"""Replay outputs: `summary.json`, the league table, plots and the markdown report.

One writer for `heteroscale replay`, `heteroscale bench policies`, `heteroscale demo` and the
Prefect replay flow, so the `summary.json` contract has one definition.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from flows.replay import ReplayResult
from models.config import ClusterConfig
from sim.traces import LoadCurve

# Every file `write_outputs` writes: a re-run into the same --out removes them first, so no plot
# of a previous run is left beside the new report.
OUTPUT_FILES = ("summary.json", "league.md", "report.md", "replay.png", "league-gpus.png", "league-tradeoff.png")


class OutDirError(ValueError):
    """An --out that cannot take the outputs (a file, foreign files without --force, unwritable)."""


def prepare_out_dir(out_dir: Path, *, force: bool = False, dry: bool = False) -> None:
    """Check `out_dir` can take the outputs and (unless `dry`) remove this tool's old outputs.

    Refused: a path that is a file; a directory holding files this tool does not write, unless
    `force` (they are then left alone); a directory that cannot be created or written."""
    if out_dir.exists() and not out_dir.is_dir():
        raise OutDirError(f"--out {out_dir}: is a file, not a directory; give a new or empty directory")
    if out_dir.is_dir():
        foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in OUTPUT_FILES)
        if foreign and not force:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise OutDirError(
                f"--out {out_dir}: holds files this tool did not write ({shown}); give a new or empty "
                "directory, or pass --force to write beside them"
            )
        if dry:
            probe_dir = out_dir
        else:
            for name in OUTPUT_FILES:
                (out_dir / name).unlink(missing_ok=True)
            return
    else:
        probe_dir = next((p for p in out_dir.parents if p.exists()), Path("."))
        if not probe_dir.is_dir():
            raise OutDirError(f"--out {out_dir}: {probe_dir} is a file, not a directory")
        if not dry:
            try:
                out_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise OutDirError(f"--out {out_dir}: cannot create it ({exc.strerror})") from None
            return
    try:
        tempfile.TemporaryFile(dir=probe_dir).close()
    except OSError as exc:
        raise OutDirError(f"--out {out_dir}: cannot write in {probe_dir} ({exc.strerror})") from None


def _p99(samples: Sequence[float]) -> float | None:
    """Nearest-rank p99 of a service's per-tick p99s (as the league's whole-run figure)."""
    if not samples:
        return None
    v = sorted(samples)
    return v[max(0, math.ceil(0.99 * len(v)) - 1)]


def _fmt_s(v: float | None) -> str:
    return "—" if v is None else f"{v:.3g}"


def table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The league as a markdown table."""
    lines = [
        "| policy | GPU-hours | cost | avg GPU util | avg SM activity | SLO attainment | TTFT p99 s | TBT p99 s "
        "| scale actions | unmet periods | wall s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['policy']} | {r['gpu_hours']:.1f} | {r.get('cost', 0):.1f} | {r['avg_gpu_util']:.1%} | "
            f"{r.get('avg_sm_activity', 0):.1%} | {r['slo_attainment']:.2%} | {_fmt_s(r.get('ttft_p99_s'))} | {_fmt_s(r.get('tbt_p99_s'))} | "
            f"{r['scale_actions']} | {r.get('unmet_periods', 0)} | {r['wall_s']:.2f} |"
        )
    return "\n".join(lines)


def infeasible_slos(rows: Sequence[Mapping[str, Any]], config: ClusterConfig) -> list[str]:
    """One warning per service whose SLO is below its latency floor (no fleet can meet it)."""
    floors = rows[0].get("slo_floor", {}) if rows else {}
    out = []
    for svc in config.services:
        f = floors.get(svc.name)
        if f is None or f["feasible"]:
            continue
        parts = []
        if f["ttft_floor_s"] > svc.slo.ttft_p99_s:
            parts.append(f"TTFT SLO {svc.slo.ttft_p99_s:g}s is below its floor {f['ttft_floor_s']:.2f}s")
        if f["tbt_floor_s"] > svc.slo.tbt_p99_s:
            parts.append(f"TBT SLO {svc.slo.tbt_p99_s:g}s is below its floor {f['tbt_floor_s']:.3f}s")
        if not f["fits_kv"]:
            parts.append("its p99 context does not fit in a decode instance's KV memory")
        out.append(
            f"service {svc.name!r}: {'; '.join(parts)} (p99 request on its best allowed GPU, idle): "
            "no fleet can meet this SLO; attainment is also reported over the feasible services"
        )
    return out


def _floor_table(rows: Sequence[Mapping[str, Any]], config: ClusterConfig) -> list[str]:
    floors = rows[0].get("slo_floor", {}) if rows else {}
    lines = [
        "| service | TTFT SLO s | TTFT floor s | TBT SLO s | TBT floor s | p99 context fits | feasible |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for svc in config.services:
        f = floors.get(svc.name)
        if f is not None:
            lines.append(
                f"| {svc.name} | {svc.slo.ttft_p99_s:g} | {f['ttft_floor_s']:.3f} | {svc.slo.tbt_p99_s:g} | "
                f"{f['tbt_floor_s']:.4f} | {'yes' if f['fits_kv'] else 'no'} | {'yes' if f['feasible'] else '**no**'} |"
            )
    return lines


def _plt() -> Any:
    # late: matplotlib: ~0.5 s, plots only
    import matplotlib

    matplotlib.use("Agg")
    # late: matplotlib: ~0.5 s, plots only
    import matplotlib.pyplot as plt

    return plt


def plot_instances(results: Sequence[ReplayResult], config: ClusterConfig, path: Path) -> Path:
    """Per service: prefill and decode instances over time per policy, load in grey."""
    plt = _plt()
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
            ax_p.step(hours, [t.num_prefill for t in ticks], where="post", label=res.policy, lw=1)
            ax_d.step(hours, [t.num_decode for t in ticks], where="post", label=res.policy, lw=1)
        ticks0 = [t for t in results[0].twin.ticks if t.service == name] if results else []
        for ax, role in ((ax_p, "prefill"), (ax_d, "decode")):
            ax.set_ylabel(f"{name}\n{role} instances")
            ax.grid(alpha=0.3)
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
            ax_p.set_title("prefill instances (lines) and offered load (grey)")
            ax_d.set_title("decode instances (lines) and offered load (grey)")
    for ax in axes[-1]:
        ax.set_xlabel("hours into the trace")
    # One legend for the figure, above the plots: inside an axes it hides the lines it names.
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))
    if handles:
        fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 6), fontsize=9, frameon=False)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_gpus(results: Sequence[ReplayResult], path: Path) -> Path:
    """GPUs held over time per policy, with the total offered load."""
    plt = _plt()
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
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.08, 1.0), borderaxespad=0)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_tradeoff(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """GPU-hours against SLO attainment, one point per policy, labelled in a legend (labels
    written beside close points overlap)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    markers = "osD^vP*Xh"
    for i, r in enumerate(rows):
        unmet = f", {r['unmet_periods']} unmet periods" if r.get("unmet_periods") else ""
        ax.scatter(
            r["gpu_hours"],
            r["slo_attainment"] * 100,
            s=60,
            marker=markers[i % len(markers)],
            label=f"{r['policy']} ({r['gpu_hours']:.0f} GPU-h, {r['slo_attainment']:.1%}{unmet})",
            zorder=3,
        )
    ax.set_xlabel("GPU-hours (lower is cheaper)")
    ax.set_ylabel("SLO attainment, % (higher is better)")
    ax.set_title("cost vs SLO attainment per policy")
    ax.grid(alpha=0.3)
    ax.margins(x=0.15, y=0.15)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=1, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def write_outputs(
    results: Sequence[ReplayResult],
    config: ClusterConfig,
    curves: Mapping[str, LoadCurve],
    out_dir: Path,
    *,
    command: str = "",
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write summary.json, league.md, report.md and the plots; return their paths.

    Written into a temporary directory beside them and moved into `out_dir` at the end, so a
    failure half-way leaves no half set of outputs (`prepare_out_dir` removes an old run's)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".heteroscale-partial-", dir=out_dir))
    try:
        written = _write_outputs(results, config, curves, work, command=command, extra=extra)
        for path in written.values():
            path.replace(out_dir / path.name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {k: out_dir / p.name for k, p in written.items()}


def _write_outputs(
    results: Sequence[ReplayResult],
    config: ClusterConfig,
    curves: Mapping[str, LoadCurve],
    out_dir: Path,
    *,
    command: str = "",
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    rows = [r.summary() for r in results]
    summary = {
        "results": rows,
        "cluster": config.cluster.name,
        "traces": {
            n: {"source": c.name, "scale": c.scale, "peak_req_per_s": c.peak_req_per_s, "duration_s": c.duration_s}
            for n, c in curves.items()
        },
        "command": command,
        **(extra or {}),
    }
    paths = {"summary": out_dir / "summary.json", "league": out_dir / "league.md", "report": out_dir / "report.md"}
    paths["summary"].write_text(json.dumps(summary, indent=2))
    paths["league"].write_text(table(rows) + "\n")
    keep_ticks = any(r.twin.ticks for r in results)
    if keep_ticks:
        paths["plot"] = plot_instances(results, config, out_dir / "replay.png")
        paths["gpus"] = plot_gpus(results, out_dir / "league-gpus.png")
    paths["tradeoff"] = plot_tradeoff(rows, out_dir / "league-tradeoff.png")
    per_service = [
        "| policy | service | GPU-hours | SLO attainment | TTFT p99 s (whole run) | worst TTFT p99 s (one window) "
        "| TBT p99 s (whole run) | worst TBT p99 s (one window) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        for name, st in r.twin.stats.items():
            attained = st.good_s / st.total_s if st.total_s else 0.0
            per_service.append(
                f"| {r.policy} | {name} | {st.gpu_seconds / 3600:.1f} | {attained:.1%} | "
                f"{_fmt_s(_p99(st.ttft_samples))} | {st.ttft_p99_s_max:.2f} | "
                f"{_fmt_s(_p99(st.tbt_samples))} | {st.tbt_p99_s_max:.3f} |"
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
        "DCGM-style utilisation the twin reports (decode stays high whenever it serves). SLO attainment",
        "is the share of time windows whose p99 TTFT and TBT are both within target. Unmet periods are",
        "control periods in which placement could not find GPUs of an allowed type in an allowed domain",
        "for every instance the policy asked for (the GPUs exist, but not where that service may run);",
        "a policy unmet in most periods ran a smaller fleet than it chose, so its figures are not its own.",
        "",
        "Two p99 latencies are reported and they answer different questions. The league's **TTFT p99 s**",
        "and **TBT p99 s** are whole-run figures: the 99th percentile, over every observed tick of every",
        "service, of that tick's p99 (what a user sees over the whole replay); the per-service table gives",
        "the same figure per service. Its **worst … p99 s (one window)** columns are the single worst",
        "tick of that service (missing-data ticks included). The worst window is at least the whole-run",
        "p99 and is often far above it: one cold-start burst sets it, while the whole-run p99 ignores the",
        "worst 1% of ticks. `inf` means a tick with no capacity at all for that role (e.g. every instance",
        "still starting).",
        "",
        "![GPU-hours vs SLO attainment](league-tradeoff.png)",
        "",
        "## SLO feasibility",
        "",
        "The latency floor of each service's workload on its best allowed GPU: prefill of the p99 prompt on",
        "an idle instance plus its KV transfer (TTFT), one decode step at batch 1 holding the p99 context",
        "(TBT). An SLO below its floor cannot be met by any fleet; such services are left out of",
        "`slo_attainment_feasible` in summary.json.",
        "",
        *_floor_table(rows, config),
        *[f"- warning: {w}" for w in infeasible_slos(rows, config)],
        "",
        "## Per service",
        "",
        *per_service,
        "",
    ]
    if keep_ticks:
        report += ["## Load and instances", "", "![instances](replay.png)", "", "![GPUs held](league-gpus.png)", ""]
    report += [
        "## Traces",
        "",
        *[
            f"- `{n}`: {c.name}, peak {c.peak_req_per_s:.1f} req/s (x{c.scale:.3g} of the source), {c.duration_s / 3600:.2f} h"
            for n, c in curves.items()
        ],
    ]
    paths["report"].write_text("\n".join(report) + "\n")
    return paths
