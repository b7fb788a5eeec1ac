"""The decision cache (tasks/core/decision_cache.py) against the plain loop: every policy, several
traces, every decision record (targets with reasons, policy states) equal period by period."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from flows import replay as replay_mod
from flows.replay import ALL_POLICIES, replay
from models.config import load_config
from models.values import RoleCounts, ServicePolicyState, ServiceSignals
from sim.traces import LoadCurve
from tasks.core.decision_cache import DecisionCache, clock_horizon_s, decision_key
from tasks.core.policy import get_policy
from tasks.core.policy.base import PolicyContext
from tests.conftest import DEMO_CONFIG


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HETEROSCALE_CAPACITY_CACHE", str(tmp_path_factory.getbasetemp() / "capcache"))


def _curve(shape: str, n: int = 48) -> LoadCurve:
    """10-minute windows (the load is flat for ten 60-s periods: the cache's case) of a shape."""
    x = np.linspace(0, 2 * np.pi, n)
    rps = {
        "wave": 8.0 * (0.6 + 0.4 * np.sin(x)),
        "steps": np.repeat([3.0, 9.0, 5.0, 12.0, 2.0, 7.0], n // 6),
        "bursty": 4.0 * (0.8 + 0.4 * np.random.default_rng(5).random(n)) * np.where(np.arange(n) % 11 == 3, 4, 1),
    }[shape]
    observed = np.ones(n, bool)
    if shape == "steps":
        observed[20:23] = False  # a gap: the signals go missing, the policies hold
    return LoadCurve(shape, 600.0, np.arange(n) * 600.0, rps, np.full(n, 1155.0), np.full(n, 211.0), observed)


HITS: dict[tuple[str, str], int] = {}


def _recorded(monkeypatch: pytest.MonkeyPatch, policy: str, shape: str, *, skip: bool) -> tuple[list[Any], Any]:
    records: list[Any] = []
    plain = replay_mod.steps.compute_targets
    caches: list[DecisionCache] = []

    class Counted(DecisionCache):
        def __init__(self) -> None:
            super().__init__()
            caches.append(self)

    monkeypatch.setattr(replay_mod, "DecisionCache", Counted)

    def recording(*args: Any, **kwargs: Any) -> Any:
        out = plain(*args, **kwargs)
        records.append((args[5], out))  # (now_s, (targets, states))
        return out

    monkeypatch.setattr(replay_mod.steps, "compute_targets", recording)
    cfg = load_config(DEMO_CONFIG)
    curves = {s.name: _curve(shape) for s in cfg.services}
    result = replay(cfg, curves, policy, keep_ticks=False, placement="greedy", skip_unchanged=skip)
    monkeypatch.setattr(replay_mod.steps, "compute_targets", plain)
    assert len(caches) == int(skip)
    if skip:
        HITS[(policy, shape)] = caches[0].hits
    return records, result.summary()


@pytest.mark.parametrize("shape", ["wave", "steps", "bursty"])
@pytest.mark.parametrize("policy", ALL_POLICIES)
def test_skipping_unchanged_decisions_gives_the_plain_loops_decisions(
    monkeypatch: pytest.MonkeyPatch, policy: str, shape: str
) -> None:
    cached, cached_summary = _recorded(monkeypatch, policy, shape, skip=True)
    plain, plain_summary = _recorded(monkeypatch, policy, shape, skip=False)
    assert len(cached) == len(plain) > 0
    for (t_c, d_c), (t_p, d_p) in zip(cached, plain, strict=True):
        assert t_c == t_p
        assert d_c == d_p, f"{policy} on {shape}: decisions differ at t={t_c}"
    assert {k: v for k, v in cached_summary.items() if k != "wall_s"} == {
        k: v for k, v in plain_summary.items() if k != "wall_s"
    }
    # The comparison means something only where the cache was used: the policies whose holds
    # leave their state alone skip most periods of a flat 10-minute window.
    if policy in ("heteroscale-paper", "static-peak", "dynamo-sla"):
        assert HITS[(policy, shape)] > len(plain) // 4, HITS


def _ctx(now_s: float, decode_tps: float = 5000.0) -> PolicyContext:
    svc = load_config(DEMO_CONFIG).services[0]
    sig = ServiceSignals(service=svc.name, sampled_at_s=now_s, decode_tps=decode_tps, tbt_p99_s=0.01)
    return PolicyContext(service=svc, now_s=now_s, signals=sig, current=RoleCounts(2, 4))


def _call(cache: DecisionCache, ctx: PolicyContext, state: ServicePolicyState) -> tuple[Any, bool]:
    key = decision_key("heteroscale-paper", ctx.signals, ctx.now_s, ctx.current, ctx.forecast, state)
    hit = cache.get(ctx.service, key)
    if hit is not None:
        return hit, True
    decision = get_policy("heteroscale-paper").decide(ctx, state)
    cache.put(ctx.service, key, decision, ctx.now_s)
    return decision, False


def test_a_hold_with_a_settled_state_is_reused_and_a_running_cooldown_is_not() -> None:
    cache = DecisionCache()
    settled = ServicePolicyState()
    first, hit = _call(cache, _ctx(1000.0), settled)
    assert not hit
    again, hit = _call(cache, _ctx(1060.0), settled)
    if first[1] == settled:  # a hold that left the state as it was: reusable
        assert hit and again == first
    # Other inputs: a miss.
    _other, hit = _call(cache, _ctx(1120.0, decode_tps=5001.0), settled)
    assert not hit
    # A scale-out 30 s ago: the scale-out cooldown is running, the same inputs can decide
    # differently a period later, so nothing is cached.
    svc = _ctx(0.0).service
    recent = ServicePolicyState(last_scale_out_s=2000.0 - 30.0)
    assert clock_horizon_s(svc) >= svc.policy.scale_out_cooldown_s
    _d, hit = _call(cache, _ctx(2000.0, decode_tps=50000.0), recent)
    assert not hit
    _d, hit = _call(cache, _ctx(2060.0, decode_tps=50000.0), recent)
    assert not hit


def test_policy_only_settings_stretch_only_their_policys_horizon() -> None:
    # heteroscale's scale-in window (1800 s by default) must not keep the other policies' holds
    # from being reused for half an hour; and no other policy may read it (else its horizon lies).
    import inspect
    from pathlib import Path

    import tasks.core.policy as pol
    from models.config import PolicyParams
    from tasks.core.decision_cache import POLICY_ONLY_S

    svc = _ctx(0.0).service
    assert clock_horizon_s(svc, "heteroscale") >= svc.policy.scale_in_window_s
    assert clock_horizon_s(svc, "heteroscale-paper") < svc.policy.scale_in_window_s
    assert clock_horizon_s(svc) >= svc.policy.scale_in_window_s  # no policy named: every setting
    for name, only in POLICY_ONLY_S.items():
        assert name in PolicyParams.model_fields
        for path in Path(inspect.getfile(pol)).parent.glob("*.py"):
            if path.stem not in only:
                assert name not in path.read_text(), (name, path)
