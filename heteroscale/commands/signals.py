"""CLI for signals and forecasting: `collect`, `twin serve`, `bench forecast`.

`collect` prints exactly what the scale_cluster flow reads from Prometheus (same collector, same
config, same time budget) and exits 1 when no signal could be read (Prometheus down, a wrong URL,
an answer that is not Prometheus JSON), naming each failed query, its HTTP status and URL; `twin serve` runs the twin as a vLLM-style metrics exporter in accelerated real time,
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
from rich.text import Text

from heteroscale.cli import MODES, _choice, _user_errors, app, bench_app, console, print_run

if TYPE_CHECKING:
    from collections.abc import Sequence

    import numpy as np

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
    """Read every service's signals from Prometheus, per role: value (or null) and staleness.

    Exit code 1 when no query could be read (an outage), with what failed."""
    # late: CLI start-up: a command loads only what it runs (flows and prefect cost seconds)
    from tasks.core.registry import load_config
    from tasks.prometheus import PrometheusSignals

    def run() -> dict:
        cfg = load_config(config)
        return PrometheusSignals(cfg, url=prometheus_url).collect(cfg).as_json()

    out = _user_errors(run)
    if json_out:
        print(json.dumps(out, indent=2))
        _exit_if_unavailable(out)
        return
    t = Table(title=f"signals ({out['queries']} queries, {out['wall_s'] * 1000:.0f} ms)")
    for col in ("service", "role", "signal", "value", "stale", "reason"):
        t.add_column(col)
    for svc, roles in out["services"].items():
        for role, sigs in roles.items():
            for name, r in sigs.items():
                v = "null" if r["value"] is None else f"{r['value']:.4g}"
                t.add_row(svc, role, name, v, str(r["stale"]).lower(), r["reason"] or "")
    if not out["unavailable"]:
        console.print(t)
    for e in out["errors"]:
        console.print(Text.assemble(("error ", "red"), str(e)), highlight=False)
    _exit_if_unavailable(out)


def _exit_if_unavailable(out: dict) -> None:
    """An outage is not a result: say so on stderr and exit 1."""
    if not out["unavailable"]:
        return
    # late: CLI start-up: a command loads only what it runs (flows and prefect cost seconds)
    from heteroscale.cli import err

    statuses = sorted({str(q["status"]) if q["status"] is not None else "no answer" for q in out["failed_queries"]})
    urls = sorted({q["url"] for q in out["failed_queries"] if q["url"]})
    err.print(
        f"error: no signal could be read: all {out['queries']} queries failed ({', '.join(statuses)}) "
        f"from {', '.join(urls) or 'the signals source'} in {out['wall_s']:.1f}s "
        f"(budget {out['budget_s']}s); check that Prometheus is up and the URL is its base URL",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    raise typer.Exit(1)


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
    # late: CLI start-up: a command loads only what it runs (flows and prefect cost seconds)
    from sim.exporter import TwinExporter
    from sim.live import auto_peaks
    from sim.traces import load_curve
    from tasks.core.registry import load_config

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
    """Where the twin cluster backend keeps a cluster's twin (flows.backends.make_backends)."""
    # late: CLI start-up: a command loads only what it runs (flows and prefect cost seconds)
    from models import settings

    return settings.data_dir() / "twin" / f"{cfg.cluster.name}.json"


