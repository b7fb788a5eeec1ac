"""Why the hindsight floor (`oracle`) misses the SLO: every tick of an `oracle` replay whose p99
TTFT or TBT is above the SLO, classified by what the twin served it with (issue 17, the floor
question). Diagnostic only: it wraps `Twin._serve` to see each tick's serving pools.

    .venv/bin/python scripts/floor_misses.py                      # ServeGen league, days 8-14
    .venv/bin/python scripts/floor_misses.py --half curate        # days 1-7
    .venv/bin/python scripts/floor_misses.py --no-skew-guard --no-cross-loss   # attribution runs

For a missed tick: `short` = the serving capacity (reference units) of a role is below the floor's
count for that window (the instance was late: cold start, the skew guard, placement); otherwise
the floor's count was serving and still missed, split by what differs from the floor's model
(one reference-type pool, no backlog, same-domain KV): a backlog carried in from earlier ticks,
a non-reference GPU type in the pool (p99 is the slowest type's), cross-domain KV.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from servegen10 import CONFIG, LENGTHS, peak_specs, trace_specs  # noqa: E402

from flows.replay import replay  # noqa: E402
from flows.replay_flow import window  # noqa: E402
from heteroscale.cli import _load_curves  # noqa: E402
from models.config import Role  # noqa: E402
from sim import twin as twin_mod  # noqa: E402
from sim.floor import required_counts  # noqa: E402
from tasks.core.registry import load_config  # noqa: E402


def _pool_units(twin: twin_mod.Twin, svc: Any, role: Role) -> tuple[float, float, float]:
    """(placed, Ready, serving) instances of a role in reference units, starting ones included."""
    placed = ready = serving = 0.0
    for gpu, batches in twin._by_role.get((svc.name, role), ()):
        w = svc.role(role).weight(gpu)
        for ready_at, n, on in batches:
            placed += n * w
            if ready_at <= twin.now_s:
                ready += n * w
                serving += min(on, n) * w
    return placed, ready, serving


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=CONFIG)
    ap.add_argument("--half", choices=("curate", "eval"), default="eval")
    ap.add_argument("--policy", default="oracle")
    ap.add_argument("--no-skew-guard", action="store_true")
    ap.add_argument("--no-cross-loss", action="store_true")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--verbose", action="store_true", help="print a few missed ticks of each kind")
    args = ap.parse_args()
    cfg = load_config(args.config)
    curves, _ = _load_curves(cfg, trace_specs(), [str(LENGTHS)], peak_specs())
    curves = {n: c.split(0.5)[1] for n, c in curves.items()} if args.half == "eval" else window(curves, 168.0)

    seen: dict[tuple[str, float], dict[str, Any]] = {}
    orig_serve = twin_mod.Twin._serve
    orig_post = twin_mod.Twin.__post_init__

    def post(self: twin_mod.Twin) -> None:
        orig_post(self)
        self.memo_ticks = False  # every tick through _serve, so every tick is seen

    def serve(
        self: twin_mod.Twin, svc: Any, i: int, ready_p: Any, n_p: int, ready_d: Any, n_d: int, bp: float, bd: float
    ) -> tuple[float, ...]:
        out = orig_serve(self, svc, i, ready_p, n_p, ready_d, n_d, bp, bd)
        ttft, tbt = out[5], out[6]
        if ttft > svc.slo.ttft_p99_s or tbt > svc.slo.tbt_p99_s:
            seen[(svc.name, self.now_s)] = {
                "i": i,
                "ready_p": dict(ready_p),
                "ready_d": dict(ready_d),
                "backlog_p": bp,
                "backlog_d": bd,
                "cross": self._cross[svc.name],
                "ttft": ttft,
                "tbt": tbt,
                "pools": {r: _pool_units(self, svc, r) for r in Role},
            }
        return out

    twin_mod.Twin.__post_init__ = post  # type: ignore[method-assign]
    twin_mod.Twin._serve = serve  # type: ignore[method-assign]
    params = twin_mod.TwinParams(
        skew_guard=not args.no_skew_guard, kv_cross_domain_loss=0.0 if args.no_cross_loss else 0.2
    )
    started = time.process_time()
    res = replay(cfg, curves, args.policy, placement="greedy", keep_ticks=False, twin_params=params)
    cpu = time.process_time() - started
    s = res.summary()
    print(
        f"{args.policy} {args.half}: attainment {s['slo_attainment']:.2%}, cost {s['cost']:,.0f}, "
        f"GPU-h {s['gpu_hours']:,.0f}, unmet periods {res.unmet_periods}, cpu {cpu:.0f} s"
    )
    floors = {}
    for svc in cfg.services:
        mine = {(r, g): res.twin.engines[(svc.name, r, g)] for r in Role for g in svc.role(r).gpu_types}
        floors[svc.name] = required_counts(svc, mine, curves[svc.name])
    tick = res.twin.tick_s
    total_ticks = {n: round(st.total_s / tick) for n, st in res.twin.stats.items()}
    causes: Counter[str] = Counter()
    per_svc: dict[str, Counter[str]] = defaultdict(Counter)
    which: Counter[str] = Counter()
    examples: Counter[str] = Counter()
    for (name, now), m in seen.items():
        svc = cfg.service(name)
        fp, fd = floors[name][0][m["i"]], floors[name][1][m["i"]]
        units_p = sum(n * svc.prefill.weight(g) for g, n in m["ready_p"].items())
        units_d = sum(n * svc.decode.weight(g) for g, n in m["ready_d"].items())
        miss_t, miss_b = m["ttft"] > svc.slo.ttft_p99_s, m["tbt"] > svc.slo.tbt_p99_s
        which["TTFT" if miss_t and not miss_b else "TBT" if miss_b and not miss_t else "both"] += 1
        if units_p + 1e-9 < fp or units_d + 1e-9 < fd:
            role = Role.PREFILL if units_p + 1e-9 < fp else Role.DECODE
            placed, ready, _serving = m["pools"][role]
            need = fp if role is Role.PREFILL else fd
            why = (
                "not placed"
                if placed + 1e-9 < need
                else "not Ready (cold start)"
                if ready + 1e-9 < need
                else "Ready, held by the skew guard"
            )
            cause = f"short of the floor: {role.value} {why}"
            if args.verbose and examples[cause] < 4:
                examples[cause] += 1
                print(
                    f"    e.g. {name} t={now - res.twin.t0_s:.0f}s window {m['i']}: floor {fp}P/{fd}D, "
                    f"pools (placed, Ready, serving) {m['pools']}, ready by type {m['ready_p']} / {m['ready_d']}"
                )
        elif m["backlog_p"] > 0 or m["backlog_d"] > 0:
            cause = "floor serving; backlog carried in"
        elif any(g != svc.prefill.reference_gpu_type for g in m["ready_p"]) or any(
            g != svc.decode.reference_gpu_type for g in m["ready_d"]
        ):
            cause = "floor serving; non-reference GPU type in the pool"
        elif m["cross"] > 0:
            cause = "floor serving; cross-domain KV"
        else:
            cause = "floor serving on its own model (?)"
        causes[cause] += 1
        per_svc[name][cause] += 1
    n_miss = len(seen)
    n_all = sum(total_ticks.values())
    print(f"missed ticks {n_miss} of {n_all} ({n_miss / n_all:.2%}); by SLO: {dict(which)}")
    for c, n in causes.most_common():
        print(f"  {n:6d} ({n / n_all:.2%} of ticks)  {c}")
    for name, cs in sorted(per_svc.items()):
        print(f"  {name}: {sum(cs.values())} missed of {total_ticks[name]}: {dict(cs)}")
    if args.out:
        args.out.write_text(
            json.dumps(
                {"summary": s, "missed": n_miss, "ticks": n_all, "causes": dict(causes), "which": dict(which)},
                indent=2,
                default=str,
            )
        )


if __name__ == "__main__":
    main()
