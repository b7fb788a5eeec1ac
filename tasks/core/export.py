"""What a run publishes for HPA/KEDA and Grafana: reason codes and per-cell replicas. Pure.

`reason_code` maps a decision (action, target source, reason text) to a short closed set
(`models.enums.ReasonCode`) so dashboards and alerts can group by it; the full reason stays in
the store and the run's artifact. `cell_replicas` pairs the replicas every cell runs now with
the replicas the plan wants, keeping cells the plan empties (desired 0), so a consumer scaling
one workload per cell sees its scale-in. No I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping

from models.enums import ReasonCode, TargetSource
from models.values import Action, CellKey, Placement

SIGNALS_UNAVAILABLE_PREFIX = "signals-unavailable"

_BY_SOURCE: Mapping[str, ReasonCode] = {
    TargetSource.PROPORTIONAL: ReasonCode.PROPORTIONAL,
    TargetSource.LATENCY: ReasonCode.LATENCY,
    TargetSource.SCHEDULE: ReasonCode.SCHEDULE,
    TargetSource.BOUNDS: ReasonCode.BOUNDS,
    TargetSource.HOLD: ReasonCode.HOLD,
    TargetSource.STATIC: ReasonCode.STATIC,
    TargetSource.HPA: ReasonCode.HPA,
    TargetSource.PLAN: ReasonCode.PLAN,
}


def reason_code(action: Action | str, source: TargetSource | str, reason: str) -> ReasonCode:
    """The reason code of one service's decision.

    An outage (`signals-unavailable: ...`) wins; a hold is then explained by its cause when the
    policy named one (a missing/stale signal or failed query, a running cooldown); otherwise the
    target source says what sized the targets.
    """
    text = reason.lower()
    if text.startswith(SIGNALS_UNAVAILABLE_PREFIX):
        return ReasonCode.SIGNALS_UNAVAILABLE
    if Action(action) is Action.HOLD:
        if "missing" in text or "stale" in text or "failed queries" in text:
            return ReasonCode.SIGNALS_MISSING
        if "cooldown" in text:
            return ReasonCode.COOLDOWN
    return _BY_SOURCE.get(str(source), ReasonCode.HOLD)


def cell_replicas(current: Placement, desired: Placement) -> dict[CellKey, tuple[int, int]]:
    """(current, desired) replicas of every cell that has or gets instances, sorted by cell."""
    keys = sorted(set(current.cells) | set(desired.cells))
    return {k: (current.cells.get(k, 0), desired.cells.get(k, 0)) for k in keys}
