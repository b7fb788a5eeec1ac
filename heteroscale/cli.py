"""The `heteroscale` command line.

Thin: it parses arguments, calls the flows and the replay, prints tables. Errors a user can fix
(bad config, bad trace, unknown policy) print one clear message and exit 2, no traceback.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from models import settings

app = typer.Typer(
    name="heteroscale",
    help="Coordinated P/D autoscaling for heterogeneous GPU clusters.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
bench_app = typer.Typer(help="Benchmarks that print a table (or JSON).", no_args_is_help=True)
app.add_typer(bench_app, name="bench")

# A wide console when piped (CI logs, `make demo | tee`) so tables are not squeezed.
console = Console(width=None if sys.stdout.isatty() else 120)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 120)

T = TypeVar("T")


def _user_errors(fn: Callable[[], T]) -> T:
    from models.config import ConfigError
    from sim.traces import TraceError

    try:
        return fn()
    except (ConfigError, TraceError, ValueError) as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def _per_service(values: list[str], services: list[str], what: str) -> dict[str, str]:
    """`[SERVICE=]VALUE` options (flows.replay.per_service_values)."""
    from flows.replay import per_service_values

    return per_service_values(values, services, what)


@app.command()
def validate(config: Annotated[Path, typer.Argument(help="Cluster config YAML.")]) -> None:
    """Check a cluster config; print what it declares."""
    from tasks.core.registry import load_config

    cfg = _user_errors(lambda: load_config(config))
    gpus = sum(p.nodes * p.gpus_per_node for p in cfg.topology.node_pools)
    s2 = {p.s2 for p in cfg.topology.node_pools}
    s1 = {p.s1 for p in cfg.topology.node_pools}
    console.print(
        f"[green]ok[/] {config}: cluster {cfg.cluster.name!r}, {gpus} GPUs of "
        f"{len(cfg.gpu_types)} type(s) in {len(s2)} S2 / {len(s1)} S1 domains, "
        f"{len(cfg.services)} service(s): {', '.join(s.name for s in cfg.services)}",
        highlight=False,
    )


def _load_curves(
    cfg: Any, trace: list[str], lengths: list[str], peak_rps: list[str]
) -> tuple[dict[str, Any], float | None]:
    """Curves per service; `--peak-rps auto` fits the load to the cluster (returns the factor)."""
    from flows.replay import load_service_curves

    return load_service_curves(cfg, trace, lengths, peak_rps)


def _shift_s(trace: str) -> float:
    """Seconds of `PATH@SHIFT` (flows.replay.trace_shift_s)."""
    from flows.replay import trace_shift_s

    return trace_shift_s(trace)


def _rolled(curve: Any, shift_s: float) -> Any:
    """The curve `shift_s` later, wrapped (flows.replay.rolled_curve)."""
    from flows.replay import rolled_curve

    return rolled_curve(curve, shift_s)


def _print_league(rows: list[dict[str, Any]]) -> None:
    t = Table(title="policy league (same load, same starting fleet)")
    for col in (
        "policy",
        "GPU-hours",
        "cost",
        "avg GPU util",
        "SLO attainment",
        "TTFT p99 s",
        "TBT p99 s",
        "scale actions",
        "wall s",
    ):
        t.add_column(col, justify="left" if col == "policy" else "right")
    for r in rows:
        t.add_row(
            r["policy"],
            f"{r['gpu_hours']:.1f}",
            f"{r.get('cost', 0):.1f}",
            f"{r['avg_gpu_util']:.1%}",
            f"{r['slo_attainment']:.1%}",
            "—" if r.get("ttft_p99_s") is None else f"{r['ttft_p99_s']:.3g}",
            "—" if r.get("tbt_p99_s") is None else f"{r['tbt_p99_s']:.3g}",
            str(r["scale_actions"]),
            f"{r['wall_s']:.2f}",
        )
    console.print(t)


def _run_replay(
    config: Path,
    trace: list[str],
    lengths: list[str],
    peak_rps: list[str],
    policies: list[str],
    out: Path,
    *,
    placement: str | None = None,
    skip: float = 0.0,
    engine: Any = None,
    hours: float | None = None,
) -> dict[str, Path]:
    from flows.league import infeasible_slos, write_outputs
    from flows.replay import run_league
    from tasks.core.policy import POLICIES
    from tasks.core.registry import load_config

    cfg = load_config(config)
    bad = [p for p in policies if p not in POLICIES]
    if bad:
        raise ValueError(f"unknown policy {bad}; choose from {sorted(POLICIES)}")
    if not 0 <= skip < 1:
        raise ValueError(f"--skip must be a share in [0, 1), got {skip}")
    curves, factor = _load_curves(cfg, trace, lengths, peak_rps)
    if skip:
        curves = {n: c.split(skip)[1] for n, c in curves.items()}
    if hours is not None:
        from flows.replay_flow import window

        curves = window(curves, hours)
    started = time.perf_counter()
    with console.status("replaying" if engine is None else f"replaying on {engine.describe()}") as status:
        results = run_league(
            cfg,
            curves,
            policies,
            placement=placement,
            progress=lambda name, f: status.update(f"replaying {name}: {f:.0%}"),
            engine=engine,
        )
    wall = time.perf_counter() - started
    cmd = "heteroscale " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    extra = {"peak_rps_auto_scale": factor, "skip": skip, "wall_s_total": round(wall, 2)}
    paths = write_outputs(results, cfg, curves, out, command=cmd, extra=extra)
    rows = [r.summary() for r in results]
    _print_league(rows)
    for warning in infeasible_slos(rows, cfg):
        err.print(f"warning: {warning}", markup=False, highlight=False)
    if factor is not None:
        console.print(f"--peak-rps auto: trace rate x{factor:.3g} (static-peak needs ~80% of the cluster's GPUs)")
    console.print(f"replayed in {wall:.1f} s")
    return paths


def _print_paths(paths: dict[str, Path]) -> None:
    for name in ("summary", "report", "plot", "tradeoff"):
        if name in paths:
            console.print(f"{name + ':':10s}{paths[name]}", highlight=False)


_TRACE_HELP = "[SERVICE=]PATH: per-request or rate CSV."
_LENGTHS_HELP = "[SERVICE=]PATH: request sizes for a rate trace."
_PEAK_HELP = "[SERVICE=]X: rescale the trace so its peak is X req/s; or 'auto' (static-peak needs ~80% of the GPUs)."
_PLACEMENT_HELP = "Placement for every policy (greedy | ilp); default: ilp for heteroscale, greedy for the baselines."
_SKIP_HELP = "Skip this share of the trace and replay the rest (evaluate on data curate did not see)."
_ENGINE_HELP = "Where the replays run: dask (Prefect's DaskTaskRunner; a local cluster unless --dask-address) | sequential."
_ADDRESS_HELP = "A running Dask scheduler (tcp://HOST:8786) to fan the replays out to (docs/league.md)."
_WORKERS_HELP = "Worker processes of the local Dask cluster."


@app.command()
def replay(
    config: Annotated[Path, typer.Option(help="Cluster config YAML.")],
    trace: Annotated[list[str], typer.Option(help=_TRACE_HELP)],
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("replay-out"),
    policy: Annotated[list[str], typer.Option(help="Policy to replay (repeat).")] = [],  # noqa: B006
    lengths: Annotated[list[str], typer.Option(help=_LENGTHS_HELP)] = [],  # noqa: B006
    peak_rps: Annotated[list[str], typer.Option(help=_PEAK_HELP)] = [],  # noqa: B006
    placement: Annotated[str | None, typer.Option(help=_PLACEMENT_HELP)] = None,
    skip: Annotated[float, typer.Option(help=_SKIP_HELP)] = 0.0,
) -> None:
    """Replay a trace on the twin with each policy; write summary.json, plots and a report."""
    from flows.replay import DEFAULT_LEAGUE

    pols = policy or list(DEFAULT_LEAGUE)
    _print_paths(
        _user_errors(lambda: _run_replay(config, trace, lengths, peak_rps, pols, out, placement=placement, skip=skip))
    )


@bench_app.command("policies")
def bench_policies(
    config: Annotated[Path, typer.Option(help="Cluster config YAML.")],
    trace: Annotated[list[str], typer.Option(help=_TRACE_HELP)],
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("league-out"),
    policy: Annotated[list[str], typer.Option(help="Policy (repeat); default all.")] = [],  # noqa: B006
    lengths: Annotated[list[str], typer.Option(help=_LENGTHS_HELP)] = [],  # noqa: B006
    peak_rps: Annotated[list[str], typer.Option(help=_PEAK_HELP)] = [],  # noqa: B006
    placement: Annotated[str | None, typer.Option(help=_PLACEMENT_HELP)] = None,
    skip: Annotated[float, typer.Option(help=_SKIP_HELP)] = 0.0,
    engine: Annotated[str, typer.Option(help=_ENGINE_HELP)] = "dask",
    dask_address: Annotated[str | None, typer.Option(help=_ADDRESS_HELP)] = None,
    workers: Annotated[int, typer.Option(help=_WORKERS_HELP)] = 2,
    hours: Annotated[float | None, typer.Option(help="Replay only the first HOURS (after --skip).")] = None,
) -> None:
    """Every policy on the same load: summary.json, league table, plots (replay's contract)."""
    from flows.fanout import Engine
    from flows.replay import ALL_POLICIES

    pols = policy or list(ALL_POLICIES)

    def run() -> dict[str, Path]:
        eng = Engine.of("dask" if dask_address else engine, dask_address, workers)
        return _run_replay(
            config, trace, lengths, peak_rps, pols, out, placement=placement, skip=skip, engine=eng, hours=hours
        )

    _print_paths(_user_errors(run))


@app.command()
def demo(out: Annotated[Path, typer.Option(help="Output directory.")] = Path("demo-out")) -> None:
    """Replay the bundled Azure trace on the demo cluster through the policy league."""
    console.print(
        f"[bold]heteroscale demo[/]: cluster {settings.DEMO_CONFIG.relative_to(settings.PROJECT_ROOT)}, "
        f"trace {settings.BUNDLED_TRACE.relative_to(settings.PROJECT_ROOT)} (Azure LLM inference 2023, "
        "CC-BY-4.0), scaled so that its peak needs ~80% of the cluster under static-peak",
        highlight=False,
    )
    from flows.replay import DEMO_LEAGUE

    paths = _user_errors(
        lambda: _run_replay(settings.DEMO_CONFIG, [str(settings.BUNDLED_TRACE)], [], ["auto"], list(DEMO_LEAGUE), out)
    )
    _print_paths(paths)


@app.command()
def scale(
    config: Annotated[Path, typer.Option(help="Cluster config YAML.")] = settings.DEMO_CONFIG,
    backend: Annotated[str, typer.Option(help="twin (embedded default).")] = "twin",
    mode: Annotated[str, typer.Option(help="apply | dry-run | advisory")] = "apply",
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    kube: Annotated[bool, typer.Option("--kube", help="Run against a Kubernetes cluster (backend kube).")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Send every write with dryRun=All.")] = False,
    advisory: Annotated[bool, typer.Option("--advisory", help="Change nothing; export the desired state.")] = False,
    kubeconfig: Annotated[str | None, typer.Option(help="Kubeconfig file (default: KUBECONFIG).")] = None,
    context: Annotated[str | None, typer.Option(help="Kubeconfig context.")] = None,
    api_url: Annotated[str | None, typer.Option(help="API server URL (overrides the kubeconfig's).")] = None,
) -> None:
    """Run one scaling run (the scale_cluster flow) now."""
    import os

    from flows.scale_cluster import scale_cluster
    from tasks.core.registry import load_config

    _user_errors(lambda: load_config(config))
    if dry_run and advisory:
        err.print("[bold red]error:[/] choose one of --dry-run and --advisory")
        raise typer.Exit(2)
    mode = "dry-run" if dry_run else "advisory" if advisory else mode
    backend = "kube" if kube else backend
    # The flow runs in this process; tasks.kube.client reads these (they override the config).
    for var, value in (("KUBECONFIG", kubeconfig), ("HETEROSCALE_KUBE_CONTEXT", context)):
        if value:
            os.environ[var] = value
    if api_url:
        os.environ["HETEROSCALE_KUBE_API_URL"] = api_url
    print_run(scale_cluster(config_path=str(config), backend=backend, mode=mode), json_out=json_out)


def print_run(result: dict[str, Any], *, json_out: bool) -> None:
    """One scale_cluster run's result: JSON, or a line per service with its decision and why."""
    if json_out:
        print(json.dumps(result, indent=2))
        return
    console.print(f"run {result['run_id']}: {result['status']}, {result['changes']} change(s)")
    for name, d in result["decisions"].items():
        console.print(
            f"  {name}: {d['num_prefill']}P/{d['num_decode']}D {d['action']} — {d['reason']}", highlight=False
        )


@app.command()
def runs(
    cluster: Annotated[str | None, typer.Option(help="Only this cluster.")] = None,
    limit: Annotated[int, typer.Option(help="How many.")] = 20,
) -> None:
    """List recent scaling runs from the store."""
    from tasks.store import Store

    store = Store(settings.database_url())
    console.print(f"store: {store.where}", highlight=False, markup=False)
    t = Table(title="scaling runs")
    for col in ("id", "cluster", "status", "mode", "backend", "started", "summary / error"):
        t.add_column(col)
    for r in store.runs(cluster, limit):
        t.add_row(
            str(r.id), r.cluster, r.status, r.mode, r.backend, f"{r.started_at:%Y-%m-%d %H:%M:%S}", r.error or r.summary
        )
    console.print(t)


def _register_command_modules() -> None:
    """Command groups live in `heteroscale.commands.<area>`; each registers on `app`/`bench_app`."""
    import importlib
    import pkgutil

    import heteroscale.commands as pkg

    for mod in sorted(m.name for m in pkgutil.iter_modules(pkg.__path__)):
        importlib.import_module(f"heteroscale.commands.{mod}")


_register_command_modules()


if __name__ == "__main__":  # pragma: no cover
    app()
