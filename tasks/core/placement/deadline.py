"""Time limits as a value: when placement must stop, read on a clock the caller injects.

Contract: `Deadline(end_s, clock)` is frozen; `clock` is any `Callable[[], float]` returning
seconds on one monotonic scale (the adapter, `tasks/placement_runner.py`, passes
`time.perf_counter`; a test may pass a fake). Placement code in `tasks/core` reads no clock of
its own: every time limit, cap and elapsed-time stat comes from a `Deadline` it was given or
built on that deadline's clock. `left_s()` is negative once the deadline has passed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Deadline:
    """The moment `end_s` on `clock`, by which a solve must have returned."""

    end_s: float
    clock: Clock

    @classmethod
    def after(cls, seconds: float, clock: Clock) -> Deadline:
        """The deadline `seconds` from now on `clock` (`math.inf`: never)."""
        return cls(clock() + seconds, clock)

    def earlier(self, seconds: float) -> Deadline:
        """The deadline `seconds` before this one, on the same clock."""
        return Deadline(self.end_s - seconds, self.clock)

    def now_s(self) -> float:
        return self.clock()

    def left_s(self) -> float:
        return self.end_s - self.clock()

    def passed(self) -> bool:
        return self.clock() > self.end_s
