"""What the ILP buys in the replay loop: one policy replayed with each placement method.

Usage:
  .venv/bin/python scripts/bench_ilp_loop.py --setup servegen10 --skip 0.8 --hours 24 \
      --method greedy --method ilp --method incremental [--json out.json]
  .venv/bin/python scripts/bench_ilp_loop.py --setup matrix:diurnal --days 1 --method greedy --method incremental

Per method: the replay's summary (cost, GPU-hours, SLO attainment, unmet periods) plus what the
loop's placement did, recorded around `tasks.steps.place` and `tasks.steps.apply_plan` (the
replay calls both through the `tasks.steps` module): placement wall and CPU seconds per call,
plan methods, periods whose placement leaves any moving (service, role) short of its target
(`short_periods`) and short by more than a sliver (`SLIVER`, 0.02 reference instances), the same
measure for every method, broken groups (deployment groups holding one role without the other, and groups
outside the P/D band, in every applied placement, summed over periods), and the twin's KV
cross-domain share (traffic whose P and D sit under different switches), averaged over periods
and services. Whole-replay wall and CPU (process user+sys) seconds, and the load average at the
start and end, are printed too: the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import servegen10

from flows.replay import replay
from flows.replay_flow import window
from models.config import ClusterConfig, Role
from models.values import Action
from tasks import steps
from tasks.core.placement import group_counts
from tasks.core.placement.incremental import SLIVER
from tasks.core.placement.problem import ratio_ok, weight
from tasks.core.registry import load_config
from tasks.core.topology import view_from_config

ROOT = Path(__file__).resolve().parent.parent


def broken_groups(config: ClusterConfig, placement: Any) -> tuple[int, int]:
    """(groups with one role only, groups outside the P/D band) in a whole placement."""
    view = view_from_config(config)
    by_name = {s.name: s for s in config.services}
    tol = config.cluster.placement.ratio_tolerance
    units: dict[tuple[str, str], dict[Role, float]] = {}
    aff = {s.name: s.affinity for s in config.services}
    for k, n in placement.cells.items():
        g = units.setdefault((k.service, view.domain_of(k.s1, aff[k.service])), {Role.PREFILL: 0.0, Role.DECODE: 0.0})
        g[k.role] += n * weight(by_name[k.service], k.role, k.gpu_type)
    counts = group_counts(view, config, placement)
    orphan = ratio = 0
    for key, n in counts.items():
        if (n[Role.PREFILL] > 0) != (n[Role.DECODE] > 0):
            orphan += 1
        elif n[Role.PREFILL] > 0 and not ratio_ok(
            by_name[key[0]], units[key][Role.PREFILL], units[key][Role.DECODE], tol
        ):
            ratio += 1
    return orphan, ratio


def short_of(config: ClusterConfig, targets: Any, placement: Any) -> float:
    """The largest shortfall (reference instances) of any moving (service, role) in `placement`:
    the same measure for every method, whatever its plan reports as unmet."""
    by_name = {s.name: s for s in config.services}
    want = {(n, r): t.counts.of(r) for n, t in targets.items() if t.action is not Action.HOLD for r in Role}
    have = dict.fromkeys(want, 0.0)
    for k, n in placement.cells.items():
        if (k.service, k.role) in have:
            have[(k.service, k.role)] += n * weight(by_name[k.service], k.role, k.gpu_type)
    return max((want[key] - have[key] for key in want), default=0.0)


def run_one(config: ClusterConfig, curves: dict[str, Any], policy: str, method: str) -> dict[str, Any]:
    rec: dict[str, Any] = {"calls": 0, "wall_s": 0.0, "cpu_s": 0.0, "max_wall_s": 0.0, "methods": Counter()}
    rec.update(orphan=0, out_of_band=0, periods=0, cross_sum=0.0, cross_n=0, kept=Counter(), fallbacks=Counter())
    rec.update(short_any=0, short_material=0)
    place, apply_plan = steps.place, steps.apply_plan

    def timed_place(*args: Any, **kwargs: Any) -> Any:
        w0, c0 = time.perf_counter(), time.process_time()
        plan = place(*args, **kwargs)
        w, c = time.perf_counter() - w0, time.process_time() - c0
        if plan.method != "none":
            rec["calls"] += 1
            rec["wall_s"] += w
            rec["cpu_s"] += c
            rec["max_wall_s"] = max(rec["max_wall_s"], w)
        rec["methods"][plan.method] += 1
        short = short_of(args[0], args[2], plan.placement)
        rec["short_any"] += short > 1e-6
        rec["short_material"] += short > SLIVER
        for key in ("kept", "stage"):
            if key in plan.stats:
                rec["kept"][f"{key}={plan.stats[key]}"] += 1
        if "fallback" in plan.stats:
            rec["fallbacks"][str(plan.stats["fallback"])[:60]] += 1
        return plan

    def observed_apply(backend: Any, cfg: ClusterConfig, plan: Any, *args: Any, **kwargs: Any) -> Any:
        result = apply_plan(backend, cfg, plan, *args, **kwargs)
        orphan, ratio = broken_groups(cfg, backend.placement())
        rec["orphan"] += orphan
        rec["out_of_band"] += ratio
        rec["periods"] += 1
        for s in cfg.services:
            rec["cross_sum"] += backend.cross_domain_share(s.name)
            rec["cross_n"] += 1
        return result

    steps.place, steps.apply_plan = timed_place, observed_apply  # type: ignore[assignment]
    try:
        load0 = os.getloadavg()[0]
        t0 = time.process_time()
        res = replay(config, curves, policy, keep_ticks=False, placement=method)
        cpu = time.process_time() - t0
        load1 = os.getloadavg()[0]
    finally:
        steps.place, steps.apply_plan = place, apply_plan  # type: ignore[assignment]
    row = res.summary()
    keep = ("policy", "gpu_hours", "cost", "slo_attainment", "unmet_periods", "scale_actions", "wall_s")
    out = {k: row[k] for k in keep}
    out.update(
        method=method,
        cpu_s=round(cpu, 2),
        load=f"{load0:.1f}-{load1:.1f}",
        place_calls=rec["calls"],
        place_wall_s=round(rec["wall_s"], 2),
        place_cpu_s=round(rec["cpu_s"], 2),
        place_max_s=round(rec["max_wall_s"], 3),
        plan_methods=dict(rec["methods"]),
        kept=dict(rec["kept"]),
        fallbacks=dict(rec["fallbacks"]),
        short_periods=rec["short_any"],
        short_over_sliver_periods=rec["short_material"],
        broken_group_periods=rec["orphan"],
        out_of_band_group_periods=rec["out_of_band"],
        periods=rec["periods"],
        kv_cross_domain_share=round(rec["cross_sum"] / max(rec["cross_n"], 1), 5),
    )
    return out


def load(args: argparse.Namespace) -> tuple[ClusterConfig, dict[str, Any]]:
    if args.setup == "servegen10":
        config, curves = servegen10.load()
    elif args.setup.startswith("matrix:"):
        # The cell's protocol (flows.matrix.run_cell: fit, curate on the first half) with no
        # policy run; the replays below run on its evaluation half with the curated config.
        from flows.matrix import Cell, Sources, run_cell

        base = load_config(ROOT / "deployments/clusters/demo.yaml")
        sources = Sources(requests_csv=servegen10.LENGTHS, rates_csv=servegen10.SMALL, days=args.days)
        prepared = run_cell(base, Cell(args.setup.removeprefix("matrix:")), sources, policies=())
        config, curves = prepared.config, prepared.curves
    else:
        raise SystemExit(f"unknown --setup {args.setup}")
    if args.skip:
        curves = {n: c.split(args.skip)[1] for n, c in curves.items()}
    return config, window(curves, args.hours)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--setup", default="servegen10")
    ap.add_argument("--policy", default="heteroscale")
    ap.add_argument("--method", action="append", default=[])
    ap.add_argument("--skip", type=float, default=0.0)
    ap.add_argument("--hours", type=float, default=None)
    ap.add_argument("--days", type=float, default=1.0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    config, curves = load(args)
    rows = []
    for method in args.method or ["greedy", "incremental"]:
        row = run_one(config, curves, args.policy, method)
        row["setup"] = args.setup
        print(json.dumps(row), flush=True)
        rows.append(row)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
