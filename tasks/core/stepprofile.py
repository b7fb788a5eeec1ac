"""Step awareness: upward steps of the policy metric, the daily profile of when they happen, and
the steps that profile expects next. Pure (numpy), no clock: times are the history's own.

Load that moves in steps (ServeGen's 10-minute rate windows, a deployment going live at 09:00, a
batch job starting on the hour) costs a reactive policy a cold start of SLO misses at every large
upward step: it sees the step one period late and its instances need minutes to become Ready.
When such steps recur at the same time of day, they can be provisioned one cold start ahead.

Contract:
  * `detect_steps(history, ...)`: the upward steps in a `(t_s, value)` history (None/NaN = gap,
    never zero; values <= 0 are gaps too, a ratio needs a level). A step at sample i: the mean
    of the `window_s` from i on over the mean of the `window_s` before it is a local maximum
    (within one window either way) and both that ratio and the ratio of the medians are at least
    1 + `min_step` (the medians: a one-sample burst is not a step). Its time is the last sample
    before it (where the old level was still measured), its size the ratio of the medians - 1.
  * `expected_steps(history, origin_s, lookahead_s, params)`: for each time of day in
    (origin, origin + lookahead] at which, on the past days (1, 2, ... days back) whose history
    covers it, a step occurred within +- `tolerance_s` on at least `min_days` days and at least
    `min_share` of the days seen: an `ExpectedStep` at that time with the median of those days'
    sizes. Steps at a time of day that recur on fewer days (noise, a one-off burst) expect
    nothing.
  * `daily_profile(history, slot_s, params)`: the same evidence per time-of-day slot (days seen,
    days with a step, median size), for reports.
  * `step_factor(steps, now_s, horizon_s)`: the demand factor (>= 1) the policy sizes for when an
    expected step falls in (now, now + horizon], and why ("" when none does).

Days are 86,400 s of the history's clock (time zones and DST shifts are not modelled).
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import islice

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from models.config import StepAwareness
from models.values import ExpectedStep

History = Sequence[tuple[float, float | None]]

DAY_S = 86400.0
# The forecast carrying the expected steps may be reused for a while (the replay recomputes it
# once per trace window): it lists the steps expected over this long after its horizon.
OUTLOOK_S = 3600.0


@dataclass(frozen=True, slots=True)
class DetectedStep:
    """An upward step seen in the history: the level rose by `size` (0.25 = +25%) after `t_s`."""

    t_s: float
    size: float


@dataclass(frozen=True, slots=True)
class ProfileSlot:
    """One time-of-day slot of the daily step profile."""

    start_s: float  # seconds after midnight (history clock)
    days_seen: int
    days_with: int
    median_size: float | None


def _arrays(history: History) -> tuple[np.ndarray, np.ndarray]:
    t = np.fromiter((h[0] for h in history), dtype=float, count=len(history))
    v = np.fromiter((np.nan if h[1] is None else h[1] for h in history), dtype=float, count=len(history))
    v[~np.isfinite(v) | (v <= 0)] = np.nan
    return t, v


def _window_samples(t: np.ndarray, window_s: float) -> int:
    """Samples per window at the history's median spacing (at least 1)."""
    if len(t) < 2:
        return 1
    dt = float(np.median(np.diff(t)))
    return max(1, round(window_s / dt)) if dt > 0 else 1


