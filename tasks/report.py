"""Human-readable renderings of a scaling run: the markdown table operators read in the UI.

Besides the decision table: the signal queries that failed (query, HTTP status, URL), the
actuation decisions with their reasons (drains, restores, removals, kept drains) and warnings."""

from __future__ import annotations

from collections.abc import Mapping

from models.values import (
    ApplyResult,
    Forecast,
    PlacementPlan,
    QueryError,
    RoleCounts,
    ServiceSignals,
    Targets,
)


def _fmt(v: float | None, digits: int = 0) -> str:
    return "—" if v is None else f"{v:,.{digits}f}"


def run_markdown(
    *,
    cluster: str,
    status: str,
    signals: Mapping[str, ServiceSignals],
    forecasts: Mapping[str, Forecast],
    current: Mapping[str, RoleCounts],
    targets: Mapping[str, Targets],
    plan: PlacementPlan | None,
    result: ApplyResult | None,
    signal_errors: tuple[QueryError, ...] = (),
) -> str:
    lines = [
        f"# scale_cluster · {cluster} · {status}",
        "",
        "| service | decode TPS | prefill TPS | TTFT p99 s | TBT p99 s | forecast | current P/D | target P/D | action | reason |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for name, t in targets.items():
        s = signals.get(name) or ServiceSignals.missing(name)
        fc = forecasts.get(name)
        cur = current.get(name, RoleCounts(0, 0))
        lines.append(
            f"| {name} | {_fmt(s.decode_tps)} | {_fmt(s.prefill_tps)} | {_fmt(s.ttft_p99_s, 2)} | "
            f"{_fmt(s.tbt_p99_s, 3)} | {_fmt(fc.value if fc else None)} | "
            f"{cur.num_prefill}/{cur.num_decode} | {t.num_prefill}/{t.num_decode} | "
            f"{t.action.value} | {t.reason.replace('|', '/')} |"
        )
    if signal_errors:
        lines += ["", f"**Signal queries that failed** ({len(signal_errors)}):", ""]
        lines += ["| query | HTTP status | URL | message |", "|---|---:|---|---|"]
        lines += [
            f"| {e.query} | {e.status if e.status is not None else 'no answer'} | {e.url} | "
            f"{e.message.replace('|', '/')} |"
            for e in signal_errors
        ]
    if plan is not None:
        lines += ["", f"**Placement** ({plan.method}): {plan.reason}"]
    if result is not None:
        verb = "applied" if result.applied else f"not applied ({result.mode.value})"
        lines += ["", f"**Changes** — {len(result.changes)} cell(s), {verb}:", ""]
        if result.changes:
            lines += ["| service | role | GPU | S1 | before | after |", "|---|---|---|---|---:|---:|"]
            lines += [
                f"| {c.key.service} | {c.key.role.value} | {c.key.gpu_type} | {c.key.s1} | {c.before} | {c.after} |"
                for c in result.changes
            ]
        if result.actions:
            lines += ["", "**Actuation decisions**:", "", "| decision | object | count | pods | reason |"]
            lines += ["|---|---|---:|---|---|"]
            lines += [
                f"| {a.kind} | {a.namespace}/{a.name} | {a.count} | {', '.join(a.pods)} | {a.reason.replace('|', '/')} |"
                for a in result.actions
            ]
        if result.warnings:
            lines += ["", "**Warnings**:", ""] + [f"- {w}" for w in result.warnings]
    return "\n".join(lines)
