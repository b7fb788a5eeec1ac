"""CLI for signals and forecasting: `collect`, `twin serve`, `bench forecast`.

`collect` prints exactly what the scale_cluster flow reads from Prometheus (same collector, same
config); `twin serve` runs the twin as a vLLM-style metrics exporter in accelerated real time,
sharing the persisted twin state with the `twin` cluster backend so `twin scale` (scale_cluster
with signals from Prometheus) closes the loop;
`bench forecast` backtests every forecaster on a rate trace (rolling origin) and prints MAPE and
p90 absolute percentage error per method, `auto` being the per-origin backtest choice.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from heteroscale.cli import _user_errors, app, bench_app, console

if TYPE_CHECKING:
    from models.config import ClusterConfig

twin_app = typer.Typer(help="The replay twin as a live service.", no_args_is_help=True)
app.add_typer(twin_app, name="twin")


@app.command()
def collect(
    config: Annotated[Path, typer.Option(help="Cluster config YAML.")],
    prometheus_url: Annotated[
        str | None, typer.Option(help="Prometheus base URL (default: $HETEROSCALE_PROMETHEUS_URL, then config).")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Read every service's signals from Prometheus, per role: value (or null) and staleness."""
    from models.config import load_config
    from tasks.prometheus import PrometheusSignals

    def run() -> dict:
        cfg = load_config(config)
        return PrometheusSignals(cfg, url=prometheus_url).collect(cfg).as_json()

    out = _user_errors(run)
    if json_out:
        print(json.dumps(out, indent=2))
        return
    t = Table(title=f"signals ({out['queries']} queries, {out['wall_s'] * 1000:.0f} ms)")
    for col in ("service", "role", "signal", "value", "stale", "reason"):
        t.add_column(col)
    for svc, roles in out["services"].items():
        for role, sigs in roles.items():
            for name, r in sigs.items():
                v = "null" if r["value"] is None else f"{r['value']:.4g}"
                t.add_row(svc, role, name, v, str(r["stale"]).lower(), r["reason"] or "")
    console.print(t)
    for e in out["errors"]:
        console.print(f"[red]error[/] {e}", highlight=False)


@twin_app.command("serve")
def twin_serve(
    config: Annotated[Path, typer.Option(help="Cluster config YAML.")],
    trace: Annotated[Path, typer.Option(help="Per-request or rate CSV (every service serves it).")],
    port: Annotated[int, typer.Option(help="Port of /metrics.")] = 9400,
    addr: Annotated[str, typer.Option(help="Listen address.")] = "127.0.0.1",
    speed: Annotated[float, typer.Option(help="Simulated seconds per wall second.")] = 1.0,
    lengths: Annotated[Path | None, typer.Option(help="Request sizes for a rate trace.")] = None,
    peak_rps: Annotated[float | None, typer.Option(help="Rescale the trace to this peak req/s.")] = None,
    duration_s: Annotated[float | None, typer.Option(help="Stop after this many wall seconds.")] = None,
    state: Annotated[
        Path | None,
        typer.Option(help="Twin state file shared with scale_cluster's twin backend (default: the backend's)."),
    ] = None,
    standalone: Annotated[bool, typer.Option(help="Do not share state: scaling runs do not reach this twin.")] = False,
) -> None:
    """Run the twin in (accelerated) real time and export vLLM + DCGM metrics for Prometheus.

    By default it serves the twin backend's state file, so `heteroscale twin scale` (or a
    scale_cluster run with backend twin and signals from Prometheus) changes this twin's fleet."""
    from models.config import load_config
    from sim.exporter import TwinExporter
    from sim.live import auto_peaks
    from sim.traces import load_curve

    def build() -> TwinExporter:
        cfg = load_config(config)
        base = load_curve(trace, lengths=lengths, dt_s=min(10.0, cfg.cluster.control_period_s))
        peaks = auto_peaks(cfg, base)
        curves = {s.name: base.scaled_to_peak(peak_rps or peaks[s.name]) for s in cfg.services}
        path = None if standalone else (state or twin_state_path(cfg))
        return TwinExporter(cfg, curves, speed=speed, state_path=path)

    exporter = _user_errors(build)
    exporter.serve(port, addr)
    console.print(
        f"twin exporter on http://{addr}:{port}/metrics, {speed:g}x real time, tick {exporter.tick_s:g} s, "
        f"state {exporter.state_path or 'not shared'} (Ctrl-C to stop)",
        highlight=False,
    )
    stop = threading.Event()
    try:
        exporter.run(stop, max_wall_s=duration_s)
    except KeyboardInterrupt:
        stop.set()


