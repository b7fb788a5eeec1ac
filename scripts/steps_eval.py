"""Step awareness measured (issue 17 item 3): `heteroscale` with `policy.steps` off and on, and the
oracle (the floor), replayed on the same traces; prints a table and writes JSON.

    .venv/bin/python scripts/steps_eval.py --set servegen --half eval --out /tmp/steps-eval.json
    .venv/bin/python scripts/steps_eval.py --set servegen --half curate --min-days 2 --min-days 3
    .venv/bin/python scripts/steps_eval.py --set servegen-batch --half eval

Sets: `servegen` is the 10-service ServeGen league of docs/league.md (`servegen-10-curated.yaml`,
its traces, sizes and peaks); `servegen-batch` is the same with a fixed-time step added to every
rate series (x(1 + BATCH) from 09:00 to 17:00 trace time every day, before the per-service time
shifts: a batch job or a deployment going live at the same hour each day). Halves: `curate` =
days 1-7 (`--hours 168`), `eval` = days 8-14 (`--skip 0.5`, as `bench policies`); the replay's
history starts empty at the first replayed tick in both (as in the league), so the profile
(>= `min_days` days) is only live from day `min_days` of the half on.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from servegen10 import CONFIG, LENGTHS, MID, SMALL, peak_specs, trace_specs  # noqa: E402

from flows.replay import replay  # noqa: E402
from flows.replay_flow import window  # noqa: E402
from heteroscale.cli import _load_curves  # noqa: E402
from models.config import ClusterConfig  # noqa: E402
from tasks.core.registry import load_config  # noqa: E402

BATCH = 0.4
BATCH_FROM_H, BATCH_TO_H = 9.0, 17.0


def _batch_csv(src: Path, dest: Path) -> Path:
    df = pd.read_csv(src)
    hod = df["hour_of_day"]
    on = (hod >= BATCH_FROM_H) & (hod < BATCH_TO_H)
    for col in ("total_req_per_s", "est_input_tok_per_s", "est_output_tok_per_s"):
        df.loc[on, col] = df.loc[on, col] * (1 + BATCH)
    df.to_csv(dest, index=False)
    return dest


def _specs(batch: bool, tmp: Path) -> tuple[list[str], list[str]]:
    files = {"S": SMALL, "M": MID}
    if batch:
        tmp.mkdir(parents=True, exist_ok=True)
        files = {k: _batch_csv(v, tmp / f"batch-{v.name}") for k, v in files.items()}
    return trace_specs(files), peak_specs()


def _with_steps(cfg: ClusterConfig, enabled: bool, min_days: int) -> ClusterConfig:
    services = tuple(
        s.model_copy(
            update={
                "policy": s.policy.model_copy(
                    update={"steps": s.policy.steps.model_copy(update={"enabled": enabled, "min_days": min_days})}
                )
            }
        )
        for s in cfg.services
    )
    return cfg.model_copy(update={"services": services})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", choices=("servegen", "servegen-batch"), default="servegen")
    ap.add_argument("--half", choices=("curate", "eval"), default="eval")
    ap.add_argument("--min-days", type=int, action="append", help="step-aware variants (repeat); default 3")
    ap.add_argument("--no-oracle", action="store_true")
    ap.add_argument("--no-off", action="store_true", help="skip the steps-off variant")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    cfg = load_config(CONFIG)
    traces, peaks = _specs(args.set == "servegen-batch", Path("/tmp/steps-eval-traces"))
    curves, _ = _load_curves(cfg, traces, [str(LENGTHS)], peaks)
    if args.half == "eval":
        curves = {n: c.split(0.5)[1] for n, c in curves.items()}
    else:
        curves = window(curves, 168.0)
    variants: list[tuple[str, str, ClusterConfig]] = []
    if not args.no_off:
        variants.append(("heteroscale", "steps off", _with_steps(cfg, False, 3)))
    for md in args.min_days or [3]:
        variants.append(("heteroscale", f"steps on (min_days {md})", _with_steps(cfg, True, md)))
    if not args.no_oracle:
        variants.append(("oracle", "floor", cfg))
    rows = []
    for policy, label, c in variants:
        started = time.process_time()
        res = replay(c, curves, policy, placement="greedy", keep_ticks=False)
        s = res.summary()
        rows.append(
            {
                "policy": policy,
                "variant": label,
                "gpu_hours": s["gpu_hours"],
                "cost": s["cost"],
                "slo_attainment": s["slo_attainment"],
                "ttft_p99_s": s["ttft_p99_s"],
                "tbt_p99_s": s["tbt_p99_s"],
                "scale_actions": s["scale_actions"],
                "wall_s": s["wall_s"],
                "cpu_s": round(time.process_time() - started, 1),
            }
        )
        print(rows[-1], flush=True)
    floor = next((r["cost"] for r in rows if r["policy"] == "oracle"), None)
    print(f"\n{args.set}, {args.half} half")
    print(
        "| policy | variant | GPU-hours | cost | SLO attainment | ratio to floor | TTFT p99 s | scale actions | cpu s |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        ratio = f"{r['cost'] / floor:.3f}" if floor else "—"
        print(
            f"| {r['policy']} | {r['variant']} | {r['gpu_hours']:,.0f} | {r['cost']:,.0f} | "
            f"{r['slo_attainment']:.2%} | {ratio} | {r['ttft_p99_s']} | {r['scale_actions']} | {r['cpu_s']} |"
        )
    if args.out:
        args.out.write_text(json.dumps({"set": args.set, "half": args.half, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
