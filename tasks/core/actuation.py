"""Pure: what to change in a Kubernetes cluster so it runs a plan, in a safe order, and why.

Decide, then act: `decide_actions(config, cells, plan, rendered, slo, now_s)` compares each
managed cell (as discovered, pods included) with the plan and returns an `ActionPlan`: typed,
frozen, ordered actions that name every object and pod they touch, the per-cell `Change`s, one
`ActuationRecord` per decision (with its reason, for the run record) and warnings. No I/O, no
clock (`now_s` is passed in), no second read of anything: the SLO state per service (`slo`) is
what the run's own collect saw (`slo_states`). `tasks.kube.backend` only executes the actions.

Rules, per service:
* paused (the pause annotation on any of its Deployments): no action at all, a warning;
* a cell whose replicas a human changed (`ManagedCell.manual_override`): left as is, a warning
  naming who changed it and how to hand it back; the rest of the service proceeds;
* more wanted than in service: restore drained instances first (no cold start), then scale the
  Deployment up (creating it from its template at 0 replicas if absent);
* fewer wanted: soft scale-in — mark instances as draining (out of service discovery, still
  running) and start the observation window; replicas do not change yet;
  a cell whose controller picks the pods a scale-down removes (`ManagedCell.soft_scale_in`
  False: scale_ref objects of kinds without a known order) is scaled in at once instead;
* a drain in progress: if the service's SLOs are degraded, restore every drained instance; when
  the window has passed with SLOs met, remove them (scale down by the drained count); when SLOs
  cannot be read (or were not given), hold (neither remove nor restore), record and warn.
Which pods: a drain takes the pods the controller removes first (`removal_rank`: StatefulSet and
LeaderWorkerSet ordinals), then those that serve least (held by the startup skew guard first, then
not Ready, then the newest: coldest caches); a restore brings back Ready pods first, oldest first.
Ties break by name. Held pods (`ManagedPod.held`) are not drained ones; `tasks.core.skew.guard_startup`
decides which of them serve and appends its `Admit` actions to the plan.
Order: removals of finished drains (frees GPUs) -> restores -> per deployment group, template
applies then the prefill and decode scale-outs of that group back to back -> new drains ->
prunes of removed services (only with `kubernetes.prune`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from models.config import ClusterConfig, Role
from models.values import ActuationRecord, CellKey, Change, PlacementPlan, ServiceSignals, SloState, SloStatus

# heteroscale records the replicas it set here; a differing spec.replicas is a human's change.
A_APPLIED_REPLICAS = "heteroscale.io/applied-replicas"


# --------------------------------------------------------------------------------- inputs


@dataclass(frozen=True, slots=True)
class ManagedPod:
    """One live pod of a managed Deployment, as discovered."""

    name: str
    serving: bool  # the serving label is "true" (in the router's selector)
    ready: bool
    created_s: float
    # Lower is removed earlier by the workload's controller on a scale-down (StatefulSet and
    # LeaderWorkerSet ordinals); 0 everywhere when the controller honours the deletion cost.
    removal_rank: int = 0
    # Not serving because the startup skew guard has not admitted it yet (a new pod, never
    # drained: tasks/core/skew.py); a pod neither serving nor held is drained.
    held: bool = False

    @property
    def drained(self) -> bool:
        return not self.serving and not self.held


@dataclass(frozen=True, slots=True)
class ManagedCell:
    """One managed Deployment as discovered, with its live pods."""

    key: CellKey
    name: str
    namespace: str
    replicas: int
    resource_version: str | None
    template_hash: str | None
    applied_replicas: int | None
    draining: int = 0
    drain_since_s: float | None = None
    paused: bool = False
    replicas_manager: str | None = None  # field manager that last set spec.replicas, when known
    # spec.replicas is not what heteroscale last recorded and someone else last wrote it.
    manual_override: bool = False
    pods: tuple[ManagedPod, ...] = ()
    # False when the workload's controller picks which pod a scale-down removes (a scale_ref
    # object of a kind without an order heteroscale knows): fewer instances -> scale in at once.
    soft_scale_in: bool = True

    @property
    def serving(self) -> int:
        return max(0, self.replicas - self.draining)

    @property
    def drained_pods(self) -> int:
        return sum(p.drained for p in self.pods)


@dataclass(frozen=True, slots=True)
class RenderedCell:
    """The Deployment the plan wants for a cell, rendered by the adapter."""

    namespace: str
    name: str
    group: str  # deployment group: scale-outs of one group are sent back to back
    template_hash: str | None
    manifest: Mapping[str, Any]


# -------------------------------------------------------------------------------- actions


@dataclass(frozen=True, slots=True)
class ApplyTemplate:
    """Server-side apply of a cell's Deployment template (with replicas 0 when it is created)."""

    key: CellKey
    manifest: Mapping[str, Any]
    create: bool


