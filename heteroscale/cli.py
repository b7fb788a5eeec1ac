"""The `heteroscale` command line.

Thin: it parses arguments, calls the flows and the replay, prints tables.

One error path (`explain`, applied by the command group to every command): errors a user can
fix (bad config, bad trace, bad option, a missing file) print one line and exit 2; known
environment failures (connection refused, DNS, TLS, 401/403, corrupt state) print one line
with the fix and exit 1; anything else prints one line naming the exception and exits 1.
`--debug` (or HETEROSCALE_DEBUG=1) shows the traceback instead. Nothing is printed through
rich markup: a message with brackets (a regex, a user value) reads exactly as it is.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import click
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from heteroscale import __version__
from models import settings
from models.values import ApplyMode

# A wide console when piped (CI logs, `make demo | tee`) so tables are not squeezed. No markup:
# messages carry user values and regexes, and `[red]x` must print as it is.
console = Console(width=None if sys.stdout.isatty() else 120, markup=False)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 120, markup=False)

T = TypeVar("T")


# Exits and click's own usage errors are already what the user should see.
_PASS_THROUGH = (typer.Exit, click.exceptions.Exit, click.ClickException, click.exceptions.Abort)


class UsageError(ValueError):
    """A bad option value (exit 2), raised before anything slow starts."""


@dataclass
class _CliState:
    debug: bool = False


_STATE = _CliState()


def _url_of(exc: BaseException) -> str:
    """The URL an HTTP client error was about, without credentials or query, if it says."""
    # late: CLI start-up: a command loads only what it runs (flows and prefect cost seconds)
    import re
    from urllib.parse import urlsplit

    try:
        url = str(getattr(getattr(exc, "request", None), "url", "") or "")
    except RuntimeError:  # httpx: "The .request property has not been set."
        url = ""
    if not url:
        pool = getattr(exc, "pool", None)
        if pool is not None:
            url = f"{getattr(pool, 'scheme', 'http')}://{pool.host}:{pool.port}"
    if not url:
        m = re.search(r"https?://[^\s'\"<>]+", str(exc))
        url = m.group(0) if m else ""
    if not url:
        return ""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path}"


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in out and len(out) < 20:
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out


def explain(exc: BaseException) -> tuple[int, str]:
    """Exit code and one line for an exception: 2 = bad input, 1 = environment or internal."""
    # late: CLI start-up: a command loads only what it runs (flows and prefect cost seconds)
    import json as _json
    import socket
    import ssl

    from models.config import ConfigError
    from models.errors import PermanentError, redact
    from sim.traces import TraceError

    text = redact(str(exc))
    if isinstance(exc, ConfigError | TraceError | UsageError):
        return 2, text
    # late: CLI start-up: a command loads only what it runs (flows and prefect cost seconds)
    from sim.live import TwinStateError

    if isinstance(exc, TwinStateError):
        return 1, text
    if isinstance(exc, IsADirectoryError):
        return 2, f"{exc.filename}: is a directory; give a file"
    if isinstance(exc, NotADirectoryError):
        return 2, f"{exc.filename}: a path component is a file, not a directory"
    if isinstance(exc, FileNotFoundError):
        return 2, f"{exc.filename or text}: no such file or directory"
    if isinstance(exc, PermissionError):
        return 2, f"{exc.filename or text}: permission denied"
    if isinstance(exc, _json.JSONDecodeError):
        return 1, f"a state or input file is not valid JSON ({text}); delete or fix it (see --debug for which)"
    chain = _chain(exc)
    where = next((u for u in map(_url_of, chain) if u), "")
    at = f" {where}" if where else ""
    for e in chain:
        msg = str(e)
        if isinstance(e, ssl.SSLError) or "CERTIFICATE_VERIFY_FAILED" in msg or "SSL" in type(e).__name__:
            return 1, (
                f"TLS handshake with{at or ' the server'} failed ({redact(msg)[:200]}); check the URL's "
                "scheme (https vs http) and the CA (kubeconfig certificate-authority, SSL_CERT_FILE)"
            )
        if isinstance(e, socket.gaierror) or any(
            k in msg for k in ("Name or service not known", "nodename nor servname", "name resolution")
        ):
            return 1, f"cannot resolve the host of{at or ' the server URL'}: check the URL (DNS lookup failed)"
        if isinstance(e, ConnectionRefusedError) or "Connection refused" in msg or "connection refused" in msg:
            return 1, (
                f"connection refused by{at or ' the server'}: is it running, and is the URL right? "
                "(PREFECT_API_URL for Prefect, --api-url/KUBECONFIG for Kubernetes, "
                "HETEROSCALE_PROMETHEUS_URL for Prometheus)"
            )
        status = getattr(getattr(e, "response", None), "status_code", None) or getattr(e, "status", None)
        if status in (401, 403):
            what = "not authenticated (401)" if status == 401 else "forbidden (403)"
            return 1, f"{what} at{at or ' the server'}: check the credentials (token, kubeconfig user) and RBAC"
    if isinstance(exc, PermanentError):
        return 1, text
    if isinstance(exc, TimeoutError):
        return 1, f"timed out: {text or 'no answer'}; is the server reachable?"
    if isinstance(exc, ValueError):
        return 2, text
    first = text.splitlines()[0] if text else ""
    return 1, f"{type(exc).__name__}: {first} (re-run with --debug for the traceback)"


def fail(message: str, code: int = 2) -> NoReturn:
    """Print `error: <message>` (no markup) and exit with `code`."""
    err.print(Text.assemble(("error: ", "bold red"), message), highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _warn(message: str) -> None:
    err.print(Text.assemble(("warning: ", "yellow"), message), highlight=False, soft_wrap=True)


def _show_warning(message: Any, category: type[Warning], filename: str, lineno: int, *args: Any, **kw: Any) -> None:
    # late: CLI start-up: a command loads only what it runs (flows and prefect cost seconds)
    from models.config import ConfigWarning
    from sim.traces import TraceWarning

    if issubclass(category, ConfigWarning | TraceWarning):
        _warn(str(message))


class _Group(TyperGroup):
    """Every command runs through `explain`: one line per failure, `--debug` for the traceback;
    config and trace warnings are printed as `warning: ...` lines."""

    def invoke(self, ctx: click.Context) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # late: CLI start-up: a command loads only what it runs (flows and prefect cost seconds)
            from models.config import ConfigWarning
            from sim.traces import TraceWarning

            warnings.simplefilter("always", ConfigWarning)
            warnings.simplefilter("always", TraceWarning)
            warnings.showwarning = _show_warning
            try:
                return super().invoke(ctx)
            except _PASS_THROUGH:
                raise
            except KeyboardInterrupt:
                fail("interrupted", 130)
            except Exception as exc:
                if _STATE.debug or os.environ.get("HETEROSCALE_DEBUG") == "1":
                    raise
                code, line = explain(exc)
                fail(line, code)


app = typer.Typer(
    name="heteroscale",
    help="Coordinated P/D autoscaling for heterogeneous GPU clusters.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=_Group,
)
bench_app = typer.Typer(help="Benchmarks that print a table (or JSON).", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


def _version(value: bool) -> None:
    if value:
        console.print(f"heteroscale {__version__}", highlight=False)
        raise typer.Exit(0)


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of a failure.")] = False,
    version: Annotated[
        bool, typer.Option("--version", help="Print the version and exit.", callback=_version, is_eager=True)
    ] = False,
) -> None:
    """Coordinated P/D autoscaling for heterogeneous GPU clusters."""
    _STATE.debug = debug


def _user_errors(fn: Callable[[], T]) -> T:
    """Run `fn`; a failure goes through `explain` (the same path as every command's)."""
    try:
        return fn()
    except _PASS_THROUGH:
        raise
    except Exception as exc:
        if _STATE.debug or os.environ.get("HETEROSCALE_DEBUG") == "1":
            raise
        code, line = explain(exc)
        fail(line, code)


def _choice(value: str, allowed: tuple[str, ...], option: str) -> str:
    if value not in allowed:
        raise UsageError(f"{option} {value!r}: choose one of {', '.join(allowed)}")
    return value


def _per_service(values: list[str], services: list[str], what: str) -> dict[str, str]:
    """`[SERVICE=]VALUE` options (flows.replay.per_service_values)."""
    # late: CLI start-up: a command loads only what it runs (flows and prefect cost seconds)
    from flows.replay import per_service_values

    return per_service_values(values, services, what)


_TIME_UNIT_HELP = "Unit of numeric trace timestamps: auto (epoch ms/us detected) | s | ms | us."
_ALLOW_HELP = "Replay a trace even if a request exceeds max_context_tokens or its rate 10x what the cluster can serve."


@app.command()
def validate(
    config: Annotated[Path, typer.Argument(help="Cluster config YAML.")],
    trace: Annotated[list[str], typer.Option(help="[SERVICE=]PATH: also check this trace against the config.")] = [],  # noqa: B006
    lengths: Annotated[list[str], typer.Option(help="[SERVICE=]PATH: request sizes for a rate trace.")] = [],  # noqa: B006
    peak_rps: Annotated[list[str], typer.Option(help="[SERVICE=]X: rescale the trace first (as replay would).")] = [],  # noqa: B006
    time_unit: Annotated[str, typer.Option(help=_TIME_UNIT_HELP)] = "auto",
) -> None:
    """Check a cluster config (and with --trace, a trace against it); print what it declares."""
    # late: CLI start-up: a command loads only what it runs (flows and prefect cost seconds)
    from sim.traces import max_servable_req_per_s
    from tasks.core.registry import load_config

    cfg = load_config(config)
    gpus = sum(p.nodes * p.gpus_per_node for p in cfg.topology.node_pools)
    s2 = {p.s2 for p in cfg.topology.node_pools}
    s1 = {p.s1 for p in cfg.topology.node_pools}
    console.print(
        Text.assemble(
            ("ok", "green"),
            f" {config}: cluster {cfg.cluster.name!r}, {gpus} GPUs of {len(cfg.gpu_types)} type(s) in "
            f"{len(s2)} S2 / {len(s1)} S1 domains, {len(cfg.services)} service(s): "
            f"{', '.join(s.name for s in cfg.services)}",
        ),
        highlight=False,
    )
    if not trace:
        return
    curves, _ = _load_curves(cfg, trace, lengths, peak_rps, time_unit=time_unit)
    for name, c in curves.items():
        bound = max_servable_req_per_s(cfg, name, c)
        console.print(
            Text.assemble(
                ("ok", "green"),
                f" trace {c.name} for {name}: {c.duration_s / 3600:.2f} h, peak {c.peak_req_per_s:.4g} req/s "
                f"({c.peak_req_per_s / bound:.1%} of the ~{bound:.4g} req/s the whole cluster could serve for it), "
                f"longest request {c.max_request_tokens:.0f} tokens",
            ),
            highlight=False,
        )


def _load_curves(
    cfg: Any,
    trace: list[str],
    lengths: list[str],
    peak_rps: list[str],
    *,
    time_unit: str = "auto",
    allow_implausible: bool = False,
) -> tuple[dict[str, Any], float | None]:
    """Curves per service; `--peak-rps auto` fits the load to the cluster (returns the factor).
    Checked: at least two control periods, and physically possible (sim.traces.check_against_config)."""
    # late: CLI start-up: a command loads only what it runs (flows and prefect cost seconds)
    from flows.replay import load_service_curves
    from sim.traces import check_against_config, check_duration

    _choice(time_unit, ("auto", "s", "ms", "us"), "--time-unit")
    curves, factor = load_service_curves(cfg, trace, lengths, peak_rps, time_unit=time_unit)
    for c in curves.values():
        check_duration(c, cfg.cluster.control_period_s)
    for line in check_against_config(cfg, curves, allow=allow_implausible):
        _warn(line)
    return curves, factor


def _shift_s(trace: str) -> float:
    """Seconds of `PATH@SHIFT` (flows.replay.trace_shift_s)."""
    # late: CLI start-up: a command loads only what it runs (flows and prefect cost seconds)
    from flows.replay import trace_shift_s

    return trace_shift_s(trace)


def _rolled(curve: Any, shift_s: float) -> Any:
    """The curve `shift_s` later, wrapped (flows.replay.rolled_curve)."""
    # late: CLI start-up: a command loads only what it runs (flows and prefect cost seconds)
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
        "unmet periods",
        "wall s",
    ):
        # The policy names are what the table is read by: never ellipsised.
        t.add_column(col, justify="left" if col == "policy" else "right", no_wrap=col == "policy")
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
            str(r.get("unmet_periods", 0)),
            f"{r['wall_s']:.2f}",
        )
    console.print(t)
    unmet = [r["policy"] for r in rows if r.get("unmet_periods")]
    if unmet:
        console.print(
            f"unmet periods: control periods in which placement could not place every instance asked for "
            f"({', '.join(unmet)}); their figures are for a smaller fleet than the policy chose",
            highlight=False,
        )


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
    time_unit: str = "auto",
    allow_implausible: bool = False,
    force: bool = False,
    engine: Any = None,
    hours: float | None = None,
) -> dict[str, Path]:
    # late: CLI start-up: a command loads only what it runs (flows and prefect cost seconds)
    from flows.league import infeasible_slos, prepare_out_dir, write_outputs
    from flows.replay import run_league
    from sim.traces import check_duration
    from tasks.core.policy import POLICIES
    from tasks.core.registry import load_config

    bad = [p for p in policies if p not in POLICIES]
    if bad:
        raise UsageError(f"unknown policy {bad}; choose from {sorted(POLICIES)}")
    if not 0 <= skip < 1:
        raise UsageError(f"--skip must be a share in [0, 1), got {skip}")
    if placement is not None:
        _choice(placement, ("greedy", "ilp", "incremental"), "--placement")
    cfg = load_config(config)
    # Before the replay runs: a bad --out is found now, not after minutes of work.
    prepare_out_dir(out, force=force, dry=True)
    curves, factor = _load_curves(
        cfg, trace, lengths, peak_rps, time_unit=time_unit, allow_implausible=allow_implausible
    )
    if skip:
        curves = {n: c.split(skip)[1] for n, c in curves.items()}
        for c in curves.values():
            check_duration(c, cfg.cluster.control_period_s, what=f"after --skip {skip:g} ")
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
    prepare_out_dir(out, force=force)
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
_PLACEMENT_HELP = (
    "Placement for every policy (greedy | ilp | incremental); default: ilp for heteroscale, greedy for the baselines."
)
_SKIP_HELP = "Skip this share of the trace and replay the rest (evaluate on data curate did not see)."
_FORCE_HELP = "Write into --out even if it holds files this tool did not write (they are kept)."
_ENGINE_HELP = (
    "Where the replays run: dask (Prefect's DaskTaskRunner; a local cluster unless --dask-address) | sequential."
)
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
    time_unit: Annotated[str, typer.Option(help=_TIME_UNIT_HELP)] = "auto",
    allow_implausible: Annotated[bool, typer.Option(help=_ALLOW_HELP)] = False,
    force: Annotated[bool, typer.Option(help=_FORCE_HELP)] = False,
) -> None:
    """Replay a trace on the twin with each policy; write summary.json, plots and a report."""
    # late: CLI start-up: a command loads only what it runs (flows and prefect cost seconds)
    from flows.replay import DEFAULT_LEAGUE

    pols = policy or list(DEFAULT_LEAGUE)
    _print_paths(
        _run_replay(
            config,
            trace,
            lengths,
            peak_rps,
            pols,
            out,
            placement=placement,
            skip=skip,
            time_unit=time_unit,
            allow_implausible=allow_implausible,
            force=force,
        )
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
    time_unit: Annotated[str, typer.Option(help=_TIME_UNIT_HELP)] = "auto",
    allow_implausible: Annotated[bool, typer.Option(help=_ALLOW_HELP)] = False,
    force: Annotated[bool, typer.Option(help=_FORCE_HELP)] = False,
    engine: Annotated[str, typer.Option(help=_ENGINE_HELP)] = "dask",
    dask_address: Annotated[str | None, typer.Option(help=_ADDRESS_HELP)] = None,
    workers: Annotated[int, typer.Option(help=_WORKERS_HELP)] = 2,
    hours: Annotated[float | None, typer.Option(help="Replay only the first HOURS (after --skip).")] = None,
) -> None:
    """Every policy on the same load: summary.json, league table, plots (replay's contract)."""
    # late: CLI start-up: a command loads only what it runs (flows and prefect cost seconds)
    from flows.fanout import Engine
    from flows.replay import ALL_POLICIES

    pols = policy or list(ALL_POLICIES)
    eng = Engine.of("dask" if dask_address else engine, dask_address, workers)
    _print_paths(
        _run_replay(
            config,
            trace,
            lengths,
            peak_rps,
            pols,
            out,
            placement=placement,
            skip=skip,
            time_unit=time_unit,
            allow_implausible=allow_implausible,
            force=force,
            engine=eng,
            hours=hours,
        )
    )


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("demo-out"),
    force: Annotated[bool, typer.Option(help=_FORCE_HELP)] = False,
) -> None:
    """Replay the bundled Azure trace on the demo cluster through the policy league."""
    # late: CLI start-up: a command loads only what it runs (flows and prefect cost seconds)
    from flows.league import prepare_out_dir
    from flows.replay import DEMO_LEAGUE

    prepare_out_dir(out, force=force, dry=True)
    console.print(
        Text.assemble(
            ("heteroscale demo", "bold"),
            f": cluster {settings.DEMO_CONFIG.relative_to(settings.PROJECT_ROOT)}, "
            f"trace {settings.BUNDLED_TRACE.relative_to(settings.PROJECT_ROOT)} (Azure LLM inference 2023, "
            "CC-BY-4.0), scaled so that its peak needs ~80% of the cluster under static-peak",
        ),
        highlight=False,
    )
    paths = _run_replay(
        settings.DEMO_CONFIG,
        [str(settings.BUNDLED_TRACE)],
        [],
        ["auto"],
        list(DEMO_LEAGUE),
        out,
        force=force,
    )
    _print_paths(paths)


