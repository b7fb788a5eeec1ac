"""Workload shapes for the policy matrix, built from real traces by plain arithmetic.

Contract: pure functions of their inputs (a seeded generator where requests are added), no I/O.
Per-request builders take and return the DataFrame of `sim.traces.load_requests` (`t_s`,
`input_tokens`, `output_tokens`, with its `attrs`); curve builders take and return a
`LoadCurve`. What each shape of `bench matrix` is made of is in docs/league.md ("Workload
matrix"); the constants below are the values stated there.

  * `scale_sizes`: every request's prompt and/or output length times a factor (the arrivals
    are the trace's own);
  * `add_bursts`: short windows raised to a multiple of the trace's mean request rate, on a
    fixed schedule, with requests drawn from the trace itself (seeded);
  * `switch_sizes`: one trace's sizes before a time, another's after, on the same arrivals;
  * `head_requests` / `head_curve`: the first stretch of a trace;
  * `ttft_floor_s` / `feasible_ttft_slo_s`: the p99 TTFT no fleet can beat on a GPU type (the
    twin's own terms) and an SLO a fleet can meet, for the long-context cell.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from sim.traces import LoadCurve
from tasks.core import capacity as cap
from tasks.core.capacity import EngineModel

# `prefill-heavy` (code-completion-like): ~2.3k-token prompts, ~26-token outputs on Azure conv.
PREFILL_HEAVY = (2.0, 1.0 / 8.0)
# `decode-heavy` (reasoning-like): outputs x6.
DECODE_HEAVY = (1.0, 6.0)
# `long-context`: prompts x8 (9.2k mean, ~33k p99 on Azure conv).
LONG_CONTEXT = (8.0, 1.0)
# Bursts: a 10-s window every 5 minutes, the first starting 150 s into the trace, raised to 6x
# the trace's mean request rate (windows already above that are left as they are).
BURST_S = 10.0
BURST_EVERY_S = 300.0
BURST_OFFSET_S = 150.0
BURST_FACTOR = 6.0
BURST_SEED = 13
# The feasible long-context SLO: this many times the TTFT floor on the best GPU, rounded up to
# half a second (room for the queueing wait the twin adds on top of the p99 prompt's prefill).
FEASIBLE_TTFT_MARGIN = 1.5


def _with_attrs(df: pd.DataFrame, like: pd.DataFrame) -> pd.DataFrame:
    df.attrs.update(like.attrs)
    return df


def scale_sizes(requests: pd.DataFrame, *, input_factor: float = 1.0, output_factor: float = 1.0) -> pd.DataFrame:
    """The same arrivals with every prompt x `input_factor` and every output x `output_factor`
    (rounded, at least one token)."""
    if input_factor <= 0 or output_factor <= 0:
        raise ValueError(f"size factors must be positive, got {input_factor}, {output_factor}")
    out = requests.copy()
    out["input_tokens"] = np.maximum(np.round(requests["input_tokens"].to_numpy(float) * input_factor), 1.0)
    out["output_tokens"] = np.maximum(np.round(requests["output_tokens"].to_numpy(float) * output_factor), 1.0)
    return _with_attrs(out, requests)


def burst_starts_s(
    duration_s: float, *, every_s: float = BURST_EVERY_S, offset_s: float = BURST_OFFSET_S, burst_s: float = BURST_S
) -> np.ndarray:
    """Start times of the bursts that fit wholly inside `[0, duration_s)`."""
    return np.arange(offset_s, max(duration_s - burst_s, 0.0) + 1e-9, every_s)


def add_bursts(
    requests: pd.DataFrame,
    *,
    factor: float = BURST_FACTOR,
    burst_s: float = BURST_S,
    every_s: float = BURST_EVERY_S,
    offset_s: float = BURST_OFFSET_S,
    seed: int = BURST_SEED,
) -> pd.DataFrame:
    """Raise each burst window (`burst_starts_s`) to `factor` x the trace's mean request rate by
    adding requests at uniform times inside it, their sizes drawn (with replacement) from the
    trace's own requests. Deterministic for a given `seed`; the trace's own requests are kept."""
    if factor <= 0 or burst_s <= 0 or every_s < burst_s:
        raise ValueError(f"bursts need factor > 0 and 0 < burst_s <= every_s, got {factor}, {burst_s}, {every_s}")
    t = requests["t_s"].to_numpy(float)
    duration_s = float(t.max()) + 1e-9 if len(t) else 0.0
    mean_rps = len(t) / duration_s if duration_s > 0 else 0.0
    goal = round(factor * mean_rps * burst_s)
    rng = np.random.default_rng(seed)
    added = []
    for start in burst_starts_s(duration_s, every_s=every_s, offset_s=offset_s, burst_s=burst_s):
        have = int(((t >= start) & (t < start + burst_s)).sum())
        extra = goal - have
        if extra <= 0:
            continue
        pick = rng.integers(0, len(requests), extra)
        rows = requests.iloc[pick][["input_tokens", "output_tokens"]].reset_index(drop=True)
        rows.insert(0, "t_s", start + rng.uniform(0.0, burst_s, extra))
        added.append(rows)
    out = pd.concat([requests[["t_s", "input_tokens", "output_tokens"]], *added], ignore_index=True)
    out = out.sort_values("t_s", kind="stable").reset_index(drop=True)
    return _with_attrs(out, requests)


def switch_sizes(first: pd.DataFrame, second: pd.DataFrame, at_s: float) -> pd.DataFrame:
    """`first`'s requests before `at_s`, `second`'s from `at_s` on. Both must carry the same
    arrivals (e.g. `second = scale_sizes(first, ...)`): only the sizes change at `at_s`."""
    if len(first) != len(second) or not np.allclose(first["t_s"].to_numpy(), second["t_s"].to_numpy()):
        raise ValueError("switch_sizes needs two traces with the same arrivals")
    late = first["t_s"].to_numpy() >= at_s
    out = first.copy()
    for col in ("input_tokens", "output_tokens"):
        out[col] = np.where(late, second[col].to_numpy(float), first[col].to_numpy(float))
    return _with_attrs(out, first)


def head_requests(requests: pd.DataFrame, duration_s: float) -> pd.DataFrame:
    """Requests of the first `duration_s` seconds."""
    out = requests[requests["t_s"] < duration_s].reset_index(drop=True)
    return _with_attrs(out, requests)


def head_curve(curve: LoadCurve, duration_s: float) -> LoadCurve:
    """The first `duration_s` of a curve (whole windows; all of it when shorter)."""
    n = max(1, min(len(curve.t_s), math.ceil(duration_s / curve.dt_s - 1e-9)))
    return replace(
        curve,
        t_s=curve.t_s[:n],
        req_per_s=curve.req_per_s[:n],
        mean_input_tokens=curve.mean_input_tokens[:n],
        mean_output_tokens=curve.mean_output_tokens[:n],
        observed=curve.observed[:n],
    )


def split_at_s(curve: LoadCurve, share: float) -> float:
    """Curve time at which `LoadCurve.split(share)` cuts (a mix shift lines up with it)."""
    n = max(1, min(len(curve.t_s) - 1, round(len(curve.t_s) * share)))
    return float(curve.t_s[n])


# --- what a shape looks like (the matrix reports it per cell; tests check it) ----------------


@dataclass(frozen=True)
class ShapeStats:
    """Request-weighted mean sizes and the burstiness of a curve (or part of one)."""

    mean_input_tokens: float
    mean_output_tokens: float
    peak_to_mean_rps: float
    duration_s: float

    @staticmethod
    def of(curve: LoadCurve) -> ShapeStats:
        w = curve.req_per_s
        tot = float(w.sum())
        mean_in = float((curve.mean_input_tokens * w).sum() / tot) if tot else 0.0
        mean_out = float((curve.mean_output_tokens * w).sum() / tot) if tot else 0.0
        mean_rps = float(np.mean(w)) if len(w) else 0.0
        return ShapeStats(mean_in, mean_out, float(np.max(w)) / mean_rps if mean_rps else 0.0, curve.duration_s)


def size_stats(requests: pd.DataFrame) -> dict[str, float]:
    """Mean and p99 request sizes of a per-request trace."""
    return {
        "mean_input_tokens": float(requests["input_tokens"].mean()),
        "p99_input_tokens": float(requests["input_tokens"].quantile(0.99)),
        "mean_output_tokens": float(requests["output_tokens"].mean()),
        "p99_output_tokens": float(requests["output_tokens"].quantile(0.99)),
    }


# --- a TTFT SLO a fleet can meet ---------------------------------------------------------------


def ttft_floor_s(
    prefill: EngineModel,
    kv_bytes_per_token: float,
    mean_input_tokens: float,
    *,
    prefix_cache_hit: float = 0.0,
    kv_bandwidth_gb_per_s: float = 25.0,
    kv_cross_domain_loss: float = 0.2,
) -> float:
    """p99 TTFT at zero load on this engine, in the twin's terms (sim/twin.py): the prefill of
    the p99 prompt's cache-missed tokens (`P99_INPUT_FACTOR` x the mean) plus the KV transfer
    of the whole p99 prompt at the cross-domain bandwidth (the worse case)."""
    p99_prompt = cap.P99_INPUT_FACTOR * mean_input_tokens
    prefill_s = prefill.prefill_s(1, max(p99_prompt * (1.0 - prefix_cache_hit), 1.0))
    bw = kv_bandwidth_gb_per_s * 1e9 * (1.0 - kv_cross_domain_loss)
    return prefill_s + kv_bytes_per_token * p99_prompt / bw


def feasible_ttft_slo_s(floor_s: float, margin: float = FEASIBLE_TTFT_MARGIN) -> float:
    """`margin` x the floor, rounded up to half a second."""
    return math.ceil(margin * floor_s * 2.0 - 1e-9) / 2.0
