"""CLI for the Prefect product: `heteroscale plan`, `heteroscale deploy`, `heteroscale serve`.

- `plan` answers the capacity question (flows/plan_capacity.py `plan`, the same function the
  `plan_capacity` flow runs) without starting Prefect, prints a table or `--json`, and writes the
  plot with `--out`.
- `deploy` registers one scheduled `scale_cluster` deployment per cluster config on the Prefect
  API in `PREFECT_API_URL` (deployments/deploy.py).
- `serve` runs scripts/serve.sh: a local Prefect server, a worker, the deployments (`make serve`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from heteroscale.cli import UsageError, _choice, _per_service, _user_errors, app, console
from models import settings

# The demo cluster's planning load: the bundled Azure trace scaled to these peak req/s per
# service (docs/capacity-planning.md records the answer for exactly this load).
DEMO_PEAK_RPS = {"chat": 60.0, "code": 30.0, "summarize": 20.0}


def _floats(values: list[str], names: list[str], what: str) -> dict[str, float]:
    out = {}
    for k, v in _per_service(values, names, what).items():
        try:
            out[k] = float(v)
        except ValueError:
            raise UsageError(f"{what} for {k}: {v!r} is not a number") from None
        if not (out[k] > 0 and out[k] < float("inf")):
            raise UsageError(f"{what} for {k}: {v!r} must be a finite positive number")
    return out


def _plan(
    config: Path,
    trace: str | None,
    peak_rps: list[str],
    peak_metrics: Path | None,
    growth_per_month: float,
    horizon_days: float,
    gpu_type: list[str],
    price: list[str],
    utilisation: float | None,
) -> dict[str, Any]:
    # late: CLI start-up: a command loads only what it runs (flows and prefect cost seconds)
    import math

    from flows.plan_capacity import plan, plan_curves
    from tasks.core.registry import load_config

    if not (math.isfinite(growth_per_month) and growth_per_month > -1):
        raise UsageError(f"--growth-per-month must be a finite share above -1, got {growth_per_month:g}")
    if not (math.isfinite(horizon_days) and horizon_days >= 0):
        raise UsageError(f"--horizon-days must be finite and not negative, got {horizon_days:g}")
    if utilisation is not None and not 0 < utilisation <= 1:
        raise UsageError(f"--utilisation must be a share in (0, 1], got {utilisation:g}")
    cfg = load_config(config)
    names = [s.name for s in cfg.services]
    prices: dict[str, float] = {}
    for p in price:
        g, sep, v = p.partition("=")
        if not sep:
            raise ValueError(f"--price {p!r}: use GPU=DOLLARS_PER_GPU_HOUR, e.g. h100=3.5")
        try:
            prices[g] = float(v)
        except ValueError:
            raise UsageError(f"--price {p!r}: {v!r} is not a number") from None
        if not (prices[g] >= 0 and prices[g] < float("inf")):
            raise UsageError(f"--price {p!r}: a price is a finite number >= 0")
    kwargs: dict[str, Any] = {
        "growth_per_month": growth_per_month,
        "horizon_days": horizon_days,
        "gpu_types": gpu_type or None,
        "prices": prices,
        "utilisation": utilisation,
    }
    if peak_metrics is not None:
        return plan(cfg, peak_metrics=json.loads(peak_metrics.read_text()), **kwargs)
    peaks = _floats(peak_rps, names, "--peak-rps") if peak_rps else None
    if peaks is None and config.resolve() == settings.DEMO_CONFIG.resolve():
        peaks = dict(DEMO_PEAK_RPS)
    curves = plan_curves(cfg, trace or str(settings.BUNDLED_TRACE), peaks)
    return plan(cfg, curves=curves, **kwargs)


@app.command("plan")
def plan_cmd(
    config: Annotated[Path, typer.Option(help="Cluster config YAML.")] = settings.DEMO_CONFIG,
    trace: Annotated[str | None, typer.Option(help="Trace CSV (default: the bundled Azure trace).")] = None,
    peak_rps: Annotated[
        list[str], typer.Option(help="[SERVICE=]X: scale the trace to peak X req/s (demo: its demo peaks).")
    ] = [],  # noqa: B006
    peak_metrics: Annotated[
        Path | None, typer.Option(help="JSON forecast {service: {decode_tps, prefill_tps}} instead of a trace.")
    ] = None,
    growth_per_month: Annotated[float, typer.Option(help="Load growth per 30 days (0.1 = +10%).")] = 0.0,
    horizon_days: Annotated[float, typer.Option(help="Plan for the peak this many days out.")] = 0.0,
    gpu_type: Annotated[list[str], typer.Option(help="Candidate GPU type (repeat; default: all).")] = [],  # noqa: B006
    price: Annotated[list[str], typer.Option(help="GPU=$/GPU-hour price override (repeat).")] = [],  # noqa: B006
    utilisation: Annotated[
        float | None, typer.Option(help="Planned share of SLO capacity (default: the policy's headroom).")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Write plan.json, plan.md and plan.png here.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
) -> None:
    """Capacity plan: GPUs per type and domain at peak, cost per day, P/D ratio and pairing."""
    # late: CLI start-up: a command loads only what it runs (flows and prefect cost seconds)
    from flows.plan_capacity import markdown, plot

    if out is not None and out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: is a file, not a directory")
    result = _user_errors(
        lambda: _plan(
            config, trace, peak_rps, peak_metrics, growth_per_month, horizon_days, gpu_type, price, utilisation
        )
    )
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "plan.json").write_text(json.dumps(result, indent=2))
        (out / "plan.md").write_text(markdown(result) + "\n")
        plot(result, out / "plan.png")
    if json_out:
        print(json.dumps(result, indent=2))
        return
    t = Table(title=f"capacity plan · {result['cluster']} · growth x{result['growth']:g}")
    for col in ("service", "peak decode tok/s", "pairing P/D", "P", "D", "P/D ratio", "GPUs", "$/day"):
        t.add_column(col, justify="left" if col in ("service", "pairing P/D", "P/D ratio") else "right")
    for s in result["services"]:
        t.add_row(
            s["service"],
            f"{s['peak_decode_tps']:,.0f}",
            f"{s['prefill_gpu']}/{s['decode_gpu']}",
            str(s["num_prefill"]),
            str(s["num_decode"]),
            s["pd_ratio"],
            str(s["gpus_prefill"] + s["gpus_decode"]),
            f"{s['cost_per_day']:,.0f}",
        )
    console.print(t)
    by_type = ", ".join(f"{n} {g}" for g, n in result["gpus_by_type"].items())
    fits = "yes" if result["fits_cluster"] else f"no, short {result['unmet_instances']}"
    console.print(
        f"total {result['gpus_total']} GPUs ({by_type}), ${result['cost_per_day']:,.0f}/day; fits the cluster: {fits}",
        highlight=False,
    )
    for r in result["sensitivity"]:
        console.print(
            f"  growth x{r['growth']:g}: {r['gpus_total']} GPUs, ${r['cost_per_day']:,.0f}/day, "
            f"fits: {'yes' if r['fits_cluster'] else 'no'}",
            highlight=False,
        )


@app.command()
def deploy(
    target: Annotated[str, typer.Option(help="process (local) | kubernetes")] = "process",
    backend: Annotated[str, typer.Option(help="Cluster backend of the runs.")] = "twin",
    interval: Annotated[float | None, typer.Option(help="Override every cluster's interval (s).")] = None,
    image: Annotated[str | None, typer.Option(help="Image (kubernetes target).")] = None,
    paused: Annotated[bool, typer.Option(help="Register the schedules paused.")] = False,
    print_yaml: Annotated[bool, typer.Option("--print-yaml", help="Print the equivalent prefect.yaml.")] = False,
    ephemeral: Annotated[
        bool, typer.Option("--ephemeral", help="Register on a throw-away local server (no PREFECT_API_URL).")
    ] = False,
) -> None:
    """Register one scheduled scale_cluster deployment per cluster config (PREFECT_API_URL)."""
    _choice(target, ("process", "kubernetes"), "--target")
    _choice(backend, ("twin", "kube"), "--backend")
    if interval is not None and not interval > 0:
        raise UsageError(f"--interval must be positive seconds, got {interval:g}")
    if not print_yaml and not ephemeral and not _prefect_api_url():
        raise UsageError(
            "no PREFECT_API_URL: deployments registered now would live on a throw-away ephemeral server and "
            "never run. Start a server (`make serve`, or `prefect server start`) and export "
            "PREFECT_API_URL=http://127.0.0.1:4200/api, or pass --ephemeral to register there anyway"
        )
    argv = ["--target", target, "--backend", backend]
    argv += ["--interval", str(interval)] if interval else []
    argv += ["--image", image] if image else []
    argv += ["--paused"] if paused else []
    argv += ["--print-yaml"] if print_yaml else []
    code = subprocess.call([sys.executable, str(settings.PROJECT_ROOT / "deployments" / "deploy.py"), *argv])
    raise typer.Exit(code)


def _prefect_api_url() -> str | None:
    """PREFECT_API_URL from the environment, else from the active Prefect profile."""
    url = os.environ.get("PREFECT_API_URL")
    if url:
        return url
    # late: CLI start-up: a command loads only what it runs (flows and prefect cost seconds)
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


@app.command()
def serve() -> None:
    """Start a local Prefect server (127.0.0.1:4200), a worker, and the deployments (make serve)."""
    os.execvp("bash", ["bash", str(settings.PROJECT_ROOT / "scripts" / "serve.sh")])