def twin_state_path(cfg: ClusterConfig) -> Path:
    """Where the twin cluster backend keeps a cluster's twin (tasks.backends.make_backends)."""
    from heteroscale import settings

    return settings.data_dir() / "twin" / f"{cfg.cluster.name}.json"


@twin_app.command("scale")
def twin_scale(
    config: Annotated[Path, typer.Option(help="Cluster config YAML (the one `twin serve` runs).")],
    prometheus_url: Annotated[
        str | None, typer.Option(help="Prometheus scraping the exporter (default: $HETEROSCALE_PROMETHEUS_URL).")
    ] = None,
    mode: Annotated[str, typer.Option(help="apply | dry-run | advisory")] = "apply",
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """One scaling run on the served twin with signals from Prometheus: the closed loop, no GPUs."""
    import os

    from flows.scale_cluster import scale_cluster
    from models.config import load_config
    from tasks.prometheus import ENV_URL

    _user_errors(lambda: load_config(config))
    if prometheus_url:
        os.environ[ENV_URL] = prometheus_url  # the flow runs in this process and reads it
    result = scale_cluster(config_path=str(config), backend="twin", signals_backend="prometheus", mode=mode)
    if json_out:
        print(json.dumps(result, indent=2))
        return
    console.print(f"run {result['run_id']}: {result['status']}, {result['changes']} change(s)")
    for name, d in result["decisions"].items():
        console.print(
            f"  {name}: {d['num_prefill']}P/{d['num_decode']}D {d['action']} — {d['reason']}", highlight=False
        )


@bench_app.command("forecast")
def bench_forecast(
    trace: Annotated[Path, typer.Option(help="Rate CSV (window_start_s, req_per_s | total_req_per_s).")],
    horizon_s: Annotated[list[float], typer.Option(help="Forecast horizon, seconds (repeat).")] = [1800.0],  # noqa: B006
    warmup_s: Annotated[float, typer.Option(help="Unscored start (seasonal methods need history).")] = 2 * 86400.0,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
) -> None:
    """Rolling-origin backtest of every forecaster on a rate trace (missing windows stay missing)."""
    import numpy as np
    import pandas as pd

    from tasks.core.forecast import backtest_series

    def run() -> dict[str, dict]:
        df = pd.read_csv(trace)
        col = "req_per_s" if "req_per_s" in df.columns else "total_req_per_s"
        if "window_start_s" not in df.columns or col not in df.columns:
            raise ValueError(f"{trace}: needs columns window_start_s and req_per_s (or total_req_per_s)")
        y = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float)
        if "all_zero_gap" in df.columns:
            y = np.where(df["all_zero_gap"].to_numpy() == 1, np.nan, y)
        step = float(np.median(np.diff(df["window_start_s"].to_numpy(dtype=float))))
        out: dict[str, dict] = {}
        for h in horizon_s:
            scores, shares = backtest_series(y, step, h, warmup_s=warmup_s)
            out[f"{h:g}"] = {
                m: {"mape": s.mape, "p90_abs_pct_err": s.p90_abs_pct_err, "n": s.n} for m, s in scores.items()
            }
            out[f"{h:g}"]["auto"]["chosen_share"] = shares
        return out

    results = _user_errors(run)
    if json_out:
        # One horizon: the flat {"<forecaster>": {...}} form; several: keyed by horizon seconds.
        print(json.dumps(next(iter(results.values())) if len(results) == 1 else results, indent=2))
        return
    for h, scores in results.items():
        base = scores["last-value"]["mape"]
        t = Table(title=f"forecast backtest, {trace.name}, horizon {h} s")
        for col in ("forecaster", "MAPE", "p90 abs % err", "vs last-value", "origins"):
            t.add_column(col, justify="left" if col == "forecaster" else "right")
        for m, s in scores.items():
            rel = f"{(s['mape'] / base - 1):+.1%}" if base and s["mape"] is not None else "-"
            t.add_row(m, f"{s['mape']:.4f}", f"{s['p90_abs_pct_err']:.4f}", rel, str(s["n"]))
        console.print(t)
        shares = scores["auto"]["chosen_share"]
        console.print("auto chose: " + ", ".join(f"{m} {v:.0%}" for m, v in shares.items()), highlight=False)
