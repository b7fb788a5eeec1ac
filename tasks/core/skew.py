"""Pure: the startup skew guard — which new instances of a deployment group may serve this run.

HeteroScale (section 4, "startup skew"): when a group's new prefill and decode instances become
Ready out of order, registering the early role unbalances the group (new prefill with no decode to
take its KV). The guard holds back registration of the over-represented role until the ratio is
within tolerance.

Contract. `decide_group(group, prefill_per_decode=r, tolerance=tol)` sees one deployment group (a
service's cells in one network domain at its affinity level): its serving pods and the pods the
guard holds (new pods start out of service discovery), each with its role, reference-unit weight
(`RoleSpec.weight`) and readiness, plus `owed`, pods its controllers have yet to create. It returns
a `GroupVerdict`: the held pods to put into service now, the Ready ones still held, and the reason.
No I/O, no clock. Let p, d be the group's Ready-and-serving prefill and decode units; the band is
r(1 - tol) d <= p <= r(1 + tol) d. Rules:

1. settled: when every pod of the group is Ready and serving-or-held and nothing is owed, nothing
   is left to wait for: every held pod serves (the plan chose the group's final ratio);
2. never hold back the first instance of a role: a role with no Ready serving pod gets its oldest
   Ready held pod (a group with 0 serving of a role is worse than a skewed one); while the other
   role still has none, the rest are held;
3. otherwise Ready held pods are admitted laggard first (each step adds the role whose next pod
   brings the ratio closest to r), and the longest prefix of that order whose result is in the band
   is admitted; a group already out of the band admits the prefix that brings it closest (never
   further out). Pods already serving but not yet Ready ("in flight") count at their worst:
   the band must hold with all in-flight prefill Ready and no in-flight decode, and vice versa;
4. pre-admission: starting (not Ready) held pods are put into service ahead of readiness while
   any order of their becoming Ready keeps the band (the same worst case), so a large group's new
   instances serve the moment they are Ready instead of at the next run.

Properties (tests/unit/test_skew.py, Hypothesis): monotone (only admits, never un-serves); from a
group in the band, the Ready-and-serving ratio stays in the band under every order of Ready
events, except while one role has no serving instance; every pod serves once all are Ready.
Within a role pods go oldest first (ties by name).

`guard_startup(config, cells, plan, group_of)` runs the guard on a Kubernetes decision: it takes
the discovered cells as the actuation decision `plan` leaves them (its drains, restores and
re-syncs applied to the pods; its scale-outs counted as pods owed), skips paused services (a
warning when Ready pods stay held), and returns `plan` with one `Admit` action per cell appended
(in the guard's order) and an `admit` / `hold-skew` `ActuationRecord` per cell, for the run record.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from models.config import ClusterConfig, Role
from models.values import ActuationRecord, CellKey
from tasks.core.actuation import ActionPlan, Admit, Drain, ManagedCell, ManagedPod, Restore, Scale, SyncDrained

EPS = 1e-9


@dataclass(frozen=True, slots=True)
class GuardPod:
    """One serving or held pod of a group (drained pods are not the guard's: leave them out)."""

    name: str
    key: CellKey
    units: float  # reference-type instances this pod is worth (RoleSpec.weight of its GPU type)
    ready: bool
    serving: bool  # in service discovery now; False = held by the guard
    created_s: float = 0.0

    @property
    def role(self) -> Role:
        return self.key.role


@dataclass(frozen=True, slots=True)
class GuardGroup:
    service: str
    group: str
    pods: tuple[GuardPod, ...]
    owed: int = 0  # replicas whose pod does not exist yet (the ReplicaSet has not created it)


@dataclass(frozen=True, slots=True)
class GroupVerdict:
    """The guard's decision for one group: `admit` go into service now (ahead of Ready when
    `pre_admitted`), `held` Ready pods stay out; `before`/`after` the Ready-and-serving units."""

    service: str
    group: str
    admit: tuple[GuardPod, ...]
    held: tuple[GuardPod, ...]
    reason: str
    before: tuple[float, float]  # (prefill, decode) Ready serving units
    after: tuple[float, float]  # the same once the admitted Ready pods serve
    pre_admitted: tuple[GuardPod, ...] = ()


def band(d_units: float, r: float, tolerance: float) -> tuple[float, float]:
    """The prefill units a group with `d_units` decode may serve."""
    return r * (1.0 - tolerance) * d_units, r * (1.0 + tolerance) * d_units


def excess(p: float, d: float, r: float, tolerance: float) -> float:
    """How far (log ratio) p:d lies outside the band; 0 inside, inf when one role is absent."""
    if p <= EPS and d <= EPS:
        return 0.0
    if p <= EPS or d <= EPS:
        return math.inf
    lo, hi = band(d, r, tolerance)
    if p > hi * (1 + EPS):
        return math.log(p / hi)
    if p < lo * (1 - EPS):
        return math.log(lo / p) if lo > 0 else 0.0
    return 0.0


def in_band(p: float, d: float, r: float, tolerance: float) -> bool:
    return excess(p, d, r, tolerance) == 0.0


def _worst(p: float, d: float, fp: float, fd: float, r: float, tol: float) -> float:
    """Excess in the worst order in which the in-flight units (fp, fd) become Ready."""
    return max(excess(p + fp, d, r, tol), excess(p, d + fd, r, tol))


def _units(pods: Iterable[GuardPod], role: Role) -> float:
    return sum(p.units for p in pods if p.role is role)


def _age(p: GuardPod) -> tuple[float, str]:
    return (p.created_s, p.name)


def _fmt(p: float, d: float, r: float) -> str:
    ratio = f"{p / d:.3g}" if d > EPS else "inf" if p > EPS else "-"
    return f"P:D {p:g}:{d:g} ({ratio} vs {r:.3g})"


def decide_group(group: GuardGroup, *, prefill_per_decode: float, tolerance: float) -> GroupVerdict:
    """The guard's decision for one group (see the module docstring)."""
    r, tol = prefill_per_decode, tolerance
    pods = group.pods
    live = [q for q in pods if q.serving and q.ready]
    flying = [q for q in pods if q.serving and not q.ready]
    ready_held = sorted((q for q in pods if not q.serving and q.ready), key=_age)
    starting = sorted((q for q in pods if not q.serving and not q.ready), key=_age)
    p0, d0 = _units(live, Role.PREFILL), _units(live, Role.DECODE)
    fp, fd = _units(flying, Role.PREFILL), _units(flying, Role.DECODE)
    lo, hi = band(1.0, r, tol)
    where = f"group {group.group}: band {lo:.3g}-{hi:.3g} prefill per decode unit (tolerance {tol:.0%})"

    def verdict(admit: Sequence[GuardPod], why: str, pre: Sequence[GuardPod] = ()) -> GroupVerdict:
        chosen = {q.name for q in admit}
        p1 = p0 + _units(admit, Role.PREFILL)
        d1 = d0 + _units(admit, Role.DECODE)
        return GroupVerdict(
            group.service,
            group.group,
            tuple(admit) + tuple(pre),
            tuple(q for q in ready_held if q.name not in chosen),
            f"{where}; {why}",
            (p0, d0),
            (p1, d1),
            tuple(pre),
        )

    if not ready_held and not starting:
        return verdict((), f"nothing held ({_fmt(p0, d0, r)})")
    if not starting and not flying and group.owed == 0:
        return verdict(ready_held, f"every pod is Ready, nothing left to wait for ({_fmt(p0, d0, r)})")

    admit: list[GuardPod] = []
    left = {role: [q for q in ready_held if q.role is role] for role in Role}
    p, d = p0, d0
    firsts = []
    for role in Role:
        have = p if role is Role.PREFILL else d
        if have <= EPS and left[role]:
            first = left[role].pop(0)
            admit.append(first)
            firsts.append(role.value)
            p, d = (p + first.units, d) if role is Role.PREFILL else (p, d + first.units)
    first_note = f"first {' and '.join(firsts)} of the group never held back; " if firsts else ""
    if p <= EPS or d <= EPS:
        missing = Role.DECODE if d <= EPS else Role.PREFILL
        n_held = len(left[Role.PREFILL]) + len(left[Role.DECODE])
        why = f"no Ready serving {missing.value} yet: {n_held} Ready pod(s) held ({_fmt(p, d, r)})"
        return verdict(admit, first_note + why)

    # Laggard first: each step adds the role whose oldest held pod brings p:d closest to r.
    order: list[GuardPod] = []
    cp, cd = p, d
    while left[Role.PREFILL] or left[Role.DECODE]:
        options = []
        for role in Role:
            if left[role]:
                q = left[role][0]
                np_, nd = (cp + q.units, cd) if role is Role.PREFILL else (cp, cd + q.units)
                options.append((abs(math.log(np_ / (r * nd))), role.value, role, np_, nd))
        _, _, role, cp, cd = min(options)
        order.append(left[role].pop(0))
    best_k, best = 0, _worst(p, d, fp, fd, r, tol)
    cp, cd = p, d
    for k, q in enumerate(order, 1):
        cp, cd = (cp + q.units, cd) if q.role is Role.PREFILL else (cp, cd + q.units)
        bad = _worst(cp, cd, fp, fd, r, tol)
        if bad <= best + EPS:
            best_k, best = k, min(best, bad)
    admit += order[:best_k]
    p = p0 + _units(admit, Role.PREFILL)
    d = d0 + _units(admit, Role.DECODE)
    held_n = len(order) - best_k
    if held_n:
        nxt = order[best_k]
        np_, nd = (p + nxt.units, d) if nxt.role is Role.PREFILL else (p, d + nxt.units)
        why = (
            f"{held_n} Ready pod(s) held: admitting {nxt.role.value} {nxt.name} would make {_fmt(np_, nd, r)}, "
            f"outside the band; {len(starting)} still starting"
        )
    else:
        why = f"laggard first, now {_fmt(p, d, r)}"

    # Pre-admission: starting pods whose Ready, in any order, keeps the band.
    pre: list[GuardPod] = []
    if best == 0.0 and starting:
        room = {
            Role.PREFILL: hi * d - (p + fp),
            Role.DECODE: (p / (lo * 1.0) - (d + fd)) if lo > 0 else math.inf,
        }
        for q in starting:
            if q.units <= room[q.role] + EPS:
                pre.append(q)
                room[q.role] -= q.units
        if pre:
            why += f"; {len(pre)} starting pod(s) admitted ahead of Ready (the band holds in any Ready order)"
    return verdict(admit, first_note + why, pre)


def decide_skew(config: ClusterConfig, groups: Iterable[GuardGroup]) -> tuple[GroupVerdict, ...]:
    """`decide_group` for every group, with its service's ratio and `policy.startup_skew_tolerance`."""
    out = []
    for g in groups:
        svc = config.service(g.service)
        out.append(
            decide_group(
                g,
                prefill_per_decode=svc.pd_ratio.prefill_per_decode,
                tolerance=svc.policy.startup_skew_tolerance,
            )
        )
    return tuple(out)


# ------------------------------------------------------------------------------ Kubernetes


def pods_after(cells: Mapping[CellKey, ManagedCell], plan: ActionPlan) -> dict[CellKey, tuple[ManagedPod, ...]]:
    """Each cell's pods as the actuation actions leave them (drained, restored, re-synced)."""
    marks: dict[tuple[CellKey, str], bool] = {}  # True = drained, False = serving
    for a in plan.actions:
        if isinstance(a, Drain):
            marks.update({(a.key, n): True for n in a.pods})
        elif isinstance(a, Restore):
            marks.update({(a.key, n): False for n in a.pods})
        elif isinstance(a, SyncDrained):
            marks.update({(a.key, n): True for n in a.mark})
            marks.update({(a.key, n): False for n in a.unmark})
    out: dict[CellKey, tuple[ManagedPod, ...]] = {}
    for key, cell in cells.items():
        pods = []
        for p in cell.pods:
            m = marks.get((key, p.name))
            if m is True:
                p = replace(p, serving=False, held=False)
            elif m is False:
                p = replace(p, serving=True, held=False)
            pods.append(p)
        out[key] = tuple(pods)
    return out


def guard_startup(
    config: ClusterConfig,
    cells: Mapping[CellKey, ManagedCell],
    plan: ActionPlan,
    group_of: Mapping[CellKey, str],
) -> ActionPlan:
    """`plan` with the startup skew guard's admissions appended (see the module docstring).
    `group_of` names the deployment group of every key of `cells` and of the plan."""
    pods = pods_after(cells, plan)
    replicas = {k: c.replicas for k, c in cells.items()}
    for a in plan.actions:
        if isinstance(a, Scale):
            replicas[a.key] = max(replicas.get(a.key, 0), a.after)  # a scale-out's pods are on their way
    paused = {k.service for k, c in cells.items() if c.paused}
    by_group: dict[tuple[str, str], list[CellKey]] = defaultdict(list)
    for key in sorted(set(replicas)):
        by_group[(key.service, group_of[key])].append(key)

    actions: list[Admit] = []
    records: list[ActuationRecord] = []
    warnings: list[str] = []
    names = {k: (c.namespace, c.name) for k, c in cells.items()}
    for (service, group), keys in sorted(by_group.items()):
        svc = config.service(service) if any(s.name == service for s in config.services) else None
        if svc is None:
            continue
        guard_pods = tuple(
            GuardPod(p.name, k, svc.role(k.role).weight(k.gpu_type), p.ready, p.serving, p.created_s)
            for k in keys
            for p in pods.get(k, ())
            if not p.drained
        )
        owed = sum(max(0, replicas[k] - len(pods.get(k, ()))) for k in keys)
        if service in paused:
            n = sum(1 for q in guard_pods if q.ready and not q.serving)
            if n:
                warnings.append(f"group {group}: service paused; {n} Ready new pod(s) stay out of service")
            continue
        v = decide_group(
            GuardGroup(service, group, guard_pods, owed),
            prefill_per_decode=svc.pd_ratio.prefill_per_decode,
            tolerance=svc.policy.startup_skew_tolerance,
        )
        rank = {q.name: i for i, q in enumerate(v.admit)}
        admitted: dict[CellKey, list[str]] = defaultdict(list)
        for q in v.admit:
            admitted[q.key].append(q.name)
        held: dict[CellKey, list[str]] = defaultdict(list)
        for q in v.held:
            held[q.key].append(q.name)
        for key in sorted(admitted, key=lambda k: rank[admitted[k][0]]):
            ns, name = names[key]
            actions.append(Admit(key, ns, name, tuple(admitted[key]), v.reason))
            records.append(ActuationRecord("admit", ns, name, len(admitted[key]), v.reason, tuple(admitted[key])))
        for key in sorted(held):
            ns, name = names[key]
            records.append(ActuationRecord("hold-skew", ns, name, len(held[key]), v.reason, tuple(held[key])))
    return replace(
        plan,
        actions=plan.actions + tuple(actions),
        records=plan.records + tuple(records),
        warnings=plan.warnings + tuple(warnings),
    )
