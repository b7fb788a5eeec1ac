"""The startup skew guard (tasks/core/skew.py): pure decision, unit cases and Hypothesis properties
over random Ready orders of a scale-out: the serving ratio never leaves the band (unless a role has
no serving instance), the guard never un-serves, and every pod serves once all are Ready."""

from __future__ import annotations

import math
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from models.config import Role
from models.values import CellKey
from tasks.core.skew import GuardGroup, GuardPod, decide_group, excess, in_band

PK = CellKey("chat", Role.PREFILL, "h100", "c1")
PK2 = CellKey("chat", Role.PREFILL, "a100", "c1")
DK = CellKey("chat", Role.DECODE, "a100", "c1")


def _pod(name: str, role: Role, *, ready: bool = True, serving: bool = True, units: float = 1.0, t: float = 0.0):
    return GuardPod(name, PK if role is Role.PREFILL else DK, units, ready, serving, t)


def _group(*pods: GuardPod, owed: int = 0) -> GuardGroup:
    return GuardGroup("chat", "chat-pod-c", tuple(pods), owed)


def _names(pods: tuple[GuardPod, ...]) -> set[str]:
    return {p.name for p in pods}


def test_prefill_ready_first_is_held_until_decode_is_ready() -> None:
    base = [_pod(f"p{i}", Role.PREFILL) for i in range(2)] + [_pod(f"d{i}", Role.DECODE) for i in range(2)]
    g = _group(
        *base,
        _pod("p-new", Role.PREFILL, serving=False, t=5),
        _pod("d-new", Role.DECODE, ready=False, serving=False, t=5),
    )
    v = decide_group(g, prefill_per_decode=1.0, tolerance=0.1)
    assert v.admit == () and _names(v.held) == {"p-new"}
    assert "would make P:D 3:2" in v.reason and v.after == (2.0, 2.0)
    # Decode Ready: nothing is left to wait for; both serve.
    g = _group(*base, _pod("p-new", Role.PREFILL, serving=False, t=5), _pod("d-new", Role.DECODE, serving=False, t=5))
    v = decide_group(g, prefill_per_decode=1.0, tolerance=0.1)
    assert _names(v.admit) == {"p-new", "d-new"} and v.after == (3.0, 3.0)


def test_laggard_role_goes_first_and_the_band_is_kept() -> None:
    live = [_pod(f"p{i}", Role.PREFILL) for i in range(3)] + [_pod(f"d{i}", Role.DECODE) for i in range(9)]
    held = [_pod(f"pn{i}", Role.PREFILL, serving=False, t=i) for i in range(2)]
    held += [_pod(f"dn{i}", Role.DECODE, serving=False, t=i) for i in range(3)]
    more = [_pod("dn9", Role.DECODE, ready=False, serving=False, t=9)]
    v = decide_group(_group(*live, *held, *more), prefill_per_decode=1 / 3, tolerance=0.1)
    # 3:9 -> 4:12 is in the band (1/3); 5:12 would not be.
    assert v.after == (4.0, 12.0) and _names(v.admit) == {"pn0", "dn0", "dn1", "dn2", "dn9"}
    assert _names(v.held) == {"pn1"} and _names(v.pre_admitted) == {"dn9"}  # 4:13 is still in the band


def test_first_instance_of_a_role_is_never_held() -> None:
    g = _group(_pod("p0", Role.PREFILL, serving=False), _pod("p1", Role.PREFILL, serving=False, t=1), owed=2)
    v = decide_group(g, prefill_per_decode=0.5, tolerance=0.1)
    assert _names(v.admit) == {"p0"} and _names(v.held) == {"p1"}
    assert "first prefill of the group never held back" in v.reason and "no Ready serving decode" in v.reason


def test_settled_group_serves_everything_even_off_ratio() -> None:
    g = _group(_pod("p0", Role.PREFILL), _pod("d0", Role.DECODE), _pod("p1", Role.PREFILL, serving=False))
    v = decide_group(g, prefill_per_decode=1.0, tolerance=0.1)
    assert _names(v.admit) == {"p1"} and "nothing left to wait for" in v.reason
    # The same with a pod still owed by the ReplicaSet: held.
    v = decide_group(replace(g, owed=1), prefill_per_decode=1.0, tolerance=0.1)
    assert v.admit == () and _names(v.held) == {"p1"}