@twin_app.command("scale")
def twin_scale(
    config: Annotated[Path, typer.Option(help="Cluster config YAML (the one `twin serve` runs).")],
    prometheus_url: Annotated[
        str | None, typer.Option(help="Prometheus scraping the exporter (default: $HETEROSCALE_PROMETHEUS_URL).")
    ] = None,
    mode: Annotated[str, typer.Option(help="apply | dry-run | advisory | export")] = "apply",
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """One scaling run on the served twin with signals from Prometheus: the closed loop, no GPUs."""
    # late: CLI start-up: a command loads only what it runs (flows and prefect cost seconds)
    import os

    from flows.scale_cluster import scale_cluster
    from tasks.core.registry import load_config
    from tasks.prometheus import ENV_URL

    _choice(mode, MODES, "--mode")  # before Prefect starts
    load_config(config)
    if prometheus_url:
        os.environ[ENV_URL] = prometheus_url  # the flow runs in this process and reads it
    print_run(
        scale_cluster(config_path=str(config), backend="twin", signals_backend="prometheus", mode=mode),
        json_out=json_out,
    )


def _quantile_scores(quants: np.ndarray, target: np.ndarray, sel: np.ndarray, levels: Sequence[float]) -> dict:
    """Pinball loss (over the mean target, so series compare) and coverage (share of targets at or
    below the quantile; nominal = the level) per level, over the selected origins whose target is
    observed and whose quantiles exist; `n_quantile` such origins."""
    import numpy as np  # late: CLI start-up

    ok = sel & ~np.isnan(target) & ~np.isnan(quants).any(axis=0)
    t = target[ok]
    pinball: dict[str, float | None] = {}
    coverage: dict[str, float | None] = {}
    for k, q in enumerate(levels):
        d = t - quants[k, ok]
        pinball[f"{q:g}"] = float(np.mean(np.maximum(q * d, (q - 1) * d)) / np.mean(t)) if len(t) else None
        coverage[f"{q:g}"] = float(np.mean(d <= 0)) if len(t) else None
    return {"pinball": pinball, "coverage": coverage, "n_quantile": int(ok.sum())}


# `bench forecast`: a target below this share of the series' median is reported as near-zero
# (m-mid has 8 such windows at 0.05-0.8% of its median, next lowest 41% of the local median:
# partial collection windows beside the flagged gaps, scored as real by the metric).
NEAR_ZERO_SHARE = 0.05


@bench_app.command("forecast")
def bench_forecast(
    trace: Annotated[Path, typer.Option(help="Rate CSV (window_start_s, req_per_s | total_req_per_s).")],
    horizon_s: Annotated[list[float], typer.Option(help="Forecast horizon, seconds (repeat).")] = [1800.0],  # noqa: B006
    warmup_s: Annotated[float, typer.Option(help="Unscored start (seasonal methods need history).")] = 2 * 86400.0,
    train_days: Annotated[
        float, typer.Option(help="Targets before this day are 'train' (methods chosen there), the rest 'eval'.")
    ] = 7.0,
    score_origins: Annotated[
        str,
        typer.Option(
            help="all: every origin with an observed target; observed: only origins whose own latest sample is "
            "observed (from a missing one the policy holds and ignores the forecast)."
        ),
    ] = "all",
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
) -> None:
    """Rolling-origin backtest of every forecaster on a rate trace (missing windows stay missing).

    Scores by split (targets from `warmup_s` to `train_days`, then the rest): MAPE and p90
    absolute % error over every observed target (the issue's metric), the median, and MAPE
    without near-zero targets (< NEAR_ZERO_SHARE of the series median), with their count; and per
    quantile level of `forecast_quantile.LEVELS`, the pinball loss (over the mean target) and the
    coverage (share of targets at or below the quantile; calibrated = the level).
    `--score-origins observed` drops origins whose own sample is missing, for every forecaster."""
    # late: CLI start-up: a command loads only what it runs (flows and prefect cost seconds)
    import numpy as np
    import pandas as pd

    from tasks.core.forecast import AUTO, PATHS, abs_pct_errors
    from tasks.core.forecast_eval import backtest_paths, chosen_shares
    from tasks.core.forecast_quantile import LEVELS, quantile_path

    def run() -> dict[str, dict]:
        if score_origins not in ("all", "observed"):
            raise ValueError(f"--score-origins must be 'all' or 'observed', not {score_origins!r}")
        df = pd.read_csv(trace)
        col = "req_per_s" if "req_per_s" in df.columns else "total_req_per_s"
        if "window_start_s" not in df.columns or col not in df.columns:
            raise ValueError(f"{trace}: needs columns window_start_s and req_per_s (or total_req_per_s)")
        y = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float)
        if "all_zero_gap" in df.columns:
            y = np.where(df["all_zero_gap"].to_numpy() == 1, np.nan, y)
        step = float(np.median(np.diff(df["window_start_s"].to_numpy(dtype=float))))
        n = len(y)
        cut = {"train": (round(warmup_s / step), round(train_days * 86400.0 / step)), "eval": None}
        cut["eval"] = (cut["train"][1], n)
        out: dict[str, dict] = {}
        for h in horizon_s:
            hi = max(1, round(h / step))
            paths, choice = backtest_paths(y, step, h)
            errs = {m: abs_pct_errors(f, y, hi) for m, f in paths.items()}
            quants = {m: quantile_path(f, y, hi, step, LEVELS) for m, f in paths.items()}
            target = np.full(n, np.nan)
            target[: n - hi] = y[hi:]
            near_zero = target < NEAR_ZERO_SHARE * np.nanmedian(y)
            tidx = np.arange(n) + hi  # origin i is scored in the split holding its target
            per_split: dict[str, dict] = {}
            for split, (lo, hi_end) in cut.items():
                sel = (tidx >= lo) & (tidx < hi_end)
                if score_origins == "observed":
                    sel &= ~np.isnan(y)
                rows: dict[str, dict] = {}
                for m, e in errs.items():
                    ok = sel & ~np.isnan(e)
                    ev, ev_nz = e[ok], e[ok & ~near_zero]
                    rows[m] = {
                        "mape": float(np.mean(ev)) if len(ev) else None,
                        "p90_abs_pct_err": float(np.percentile(ev, 90)) if len(ev) else None,
                        "median_abs_pct_err": float(np.median(ev)) if len(ev) else None,
                        "mape_excl_near_zero": float(np.mean(ev_nz)) if len(ev_nz) else None,
                        "n": len(ev),
                        "near_zero_targets": int(len(ev) - len(ev_nz)),
                        **_quantile_scores(quants[m], target, sel, LEVELS),
                    }
                # Share of origins at which auto used each method (alone or in its combination).
                rows[AUTO]["chosen_share"] = chosen_shares(choice[:, sel], tuple(PATHS))
                per_split[split] = rows
            out[f"{h:g}"] = per_split
        return out

    results = _user_errors(run)
    if json_out:
        # One horizon: the flat {"train"|"eval": {"<forecaster>": {...}}} form; several: keyed by horizon seconds.
        print(json.dumps(next(iter(results.values())) if len(results) == 1 else results, indent=2))
        return

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{v:.4f}"

    for h, splits in results.items():
        for split, scores in splits.items():
            base = scores["last-value"]
            t = Table(title=f"forecast backtest, {trace.name}, horizon {h} s, {split} targets, {score_origins} origins")
            cols = (
                "forecaster",
                "MAPE",
                "vs LV",
                "p90 abs % err",
                "median",
                "vs LV",
                "MAPE excl ~0",
                "vs LV",
                "n (~0)",
            )
            for c in cols:
                t.add_column(c, justify="left" if c == "forecaster" else "right")

            def rel(s: dict, key: str, base: dict = base) -> str:
                return f"{s[key] / base[key] - 1:+.1%}" if base[key] and s[key] is not None else "-"

            for m, s in scores.items():
                t.add_row(
                    m,
                    pct(s["mape"]),
                    rel(s, "mape"),
                    pct(s["p90_abs_pct_err"]),
                    pct(s["median_abs_pct_err"]),
                    rel(s, "median_abs_pct_err"),
                    pct(s["mape_excl_near_zero"]),
                    rel(s, "mape_excl_near_zero"),
                    f"{s['n']} ({s['near_zero_targets']})",
                )
            console.print(t)
            tq = Table(title=f"quantiles (conformal, own rolling-origin errors), horizon {h} s, {split} targets")
            qcols = (
                "forecaster",
                "MAPE",
                *(f"pinball p{q * 100:g}" for q in LEVELS),
                *(f"cover p{q * 100:g}" for q in LEVELS),
                "n",
            )
            for c in qcols:
                tq.add_column(c, justify="left" if c == "forecaster" else "right")
            for m, s in scores.items():
                tq.add_row(
                    m,
                    pct(s["mape"]),
                    *(pct(s["pinball"][f"{q:g}"]) for q in LEVELS),
                    *("-" if (c := s["coverage"][f"{q:g}"]) is None else f"{c:.1%}" for q in LEVELS),
                    str(s["n_quantile"]),
                )
            console.print(tq)
            shares = scores[AUTO]["chosen_share"]
            console.print(
                "auto used (alone or combined): " + ", ".join(f"{m} {v:.0%}" for m, v in shares.items()),
                highlight=False,
            )
