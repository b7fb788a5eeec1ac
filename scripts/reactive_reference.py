"""How much of `heteroscale`'s gap to the hindsight floor is foresight (docs/league.md, "After issue 13").

The floor (`sim/floor.py`) knows each 10-s window's SLO need before it happens. This script replays the
matrix cells with the floor's own per-window counts used *reactively*: each period the fleet is set to
`m` x the most any window of the LAST period needed (and kept at the most of the last 10 minutes), i.e. a
policy with perfect measurement and no foresight. It prints GPU-hours and attainment per cell and `m`.

    .venv/bin/python scripts/reactive_reference.py conversation decode-heavy mix-shift prefill-heavy
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

import flows.replay as replay_module
from flows.matrix import Cell, Sources, run_cell
from flows.replay import replay
from models.values import RoleCounts
from sim.floor import FloorPlan
from tasks.core.registry import load_config

ROOT = Path(__file__).resolve().parent.parent


class ReactivePlan(FloorPlan):
    """The floor's per-window counts, seen only after the fact."""

    headroom = 1.0
    keep_s = 600.0

    def targets(self, now_s: float, t0_s: float) -> tuple[dict[str, RoleCounts], dict[str, RoleCounts]]:
        need, keep = {}, {}
        for svc in self._services:
            c = self._curves[svc.name]
            n_p, n_d = self.counts[svc.name]
            hi = c.at(now_s - t0_s - 1e-6)
            lo = c.at(now_s - t0_s - self._period)
            klo = c.at(now_s - t0_s - self.keep_s)

            def most(a: np.ndarray) -> int:
                return int(np.ceil(a.max() * self.headroom - 1e-9))

            need[svc.name] = RoleCounts(most(n_p[lo : hi + 1]), most(n_d[lo : hi + 1]))
            keep[svc.name] = RoleCounts(most(n_p[klo : hi + 1]), most(n_d[klo : hi + 1]))
        return need, keep


def main(cells: list[str]) -> None:
    config = load_config(ROOT / "deployments" / "clusters" / "demo.yaml")
    sources = Sources(
        ROOT / "data" / "traces" / "azure_llm_2023" / "AzureLLMInferenceTrace_conv.csv",
        ROOT / "data" / "traces" / "servegen" / "servegen_m-small_10min.csv",
    )
    for name in cells:
        cell = run_cell(config, Cell(name), sources, ("oracle",))
        floor = replay(cell.config, cell.curves, "oracle", placement="greedy", keep_ticks=False).summary()
        print(f"{name}: floor {floor['gpu_hours']:.1f} GPU-h at {floor['slo_attainment']:.2%}")
        for headroom in (1.0, 1.2, 1.4):
            ReactivePlan.headroom = headroom
            replay_module.FloorPlan = ReactivePlan  # the oracle's plan, replaced for this replay only
            try:
                row = replay(cell.config, cell.curves, "oracle", placement="greedy", keep_ticks=False).summary()
            finally:
                replay_module.FloorPlan = FloorPlan
            ratio = row["gpu_hours"] / floor["gpu_hours"]
            print(
                f"  reactive x{headroom:g}: {row['gpu_hours']:.1f} GPU-h ({ratio:.2f}x the floor) at {row['slo_attainment']:.2%}"
            )


if __name__ == "__main__":
    main(sys.argv[1:] or [c.value for c in Cell])