def test_large_groups_pre_admit_starting_pods_within_the_worst_case() -> None:
    live = [_pod(f"p{i}", Role.PREFILL) for i in range(10)] + [_pod(f"d{i}", Role.DECODE) for i in range(10)]
    starting = [_pod(f"pn{i}", Role.PREFILL, ready=False, serving=False, t=i) for i in range(3)]
    v = decide_group(_group(*live, *starting), prefill_per_decode=1.0, tolerance=0.1)
    assert _names(v.pre_admitted) == {"pn0"}  # 11:10 is the band's edge; 12:10 is not


def test_weights_count_in_reference_units() -> None:
    live = [_pod("p0", Role.PREFILL), _pod("d0", Role.DECODE), _pod("d1", Role.DECODE)]
    half = GuardPod("p-a100", PK2, 0.5, True, False, 1.0)
    v = decide_group(
        _group(*live, half, _pod("dx", Role.DECODE, ready=False, serving=False)), prefill_per_decode=0.75, tolerance=0.1
    )
    assert _names(v.admit) == {"p-a100"} and v.after == (1.5, 2.0)


# ----------------------------------------------------------------------------- properties


@st.composite
def scale_outs(draw: st.DrawFn) -> tuple[float, float, list[GuardPod], list[GuardPod], list[int], list[bool]]:
    """A group at ratio a:b times k0 growing to k1 (in the band at both ends), some new prefill
    instances on a half-weight GPU type (two pods per reference unit), optionally one pod more."""
    a, b = draw(st.sampled_from([(1, 3), (1, 2), (1, 1), (2, 1), (3, 4)]))
    r = a / b
    tol = draw(st.sampled_from([0.0, 0.05, 0.1, 0.2]))
    k0 = draw(st.integers(1, 4))
    k1 = draw(st.integers(k0, k0 + 5))
    live = [_pod(f"p{i}", Role.PREFILL) for i in range(a * k0)]
    live += [_pod(f"d{i}", Role.DECODE) for i in range(b * k0)]
    new: list[GuardPod] = []
    for i in range(a * (k1 - k0)):
        if draw(st.booleans()):
            new += [_pod(f"pn{i}h{j}", Role.PREFILL, units=0.5, ready=False, serving=False, t=1.0 + i) for j in (0, 1)]
        else:
            new.append(_pod(f"pn{i}", Role.PREFILL, ready=False, serving=False, t=1.0 + i))
    new += [_pod(f"dn{i}", Role.DECODE, ready=False, serving=False, t=1.0 + i) for i in range(b * (k1 - k0))]
    extra = draw(st.sampled_from([None, Role.PREFILL, Role.DECODE]))
    if extra is not None:
        new.append(_pod(f"{extra.value[0]}nx", extra, ready=False, serving=False, t=50.0))
    order = draw(st.permutations(range(len(new))))
    runs = draw(st.lists(st.booleans(), min_size=len(new), max_size=len(new)))
    return r, tol, live, new, list(order), runs


def _units(pods: dict[str, GuardPod], role: Role) -> float:
    return sum(p.units for p in pods.values() if p.role is role and p.serving and p.ready)


def _ok(pods: dict[str, GuardPod], r: float, tol: float) -> bool:
    p, d = _units(pods, Role.PREFILL), _units(pods, Role.DECODE)
    return p == 0 or d == 0 or in_band(p, d, r, tol)


def _run(pods: dict[str, GuardPod], r: float, tol: float) -> None:
    v = decide_group(_group(*pods.values()), prefill_per_decode=r, tolerance=tol)
    for q in v.admit:
        assert not pods[q.name].serving  # monotone: only held pods are admitted
        pods[q.name] = replace(pods[q.name], serving=True)


@settings(max_examples=400, deadline=None)
@given(scale_outs(), st.booleans())
def test_any_ready_order_keeps_the_band(case, prefill_first: bool) -> None:
    r, tol, live, new, order, runs = case
    start = {q.name: q for q in live}
    final = {q.name: replace(q, ready=True, serving=True) for q in [*live, *new]}
    if not in_band(_units(start, Role.PREFILL), _units(start, Role.DECODE), r, tol):
        return  # the property is about a scale-out from a group in the band
    if not _ok(final, r, tol):
        return  # ... to a group in the band
    pods = {q.name: q for q in [*live, *new]}
    seq = [new[i].name for i in order]
    if prefill_first:  # the done-when case: every new prefill Ready before any new decode
        seq.sort(key=lambda n: not n.startswith("p"))
    _run(pods, r, tol)
    assert _ok(pods, r, tol)
    for name, run in zip(seq, runs, strict=True):
        pods[name] = replace(pods[name], ready=True)  # a Ready event between runs
        assert _ok(pods, r, tol), (name, pods)
        if run:
            before = {n for n, q in pods.items() if q.serving}
            _run(pods, r, tol)
            assert before <= {n for n, q in pods.items() if q.serving}
            assert _ok(pods, r, tol)
    _run(pods, r, tol)
    assert all(q.serving for q in pods.values())  # eventually all serve