MODES = tuple(m.value for m in ApplyMode)  # apply | dry-run | advisory | export
BACKENDS = ("twin", "kube")


@app.command()
def scale(
    config: Annotated[
        Path | None, typer.Option(help="Cluster config YAML (default: the demo cluster; required with --kube).")
    ] = None,
    backend: Annotated[str, typer.Option(help="twin (embedded default) | kube.")] = "twin",
    mode: Annotated[
        str | None,
        typer.Option(
            help="apply | dry-run | advisory | export (default: apply on the twin; with --kube the config's "
            "kubernetes.mode, else dry-run)."
        ),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    kube: Annotated[bool, typer.Option("--kube", help="Run against a Kubernetes cluster (backend kube).")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Send every write with dryRun=All.")] = False,
    advisory: Annotated[bool, typer.Option("--advisory", help="Change nothing; export the desired state.")] = False,
    kubeconfig: Annotated[str | None, typer.Option(help="Kubeconfig file (default: KUBECONFIG).")] = None,
    context: Annotated[str | None, typer.Option(help="Kubeconfig context.")] = None,
    api_url: Annotated[str | None, typer.Option(help="API server URL (overrides the kubeconfig's).")] = None,
    prometheus_url: Annotated[
        str | None, typer.Option(help="Prometheus base URL for the kube backend's signals (default: config).")
    ] = None,
) -> None:
    """Run one scaling run (the scale_cluster flow) now.

    With --kube the config must be given and the run is a dry-run unless `--mode apply` (or the
    config's `kubernetes.mode: apply`) says otherwise."""
    # late: CLI start-up: a command loads only what it runs (flows and prefect cost seconds)
    from tasks.core.registry import load_config

    # Every option is checked before Prefect starts (~15 s): a typo fails at once.
    if dry_run and advisory:
        raise UsageError("choose one of --dry-run and --advisory")
    if mode is not None:
        _choice(mode, MODES, "--mode")
    if (dry_run or advisory) and mode not in (None, "dry-run" if dry_run else "advisory"):
        raise UsageError(f"--mode {mode} contradicts --{'dry-run' if dry_run else 'advisory'}")
    backend = "kube" if kube else _choice(backend, BACKENDS, "--backend")
    if backend == "kube" and config is None:
        raise UsageError(
            "--kube needs --config: name the cluster config of the cluster you mean to scale "
            "(the demo config is never used against a real cluster)"
        )
    path = config or settings.DEMO_CONFIG
    cfg = load_config(path)
    chosen = "dry-run" if dry_run else "advisory" if advisory else mode
    if chosen is None:
        chosen = (cfg.kubernetes.mode or "dry-run") if backend == "kube" else "apply"
    if backend == "kube" and chosen == "dry-run" and mode is None and not dry_run:
        _warn("--kube without --mode: dry-run (nothing is changed); pass --mode apply to change the cluster")
    # The flow runs in this process; tasks.kube.client and tasks.prometheus read these (they override the config).
    for var, value in (
        ("KUBECONFIG", kubeconfig),
        ("HETEROSCALE_KUBE_CONTEXT", context),
        ("HETEROSCALE_KUBE_API_URL", api_url),
        ("HETEROSCALE_PROMETHEUS_URL", prometheus_url),
    ):
        if value:
            os.environ[var] = value
    # late: CLI start-up: a command loads only what it runs (flows and prefect cost seconds)
    from flows.scale_cluster import scale_cluster

    print_run(scale_cluster(config_path=str(path), backend=backend, mode=chosen), json_out=json_out)


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
    # late: CLI start-up: a command loads only what it runs (flows and prefect cost seconds)
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
    # late: CLI start-up: a command loads only what it runs (flows and prefect cost seconds)
    import importlib
    import pkgutil

    import heteroscale.commands as pkg

    for mod in sorted(m.name for m in pkgutil.iter_modules(pkg.__path__)):
        importlib.import_module(f"heteroscale.commands.{mod}")


_register_command_modules()


if __name__ == "__main__":  # pragma: no cover
    app()