def _rolling(v: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and median of v[i : i + k] for every i (NaN when fewer than half are valid)."""
    n = len(v)
    padded = np.concatenate([v, np.full(k - 1, np.nan)])
    w = sliding_window_view(padded, k)[:n]
    valid = ~np.isnan(w)
    count = valid.sum(axis=1)
    filled = np.where(valid, w, 0.0)
    mean = np.divide(filled.sum(axis=1), count, out=np.full(n, np.nan), where=count > 0)
    # The median of each row's valid values: NaNs sort last, so they sit at [lo, hi] of the sorted row.
    ordered = np.sort(w, axis=1)
    lo = np.maximum(count - 1, 0) // 2
    hi = np.maximum(count, 1) // 2
    pick = np.take_along_axis
    med = (pick(ordered, lo[:, None], axis=1)[:, 0] + pick(ordered, hi[:, None], axis=1)[:, 0]) / 2
    enough = count >= math.ceil(k / 2)
    return np.where(enough, mean, np.nan), np.where(enough, med, np.nan)


def detect_steps(history: History, *, min_step: float, window_s: float) -> list[DetectedStep]:
    """The upward steps of at least `min_step` in `history` (see the module's contract)."""
    t, v = _arrays(history)
    return _detect(t, v, min_step=min_step, window_s=window_s)


def _detect(t: np.ndarray, v: np.ndarray, *, min_step: float, window_s: float) -> list[DetectedStep]:
    if len(t) < 3:
        return []
    k = _window_samples(t, window_s)
    if len(t) <= k:
        return []
    after_mean, after_med = _rolling(v, k)
    # The window before i is the window after i - k.
    before_mean = np.concatenate([np.full(k, np.nan), after_mean[:-k]])
    before_med = np.concatenate([np.full(k, np.nan), after_med[:-k]])
    with np.errstate(divide="ignore", invalid="ignore"):
        r_mean = after_mean / before_mean
        r_med = after_med / before_med
    r = np.where(np.isnan(r_mean), -np.inf, r_mean)
    # Local maximum within one window either way: strictly above the earlier ones (a plateau of
    # equal ratios yields its first sample), at least the later ones.
    pad = np.full(k, -np.inf)
    rp = np.concatenate([pad, r, pad])
    n = len(r)
    earlier = sliding_window_view(rp[: n + k - 1], k)[:n].max(axis=1)
    later = sliding_window_view(rp[k + 1 : n + 2 * k], k)[:n].max(axis=1)
    peak = (r > earlier) & (r >= later)
    hit = peak & (r_mean >= 1 + min_step) & (r_med >= 1 + min_step)
    hit[0] = False  # no sample before it: no time for the old level
    return [DetectedStep(float(t[i - 1]), float(r_med[i] - 1.0)) for i in np.flatnonzero(hit)]


@dataclass(frozen=True, slots=True)
class _Evidence:
    steps_t: np.ndarray  # detected step times, sorted
    steps_size: np.ndarray
    valid_t: np.ndarray  # times of valid samples, sorted
    window_s: float


def _evidence(history: History, params: StepAwareness) -> _Evidence:
    t, v = _arrays(history)
    steps = _detect(t, v, min_step=params.min_step, window_s=params.window_s)
    return _Evidence(
        steps_t=np.array([s.t_s for s in steps]),
        steps_size=np.array([s.size for s in steps]),
        valid_t=t[~np.isnan(v)],
        window_s=params.window_s,
    )


def _evidence_near(history: History, params: StepAwareness, spans: Sequence[tuple[float, float]]) -> _Evidence:
    """The evidence within the time spans only (each padded so that a step inside is detected as
    on the whole history): one query reads a few hours of each past day, not days of samples."""
    pad = 3 * params.window_s
    steps: list[DetectedStep] = []
    valid: list[np.ndarray] = []
    for lo_t, hi_t in sorted(spans):
        lo = bisect_left(history, lo_t - pad, key=_time)
        hi = bisect_right(history, hi_t + pad, key=_time)
        t, v = _arrays(list(islice(history, lo, hi)))
        steps += [s for s in _detect(t, v, min_step=params.min_step, window_s=params.window_s) if lo_t <= s.t_s <= hi_t]
        valid.append(t[~np.isnan(v) & (t >= lo_t - params.window_s) & (t <= hi_t + params.window_s)])
    return _Evidence(
        steps_t=np.array([s.t_s for s in steps]),
        steps_size=np.array([s.size for s in steps]),
        valid_t=np.concatenate(valid) if valid else np.array([]),
        window_s=params.window_s,
    )


def _time(h: tuple[float, float | None]) -> float:
    return h[0]


def _seen(ev: _Evidence, at_s: float) -> bool:
    """Whether a step at `at_s` could have been detected: valid samples on both sides of it."""
    lo = np.searchsorted(ev.valid_t, at_s - ev.window_s, side="left")
    mid = np.searchsorted(ev.valid_t, at_s, side="right")
    hi = np.searchsorted(ev.valid_t, at_s + ev.window_s + 1e-9, side="right")
    return bool(mid > lo and hi > mid)


def _day_sizes(ev: _Evidence, at_s: float, tolerance_s: float, days: int) -> tuple[int, list[float]]:
    """Over the past `days` days at the time of day of `at_s`: the days seen, and the size of the
    largest step within +- tolerance on each day that had one."""
    seen = 0
    sizes: list[float] = []
    for d in range(1, days + 1):
        then = at_s - d * DAY_S
        lo = np.searchsorted(ev.steps_t, then - tolerance_s, side="left")
        hi = np.searchsorted(ev.steps_t, then + tolerance_s, side="right")
        if hi > lo:
            seen += 1
            sizes.append(float(ev.steps_size[lo:hi].max()))
        elif _seen(ev, then):
            seen += 1
    return seen, sizes


def _days_back(history: History, at_s: float) -> int:
    return int((at_s - history[0][0]) // DAY_S) if history else 0


def expected_steps(
    history: History, origin_s: float, lookahead_s: float, params: StepAwareness
) -> tuple[ExpectedStep, ...]:
    """The upward steps the daily profile expects in (origin, origin + lookahead] (see the
    module's contract), in time order; one per group of candidate times within the tolerance."""
    days = _days_back(history, origin_s + lookahead_s)
    if days < params.min_days:
        return ()
    tol = params.tolerance_s
    span = params.window_s + tol
    ev = _evidence_near(
        history,
        params,
        [(origin_s - d * DAY_S - span, origin_s + lookahead_s - d * DAY_S + span) for d in range(1, days + 1)],
    )
    # Candidate times: every past step shifted forward by whole days into the window.
    cands: set[float] = set()
    for d in range(1, days + 1):
        lo = np.searchsorted(ev.steps_t, origin_s - d * DAY_S, side="right")
        hi = np.searchsorted(ev.steps_t, origin_s + lookahead_s - d * DAY_S, side="right")
        cands.update(float(x) + d * DAY_S for x in ev.steps_t[lo:hi])
    found: list[ExpectedStep] = []
    for at in sorted(cands):
        seen, sizes = _day_sizes(ev, at, tol, days)
        if len(sizes) < params.min_days or len(sizes) < params.min_share * seen:
            continue
        step = ExpectedStep(t_s=at, size=float(np.median(sizes)), days_with=len(sizes), days_seen=seen)
        if found and at - found[-1].t_s <= tol:
            # The same recurring step seen from another day's timing: keep the better supported.
            if step.days_with > found[-1].days_with:
                found[-1] = step
            continue
        found.append(step)
    return tuple(found)


def daily_profile(history: History, slot_s: float, params: StepAwareness) -> list[ProfileSlot]:
    """Per time-of-day slot: the days the history saw it, the days with an upward step in it, and
    those steps' median size (None without any). For reports and the docs; the policy reads
    `expected_steps`."""
    if not history:
        return []
    ev = _evidence(history, params)
    t0 = history[0][0]
    day0 = math.floor(t0 / DAY_S) * DAY_S
    ndays = max(1, math.ceil((history[-1][0] - day0) / DAY_S))
    out: list[ProfileSlot] = []
    for start in np.arange(0.0, DAY_S, slot_s):
        seen = 0
        sizes: list[float] = []
        for d in range(ndays):
            a = day0 + d * DAY_S + start
            lo = np.searchsorted(ev.steps_t, a, side="left")
            hi = np.searchsorted(ev.steps_t, a + slot_s, side="left")
            if hi > lo:
                seen += 1
                sizes.append(float(ev.steps_size[lo:hi].max()))
            elif _seen(ev, a + slot_s / 2):
                seen += 1
        out.append(ProfileSlot(float(start), seen, len(sizes), float(np.median(sizes)) if sizes else None))
    return out


def step_factor(steps: Sequence[ExpectedStep], now_s: float, horizon_s: float) -> tuple[float, str]:
    """The demand factor for the largest step expected in (now, now + horizon] (1.0 and "" when
    none is), and the reason an operator reads."""
    ahead = [s for s in steps if now_s < s.t_s <= now_s + horizon_s]
    if not ahead:
        return 1.0, ""
    big = max(ahead, key=lambda s: s.size)
    why = (
        f"step pre-provision: +{big.size:.0%} step expected in {big.t_s - now_s:.0f}s "
        f"(on {big.days_with} of {big.days_seen} past days at this time of day)"
    )
    return 1.0 + big.size, why
