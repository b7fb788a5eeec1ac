"""Pure: what to change in the cluster so it runs `plan`, in a safe order.

`decide_actions(config, discovered, plan, manifests, slo_ok, now_s)` compares each managed cell
with the plan and returns an `ActionPlan`: typed, ordered actions, the per-cell `Change`s they
make, and warnings for the run record. No I/O; `backend` performs the actions.

Rules, per service:
* paused (the pause annotation on any of its Deployments): no action at all, a warning;
* a cell whose replicas a human changed (`ManagedCell.manual_override`): left as is, a warning
  naming who changed it and how to hand it back; the rest of the service proceeds;
* more wanted than in service: restore drained instances first (no cold start), then scale the
  Deployment up (creating it from its template at 0 replicas if absent);
* fewer wanted: soft scale-in — mark instances as draining (out of service discovery, still
  running) and start the observation window; replicas do not change yet;
* a drain in progress: if the service's SLOs are degraded, restore every drained instance; when
  the window has passed with SLOs met, remove them (scale down by the drained count); when SLOs
  cannot be read, hold (neither remove nor restore) and warn.
Order: removals of finished drains (frees GPUs) -> restores -> per deployment group, template
applies then the prefill and decode scale-outs of that group back to back -> new drains ->
prunes of removed services (only with `kubernetes.prune`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from models.config import ClusterConfig, Role
from models.values import CellKey, Change, PlacementPlan, ServiceSignals
from tasks.kube import render as r
from tasks.kube.discovery import Discovered, ManagedCell


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
    """Take `count` more instances out of service discovery; they keep running for the window."""

    key: CellKey
    namespace: str
    name: str
    count: int
    draining_after: int
    since_s: float


@dataclass(frozen=True, slots=True)
class Restore:
    """Put `count` drained instances back into service discovery."""

    key: CellKey
    namespace: str
    name: str
    count: int
    draining_after: int
    drain_since_s: float | None
    reason: str


@dataclass(frozen=True, slots=True)
class SyncDrained:
    """Make exactly `target` pods of the Deployment carry the drained marks (heals a half-done drain)."""

    key: CellKey
    namespace: str
    name: str
    target: int


@dataclass(frozen=True, slots=True)
class Prune:
    namespace: str
    name: str


KubeAction = ApplyTemplate | Scale | Drain | Restore | SyncDrained | Prune


@dataclass(frozen=True, slots=True)
class ActionPlan:
    actions: tuple[KubeAction, ...] = ()
    changes: tuple[Change, ...] = ()
    warnings: tuple[str, ...] = ()
    desired: Mapping[CellKey, int] = field(default_factory=dict)  # instances in service per cell


def slo_ok(config: ClusterConfig, signals: Mapping[str, ServiceSignals]) -> dict[str, bool | None]:
    """Per service: True when p99 TTFT and TBT are within the SLO, False if either is over, None if unseen."""
    out: dict[str, bool | None] = {}
    for svc in config.services:
        sig = signals.get(svc.name)
        ttft = sig.ttft_p99_s if sig is not None else None
        tbt = sig.tbt_p99_s if sig is not None else None
        if ttft is None and tbt is None:
            out[svc.name] = None
        else:
            out[svc.name] = not (
                (ttft is not None and ttft > svc.slo.ttft_p99_s) or (tbt is not None and tbt > svc.slo.tbt_p99_s)
            )
    return out


def decide_actions(
    config: ClusterConfig,
    discovered: Discovered,
    plan: PlacementPlan,
    manifests: Mapping[CellKey, Mapping[str, Any]],
    slo: Mapping[str, bool | None],
    now_s: float,
) -> ActionPlan:
    window_s = config.kubernetes.soft_scale_in_window_s
    configured = {s.name for s in config.services}
    desired = {k: n for k, n in plan.placement.cells.items() if k.service in configured}
    keys = sorted(set(desired) | set(discovered.cells))
    warnings: list[str] = []
    paused = sorted({k.service for k, c in discovered.cells.items() if c.paused})
    for svc in paused:
        warnings.append(
            f"service {svc}: paused ({config.kubernetes.pause_annotation}=true on one of its Deployments); no changes"
        )

    finish: list[KubeAction] = []
    restores: list[KubeAction] = []
    by_group: dict[str, list[KubeAction]] = {}
    drains: list[KubeAction] = []
    changes: list[Change] = []

    for key in keys:
        if key.service in paused:
            continue
        cell = discovered.cells.get(key)
        want = desired.get(key, 0)
        if cell is not None and cell.manual_override:
            warnings.append(_override_warning(config, cell, want))
            continue
        group = r.group_name(config.service(key.service), key.s1, discovered.s2_of(key.s1))
        if cell is None:
            if want > 0:
                by_group.setdefault(group, []).append(ApplyTemplate(key, manifests[key], create=True))
                name = str(manifests[key]["metadata"]["name"])
                namespace = str(manifests[key]["metadata"]["namespace"])
                by_group[group].append(Scale(key, namespace, name, 0, want, reason="scale-out"))
                changes.append(Change(key, 0, want))
            continue

        ops = by_group.setdefault(group, [])
        manifest = manifests.get(key)
        if manifest is not None and manifest["metadata"]["annotations"].get(r.A_TEMPLATE_HASH) != cell.template_hash:
            ops.append(ApplyTemplate(key, manifest, create=False))
        state = slo.get(key.service)
        serving, draining = cell.serving, cell.draining

        if draining and state is False:
            restores.append(
                Restore(
                    key, cell.namespace, cell.name, draining, 0, None, reason="SLO degraded during the drain window"
                )
            )
            changes.append(Change(key, serving, serving + draining))
            warnings.append(f"{cell.name}: SLO degraded while draining; restored {draining} instance(s)")
            serving, draining = serving + draining, 0
            # Do not drain again in the run that just saw the SLO break.
            want = max(want, serving)
        elif draining and want > serving:
            back = min(draining, want - serving)
            restores.append(
                Restore(
                    key,
                    cell.namespace,
                    cell.name,
                    back,
                    draining - back,
                    cell.drain_since_s if draining - back else None,
                    reason="plan wants them back",
                )
            )
            changes.append(Change(key, serving, serving + back))
            serving, draining = serving + back, draining - back
        elif draining and want == serving:
            since = cell.drain_since_s if cell.drain_since_s is not None else now_s
            if state is None:
                warnings.append(f"{cell.name}: SLOs cannot be read; {draining} drained instance(s) kept until they can")
            elif now_s - since >= window_s:
                finish.append(
                    Scale(
                        key,
                        cell.namespace,
                        cell.name,
                        cell.replicas,
                        serving,
                        reason=f"drain window {window_s:g}s passed",
                    )
                )
                changes.append(Change(key, cell.replicas, serving))
                continue

        if want == serving and cell.pods and cell.drained_pods != draining:
            restores.append(SyncDrained(key, cell.namespace, cell.name, draining))
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
        elif want < serving:
            n = serving - want
            drains.append(Drain(key, cell.namespace, cell.name, n, draining + n, now_s))
            changes.append(Change(key, serving, want))

    prunes: list[KubeAction] = []
    if discovered.orphans:
        if config.kubernetes.prune:
            prunes = [Prune(ns, name) for ns, name in discovered.orphans]
        else:
            names = ", ".join(f"{ns}/{name}" for ns, name in discovered.orphans)
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
    return ActionPlan(actions=tuple(ordered), changes=tuple(changes), warnings=tuple(warnings), desired=desired)


def _override_warning(config: ClusterConfig, cell: ManagedCell, want: int) -> str:
    who = f" by {cell.replicas_manager!r}" if cell.replicas_manager else ""
    return (
        f"{cell.namespace}/{cell.name}: replicas changed manually{who} to {cell.replicas} "
        f"(heteroscale last set {cell.applied_replicas}, plan wants {want}); respected until cleared with "
        f"`kubectl -n {cell.namespace} annotate deployment {cell.name} {r.A_APPLIED_REPLICAS}-`"
    )
