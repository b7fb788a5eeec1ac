"""A metric history that keeps its samples as numpy arrays while it grows: the forecasters' grid
without re-reading the whole history per call.

Contract: `SampleHistory` is a `collections.deque` of `(t_s, value)` pairs (what
`tasks.steps.extend_history` appends to and trims from the front, O(1) a sample) that also keeps
the same samples in two float arrays, `t_s` and the value (None and non-finite values as NaN).
`tasks.core.forecast.to_grid` reads `as_arrays()` when the history has it instead of converting
the pairs with `np.array` (at an 8-day window, 11,520 pairs a call: the single largest cost of a
forecast in the replay). The grid is the same, bit for bit: the arrays hold the very floats
`np.array(history, dtype=float)` would (`tests/unit/test_forecast_grid.py`).

Only the deque operations the history uses are supported (append, extend, popleft, clear); the
others raise, so the arrays can never drift from the pairs.

`nanmedian_rows`: the daily shapes' median over days, without numpy's all-NaN warnings.

`rolling_median_from`: the forecasters' trailing rolling median computed only from the first
origin a caller reads (same floats there as over the whole series).

`LastCall`: a one-entry memo for the forecasters' pure array steps (the smoothed log series and
the daily shape), keyed by the exact bits of the input; same results, tested with it off.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from typing import Any, NoReturn

import numpy as np
import pandas as pd

Sample = tuple[float, float | None]
_MIN_CAPACITY = 256


class SampleHistory(deque[Sample]):
    """`(t_s, value)` pairs in time order, mirrored in amortised-O(1) numpy buffers."""

    def __init__(self, samples: Iterable[Sample] = ()) -> None:
        super().__init__()
        self._t = np.empty(_MIN_CAPACITY)
        self._v = np.empty(_MIN_CAPACITY)
        self._lo = 0  # first live slot
        self._hi = 0  # one past the last live slot
        # Every consecutive difference of t_s from slot `_reg_from` on equals `_step` (the replay
        # samples once a control period): `regular_step` answers "one sample per grid slot" in O(1).
        self._reg_from = 0
        self._step = math.nan
        for s in samples:
            self.append(s)

    def append(self, sample: Sample) -> None:
        t, value = sample
        if self._hi == len(self._t):
            self._make_room()
        self._t[self._hi] = float(t)
        if self._hi == self._lo:  # the first live sample: no difference yet
            self._reg_from, self._step = self._hi, math.nan
        else:
            d = self._t[self._hi] - self._t[self._hi - 1]
            if d != self._step:  # a new run of equal differences starts at the previous sample
                self._reg_from, self._step = self._hi - 1, d
        self._v[self._hi] = float(value) if value is not None and math.isfinite(value) else math.nan
        self._hi += 1
        super().append(sample)

    def extend(self, samples: Iterable[Sample]) -> None:
        for s in samples:
            self.append(s)

    def popleft(self) -> Sample:
        sample = super().popleft()
        self._lo += 1
        return sample

    def clear(self) -> None:
        super().clear()
        self._lo = self._hi = self._reg_from = 0
        self._step = math.nan

    def regular_step(self) -> float | None:
        """The spacing when every consecutive difference of the live t_s is the same positive
        float (two samples or more), else None."""
        if self._hi - self._lo >= 2 and self._reg_from <= self._lo and self._step > 0:
            return float(self._step)
        return None

    def __reduce__(self) -> tuple[Any, ...]:
        # deque's own reduce would restore the buffers and then append every pair again.
        return (type(self), (list(self),))

    def as_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(t_s, value) of the live samples; read-only views (NaN = missing)."""
        t, v = self._t[self._lo : self._hi], self._v[self._lo : self._hi]
        t.flags.writeable = False
        v.flags.writeable = False
        return t, v

    def _make_room(self) -> None:
        # Compact to the front, growing only when more than half the buffer is live: each sample
        # is copied O(1) times on average (a sliding window compacts every ~n/2 appends).
        live = self._hi - self._lo
        cap = len(self._t)
        if live > cap // 2:
            cap *= 2
        t, v = np.empty(cap), np.empty(cap)
        t[:live] = self._t[self._lo : self._hi]
        v[:live] = self._v[self._lo : self._hi]
        self._reg_from = max(0, self._reg_from - self._lo)
        self._t, self._v, self._lo, self._hi = t, v, 0, live

    # The arrays mirror the pairs only under the operations above.
    def _unsupported(self, *_args: Any, **_kwargs: Any) -> NoReturn:
        raise NotImplementedError("SampleHistory supports append, extend, popleft and clear only")

    appendleft = extendleft = pop = insert = remove = rotate = reverse = _unsupported  # type: ignore[assignment]
    __setitem__ = __delitem__ = __iadd__ = _unsupported  # type: ignore[assignment]