@dataclass(frozen=True, slots=True)
class Scale:
    """Set replicas through the scale subresource; `draining_after`/`since` update the drain record."""

    key: CellKey
    namespace: str
    name: str
    before: int
    after: int
    draining_after: int = 0
    drain_since_s: float | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Drain:
    """Take `count` more instances out of service discovery (marking `pods`); they keep running."""

    key: CellKey
    namespace: str
    name: str
    count: int
    draining_after: int
    since_s: float
    pods: tuple[str, ...] = ()
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Restore:
    """Put `count` drained instances back into service discovery (unmarking `pods`)."""

    key: CellKey
    namespace: str
    name: str
    count: int
    draining_after: int
    drain_since_s: float | None
    reason: str
    pods: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SyncDrained:
    """Mark `mark` and unmark `unmark` so `target` pods carry the drained marks (heals a half-done drain)."""

    key: CellKey
    namespace: str
    name: str
    target: int
    mark: tuple[str, ...] = ()
    unmark: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Prune:
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class Admit:
    """Put held new pods into service discovery (the startup skew guard, tasks/core/skew.py)."""

    key: CellKey
    namespace: str
    name: str
    pods: tuple[str, ...]
    reason: str


KubeAction = ApplyTemplate | Scale | Drain | Restore | SyncDrained | Prune | Admit


@dataclass(frozen=True, slots=True)
class ActionPlan:
    actions: tuple[KubeAction, ...] = ()
    changes: tuple[Change, ...] = ()
    warnings: tuple[str, ...] = ()
    desired: Mapping[CellKey, int] = field(default_factory=dict)  # instances in service per cell
    records: tuple[ActuationRecord, ...] = ()  # every decision with its reason, for the run record


# ------------------------------------------------------------------------------ decisions


def slo_states(config: ClusterConfig, signals: Mapping[str, ServiceSignals]) -> dict[str, SloState]:
    """Per service: met when p99 TTFT and TBT are within the SLO, degraded if either is over,
    unknown when neither could be read."""
    out: dict[str, SloState] = {}
    for svc in config.services:
        sig = signals.get(svc.name)
        ttft = sig.ttft_p99_s if sig is not None else None
        tbt = sig.tbt_p99_s if sig is not None else None
        if ttft is None and tbt is None:
            out[svc.name] = SloState(svc.name, SloStatus.UNKNOWN, "p99 TTFT and TBT could not be read")
            continue
        over = [
            f"{name} p99 {v:.3g}s > SLO {slo:.3g}s"
            for name, v, slo in (("TTFT", ttft, svc.slo.ttft_p99_s), ("TBT", tbt, svc.slo.tbt_p99_s))
            if v is not None and v > slo
        ]
        if over:
            out[svc.name] = SloState(svc.name, SloStatus.DEGRADED, "; ".join(over))
        else:
            seen = [f"{n} p99 {v:.3g}s" for n, v in (("TTFT", ttft), ("TBT", tbt)) if v is not None]
            out[svc.name] = SloState(svc.name, SloStatus.MET, ", ".join(seen) + " within SLO")
    return out


def _drain_order(p: ManagedPod) -> tuple[int, bool, bool, float, str]:
    # The pods the controller removes first, then held (not serving yet), not Ready, the newest.
    return (p.removal_rank, p.serving, p.ready, -p.created_s, p.name)


def _restore_order(p: ManagedPod) -> tuple[int, bool, float, str]:
    # The pods the controller removes last, then Ready first, then the oldest.
    return (-p.removal_rank, not p.ready, p.created_s, p.name)


