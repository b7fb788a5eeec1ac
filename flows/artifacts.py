"""Prefect artifacts the flows publish: tables, markdown and plots an operator sees in the UI.

Contract: every function here must be called inside a flow or task run (Prefect attaches the
artifact to it). Artifact keys are lower-case `[a-z0-9-]` (Prefect's rule); `artifact_key`
makes one from any name. A plot is published twice: embedded in a markdown artifact as a PNG data
URI (so it shows on the flow-run page with no file server; the UI renders it) and as a link
artifact to the file on the worker's disk (the full-resolution copy). Plots are kept small
(tens of kB) because the data URI is stored in the Prefect database.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# Embedding bigger images would bloat the Prefect database; above this we only link the file.
MAX_EMBED_BYTES = 400_000


def artifact_key(*parts: str) -> str:
    key = "-".join(re.sub(r"[^a-z0-9]+", "-", p.lower()).strip("-") for p in parts if p)
    return key or "artifact"


def publish_table(rows: Sequence[Mapping[str, Any]], *, key: str, description: str) -> None:
    # late: prefect: ~2 s at import, flow runs only
    from prefect.artifacts import create_table_artifact

    create_table_artifact(table=[dict(r) for r in rows], key=key, description=description)


def publish_markdown(markdown: str, *, key: str, description: str) -> None:
    # late: prefect: ~2 s at import, flow runs only
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(markdown=markdown, key=key, description=description)


def publish_plot(path: Path, *, key: str, title: str) -> None:
    """The PNG at `path` inline on the run page, plus a link to the file itself."""
    # late: prefect: ~2 s at import, flow runs only
    from prefect.artifacts import create_link_artifact, create_markdown_artifact

    data = path.read_bytes()
    uri = path.resolve().as_uri()
    if len(data) <= MAX_EMBED_BYTES:
        b64 = base64.b64encode(data).decode("ascii")
        md = f"### {title}\n\n![{title}](data:image/png;base64,{b64})\n\nFile: `{path.resolve()}`"
    else:
        md = f"### {title}\n\nThe plot is {len(data) / 1e6:.1f} MB, too big to embed: `{path.resolve()}`"
    create_markdown_artifact(markdown=md, key=key, description=title)
    create_link_artifact(link=uri, link_text=str(path.name), key=f"{key}-file", description=f"{title} (file)")


def scale_run_rows(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per service of a scale_cluster run: signals, forecast, current vs target, changes."""
    signals, forecasts = record.get("signals") or {}, record.get("forecasts") or {}
    current, targets = record.get("current") or {}, record.get("targets") or {}
    result = record.get("result")
    changes: dict[str, list[str]] = {}
    for ch in result.changes if result is not None else ():
        k = ch.key
        changes.setdefault(k.service, []).append(f"{k.role.value} {k.gpu_type}@{k.s1} {ch.before}->{ch.after}")
    rows = []
    for name, t in targets.items():
        s, fc, cur = signals.get(name), forecasts.get(name), current.get(name)

        def val(v: float | None, digits: int = 0) -> float | None:
            return None if v is None else round(v, digits)

        rows.append(
            {
                "service": name,
                "decode_tps": val(s.decode_tps if s else None),
                "prefill_tps": val(s.prefill_tps if s else None),
                "ttft_p99_s": val(s.ttft_p99_s if s else None, 3),
                "tbt_p99_s": val(s.tbt_p99_s if s else None, 4),
                "forecast": val(fc.value if fc else None),
                "current_pd": f"{cur.num_prefill}/{cur.num_decode}" if cur else "",
                "target_pd": f"{t.num_prefill}/{t.num_decode}",
                "action": t.action.value,
                "reason": t.reason,
                "placement_changes": "; ".join(changes.get(name, [])) or "none",
            }
        )
    return rows


def scale_run_plot(rows: list[dict[str, Any]], path: Path, *, title: str, top: int = 24) -> Path:
    """Current vs target instances per service (the `top` services with the most load)."""
    # late: matplotlib: ~0.5 s, plots only
    import matplotlib

    matplotlib.use("Agg")
    # late: matplotlib: ~0.5 s, plots only
    import matplotlib.pyplot as plt

    shown = sorted(rows, key=lambda r: -(r["decode_tps"] or 0.0))[:top]
    names = [r["service"] for r in shown]
    cur = [[int(x) for x in r["current_pd"].split("/")] if r["current_pd"] else [0, 0] for r in shown]
    tgt = [[int(x) for x in r["target_pd"].split("/")] for r in shown]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(shown) + 2), 3.2))
    xs = range(len(shown))
    w = 0.2
    ax.bar([x - 1.5 * w for x in xs], [c[0] for c in cur], w, label="prefill now", color="#9ecae1")
    ax.bar([x - 0.5 * w for x in xs], [t[0] for t in tgt], w, label="prefill target", color="#3182bd")
    ax.bar([x + 0.5 * w for x in xs], [c[1] for c in cur], w, label="decode now", color="#fdae6b")
    ax.bar([x + 1.5 * w for x in xs], [t[1] for t in tgt], w, label="decode target", color="#e6550d")
    ax.set_xticks(list(xs), names, rotation=45 if len(shown) > 8 else 0, ha="right" if len(shown) > 8 else "center")
    ax.set_ylabel("instances (reference GPU)")
    ax.set_title(title + (f" (top {top} of {len(rows)} by decode TPS)" if len(rows) > top else ""))
    ax.legend(fontsize=7, ncol=4)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=72)
    plt.close(fig)
    return path


def publish_scale_run(cluster: str, status: str, record: Mapping[str, Any], out_dir: Path) -> None:
    """The per-service table and the run's plot, next to the markdown the flow already publishes.

    Observability only: by the time this runs the decision is applied and recorded, so a failure
    here (a full disk, a plotting error) is logged as a warning and never fails the run.
    """
    # late: prefect: ~2 s at import, flow runs only
    from prefect import get_run_logger

    try:
        rows = scale_run_rows(record)
        publish_table(
            rows, key=artifact_key("scale", cluster, "services"), description=f"{cluster} · {status}: per service"
        )
        publish_plot(
            scale_run_plot(rows, out_dir / "plot.png", title=f"{cluster} · {status}"),
            key=artifact_key("scale", cluster, "plot"),
            title=f"scale_cluster {cluster}: instances now vs target",
        )
    except Exception as exc:  # outermost boundary of an optional side output; see docstring
        get_run_logger().warning("could not publish the run's table/plot artifacts: %s: %s", type(exc).__name__, exc)
