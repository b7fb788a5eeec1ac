"""Issue 15 item 1: every loop over instance counts is O(1) or clamped by the cluster's GPUs.

`bound_decode` used to walk down one instance at a time from an unclamped count: a 1e15-token
request or `--peak-rps 1e9` hung the replay (`initial_counts` called it with ~1e12).
"""

from __future__ import annotations

import math
import time

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from models.config import Service
from sim.sizing import initial_counts
from sim.traces import LoadCurve
from tasks.core.policy import bound_decode, max_decode, min_decode, split_by_ratio
from tests.builders import make_config, make_service, service_dict


def _reference_bound(svc: Service, d: int) -> int:
    """The step-by-step walk the O(1) version replaced."""
    d = max(0, d)
    while d > 0 and split_by_ratio(svc, d).total > svc.policy.max_instances:
        d -= 1
    while split_by_ratio(svc, d).total < svc.policy.min_instances:
        d += 1
    return d


@settings(max_examples=150, deadline=None)
@given(
    p=st.integers(1, 9),
    d=st.integers(1, 9),
    lo=st.integers(0, 30),
    span=st.integers(0, 60),
    n=st.integers(-5, 200),
)
def test_bound_decode_equals_the_step_by_step_walk(p: int, d: int, lo: int, span: int, n: int) -> None:
    smallest = 1 + max(1, math.ceil(p / d - 1e-9))
    hi = max(lo + span, smallest)
    svc = make_service(pd_ratio={"prefill": p, "decode": d}, policy={"min_instances": lo, "max_instances": hi})
    assert bound_decode(svc, n) == _reference_bound(svc, n)
    m = max_decode(svc, hi)
    assert split_by_ratio(svc, m).total <= hi < split_by_ratio(svc, m + 1).total
    k = min_decode(svc, lo)
    assert split_by_ratio(svc, k).total >= lo and (k == 0 or split_by_ratio(svc, k - 1).total < lo)


def test_bound_decode_is_constant_time_for_absurd_counts() -> None:
    svc = make_service(policy={"min_instances": 2, "max_instances": 10**9})
    started = time.perf_counter()
    for n in (10**15, 10**30, float("inf"), float("nan"), -(10**15), 1e300):
        d = bound_decode(svc, n)
        assert 0 < split_by_ratio(svc, d).total <= 10**9
    assert time.perf_counter() - started < 0.5


def test_initial_counts_are_clamped_by_the_clusters_gpus() -> None:
    cfg = make_config(services=[service_dict(policy={"max_instances": 10**9, "min_instances": 2})])
    n = 12
    curve = LoadCurve(
        name="huge",
        dt_s=10.0,
        t_s=np.arange(n) * 10.0,
        req_per_s=np.full(n, 1e12),
        mean_input_tokens=np.full(n, 1e15),
        mean_output_tokens=np.full(n, 1e15),
        observed=np.ones(n, dtype=bool),
    )
    gpus = sum(p.nodes * p.gpus_per_node for p in cfg.topology.node_pools)
    started = time.perf_counter()
    for at_peak in (True, False):
        counts = initial_counts(cfg, {"chat": curve}, at_peak=at_peak)["chat"]
        assert counts.total * 2 <= gpus  # 2 GPUs per instance in the builder's service
    assert time.perf_counter() - started < 1.0
