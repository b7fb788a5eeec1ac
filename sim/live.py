"""The twin as a long-lived backend for `scale_cluster`: a simulated cluster that persists.

Each scaling run on the twin backend loads the twin's state from a JSON file, serves one control
period of the trace (looping over the trace), and saves it after apply. Runs of the flow then
behave as consecutive control periods of one simulated cluster, with no GPUs and no cluster.

The closed loop (`heteroscale twin serve` + `scale_cluster --signals-backend prometheus`): the
exporter (`sim.exporter.TwinExporter`) owns the same state file while it runs. It writes its
clock, backlogs and a heartbeat (`live.wall_s`) every tick and adopts the cells a scaling run
wrote. A `TwinBackend` that finds a fresh heartbeat is *live*: it does not serve periods itself
(the exporter is the cluster; its signals come from Prometheus scraping the exporter) and its
apply replaces only the cells, bumping `cells_version`. Every read-modify-write of the file holds
an exclusive `flock` on `<state>.lock`, so an apply is never lost to the exporter's next write.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from models.config import ClusterConfig, Role
from models.values import ApplyMode, ApplyResult, CellKey, PlacementPlan, ServiceSignals, SloState
from sim.sizing import initial_counts
from sim.traces import LoadCurve, load_curve
from sim.twin import Twin
from tasks.core.placement import place_greedy
from tasks.core.policy import bound_decode, max_decode
from tasks.core.topology import ClusterView, view_from_config


def demo_curves(
    config: ClusterConfig, trace: str | Path, peak_rps: Mapping[str, float] | None = None
) -> dict[str, LoadCurve]:
    """One curve per service from `trace`; each scaled to its peak in `peak_rps` if given."""
    base = load_curve(trace, dt_s=min(10.0, config.cluster.control_period_s))
    out = {}
    for svc in config.services:
        peak = (peak_rps or {}).get(svc.name)
        out[svc.name] = base.scaled_to_peak(peak) if peak else base
    return out


# A heartbeat older than this means no exporter is serving the state file any more.
LIVE_TIMEOUT_S = 30.0


@contextlib.contextmanager
def state_lock(state_path: Path) -> Iterator[None]:
    """Exclusive lock for a read-modify-write of the state file (across processes)."""
    state_path.parent.mkdir(parents=True, exist_ok=True)
    with open(state_path.with_suffix(".lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class TwinStateError(ValueError):
    """A twin state file that cannot be read; the message names the file and the fix."""


def read_state(state_path: Path) -> dict[str, Any] | None:
    try:
        state = json.loads(state_path.read_text())
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TwinStateError(
            f"{state_path}: twin state is corrupt ({exc}); delete the file to start the twin afresh"
        ) from None
    if not isinstance(state, dict):
        raise TwinStateError(f"{state_path}: twin state is not a JSON object; delete the file to start afresh")
    return state


def write_state(state_path: Path, state: Mapping[str, Any]) -> None:
    """Atomic replace (a reader never sees half a file). Call under `state_lock`."""
    state_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = state_path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(state))
    tmp.replace(state_path)


def cells_json(twin: Twin) -> list[list[Any]]:
    return [
        [k.service, k.role.value, k.gpu_type, k.s1, b[0] if math.isfinite(b[0]) else None, b[1], b[2]]
        for k, batches in twin._cells.items()
        for b in batches
    ]


def twin_state(twin: Twin) -> dict[str, Any]:
    return {
        "now_s": twin.now_s,
        "cells": cells_json(twin),
        "backlog_prefill": twin._backlog_p,
        "backlog_decode": twin._backlog_d,
    }


def load_cells(twin: Twin, config: ClusterConfig, cells: list[list[Any]]) -> None:
    """Replace the twin's instances with `cells` (services not in the config are dropped)."""
    known = {s.name for s in config.services}
    twin._cells = {}
    for service, role, gpu_type, s1, ready_at, n, *rest in cells:
        if service not in known:
            continue
        key = CellKey(service, Role(role), gpu_type, s1)
        serving = rest[0] if rest else n  # written before the skew guard: serving once Ready
        twin._cells.setdefault(key, []).append([-math.inf if ready_at is None else ready_at, n, serving])
    twin._update_cross()


