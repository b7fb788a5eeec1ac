"""`heteroscale bench placement`: the ILP against the paper's greedy on a synthetic cluster.

Builds one case with `tasks.core.synth` (same arguments, same case), places its new targets with
the ILP (`tasks.placement_runner.run_ilp`) and with the greedy from the same current placement,
scores both with `tasks.core.placement.evaluate` (one objective, one set of violation rules) and prints a table, or with
`--json` one object: {"ilp": {...}, "greedy": {...}, "lp_bound", "variables", "constraints"}.
`solve_s` is wall time of the whole placement call (model build + solve + read-back).

`--current ratio` (default) starts both methods from a fleet whose every group is in ratio
(`synth.ratio_fleet`); `--current greedy` from what the greedy made of the previous targets (the
earlier, ILP-unfriendly benchmark). `--reference-s N` also solves the full, unrestricted MIP for up
to N s and reports its best objective and proven dual bound (`ref_objective`, `ref_bound`): the
LP bound ignores integrality, so when unmet demand is priced the gap to it is mostly integrality
gap, and `ref_bound` says how far from the integer optimum the ILP can at most be. `--bound-s N`
(default 60) proves a lower bound on every placement outside the timed call
(`tasks.core.placement.proven_bound`: the LP's duals on the capacity rows, one exact MIP per
service the LP leaves fractional): `ilp.global_bound`, `bound_s`, `bound_skipped`. `--seeds 1-40`
runs several seeds and adds p50/p95/max solve time (nearest rank), cost over that bound and
violations (`summary`); `ilp.cpu_s` is the placement call's CPU time (both threads), steadier than
wall time on a shared machine. The ILP's
placement is also realised on nodes (`realize.py`): `realize_s`, `unplaced` (instances no node fits).
`ilp.kept` is "greedy" when the ILP stopped at its time limit and the greedy scored lower (the
"ilp" row is then the greedy's placement). `--mip-start none` turns off the constructive start
and its RINS polish (`ilp.start_objective`, `ilp.rins_objective`: the start's objective before and
after RINS) to measure what they bring. `--sequential` runs RINS and then the large-cluster MIP
on one core instead of side by side on two (`ilp.rins_rounds`, `ilp.injected`: RINS rounds, RINS
finds handed to the MIP). The tier decomposition and the aggregated model were measured worse
and removed (docs/placement.md).
"""

from __future__ import annotations

import json
import math
import time
from typing import Annotated, Any

import typer
from rich.table import Table

from heteroscale.cli import bench_app, console


def run_placement_bench(
    *,
    gpus: int,
    services: int,
    gpu_types: int,
    seed: int,
    current: str = "ratio",
    reference_s: float = 0.0,
    mip_start: str = "ratio",
    parallel: bool = True,
    greedy: bool = True,
    bound_s: float = 60.0,
    time_limit_s: float | None = None,
) -> dict[str, Any]:
    # late: CLI start-up: a command loads only what it runs (flows and prefect cost seconds)
    from tasks.core.placement import (
        Deadline,
        evaluate,
        lp_bound,
        nodes_from_config,
        place_greedy,
        proven_bound,
        realize,
        reference_solve,
    )
    from tasks.core.synth import synth_cluster
    from tasks.core.topology import gpus_per_instance_map
    from tasks.placement_runner import run_ilp

    case = synth_cluster(gpus=gpus, services=services, gpu_types=gpu_types, seed=seed, current=current)
    out: dict[str, Any] = {}
    stats: dict[str, Any] = {}
    for name in ("ilp", "greedy") if greedy else ("ilp",):
        cpu_started = time.process_time()
        started = time.perf_counter()
        if name == "ilp":
            st = case.config.cluster.placement
            if time_limit_s is not None:
                st = st.model_copy(update={"time_limit_s": time_limit_s})
            plan = run_ilp(case.config, case.view, case.targets, settings=st, mip_start=mip_start, parallel=parallel)
            stats = dict(plan.stats)
            ilp_plan = plan
        else:
            plan = place_greedy(case.config, case.view, case.targets)
        elapsed = time.perf_counter() - started
        cpu_s = time.process_time() - cpu_started
        score = evaluate(case.config, case.view, case.targets, plan.placement)
        out[name] = {
            "solve_s": round(elapsed, 3),
            "cpu_s": round(cpu_s, 3),
            "cost": round(score.cost, 2),
            "gpu_cost_per_h": round(score.gpu_cost_per_h, 2),
            "unmet": round(score.unmet, 2),
            "affinity_violations": score.affinity_violations,
            "ratio_violations": score.ratio_violations,
            "churn": score.churn,
            "moves": score.moves,
            "usable_cost": round(score.usable_cost, 2),
            "usable_unmet": round(score.usable_unmet, 2),
            "status": str(stats.get("status", plan.method)) if name == "ilp" else "greedy",
            "method": plan.method,
        }
        if name == "ilp":
            out[name]["kept"] = str(stats.get("kept", plan.method))
            for key in ("rins_rounds", "injected", "rins_only", "lp_groups_relaxed"):
                if key in stats:
                    out[name][key] = int(stats[key])
            for key in ("start_objective", "rins_objective", "start_s", "rins_s", "gap", "bound", "build_s"):
                if key in stats:
                    out[name][key] = round(float(stats[key]), 4)
    started = time.perf_counter()
    real = realize(
        nodes_from_config(case.config), ilp_plan.placement, gpus_per_instance=gpus_per_instance_map(case.config)
    )
    out["ilp"]["realize_s"] = round(time.perf_counter() - started, 3)
    out["ilp"]["unplaced"] = sum(real.unplaced.values())
    out["ilp"]["phases"] = int(stats.get("phases", 1))
    # The LP relaxation of the whole model: the large path solves it anyway (stats), else solve it here.
    bound = float(stats["lp_bound"]) if "lp_bound" in stats else lp_bound(case.config, case.view, case.targets)
    out["lp_bound"] = None if bound is None else round(bound, 2)
    if bound_s > 0:
        # The certificate, apart from the timed call: no placement can cost less than this.
        started = time.perf_counter()
        cert = proven_bound(case.config, case.view, case.targets, deadline=Deadline.after(bound_s, time.perf_counter))
        out["bound_s"] = round(time.perf_counter() - started, 3)
        if cert is not None:
            out["ilp"]["global_bound"] = round(max(cert.value, bound or -math.inf), 2)
            out["bound_skipped"] = cert.skipped
    elif "global_bound" in stats:
        out["ilp"]["global_bound"] = round(float(stats["global_bound"]), 2)
    if reference_s > 0:
        ref = reference_solve(case.config, case.view, case.targets, time_limit_s=reference_s)
        out["ref_objective"], out["ref_bound"] = (None, None) if ref is None else (round(ref[0], 2), round(ref[1], 2))
    out["current"] = current
    out["mip_start"] = mip_start
    out["parallel"] = parallel
    out["variables"] = int(stats.get("variables", 0))
    out["constraints"] = int(stats.get("constraints", 0))
    out["gpus"] = case.view.total_gpus
    out["services"] = services
    if "fallback" in stats:
        out["ilp"]["fallback"] = stats["fallback"]
    return out


