"""What a load asks of the fleet: the policy metric a trace offers, its peak, the fleet a
replay starts from, and one factor that fits a load to a cluster.

Pure functions of a config and load curves (`sim.traces.LoadCurve`), shared by the replay
(`flows.replay`), the persisted twin (`sim.live`) and its exporter (`sim.exporter`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from models.config import ClusterConfig, Metric
from models.values import RoleCounts
from sim.traces import LoadCurve
from tasks.core.policy import bound_decode, max_decode, split_by_ratio


def metric_series(config: ClusterConfig, curves: Mapping[str, LoadCurve]) -> dict[str, np.ndarray]:
    """Ground-truth policy metric per window of each service's curve (offered, not served)."""
    out = {}
    for svc in config.services:
        c = curves[svc.name]
        if svc.policy.metric is Metric.DECODE_TPS:
            out[svc.name] = c.req_per_s * c.mean_output_tokens
        else:
            out[svc.name] = c.req_per_s * c.mean_input_tokens * (1 - svc.prefix_cache_hit)
    return out


def peak_metric(config: ClusterConfig, curves: Mapping[str, LoadCurve]) -> dict[str, float]:
    """Peak of each service's metric, averaged over a control period (what static-peak sizes for)."""
    out = {}
    for name, series in metric_series(config, curves).items():
        c = curves[name]
        w = max(1, round(config.cluster.control_period_s / c.dt_s))
        smooth = np.convolve(series, np.ones(w) / w, mode="valid") if len(series) >= w else series
        out[name] = float(np.max(smooth)) if len(smooth) else 0.0
    return out


def initial_counts(
    config: ClusterConfig, curves: Mapping[str, LoadCurve], *, at_peak: bool = False
) -> dict[str, RoleCounts]:
    """The fleet running when a replay (or the persisted twin) starts: sized for the first
    period's load, the same for every adaptive policy; `at_peak` (a policy `sized_for_peak`,
    static-peak): for the peak."""
    first = {}
    for name, series in metric_series(config, curves).items():
        w = max(1, round(config.cluster.control_period_s / curves[name].dt_s))
        first[name] = float(np.mean(series[:w]))
    peaks = peak_metric(config, curves)
    gpus = sum(p.nodes * p.gpus_per_node for p in config.topology.node_pools)
    out = {}
    for svc in config.services:
        value = peaks[svc.name] if at_peak else first[svc.name]
        d = value / svc.policy.target_per_instance
        if svc.policy.metric is Metric.PREFILL_TPS:
            d /= svc.pd_ratio.prefill_per_decode
        # No more instances than the cluster's GPUs could hold (an outlier in a trace asks for
        # 1e12 instances); bound_decode is O(1) and takes floats (inf, NaN) as they come.
        cap = max_decode(svc, gpus // min(svc.prefill.gpus_per_instance, svc.decode.gpus_per_instance))
        out[svc.name] = split_by_ratio(svc, bound_decode(svc, min(d - 1e-9, float(cap))))
    return out


# `--peak-rps auto`: the share of the cluster's GPUs static-peak should need at the trace's peak.
AUTO_GPU_SHARE = 0.8


def static_peak_gpus(config: ClusterConfig, curves: Mapping[str, LoadCurve]) -> int:
    """GPUs the static-peak fleet holds for these curves."""
    counts = initial_counts(config, curves, at_peak=True)
    return sum(
        c.num_prefill * config.service(n).prefill.gpus_per_instance
        + c.num_decode * config.service(n).decode.gpus_per_instance
        for n, c in counts.items()
    )


def fit_to_cluster(
    config: ClusterConfig, curves: Mapping[str, LoadCurve], share: float = AUTO_GPU_SHARE
) -> tuple[dict[str, LoadCurve], float]:
    """Scale every curve by one factor so static-peak needs about `share` of the cluster's GPUs
    ("this load shape, on my cluster"). Returns the scaled curves and the factor."""
    total = sum(p.nodes * p.gpus_per_node for p in config.topology.node_pools)
    goal = share * total
    lo, hi = 1e-6, 1.0
    while static_peak_gpus(config, {n: c.scaled(hi) for n, c in curves.items()}) < goal and hi < 1e9:
        hi *= 2
    for _ in range(50):
        mid = math.sqrt(lo * hi)
        if static_peak_gpus(config, {n: c.scaled(mid) for n, c in curves.items()}) <= goal:
            lo = mid
        else:
            hi = mid
    return {n: c.scaled(lo) for n, c in curves.items()}, lo
