"""Sweep `heteroscale bench placement` over cluster sizes; write JSON lines and the docs' curves.

Usage: .venv/bin/python scripts/bench_placement_sweep.py [--out docs/img] [--seeds 3] [--reference-s 30]
    [--current ratio|greedy]
Each point is one synthetic case (tasks/core/synth.py) placed by the ILP and by the greedy; the
issue's size (20k GPUs / 100 services) is run for `--seeds` seeds (its median is the target), the
others for seed 1. `--reference-s` also solves the full MIP at that size for its proven bound.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from heteroscale.commands.placement import run_placement_bench

GRID: tuple[tuple[int, int], ...] = ((500, 10), (2000, 20), (5000, 50), (10000, 100), (20000, 100), (20000, 200))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="docs/img")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--reference-s", type=float, default=30.0)
    ap.add_argument("--current", default="ratio")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for gpus, services in GRID:
        target_size = (gpus, services) == (20000, 100)
        for seed in range(1, (args.seeds if target_size else 1) + 1):
            res = run_placement_bench(
                gpus=gpus,
                services=services,
                gpu_types=4,
                seed=seed,
                current=args.current,
                reference_s=args.reference_s if target_size or gpus <= 2000 else 0.0,
            )
            res["seed"] = seed
            rows.append(res)
            print(json.dumps(res), flush=True)
    suffix = "" if args.current == "ratio" else f"-{args.current}"
    (out / f"placement-sweep{suffix}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    labels = [f"{r['gpus']}/{r['services']}/s{r['seed']}" for r in rows]
    ax[0].plot(labels, [r["ilp"]["solve_s"] for r in rows], "o-", label="ILP")
    ax[0].plot(labels, [r["greedy"]["solve_s"] for r in rows], "s-", label="greedy")
    ax[0].axhline(2.0, color="grey", lw=0.5, ls="--", label="target: 20k/100 median 2 s")
    ax[0].set_xlabel("GPUs / services")
    ax[0].set_ylabel("wall time per placement (s)")
    ax[0].legend()
    ax[1].plot(
        labels,
        [r["ilp"]["gpu_cost_per_h"] / r["greedy"]["gpu_cost_per_h"] for r in rows],
        "o-",
        label="ILP GPU $/h / greedy",
    )
    ax[1].plot(labels, [r["ilp"]["cost"] / r["lp_bound"] for r in rows], "^-", label="ILP objective / LP bound")
    ax[1].axhline(1.0, color="grey", lw=0.5)
    ax[1].set_xlabel("GPUs / services")
    ax[1].legend()
    for a in ax:
        a.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(out / f"placement-sweep{suffix}.png", dpi=110)


if __name__ == "__main__":
    main()
