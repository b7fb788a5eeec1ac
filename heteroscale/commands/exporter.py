"""CLI: `heteroscale exporter` — serve the last decided run of every cluster as Prometheus metrics.

A small long-running process beside the Prefect runs (which are short-lived): each scrape reads
the store (`tasks/exporter.py`), so HPA/KEDA can own the replicas in `mode: export`
(docs/kubernetes.md, "Let HPA/KEDA own replicas").
"""

from __future__ import annotations

from typing import Annotated

import typer

from heteroscale.cli import app, console
from models import settings


@app.command()
def exporter(
    port: Annotated[int, typer.Option(help="Port to serve /metrics on.")] = 9464,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "0.0.0.0",
    stale_after_s: Annotated[
        float,
        typer.Option(help="Drop a cluster's decision series when its last run is older (0: never)."),
    ] = 900.0,
    database_url: Annotated[str | None, typer.Option(help="Store URL (default: HETEROSCALE_DATABASE_URL).")] = None,
) -> None:
    """Serve heteroscale_desired_replicas and friends for Prometheus, read from the store."""
    # late: CLI start-up: a command loads only what it runs (flows and prefect cost seconds)
    from tasks.exporter import make_exporter_server
    from tasks.store import Store

    store = Store(database_url or settings.database_url())
    server = make_exporter_server(store, host=host, port=port, stale_after_s=stale_after_s or None)
    console.print(f"heteroscale exporter on http://{host}:{port}/metrics, store {store.where}", highlight=False)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
