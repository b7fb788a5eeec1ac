"""The twin as a long-lived backend for `scale_cluster`: a simulated cluster that persists.

Each scaling run on the twin backend loads the twin's state from a JSON file, serves one control
period of the trace (looping over the trace), and saves it after apply. Runs of the flow then
behave as consecutive control periods of one simulated cluster, with no GPUs and no cluster.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

from models.config import ClusterConfig, Role
from models.values import ApplyMode, ApplyResult, CellKey, PlacementPlan, ServiceSignals
from sim.traces import LoadCurve, load_curve
from sim.twin import Twin
from tasks.core.greedy import place_greedy
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
        if state_path.exists():
            self._load(json.loads(state_path.read_text()))
        else:
            from flows.replay import initial_counts

            seed = place_greedy(config, view_from_config(config), initial_counts(config, curves, "heteroscale-paper"))
            self.twin.seed(seed.placement)

    # The twin's clock loops over the trace so a scheduled deployment can run for ever.
    def now(self) -> float:
        return self.twin.now_s

    def serve_period(self) -> None:
        period = self.config.cluster.control_period_s
        if self.twin.now_s + period > self.duration_s:
            self.twin.now_s = 0.0
            for cells in self.twin._cells.values():
                for batch in cells:
                    batch[0] = min(batch[0], 0.0)
        self.twin.advance(self.twin.now_s + period)

    def read_signals(self, config: ClusterConfig, now_s: float) -> dict[str, ServiceSignals]:
        return self.twin.read_signals(config, now_s)

    def read_state(self, config: ClusterConfig, now_s: float) -> ClusterView:
        return self.twin.read_state(config, now_s)

    def apply(self, config: ClusterConfig, plan: PlacementPlan, mode: ApplyMode, now_s: float) -> ApplyResult:
        result = self.twin.apply(config, plan, mode, now_s)
        self.save()
        return result

    def save(self) -> None:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        cells = [
            [k.service, k.role.value, k.gpu_type, k.s1, b[0] if math.isfinite(b[0]) else None, b[1]]
            for k, batches in self.twin._cells.items()
            for b in batches
        ]
        state = {
            "now_s": self.twin.now_s,
            "cells": cells,
            "backlog_prefill": self.twin._backlog_p,
            "backlog_decode": self.twin._backlog_d,
        }
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(self.state_path)

    def _load(self, state: dict) -> None:
        self.twin.now_s = float(state["now_s"])
        self.twin._cells = {}
        known = {s.name for s in self.config.services}
        for service, role, gpu_type, s1, ready_at, n in state["cells"]:
            if service not in known:
                continue
            key = CellKey(service, Role(role), gpu_type, s1)
            self.twin._cells.setdefault(key, []).append([-math.inf if ready_at is None else ready_at, n])
        self.twin._backlog_p.update({k: v for k, v in state.get("backlog_prefill", {}).items() if k in known})
        self.twin._backlog_d.update({k: v for k, v in state.get("backlog_decode", {}).items() if k in known})


def auto_peaks(config: ClusterConfig, curve: LoadCurve) -> dict[str, float]:
    """Peak request rate per service at which it needs about half its `max_instances`."""
    from tasks.core.policy import bound_decode, split_by_ratio

    out_tokens = float(curve.mean_output_tokens.mean()) or 1.0
    in_tokens = float(curve.mean_input_tokens.mean()) or 1.0
    peaks = {}
    for svc in config.services:
        d = 1
        while split_by_ratio(svc, d + 1).total <= svc.policy.max_instances // 2:
            d += 1
        d = bound_decode(svc, d)
        metric = d * svc.policy.target_per_instance
        if svc.policy.metric.value == "prefill_tps":
            metric *= svc.pd_ratio.prefill_per_decode
            peaks[svc.name] = metric / (in_tokens * (1 - svc.prefix_cache_hit) or 1.0)
        else:
            peaks[svc.name] = metric / out_tokens
    return peaks