def load_twin_state(twin: Twin, config: ClusterConfig, state: Mapping[str, Any]) -> None:
    known = {s.name for s in config.services}
    twin.now_s = float(state["now_s"])
    load_cells(twin, config, state["cells"])
    twin._backlog_p.update({k: v for k, v in state.get("backlog_prefill", {}).items() if k in known})
    twin._backlog_d.update({k: v for k, v in state.get("backlog_decode", {}).items() if k in known})


def is_live(state: Mapping[str, Any] | None, *, now_wall_s: float | None = None) -> bool:
    """True when an exporter wrote a heartbeat within LIVE_TIMEOUT_S."""
    beat = (state or {}).get("live") or {}
    wall = beat.get("wall_s")
    now = time.time() if now_wall_s is None else now_wall_s
    return wall is not None and now - float(wall) < LIVE_TIMEOUT_S


class TwinBackend:
    """Signals and cluster backend over a persisted twin. `now()` is the twin's clock."""

    name = "twin"

    def __init__(
        self,
        config: ClusterConfig,
        *,
        state_path: Path,
        curves: Mapping[str, LoadCurve],
    ) -> None:
        self.config = config
        self.state_path = state_path
        period = config.cluster.control_period_s
        dt = min(period, *(c.dt_s for c in curves.values()))
        self.duration_s = max(c.duration_s for c in curves.values())
        self.twin = Twin(config=config, load=curves, tick_s=dt, keep_ticks=False)
        state = read_state(state_path)
        # Served by a running exporter: that process is the cluster, this one only reads and applies.
        self.live = is_live(state)
        if state is not None:
            try:
                load_twin_state(self.twin, config, state)
            except (KeyError, TypeError, ValueError, IndexError) as exc:
                raise TwinStateError(
                    f"{state_path}: twin state does not fit cluster {config.cluster.name!r} ({type(exc).__name__}: "
                    f"{exc}); delete the file to start the twin afresh"
                ) from None
        else:
            seed = place_greedy(config, view_from_config(config), initial_counts(config, curves))
            self.twin.seed(seed.placement)

    # The twin's clock loops over the trace so a scheduled deployment can run for ever.
    def now(self) -> float:
        return self.twin.now_s

    def serve_period(self) -> None:
        if self.live:
            return  # the exporter serves in (accelerated) real time
        period = self.config.cluster.control_period_s
        if self.twin.now_s + period > self.duration_s:
            self.twin.now_s = 0.0
            for cells in self.twin._cells.values():
                for batch in cells:
                    batch[0] = min(batch[0], 0.0)
            self.twin.cells_changed()
        self.twin.advance(self.twin.now_s + period)

    def read_signals(self, config: ClusterConfig, now_s: float) -> dict[str, ServiceSignals]:
        return self.twin.read_signals(config, now_s)

    def read_state(self, config: ClusterConfig, now_s: float) -> ClusterView:
        return self.twin.read_state(config, now_s)

    def apply(
        self,
        config: ClusterConfig,
        plan: PlacementPlan,
        mode: ApplyMode,
        now_s: float,
        *,
        slo: Mapping[str, SloState] | None = None,
    ) -> ApplyResult:
        result = self.twin.apply(config, plan, mode, now_s, slo=slo)
        self.save()
        return result

    def save(self) -> None:
        with state_lock(self.state_path):
            state = read_state(self.state_path) or {}
            version = int(state.get("cells_version", 0)) + 1
            if self.live and is_live(state):
                # Only the instances are ours to change; clock, backlogs and heartbeat are the exporter's.
                write_state(self.state_path, {**state, "cells": cells_json(self.twin), "cells_version": version})
            else:
                write_state(self.state_path, {**twin_state(self.twin), "cells_version": version})


def auto_peaks(config: ClusterConfig, curve: LoadCurve) -> dict[str, float]:
    """Peak request rate per service at which it needs about half its `max_instances`."""
    out_tokens = float(curve.mean_output_tokens.mean()) or 1.0
    in_tokens = float(curve.mean_input_tokens.mean()) or 1.0
    peaks = {}
    for svc in config.services:
        d = bound_decode(svc, max(1, max_decode(svc, svc.policy.max_instances // 2)))
        metric = d * svc.policy.target_per_instance
        if svc.policy.metric.value == "prefill_tps":
            metric *= svc.pd_ratio.prefill_per_decode
            peaks[svc.name] = metric / (in_tokens * (1 - svc.prefix_cache_hit) or 1.0)
        else:
            peaks[svc.name] = metric / out_tokens
    return peaks