@settings(max_examples=200, deadline=None)
@given(scale_outs())
def test_a_new_group_never_holds_a_first_instance_and_its_skew_only_shrinks(case) -> None:
    r, tol, _live, new, order, runs = case
    pods = {q.name: q for q in new}
    if not pods or not _ok({n: replace(q, ready=True, serving=True) for n, q in pods.items()}, r, tol):
        return
    worst = math.inf
    for i, run in zip(order, runs, strict=True):
        pods[new[i].name] = replace(pods[new[i].name], ready=True)
        if run:
            _run(pods, r, tol)
            serving_roles = {q.role for q in pods.values() if q.serving and q.ready}
            ready_roles = {q.role for q in pods.values() if q.ready}
            assert serving_roles == ready_roles  # the first of each role is never held
        # Once both roles serve (the first of each admitted whatever the band), the skew only shrinks.
        p, d = _units(pods, Role.PREFILL), _units(pods, Role.DECODE)
        if p > 0 and d > 0:
            now = excess(p, d, r, tol)
            assert now <= worst + 1e-9
            worst = now
    _run(pods, r, tol)
    assert all(q.serving for q in pods.values())


# --------------------------------------------------------------------- Kubernetes composition


def test_guard_startup_sees_the_pods_as_actuation_leaves_them() -> None:
    import json

    from models.config import parse_config
    from models.values import Placement, PlacementPlan
    from tasks.core.actuation import Admit, ManagedCell, ManagedPod, RenderedCell, decide_actions
    from tasks.core.skew import guard_startup
    from tests.integration.test_kube_scenario import CONFIG

    cfg = parse_config(json.loads(json.dumps(CONFIG)))  # chat: pd_ratio 1:2
    p_key, d_key = CellKey("chat", Role.PREFILL, "h100", "c1"), CellKey("chat", Role.DECODE, "a100", "c1")

    def cell(key: CellKey, name: str, pods: tuple[ManagedPod, ...]) -> ManagedCell:
        return ManagedCell(key, name, "llm", len(pods), "1", "h", len(pods), pods=pods)

    cells = {
        p_key: cell(
            p_key, "chat-p", (ManagedPod("p0", True, True, 0.0), ManagedPod("p1", False, True, 9.0, held=True))
        ),
        d_key: cell(d_key, "chat-d", tuple(ManagedPod(f"d{i}", True, True, 0.0) for i in range(2))),
    }
    rendered = {k: RenderedCell("llm", c.name, "chat-pod-c", "h", {}) for k, c in cells.items()}
    groups = {k: "chat-pod-c" for k in cells}

    def plan(p: int, d: int) -> PlacementPlan:
        return PlacementPlan(placement=Placement.of([(p_key, p), (d_key, d)]), method="t", reason="t")

    # The plan wants 2:4: two decode are owed, so the held prefill (2:2 now) waits for them.
    actions = guard_startup(cfg, cells, decide_actions(cfg, cells, plan(2, 4), rendered, None, 0.0), groups)
    assert not [a for a in actions.actions if isinstance(a, Admit)]
    assert [(r.kind, r.pods) for r in actions.records if r.kind == "hold-skew"] == [("hold-skew", ("p1",))]
    # Scale-in to 1 prefill: the drain takes the held pod (it serves nothing); nothing to admit.
    actions = guard_startup(cfg, cells, decide_actions(cfg, cells, plan(1, 2), rendered, None, 0.0), groups)
    assert [r.pods for r in actions.records if r.kind == "drain"] == [("p1",)]
    assert not [r for r in actions.records if r.kind in ("admit", "hold-skew")]


def test_skew_tolerance_defaults_to_the_hysteresis_band_and_is_validated() -> None:
    import json

    import pytest

    from models.config import ConfigError, parse_config
    from tests.integration.test_kube_scenario import CONFIG

    data = json.loads(json.dumps(CONFIG))
    pol = data["services"][0]["policy"]
    assert parse_config(data).services[0].policy.startup_skew_tolerance == 0.10  # the hysteresis default
    pol["hysteresis"] = 0.15
    assert parse_config(data).services[0].policy.startup_skew_tolerance == 0.15
    pol["skew_tolerance"] = 0.25
    assert parse_config(data).services[0].policy.startup_skew_tolerance == 0.25
    pol["skew_tolerance"] = 1.0
    with pytest.raises((ConfigError, ValueError), match="skew_tolerance"):
        parse_config(data)
