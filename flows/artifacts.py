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
    from prefect.artifacts import create_table_artifact

    create_table_artifact(table=[dict(r) for r in rows], key=key, description=description)


def publish_markdown(markdown: str, *, key: str, description: str) -> None:
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(markdown=markdown, key=key, description=description)


def publish_plot(path: Path, *, key: str, title: str) -> None:
    """The PNG at `path` inline on the run page, plus a link to the file itself."""
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