class LastCall:
    """One-entry memo of a pure array function, keyed by the exact bits of its array input and its
    other arguments. Within one `select_forecaster` call seasonal-blend, seasonal-ar and profile-ar
    each smooth the same history and take the same daily shape (three times each before; a third
    of a replay's CPU at an 8-day history). Hits return a copy; `enabled = False` turns it off."""

    def __init__(self) -> None:
        self.enabled = True
        self._entry: tuple[np.ndarray, tuple[float, ...], np.ndarray] | None = None

    def get(self, arr: np.ndarray, params: tuple[float, ...]) -> np.ndarray | None:
        entry = self._entry  # one read: another thread's put replaces the tuple whole
        if not self.enabled or entry is None or entry[1] != params or entry[0].shape != arr.shape:
            return None
        if not np.array_equal(entry[0].view(np.uint64), np.ascontiguousarray(arr, dtype=np.float64).view(np.uint64)):
            return None
        return entry[2].copy()

    def put(self, arr: np.ndarray, params: tuple[float, ...], out: np.ndarray) -> np.ndarray:
        if self.enabled:
            self._entry = (np.array(arr, dtype=np.float64), params, out.copy())
        return out


def rolling_median_from(y: np.ndarray, k: int, start: int) -> np.ndarray:
    """The trailing k-sample median of the observed values, forward-filled over windows with none;
    NaN before `start`. The same floats as over the whole series: a window's median reads only its
    own k samples, and from the first origin on the fill reaches back no further than `start` unless
    that window is empty (then the whole series is used)."""
    lo = min(max(0, start - k + 1), len(y))
    level = pd.Series(y[lo:]).rolling(k, min_periods=1).median().ffill().to_numpy()
    if lo == 0:
        return level
    if start < len(y) and np.isnan(level[start - lo]):
        return rolling_median_from(y, k, 0)  # the fill at `start` reaches before the slice
    out = np.full(len(y), np.nan)
    out[start:] = level[start - lo :]
    return out


def nanmedian_rows(x: np.ndarray) -> np.ndarray:
    """`np.nanmedian(x, axis=0)` without its per-column warnings for all-NaN columns (most
    columns are, early in a history; the warnings cost more than the median)."""
    srt = np.sort(x.T, axis=1).T  # NaNs sort last (sorted along contiguous rows: faster)
    cnt = np.sum(~np.isnan(x), axis=0)
    cols = np.arange(x.shape[1])
    lo, hi = np.maximum(cnt - 1, 0) // 2, np.maximum(cnt, 1) // 2
    with np.errstate(invalid="ignore"):
        med = (srt[lo, cols] + srt[hi, cols]) / 2.0
    return np.where(cnt > 0, med, np.nan)


def one_per_slot(history: object, t: np.ndarray, v: np.ndarray, max_points: int) -> tuple[np.ndarray, float] | None:
    """`to_grid`'s result (values, step) when `history` is a `SampleHistory` whose samples are
    evenly spaced (`regular_step`) and fit in `max_points`: one sample per slot, so every
    difference is the step (also their median) and each slot's mean is its one value (+ 0.0: what
    the slot sum adds; /1: what the mean divides by). None: take the general path."""
    regular = getattr(history, "regular_step", None)
    step = regular() if regular is not None else None
    if step is None or (t[-1] - t[0]) / step + 1 > max_points:
        return None
    if not np.array_equal(np.rint((t[-1] - t) / step), np.arange(len(t) - 1, -1, -1)):
        return None
    return v + 0.0, step