def parse_seeds(text: str) -> list[int]:
    """Seeds from "1-40", "3", "1,5,7-9" (ranges inclusive, order kept, duplicates dropped)."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            first, last = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            raise ValueError(f"--seeds: {part!r} is not a seed or a range like 1-40") from None
        if last < first:
            raise ValueError(f"--seeds: range {part!r} runs backwards")
        seeds.extend(n for n in range(first, last + 1) if n not in seeds)
    if not seeds:
        raise ValueError("--seeds: no seed given")
    return seeds


def nearest_rank(values: list[float], q: float) -> float:
    """The q-quantile by nearest rank (p95 of 40 runs: the 38th smallest): a value that was measured."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def summarize(runs: list[dict[str, Any]], *, target_s: float = 2.0) -> dict[str, Any]:
    """Solve-time quantiles, cost over the proven global bound, violations over several seeds."""
    times = [float(r["ilp"]["solve_s"]) for r in runs]
    ratios = [float(r["ilp"]["cost"]) / float(r["ilp"]["global_bound"]) for r in runs if r["ilp"].get("global_bound")]
    return {
        "runs": len(runs),
        "solve_s_p50": nearest_rank(times, 0.5),
        "solve_s_p95": nearest_rank(times, 0.95),
        "solve_s_max": max(times),
        "over_target": sum(1 for t in times if t > target_s),
        "target_s": target_s,
        "cost_over_bound_max": round(max(ratios), 5) if ratios else None,
        "cost_over_bound_p95": round(nearest_rank(ratios, 0.95), 5) if ratios else None,
        "within_1pct": sum(1 for x in ratios if x <= 1.01 + 1e-9),
        "with_bound": len(ratios),
        "violations": sum(int(r["ilp"]["affinity_violations"]) + int(r["ilp"]["ratio_violations"]) for r in runs),
        "fallbacks": sum(1 for r in runs if r["ilp"]["method"] != "ilp"),
    }


def _bench_seeds(seeds: list[int], as_json: bool, target_s: float, **kwargs: Any) -> None:
    runs: list[dict[str, Any]] = []
    for seed in seeds:
        res = run_placement_bench(seed=seed, **kwargs)
        res["seed"] = seed
        runs.append(res)
        if not as_json:
            i = res["ilp"]
            ratio = f"{i['cost'] / i['global_bound']:.4f}" if i.get("global_bound") else "n/a"
            console.print(
                f"seed {seed}: {i['solve_s']:.2f} s, cost {i['cost']}, proven bound {i.get('global_bound')} "
                f"(x{ratio}), violations {i['affinity_violations'] + i['ratio_violations']}, {i['status']}"
            )
    summary = summarize(runs, target_s=target_s)
    if as_json:
        print(json.dumps({"summary": summary, "runs": runs}))
        return
    table = Table(title=f"placement over {len(runs)} seeds: {kwargs['gpus']} GPUs, {kwargs['services']} services")
    for c in summary:
        table.add_column(c, justify="right")
    table.add_row(*(str(v) for v in summary.values()))
    console.print(table)


