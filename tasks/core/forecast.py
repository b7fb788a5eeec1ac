"""Near-term load forecasting: pure functions of a metric history and the horizon.

Contract: a forecaster maps `(history, horizon_s)` to the expected metric value `horizon_s`
after the last sample, or `None` when the history cannot support a forecast (empty, all NaN).
History is a sequence of `(t_s, value)` pairs in time order; NaN or None values are gaps,
never zeros. Forecasters are chosen by name from `FORECASTERS`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

History = Sequence[tuple[float, float | None]]
Forecaster = Callable[[History, float], float | None]


def _valid(history: History) -> list[tuple[float, float]]:
    return [(t, v) for t, v in history if v is not None and math.isfinite(v)]


def last_value(history: History, horizon_s: float) -> float | None:
    """The most recent valid sample: the baseline every forecaster is judged against."""
    valid = _valid(history)
    return valid[-1][1] if valid else None


FORECASTERS: dict[str, Forecaster] = {"last-value": last_value}


def get_forecaster(name: str) -> Forecaster:
    try:
        return FORECASTERS[name]
    except KeyError:
        raise ValueError(f"unknown forecaster {name!r}; choose one of {sorted(FORECASTERS)}") from None