def pods_to_mark(pods: Sequence[ManagedPod], target: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(pods to mark as drained, pods to put back) so that `target` pods carry the drained marks
    (as many as exist). Pods the startup skew guard holds are drained first (they serve nothing)."""
    drained = [p for p in pods if p.drained]
    serving = [p for p in pods if not p.drained]
    if len(drained) < target:
        return tuple(p.name for p in sorted(serving, key=_drain_order)[: target - len(drained)]), ()
    return (), tuple(p.name for p in sorted(drained, key=_restore_order)[: len(drained) - target])


def decide_actions(
    config: ClusterConfig,
    cells: Mapping[CellKey, ManagedCell],
    plan: PlacementPlan,
    rendered: Mapping[CellKey, RenderedCell],
    slo: Mapping[str, SloState] | None,
    now_s: float,
    *,
    orphans: Sequence[tuple[str, str]] = (),
) -> ActionPlan:
    """The actions that make the cluster run `plan` (see the module docstring). `rendered` holds
    every key of the plan and of `cells`; `slo` None means not given (drains are kept)."""
    window_s = config.kubernetes.soft_scale_in_window_s
    configured = {s.name for s in config.services}
    desired = {k: n for k, n in plan.placement.cells.items() if k.service in configured}
    keys = sorted(set(desired) | set(cells))
    warnings: list[str] = []
    records: list[ActuationRecord] = []
    paused = sorted({k.service for k, c in cells.items() if c.paused})
    for svc in paused:
        warnings.append(
            f"service {svc}: paused ({config.kubernetes.pause_annotation}=true on one of its Deployments); no changes"
        )

    finish: list[KubeAction] = []
    restores: list[KubeAction] = []
    by_group: dict[str, list[KubeAction]] = {}
    drains: list[KubeAction] = []
    changes: list[Change] = []

    def record(kind: str, namespace: str, name: str, count: int, reason: str, pods: tuple[str, ...] = ()) -> None:
        records.append(ActuationRecord(kind, namespace, name, count, reason, pods))

    for key in keys:
        if key.service in paused:
            continue
        cell = cells.get(key)
        want = desired.get(key, 0)
        if cell is not None and cell.manual_override:
            warnings.append(_override_warning(cell, want))
            continue
        out = rendered[key]
        if cell is None:
            if want > 0:
                by_group.setdefault(out.group, []).append(ApplyTemplate(key, out.manifest, create=True))
                by_group[out.group].append(Scale(key, out.namespace, out.name, 0, want, reason="scale-out"))
                changes.append(Change(key, 0, want))
                record("create", out.namespace, out.name, want, "plan wants instances in a new cell")
            continue

        ops = by_group.setdefault(out.group, [])
        if out.template_hash != cell.template_hash:
            ops.append(ApplyTemplate(key, out.manifest, create=False))
            record("update-template", cell.namespace, cell.name, 0, "rendered template changed")
        state = slo.get(key.service) if slo is not None else None
        status = state.status if state is not None else SloStatus.UNKNOWN
        serving, draining = cell.serving, cell.draining
        restored = draining > 0 and (status is SloStatus.DEGRADED or want > serving)

        if draining and status is SloStatus.DEGRADED:
            _, back = pods_to_mark(cell.pods, 0)
            reason = f"SLO degraded during the drain window ({state.reason if state else ''})"
            restores.append(Restore(key, cell.namespace, cell.name, draining, 0, None, reason=reason, pods=back))
            changes.append(Change(key, serving, serving + draining))
            record("restore", cell.namespace, cell.name, draining, reason, back)
            warnings.append(f"{cell.name}: SLO degraded while draining; restored {draining} instance(s)")
            serving, draining = serving + draining, 0
            # Do not drain again in the run that just saw the SLO break.
            want = max(want, serving)
        elif draining and want > serving:
            back_n = min(draining, want - serving)
            _, back = pods_to_mark(cell.pods, draining - back_n)
            reason = f"plan wants {want} in service, {serving} are"
            restores.append(
                Restore(
                    key,
                    cell.namespace,
                    cell.name,
                    back_n,
                    draining - back_n,
                    cell.drain_since_s if draining - back_n else None,
                    reason=reason,
                    pods=back,
                )
            )
            changes.append(Change(key, serving, serving + back_n))
            record("restore", cell.namespace, cell.name, back_n, reason, back)
            serving, draining = serving + back_n, draining - back_n
        elif draining and want == serving:
            since = cell.drain_since_s if cell.drain_since_s is not None else now_s
            drained_names = tuple(sorted(p.name for p in cell.pods if p.drained))
            if status is SloStatus.UNKNOWN:
                why = state.reason if state is not None else "SLO state not given to apply"
                warnings.append(f"{cell.name}: SLOs cannot be read; {draining} drained instance(s) kept until they can")
                record("keep-drained", cell.namespace, cell.name, draining, f"SLOs cannot be read ({why})")
            elif now_s - since >= window_s:
                reason = f"drain window {window_s:g}s passed with SLOs met ({state.reason if state else ''})"
                finish.append(Scale(key, cell.namespace, cell.name, cell.replicas, serving, reason=reason))
                changes.append(Change(key, cell.replicas, serving))
                record("remove-drained", cell.namespace, cell.name, draining, reason, drained_names)
                continue
            else:
                left = window_s - (now_s - since)
                record("keep-drained", cell.namespace, cell.name, draining, f"drain window: {left:.0f}s left")

        # A restore above already sets the pods' marks; otherwise heal a half-done drain.
        if want == serving and not restored and cell.pods and cell.drained_pods != draining:
            mark, unmark = pods_to_mark(cell.pods, draining)
            if mark or unmark:
                restores.append(SyncDrained(key, cell.namespace, cell.name, draining, mark, unmark))
                record(
                    "resync-drained",
                    cell.namespace,
                    cell.name,
                    draining,
                    f"{cell.drained_pods} pod(s) marked drained, the Deployment records {draining}",
                    mark + unmark,
                )
        if want > serving:
            ops.append(
                Scale(
                    key,
                    cell.namespace,
                    cell.name,
                    cell.replicas,
                    want + draining,
                    draining_after=draining,
                    drain_since_s=cell.drain_since_s if draining else None,
                    reason="scale-out",
                )
            )
            changes.append(Change(key, serving, want))
            record("scale-out", cell.namespace, cell.name, want - serving, f"plan wants {want}, {serving} in service")
        elif want < serving and not cell.soft_scale_in:
            reason = f"plan wants {want}, {serving} in service; this kind picks the pods itself: no soft scale-in"
            finish.append(Scale(key, cell.namespace, cell.name, cell.replicas, want + draining, reason=reason))
            changes.append(Change(key, serving, want))
            record("scale-in", cell.namespace, cell.name, serving - want, reason)
        elif want < serving:
            n = serving - want
            mark, _ = pods_to_mark(cell.pods, draining + n)
            reason = f"plan wants {want}, {serving} in service; removal after {window_s:g}s with SLOs met"
            drains.append(Drain(key, cell.namespace, cell.name, n, draining + n, now_s, pods=mark, reason=reason))
            changes.append(Change(key, serving, want))
            record("drain", cell.namespace, cell.name, n, reason, mark)

    prunes: list[KubeAction] = []
    if orphans:
        if config.kubernetes.prune:
            prunes = [Prune(ns, name) for ns, name in orphans]
            for ns, name in orphans:
                record("prune", ns, name, 0, "service no longer configured (kubernetes.prune)")
        else:
            names = ", ".join(f"{ns}/{name}" for ns, name in orphans)
            warnings.append(f"managed Deployments of services no longer configured left alone (prune is off): {names}")

    ordered: list[KubeAction] = [*finish, *restores]
    for group in sorted(by_group):
        ops = by_group[group]
        # Templates first, then prefill and decode scale-outs of the group back to back.
        ordered += [a for a in ops if isinstance(a, ApplyTemplate)]
        ordered += sorted(
            (a for a in ops if isinstance(a, Scale)), key=lambda a: (a.key.role is not Role.PREFILL, a.key)
        )
    ordered += drains + prunes
    return ActionPlan(
        actions=tuple(ordered),
        changes=tuple(changes),
        warnings=tuple(warnings),
        desired=desired,
        records=tuple(records),
    )


def _override_warning(cell: ManagedCell, want: int) -> str:
    who = f" by {cell.replicas_manager!r}" if cell.replicas_manager else ""
    return (
        f"{cell.namespace}/{cell.name}: replicas changed manually{who} to {cell.replicas} "
        f"(heteroscale last set {cell.applied_replicas}, plan wants {want}); respected until cleared with "
        f"`kubectl -n {cell.namespace} annotate deployment {cell.name} {A_APPLIED_REPLICAS}-`"
    )
