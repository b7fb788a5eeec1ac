"""How often `auto` re-selects its method in the replay: CPU against decisions (docs/twin.md).

The ServeGen 10-service league setup of docs/league.md (servegen-10-curated.yaml, its traces,
sizes and peaks), greedy placement, replayed on the first half of the fortnight (curate: pick the
cadence here) and on the second half (evaluate: report, do not tune) with the replay's
`reselect_every_s` at each value given. Prints one JSON line per (half, policy, cadence).

    .venv/bin/python scripts/bench_reselect.py --every 3600 --every 21600 --every 86400
"""

from __future__ import annotations

import argparse
import json
import resource
import time

from servegen10 import CONFIG, LENGTHS, peak_specs, trace_specs

from flows.replay import replay
from heteroscale.cli import _load_curves
from tasks.core.registry import load_config


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--every", type=float, action="append", required=True, help="reselect_every_s (repeat)")
    ap.add_argument("--policy", action="append", default=None)
    ap.add_argument("--pin", action="store_true", help="pin_between_selections (the replay's option)")
    ap.add_argument("--half", action="append", choices=("curate", "evaluate"), default=None)
    args = ap.parse_args()
    cfg = load_config(CONFIG)
    curves, _ = _load_curves(cfg, trace_specs(), [str(LENGTHS)], peak_specs())
    halves = {"curate": 0, "evaluate": 1}
    for half in args.half or list(halves):
        part = {n: c.split(0.5)[halves[half]] for n, c in curves.items()}
        for policy in args.policy or ["heteroscale-paper", "dynamo-sla"]:
            for every in args.every:
                t0, c0 = time.perf_counter(), _cpu_s()
                r = replay(
                    cfg,
                    part,
                    policy,
                    keep_ticks=False,
                    placement="greedy",
                    reselect_every_s=every,
                    pin_between_selections=args.pin,
                )
                s = r.summary()
                row = {
                    "half": half,
                    "policy": policy,
                    "reselect_every_s": every,
                    "pin": args.pin,
                    "cpu_s": round(_cpu_s() - c0, 2),
                    "wall_s": round(time.perf_counter() - t0, 2),
                    "gpu_hours": s["gpu_hours"],
                    "cost": s["cost"],
                    "slo_attainment": s["slo_attainment"],
                    "scale_actions": s["scale_actions"],
                    "unmet_periods": s["unmet_periods"],
                }
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
