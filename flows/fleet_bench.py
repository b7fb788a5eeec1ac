"""The replay benchmark at fleet scale: one synthetic fleet (`sim.fleet`), each policy replayed on it.

Contract: `bench_replay(services=N, days=D, policies=[...])` builds the fleet once, replays each
policy with `flows.replay.replay` (the loop `heteroscale replay` runs, `keep_ticks=False`, no
plots or report: those are output costs, not the replay's) and returns one row per policy:
wall seconds of the replay, simulated service-days per wall second, and the process's peak
resident set size after that policy (`resource.getrusage`: a high-water mark, so it never falls
from one row to the next), with the league's headline numbers beside them.

`skip_unchanged=False` replays with the plain loop (no `DecisionCache`), to compare the two.
`reselect_every_s` overrides how often `auto` re-runs its backtest selection (an approximation:
between selections the chosen method forecasts alone; measured in docs/twin.md);
`pin_between_selections` the replay's option of that name (another approximation, measured there).
`profile_dir`: each policy's replay under cProfile, `<policy>.prof` (pstats) and `<policy>.txt`
(the top functions by cumulative and by own time) written there.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import resource
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from flows.replay import replay
from models.config import PlacementMethod
from sim.fleet import synthetic_fleet
from tasks.core.policy import POLICIES

DEFAULT_POLICIES = ("heteroscale-paper",)


def peak_rss_mb() -> float:
    """The process's peak resident set size so far, MB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024.0 * 1024.0) if sys.platform == "darwin" else rss / 1024.0


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _write_profile(prof: cProfile.Profile, out: Path, name: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    prof.dump_stats(out / f"{name}.prof")
    text = io.StringIO()
    stats = pstats.Stats(prof, stream=text).strip_dirs()
    stats.sort_stats("cumulative").print_stats(40)
    stats.sort_stats("tottime").print_stats(25)
    (out / f"{name}.txt").write_text(text.getvalue())


def bench_replay(
    *,
    services: int,
    days: float,
    policies: Sequence[str] = DEFAULT_POLICIES,
    placement: PlacementMethod | str | None = PlacementMethod.GREEDY,
    seed: int = 1,
    profile_dir: Path | None = None,
    skip_unchanged: bool = True,
    reselect_every_s: float | None = None,
    pin_between_selections: bool = False,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    bad = [p for p in policies if p not in POLICIES]
    if bad:
        raise ValueError(f"unknown policy {bad}; choose from {sorted(POLICIES)}")
    say = progress or (lambda _msg: None)
    started = time.perf_counter()
    fleet = synthetic_fleet(services=services, days=days, seed=seed)
    build_s = time.perf_counter() - started
    say(f"fleet: {services} services, {fleet.total_gpus} GPUs, load x{fleet.load_factor:.3g} ({build_s:.1f} s)")
    rows = []
    for name in policies:
        prof = cProfile.Profile() if profile_dir is not None else None
        t0, cpu0 = time.perf_counter(), _cpu_s()
        if prof is not None:
            prof.enable()
        result = replay(
            fleet.config,
            fleet.curves,
            name,
            keep_ticks=False,
            placement=placement,
            skip_unchanged=skip_unchanged,
            pin_between_selections=pin_between_selections,
            **({} if reselect_every_s is None else {"reselect_every_s": reselect_every_s}),
        )
        if prof is not None:
            prof.disable()
        wall, cpu = time.perf_counter() - t0, _cpu_s() - cpu0
        if prof is not None and profile_dir is not None:
            _write_profile(prof, profile_dir, name)
        summary = result.summary()
        service_days = services * summary["simulated_s"] / 86400.0
        row = {
            "policy": name,
            "wall_s": round(wall, 2),
            # CPU seconds of this process: on a shared machine closer to the work than wall time.
            "cpu_s": round(cpu, 2),
            "service_days_per_s": round(service_days / wall, 2) if wall > 0 else None,
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "gpu_hours": summary["gpu_hours"],
            "slo_attainment": summary["slo_attainment"],
            "unmet_periods": summary["unmet_periods"],
            "scale_actions": summary["scale_actions"],
            "cost": summary["cost"],
            "avg_gpu_util": summary["avg_gpu_util"],
        }
        rows.append(row)
        say(f"{name}: {row['wall_s']} s, {row['service_days_per_s']} service-days/s, {row['peak_rss_mb']} MB")
    return {
        "services": services,
        "days": days,
        "seed": seed,
        "gpus": fleet.total_gpus,
        "placement": str(placement) if placement is not None else "per policy",
        "load_factor": fleet.load_factor,
        "build_s": round(build_s, 2),
        "profiled": profile_dir is not None,
        # False: the plain loop (every service's policy called every period), for comparison.
        "skip_unchanged": skip_unchanged,
        # None: the replay's own cadence (flows.replay.RESELECT_EVERY_S, hourly).
        "reselect_every_s": reselect_every_s,
        "pin_between_selections": pin_between_selections,
        "rows": rows,
    }
