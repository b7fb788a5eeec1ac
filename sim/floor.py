"""The hindsight floor: the fewest instances per role that meet the SLO for a trace's true load.

For every window of a service's load curve, `required_counts` finds the fewest reference-GPU
instances of each role whose latency, in the twin's own model (`tasks.core.capacity`, the same
functions `sim.twin` evaluates), stays within the service's SLO for that window's offered load:
  * prefill: the smallest n whose p99 TTFT (the p99 prompt's prefill + the M/M/c wait at the
    window's utilisation + the KV transfer, same-domain) is within `slo.ttft_p99_s` (binary search;
    TTFT falls as n grows);
  * decode: n = ceil(offered decode tokens/s / the capacity one instance sustains within
    `slo.tbt_p99_s` at the window's context).
A window whose SLO no count can meet (the latency floor is above it) gets the count that serves
its load at all (utilisation below 1): the floor of an infeasible SLO is "serve, as cheaply as
possible". Every count is at least 1 (a service keeps one instance of each role).

`floor_targets` turns the per-window counts into what the `oracle` policy is told each period:
the most any window needs from Ready time (now + cold start) to one period later (`need`), and
from now to then (`keep`). Pure numpy over the curve; no clock.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from models.config import Role, Service
from models.values import RoleCounts
from sim.traces import LoadCurve
from tasks.core import capacity as cm
from tasks.core.capacity import ServiceEngines


def _prefill_need(
    svc: Service, engines: ServiceEngines, rps: float, mean_in: float, cap_n: int, bandwidth_gb_per_s: float
) -> int:
    prompt = max(mean_in * (1.0 - svc.prefix_cache_hit), 1.0)
    load = rps * prompt
    if load <= 0:
        return 1
    e_p = engines[(Role.PREFILL, svc.prefill.reference_gpu_type)]
    e_d = engines[(Role.DECODE, svc.decode.reference_gpu_type)]
    per = cm.prefill_tokens_per_s(e_p, prompt)
    kv = cm.kv_transfer_s(e_d, mean_in * cm.P99_INPUT_FACTOR, bandwidth_gb_per_s)
    serving = max(1, math.floor(load / per) + 1)  # utilisation below 1

    def ttft(n: int) -> float:
        return cm.prefill_ttft_p99_s(e_p, load / (n * per), n, prompt) + kv

    if ttft(max(serving, cap_n)) > svc.slo.ttft_p99_s:
        return serving  # no count meets the SLO: serve the load
    lo, hi = serving - 1, max(serving, 1)
    while ttft(hi) > svc.slo.ttft_p99_s:
        lo, hi = hi, min(hi * 2, cap_n)
    while hi - lo > 1:  # ttft(lo) > SLO (or lo below serving), ttft(hi) <= SLO
        mid = (lo + hi) // 2
        if ttft(mid) <= svc.slo.ttft_p99_s:
            hi = mid
        else:
            lo = mid
    return max(1, hi)


def _decode_need(svc: Service, engines: ServiceEngines, rps: float, mean_in: float, mean_out: float) -> int:
    load = rps * mean_out
    if load <= 0:
        return 1
    e_d = engines[(Role.DECODE, svc.decode.reference_gpu_type)]
    ctx_len = mean_in + mean_out / 2.0
    per = cm.decode_capacity(e_d, ctx_len, svc.slo.tbt_p99_s)
    if per <= 0:
        per = cm.decode_capacity(e_d, ctx_len)  # no count meets the TBT SLO: serve the load
    return max(1, math.ceil(load / per - 1e-9))


def required_counts(
    svc: Service,
    engines: ServiceEngines,
    curve: LoadCurve,
    *,
    bandwidth_gb_per_s: float = cm.KV_BANDWIDTH_GB_PER_S,
) -> tuple[np.ndarray, np.ndarray]:
    """(prefill, decode) reference instances each window of `curve` needs to meet the SLO."""
    cap_n = max(2, svc.policy.max_instances)
    memo: dict[tuple[float, float, float], tuple[int, int]] = {}
    n_p = np.ones(len(curve.t_s), dtype=np.int64)
    n_d = np.ones(len(curve.t_s), dtype=np.int64)
    for i, key in enumerate(
        zip(curve.req_per_s.tolist(), curve.mean_input_tokens.tolist(), curve.mean_output_tokens.tolist(), strict=True)
    ):
        got = memo.get(key)
        if got is None:
            rps, mean_in, mean_out = key
            got = (
                _prefill_need(svc, engines, rps, mean_in, cap_n, bandwidth_gb_per_s),
                _decode_need(svc, engines, rps, mean_in, mean_out),
            )
            memo[key] = got
        n_p[i], n_d[i] = got
    # The service never runs more than max_instances: an outlier must not ask for 1e15 instances.
    return np.minimum(n_p, cap_n), np.minimum(n_d, cap_n)


class FloorPlan:
    """Per service, the per-window floor counts and the control period's look-ahead windows."""

    def __init__(
        self,
        config_services: tuple[Service, ...],
        engines: Mapping[tuple[str, Role, str], cm.EngineModel],
        curves: Mapping[str, LoadCurve],
        control_period_s: float,
        *,
        bandwidth_gb_per_s: float = cm.KV_BANDWIDTH_GB_PER_S,
    ) -> None:
        self._services = config_services
        self._curves = curves
        self._period = control_period_s
        self.counts: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for svc in config_services:
            mine = {(role, g): engines[(svc.name, role, g)] for role in Role for g in svc.role(role).gpu_types}
            self.counts[svc.name] = required_counts(svc, mine, curves[svc.name], bandwidth_gb_per_s=bandwidth_gb_per_s)

    def targets(self, now_s: float, t0_s: float) -> tuple[dict[str, RoleCounts], dict[str, RoleCounts]]:
        """(need when Ready, keep until then) per service at `now_s`."""
        need, keep = {}, {}
        for svc in self._services:
            c = self._curves[svc.name]
            n_p, n_d = self.counts[svc.name]
            lo = c.at(now_s - t0_s)
            mid = c.at(now_s - t0_s + svc.cold_start_s)
            hi = c.at(now_s - t0_s + svc.cold_start_s + self._period - 1e-6)
            need[svc.name] = RoleCounts(int(n_p[mid : hi + 1].max()), int(n_d[mid : hi + 1].max()))
            keep[svc.name] = RoleCounts(int(n_p[lo : hi + 1].max()), int(n_d[lo : hi + 1].max()))
        return need, keep

    def gpu_hours(self) -> float:
        """GPU-hours of holding exactly the per-window floor (no cold start): a bound below any fleet."""
        total = 0.0
        for svc in self._services:
            n_p, n_d = self.counts[svc.name]
            dt = self._curves[svc.name].dt_s
            total += float(n_p.sum() * svc.prefill.gpus_per_instance + n_d.sum() * svc.decode.gpus_per_instance) * dt
        return total / 3600.0
