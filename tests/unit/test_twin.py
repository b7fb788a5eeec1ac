"""Twin realism: latency rises with load, cold start, prefix cache, KV domain penalty, signals."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.config import Role, load_config
from models.values import CellKey, Placement
from sim.traces import LoadCurve
from sim.twin import Twin, TwinParams
from tests.conftest import DEMO_CONFIG


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HETEROSCALE_CAPACITY_CACHE", str(tmp_path_factory.getbasetemp() / "capcache"))


def _curve(rps: float, n: int = 30) -> LoadCurve:
    return LoadCurve(
        "flat", 10.0, np.arange(n) * 10.0, np.full(n, rps), np.full(n, 1155.0), np.full(n, 211.0), np.ones(n, bool)
    )


def _twin(
    rps: float, *, hit: float | None = None, split_domains: bool = False, params: TwinParams | None = None
) -> Twin:
    cfg = load_config(DEMO_CONFIG)
    svc = cfg.service("chat")
    if hit is not None:
        svc = svc.model_copy(update={"prefix_cache_hit": hit})
    cfg = cfg.model_copy(update={"services": (svc,)})
    twin = Twin(config=cfg, load={"chat": _curve(rps)}, tick_s=10.0, params=params or TwinParams())
    d_s1 = "a2" if split_domains else "a1"
    twin.seed(
        Placement.of(
            [(CellKey("chat", Role.PREFILL, "h100", "a1"), 4), (CellKey("chat", Role.DECODE, "h100", d_s1), 3)]
        )
    )
    twin.advance(200.0)
    return twin


def _p99(twin: Twin) -> tuple[float, float]:
    ticks = twin.ticks[-5:]
    return max(t.ttft_p99_s for t in ticks), max(t.tbt_p99_s for t in ticks)


def test_latency_is_flat_then_a_cliff() -> None:
    loads = [2.0, 6.0, 12.0, 20.0, 30.0, 45.0]
    ttft = [_p99(_twin(r))[0] for r in loads]
    tbt = [_p99(_twin(r))[1] for r in loads]
    assert all(b >= a - 1e-9 for a, b in itertools.pairwise(ttft))
    assert all(b >= a - 1e-9 for a, b in itertools.pairwise(tbt))
    assert ttft[1] < 1.5 * ttft[0]  # flat at low load
    assert ttft[-1] > 10 * ttft[0]  # the cliff past saturation
    assert tbt[-1] > 2 * tbt[0]


def test_twin_latency_does_not_depend_on_the_slo() -> None:
    cfg = load_config(DEMO_CONFIG)
    a = _twin(10.0)
    svc = cfg.service("chat").model_copy(update={"slo": cfg.service("chat").slo.model_copy(update={"tbt_p99_s": 0.5})})
    b = Twin(config=cfg.model_copy(update={"services": (svc,)}), load={"chat": _curve(10.0)}, tick_s=10.0)
    b.seed(
        Placement.of(
            [(CellKey("chat", Role.PREFILL, "h100", "a1"), 4), (CellKey("chat", Role.DECODE, "h100", "a1"), 3)]
        )
    )
    b.advance(200.0)
    assert _p99(a) == _p99(b)


def test_cold_start_delays_capacity() -> None:
    from models.values import ApplyMode, PlacementPlan

    for guard in (False, True):
        twin = _twin(5.0, params=TwinParams(skew_guard=guard))
        plan_cells = dict(twin.placement().cells)
        plan_cells[CellKey("chat", Role.DECODE, "h100", "a1")] += 2
        plan = PlacementPlan(Placement(plan_cells), "test", "")
        twin.apply(twin.config, plan, ApplyMode.APPLY, twin.now_s)
        twin.advance(twin.now_s + 10.0)
        assert twin.ticks[-1].ready_decode == 3 and twin.ticks[-1].num_decode == 5
        twin.advance(twin.now_s + twin.config.services[0].cold_start_s)
        # With the startup skew guard a Ready instance serves once a scaling run admits it.
        assert twin.ticks[-1].ready_decode == (3 if guard else 5)
        res = twin.apply(twin.config, plan, ApplyMode.APPLY, twin.now_s)
        twin.advance(twin.now_s + 10.0)
        assert twin.ticks[-1].ready_decode == 5
        assert [a.kind for a in res.actions] == (["admit"] if guard else [])


def test_prefix_cache_hits_lower_prefill_work_and_ttft() -> None:
    cold, warm = _twin(15.0, hit=0.0), _twin(15.0, hit=0.6)
    assert warm.ticks[-1].util_prefill < cold.ticks[-1].util_prefill
    assert _p99(warm)[0] < _p99(cold)[0]


def test_kv_transfer_penalty_across_domains() -> None:
    same, split = _twin(5.0), _twin(5.0, split_domains=True)
    assert split.cross_domain_share("chat") == 1.0 and same.cross_domain_share("chat") == 0.0
    assert _p99(split)[0] > _p99(same)[0]
    none = _twin(5.0, split_domains=True, params=TwinParams(kv_cross_domain_loss=0.0))
    assert _p99(none)[0] == pytest.approx(_p99(same)[0])


def test_decode_util_stays_high_at_low_load_prefill_tracks_load() -> None:
    low, high = _twin(3.0), _twin(20.0)
    assert low.ticks[-1].util_decode > 0.85
    assert high.ticks[-1].util_prefill > 2.5 * low.ticks[-1].util_prefill
    assert high.ticks[-1].util_decode - low.ticks[-1].util_decode < 0.1
    sm_low = low.stats["chat"].sm_gpu_seconds / low.stats["chat"].gpu_seconds
    sm_high = high.stats["chat"].sm_gpu_seconds / high.stats["chat"].gpu_seconds
    assert sm_high > sm_low


# ------------------------------------------------------------------- startup skew guard


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    ratio=st.sampled_from([(1, 3), (1, 2), (1, 1), (2, 1)]),
    tol=st.sampled_from([0.05, 0.1, 0.2]),
    k0=st.integers(1, 3),
    grow=st.integers(1, 4),
    offsets=st.lists(st.integers(0, 60), min_size=24, max_size=24),
    prefill_first=st.booleans(),
)
def test_twin_scale_out_never_serves_out_of_the_ratio_tolerance(
    ratio: tuple[int, int], tol: float, k0: int, grow: int, offsets: list[int], prefill_first: bool
) -> None:
    """A scale-out whose instances become Ready in a random order (every new prefill before any
    new decode when `prefill_first`): at every tick the group's serving P:D is within the tolerance
    (or a role has none serving), and once all are Ready and a run has passed, all serve."""
    from models.values import ApplyMode, PlacementPlan
    from tasks.core.skew import in_band

    a, b = ratio
    cfg = load_config(DEMO_CONFIG)
    svc = cfg.service("chat")
    svc = svc.model_copy(
        update={
            "pd_ratio": svc.pd_ratio.model_copy(update={"prefill": a, "decode": b}),
            "policy": svc.policy.model_copy(update={"skew_tolerance": tol}),
        }
    )
    cfg = cfg.model_copy(update={"services": (svc,)})
    twin = Twin(config=cfg, load={"chat": _curve(5.0, n=200)}, tick_s=10.0)
    pk, dk = CellKey("chat", Role.PREFILL, "h100", "c1"), CellKey("chat", Role.DECODE, "a100", "c1")  # reference types
    twin.seed(Placement.of([(pk, a * k0), (dk, b * k0)]))
    k1 = k0 + grow
    plan = PlacementPlan(Placement.of([(pk, a * k1), (dk, b * k1)]), "test", "")
    twin.apply(cfg, plan, ApplyMode.APPLY, twin.now_s)
    # Each new instance its own Ready time (tick-aligned): a random order.
    new_p, new_d = a * grow, b * grow
    times = [twin.now_s + 10.0 * (1 + o) for o in offsets]
    p_times, d_times = times[:new_p], times[new_p : new_p + new_d]
    if prefill_first:
        p_times = [t - 700.0 + 10.0 * i for i, t in enumerate(sorted(p_times))]
        p_times = [max(twin.now_s + 10.0, t) for t in p_times]
        d_times = [max(t, max(p_times) + 10.0) for t in d_times]
    twin._cells[pk] = [twin._cells[pk][0]] + [[t, 1.0, 0.0] for t in p_times]
    twin._cells[dk] = [twin._cells[dk][0]] + [[t, 1.0, 0.0] for t in d_times]
    twin.cells_changed()
    r = a / b
    for _ in range(14):  # control periods of 60 s: each ends with a scaling run
        for _ in range(6):
            twin.advance(twin.now_s + 10.0)
            ((p, d),) = twin.group_serving_units().values()
            assert p == 0 or d == 0 or in_band(p, d, r, tol), (twin.now_s, p, d)
        twin.apply(cfg, plan, ApplyMode.APPLY, twin.now_s)
    assert twin.serving(pk) == a * k1 and twin.serving(dk) == b * k1