@bench_app.command("placement")
def bench_placement(
    gpus: Annotated[int, typer.Option("--gpus", help="GPUs in the synthetic cluster (8 per node).")] = 2000,
    services: Annotated[int, typer.Option("--services", help="Services to place.")] = 20,
    gpu_types: Annotated[int, typer.Option("--gpu-types", help="GPU types (1-5).")] = 4,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the generator.")] = 0,
    current: Annotated[
        str, typer.Option("--current", help="Current fleet: ratio (groups in ratio) | greedy (legacy).")
    ] = "ratio",
    reference_s: Annotated[
        float, typer.Option("--reference-s", help="Also solve the full MIP for up to this long (0: skip).")
    ] = 0.0,
    mip_start: Annotated[
        str, typer.Option("--mip-start", help="Large-cluster MIP start: ratio (constructive + RINS) | none.")
    ] = "ratio",
    sequential: Annotated[
        bool, typer.Option("--sequential", help="Large-cluster MIP: RINS then the MIP on one core (not side by side).")
    ] = False,
    seeds: Annotated[
        str | None,
        typer.Option(
            "--seeds", help="Several seeds (1-40, 1,5,7-9): per-seed lines and p50/p95/max, bound, violations."
        ),
    ] = None,
    bound_s: Annotated[
        float,
        typer.Option(
            "--bound-s",
            help="Prove a lower bound on every placement (Lagrangian, apart from the timed call) for up to this long; 0: skip.",
        ),
    ] = 60.0,
    time_limit_s: Annotated[
        float | None,
        typer.Option("--time-limit-s", help="The ILP's time limit (default: the config's, 5 s)."),
    ] = None,
    no_greedy: Annotated[bool, typer.Option("--no-greedy", help="Do not run the greedy baseline.")] = False,
    target_s: Annotated[float, typer.Option("--target-s", help="With --seeds: count runs slower than this.")] = 2.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """ILP vs greedy placement: solve time, cost, unmet, violations, churn."""
    # late: CLI start-up: a command loads only what it runs (flows and prefect cost seconds)
    from heteroscale.cli import _user_errors

    if seeds is not None:
        seed_list = _user_errors(lambda: parse_seeds(seeds))
        _user_errors(
            lambda: _bench_seeds(
                seed_list,
                as_json,
                target_s,
                gpus=gpus,
                services=services,
                gpu_types=gpu_types,
                current=current,
                reference_s=reference_s,
                bound_s=bound_s,
                time_limit_s=time_limit_s,
                mip_start=mip_start,
                parallel=not sequential,
                greedy=not no_greedy,
            )
        )
        return

    res = _user_errors(
        lambda: run_placement_bench(
            gpus=gpus,
            services=services,
            gpu_types=gpu_types,
            seed=seed,
            current=current,
            reference_s=reference_s,
            bound_s=bound_s,
            time_limit_s=time_limit_s,
            mip_start=mip_start,
            parallel=not sequential,
            greedy=not no_greedy,
        )
    )
    if as_json:
        print(json.dumps(res))
        return
    table = Table(title=f"placement: {res['gpus']} GPUs, {services} services, {gpu_types} GPU types, seed {seed}")
    cols = (
        "solve_s",
        "cost",
        "gpu_cost_per_h",
        "unmet",
        "affinity_violations",
        "ratio_violations",
        "churn",
        "moves",
        "usable_cost",
        "status",
    )
    table.add_column("method")
    for c in cols:
        table.add_column(c, justify="right")
    for name in ("ilp", "greedy") if "greedy" in res else ("ilp",):
        table.add_row(name, *(str(res[name][c]) for c in cols))
    console.print(table)
    bound = res["lp_bound"]
    gap = "n/a" if not bound else f"{100 * (res['ilp']['cost'] / bound - 1):.2f}%"
    greedy = res.get("greedy", {})
    vs = f"{100 * (1 - res['ilp']['cost'] / greedy['cost']):.1f}%" if greedy.get("cost") else "n/a"
    vs_usable = (
        f"{100 * (1 - res['ilp']['usable_cost'] / greedy['usable_cost']):.1f}%" if greedy.get("usable_cost") else "n/a"
    )
    console.print(
        f"LP bound {bound}; ILP above bound by {gap}; ILP below greedy by {vs} "
        f"({vs_usable} counting only what working groups serve: usable_cost); "
        f"model {res['variables']} variables, {res['constraints']} constraints; "
        f"realised on nodes in {res['ilp']['realize_s']} s, {res['ilp']['unplaced']} instances unplaced"
    )
    if res.get("ref_bound"):
        console.print(
            f"full MIP ({reference_s:.0f} s): best {res['ref_objective']}, proven bound {res['ref_bound']}; "
            f"ILP above that bound by {100 * (res['ilp']['cost'] / res['ref_bound'] - 1):.2f}%"
        )
