"""`KubeBackend`: the `ClusterBackend` for a real cluster (read state, apply a plan).

Contract:
* `read_state` discovers the cluster (tasks.kube.discovery) and returns its `ClusterView`.
* `apply(config, plan, mode, now_s, slo=...)` discovers once (nodes, pods and managed
  Deployments, fresh resource versions: a retried apply re-reads what its failed attempt
  changed), renders every cell's Deployment, and executes what the pure
  `tasks.core.actuation.decide_actions` decided from that one read and the run's SLO state per
  service (`slo`, from the signals the flow collected; nothing is read from Prometheus here),
  followed by the startup skew guard's admissions of new pods (`tasks.core.skew.guard_startup`):
  - `apply`: performs the actions in order: server-side apply (field manager
    `kubernetes.field_manager`, force only over our own template fields) for templates, the scale
    subresource with a resourceVersion precondition for replicas, label/annotation patches of
    exactly the pods the decision names for soft scale-in and for the guard's admissions, deletes
    only for opted-in prunes;
  - `dry-run`: sends the same writes with `dryRun=All` (the server validates, nothing persists);
  - `advisory`: writes nothing to the cluster; exports the desired Deployments (with replicas)
    as YAML under the data dir and records the changes.
  Every decision (drain, restore, removal, kept drain, scale-out ...) with its reason goes to
  `ApplyResult.actions`; warnings (pause, manual overrides, orphans, unreadable SLOs, skipped
  writes) to `ApplyResult.warnings` and the log; the run still succeeds.
* Errors: 409 on a scale is retried with a fresh read of the scale subresource (and skipped with
  a warning if a human changed the replicas meanwhile); a pod that vanished since discovery is
  skipped with a warning (the next run re-syncs); transient errors (429/5xx/timeouts) and
  permanent ones (403 naming the RBAC verb and resource) propagate with the list of actions
  already applied, so a failed run's record says what changed. Every action is idempotent
  against fresh state: re-running a failed run converges instead of repeating work.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s

from models import settings
from models.config import ClusterConfig, Role
from models.values import ApplyMode, ApplyResult, PlacementPlan, SloState
from tasks.core.actuation import (
    ActionPlan,
    Admit,
    ApplyTemplate,
    Drain,
    KubeAction,
    Prune,
    RenderedCell,
    Restore,
    Scale,
    SyncDrained,
    decide_actions,
)
from tasks.core.skew import guard_startup
from tasks.core.topology import ClusterView
from tasks.kube import render as r
from tasks.kube.client import REQUEST_TIMEOUT_S, KubeConflict, KubeError, KubePermanentError, api_error, connect
from tasks.kube.discovery import Discovered, build_discovered, list_all, read_cluster_objects
from tasks.kube.scaleref import A_DRAIN_SINCE, RefTarget, map_plan, patch_scale, read_scale, read_scale_refs

log = logging.getLogger(__name__)
APPLY_PATCH = "application/apply-patch+yaml"
MERGE_PATCH = "application/merge-patch+json"
CONFLICT_RETRIES = 3


class KubeBackend:
    def __init__(
        self,
        api: k8s.ApiClient,
        *,
        export_dir: Path | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.api = api
        self.apps = k8s.AppsV1Api(api)
        self.core = k8s.CoreV1Api(api)
        self.export_dir = export_dir
        self.clock = clock

    @classmethod
    def connect(cls, config: ClusterConfig, **kw: Any) -> KubeBackend:
        return cls(connect(config), **kw)

    def now(self) -> float:
        return float(self.clock())

    # ------------------------------------------------------------------------------ discovery

    def discover(self, config: ClusterConfig) -> Discovered:
        nodes, pods, deployments = read_cluster_objects(self.api, config)
        refs, ref_warnings = read_scale_refs(self.api, config, lister=list_all)
        found = build_discovered(config, nodes, pods, deployments, refs)
        found = replace(found, warnings=(*ref_warnings, *found.warnings))
        for w in found.warnings:
            log.warning("discovery: %s", w)
        return found

    def read_state(self, config: ClusterConfig, now_s: float) -> ClusterView:
        return self.discover(config).view

    # ------------------------------------------------------------------------------- actuation

    def decide(
        self, config: ClusterConfig, plan: PlacementPlan, slo: Mapping[str, SloState] | None, now_s: float
    ) -> tuple[Discovered, ActionPlan]:
        """One discovery, the rendered Deployments, and the pure decision on them. scale_ref roles
        get the plan mapped onto their objects (`tasks.kube.scaleref.map_plan`) and render nothing."""
        found = self.discover(config)
        plan, map_warnings = map_plan(config, plan, found.targets, found.view.s2_of())
        configured = {s.name for s in config.services}
        keys = set(found.cells) | {k for k in plan.placement.cells if k.service in configured}
        managed = {k for k in keys if k not in found.targets}
        templates = self._templates(config, {(k.service, k.role) for k in managed})
        rendered: dict[Any, RenderedCell] = {}
        for k, t in found.targets.items():
            group = r.group_name(config.service(k.service), k.s1, found.s2_of(k.s1))
            rendered[k] = RenderedCell(t.namespace, t.name, group, template_hash=None, manifest={})
        for k in managed:
            body = r.render_deployment(config, k, s2=found.s2_of(k.s1), **templates.get((k.service, k.role), {}))
            meta = body["metadata"]
            rendered[k] = RenderedCell(
                namespace=str(meta["namespace"]),
                name=str(meta["name"]),
                group=r.group_name(config.service(k.service), k.s1, found.s2_of(k.s1)),
                template_hash=meta["annotations"].get(r.A_TEMPLATE_HASH),
                manifest=body,
            )
        actions = decide_actions(config, found.cells, plan, rendered, slo, now_s, orphans=found.orphans)
        if map_warnings:
            actions = replace(actions, warnings=(*actions.warnings, *map_warnings))
        actions = guard_startup(config, found.cells, actions, {k: c.group for k, c in rendered.items()})
        return found, actions

    def apply(
        self,
        config: ClusterConfig,
        plan: PlacementPlan,
        mode: ApplyMode,
        now_s: float,
        *,
        slo: Mapping[str, SloState] | None = None,
    ) -> ApplyResult:
        found, actions = self.decide(config, plan, slo, now_s)
        warnings = list(actions.warnings)
        if mode is ApplyMode.EXPORT:
            # HPA/KEDA own the replicas: nothing is sent; the exporter publishes the decision.
            warnings.append("export: nothing sent to the cluster; desired replicas published by `heteroscale exporter`")
            return ApplyResult(mode, actions.changes, applied=False, warnings=tuple(warnings), actions=actions.records)
        if mode is ApplyMode.ADVISORY:
            path = self.export_desired(config, found, actions)
            warnings.append(f"advisory: desired state written to {path}")
            return ApplyResult(mode, actions.changes, applied=False, warnings=tuple(warnings), actions=actions.records)
        dry = mode is ApplyMode.DRY_RUN
        fm = config.kubernetes.field_manager
        done: list[str] = []
        for action in actions.actions:
            try:
                note, skipped = self._perform(config, action, dry=dry, field_manager=fm, targets=found.targets)
            except KubeError as exc:
                applied = "; ".join(done) if done else "nothing"
                # Same class, so Prefect retries transient ones; the message keeps the record.
                raise type(exc)(f"{exc} [applied before failing: {applied}]") from exc
            warnings += skipped
            done.append(note)
            log.info("%s%s", "dry-run: " if dry else "", note)
        return ApplyResult(mode, actions.changes, applied=not dry, warnings=tuple(warnings), actions=actions.records)

    def export_desired(self, config: ClusterConfig, found: Discovered, actions: ActionPlan) -> Path:

        out = self.export_dir or settings.data_dir() / "kube"
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{config.cluster.name}-desired.yaml"
        templates = self._templates(config, {(k.service, k.role) for k in actions.desired})
        docs = []
        for key, n in sorted(actions.desired.items()):
            if key in found.targets:
                t = found.targets[key]
                docs.append(
                    {
                        "apiVersion": "autoscaling/v1",
                        "kind": "Scale",
                        "metadata": {
                            "name": t.name,
                            "namespace": t.namespace,
                            "annotations": {
                                f"{r.DOMAIN}/scale-target": f"{t.ref.api_version or ''} {t.ref.kind}".strip()
                            },
                        },
                        "spec": {"replicas": n + t.cell.draining},
                    }
                )
                continue
            body = r.render_deployment(
                config, key, s2=found.s2_of(key.s1), **templates.get((key.service, key.role), {})
            )
            body["spec"]["replicas"] = n
            docs.append(body)
        path.write_text(yaml.safe_dump_all(docs, sort_keys=False), encoding="utf-8")
        return path

    # ---------------------------------------------------------------------------------- writes

    def _templates(self, config: ClusterConfig, roles: set[tuple[str, Role]]) -> dict[tuple[str, Role], dict[str, Any]]:
        """Pod templates read from template Deployments, with the labels that must not be copied."""
        out: dict[tuple[str, Role], dict[str, Any]] = {}
        for service, role in sorted(roles):
            svc = config.service(service)
            if svc.pod_template is None or svc.pod_template.from_deployment is None:
                continue
            name = svc.pod_template.from_deployment.replace("{role}", role.value)
            try:
                dep = self.apps.read_namespaced_deployment(name, svc.namespace, _request_timeout=REQUEST_TIMEOUT_S)
            except k8s.ApiException as exc:
                if exc.status == 404:
                    raise KubePermanentError(
                        f"service {service}: template Deployment {svc.namespace}/{name} (pod_template.from_deployment) "
                        "does not exist; create it (0 replicas is fine) or fix the name"
                    ) from None
                raise api_error(exc, verb="get", resource="deployments", namespace=svc.namespace) from None
            except Exception as exc:
                raise api_error(exc, verb="get", resource="deployments", namespace=svc.namespace) from None
            raw = self.api.sanitize_for_serialization(dep)
            out[(service, role)] = {
                "pod_template": raw["spec"]["template"],
                "drop_labels": tuple((raw["spec"].get("selector") or {}).get("matchLabels") or {}),
            }
        return out

    def _perform(
        self,
        config: ClusterConfig,
        action: KubeAction,
        *,
        dry: bool,
        field_manager: str,
        targets: Mapping[Any, RefTarget] | None = None,
    ) -> tuple[str, list[str]]:
        """Execute one decided action; returns what was done and warnings for writes skipped. An
        action on a scale_ref object (`targets`) writes only its /scale and its pods' labels."""
        dry_run = "All" if dry else None
        target = (targets or {}).get(getattr(action, "key", None))
        if isinstance(action, ApplyTemplate):
            body = copy.deepcopy(dict(action.manifest))
            if action.create:
                body["spec"]["replicas"] = 0
            ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
            self._call(
                "patch",
                "deployments",
                ns,
                lambda: self.apps.patch_namespaced_deployment(
                    name,
                    ns,
                    body,
                    field_manager=field_manager,
                    force=True,
                    dry_run=dry_run,
                    _content_type=APPLY_PATCH,
                    _request_timeout=REQUEST_TIMEOUT_S,
                ),
            )
            return f"{'created' if action.create else 'updated template of'} {ns}/{name}", []
        if isinstance(action, Scale):
            note = self._scale(action, dry_run=dry_run, field_manager=field_manager, target=target)
            return note, [note] if note.startswith("skipped") else []
        label = config.kubernetes.serving_label
        if isinstance(action, Drain):
            if target is None:
                self._annotate(
                    action.namespace, action.name, action.draining_after, action.since_s, dry_run, field_manager
                )
            since = action.since_s if target is not None else None
            gone = self._mark(action.namespace, action.pods, label, drained=True, dry_run=dry_run, since_s=since)
            return (
                f"draining {action.count} of {action.namespace}/{action.name} (out of service discovery: "
                f"{', '.join(action.pods) or 'no pod yet'}; removal after {config.kubernetes.soft_scale_in_window_s:g}s)",
                gone,
            )
        if isinstance(action, Restore):
            if target is None:
                self._annotate(
                    action.namespace, action.name, action.draining_after, action.drain_since_s, dry_run, field_manager
                )
            gone = self._mark(
                action.namespace, action.pods, label, drained=False, dry_run=dry_run, since_s=0.0 if target else None
            )
            return (
                f"restored {action.count} drained instance(s) of {action.namespace}/{action.name}: {action.reason}",
                gone,
            )
        if isinstance(action, Admit):
            gone = self._mark(action.namespace, action.pods, label, drained=False, dry_run=dry_run)
            return (
                f"admitted {len(action.pods)} new pod(s) of {action.namespace}/{action.name} into service: "
                f"{', '.join(action.pods)} ({action.reason})",
                gone,
            )
        if isinstance(action, SyncDrained):
            gone = self._mark(action.namespace, action.mark, label, drained=True, dry_run=dry_run)
            gone += self._mark(action.namespace, action.unmark, label, drained=False, dry_run=dry_run)
            return f"re-synced drained pods of {action.namespace}/{action.name} to {action.target}", gone
        if isinstance(action, Prune):
            self._call(
                "delete",
                "deployments",
                action.namespace,
                lambda: self.apps.delete_namespaced_deployment(
                    action.name, action.namespace, dry_run=dry_run, _request_timeout=REQUEST_TIMEOUT_S
                ),
            )
            return f"pruned {action.namespace}/{action.name}", []
        raise TypeError(f"unknown action {action!r}")

    def _scale(self, a: Scale, *, dry_run: str | None, field_manager: str, target: RefTarget | None = None) -> str:
        """Set replicas through /scale with a resourceVersion precondition; a managed Deployment
        also gets its drain and applied-replicas record, a scale_ref object nothing else."""
        resource = "deployments/scale" if target is None else target.scale_resource
        for _ in range(CONFLICT_RETRIES):
            try:
                if target is None:
                    current = self.api.sanitize_for_serialization(
                        self.apps.read_namespaced_deployment_scale(
                            a.name, a.namespace, _request_timeout=REQUEST_TIMEOUT_S
                        )
                    )
                else:
                    current = read_scale(self.api, target.ref, a.namespace, a.name)
            except k8s.ApiException as exc:
                if exc.status == 404 and dry_run and target is None:
                    return f"would scale new {a.namespace}/{a.name} to {a.after}"
                raise api_error(exc, verb="get", resource=resource, namespace=a.namespace) from None
            except Exception as exc:
                raise api_error(exc, verb="get", resource=resource, namespace=a.namespace) from None
            replicas = int((current.get("spec") or {}).get("replicas") or 0)
            if replicas != a.before and replicas != a.after:
                return (
                    f"skipped {a.namespace}/{a.name}: replicas changed to {replicas} by someone else since it was "
                    f"read (expected {a.before}); left alone"
                )
            rv = (current.get("metadata") or {}).get("resourceVersion")
            body = {"metadata": {"resourceVersion": rv}, "spec": {"replicas": a.after}}
            try:
                if replicas != a.after:
                    self._call(
                        "patch",
                        resource,
                        a.namespace,
                        lambda b=body: self._patch_scale(a, b, target, dry_run, field_manager),  # type: ignore[misc]
                    )
            except KubeConflict:
                continue  # stale resourceVersion: read again and decide again
            if target is None:
                self._annotate(a.namespace, a.name, a.draining_after, a.drain_since_s, dry_run, field_manager, a.after)
            return f"scaled {a.namespace}/{a.name} {a.before} -> {a.after} ({a.reason})"
        raise KubeConflict(f"scale {a.namespace}/{a.name}: still conflicting after {CONFLICT_RETRIES} fresh reads")

    def _patch_scale(
        self, a: Scale, body: Mapping[str, Any], target: RefTarget | None, dry_run: str | None, field_manager: str
    ) -> Any:
        if target is not None:
            return patch_scale(
                self.api, target.ref, a.namespace, a.name, body, dry_run=dry_run, field_manager=field_manager
            )
        return self.apps.patch_namespaced_deployment_scale(
            a.name,
            a.namespace,
            body,
            field_manager=field_manager,
            dry_run=dry_run,
            _content_type=MERGE_PATCH,
            _request_timeout=REQUEST_TIMEOUT_S,
        )

    def _annotate(
        self,
        namespace: str,
        name: str,
        draining: int,
        since_s: float | None,
        dry_run: str | None,
        field_manager: str,
        applied_replicas: int | None = None,
    ) -> None:
        ann: dict[str, str | None] = {
            r.A_DRAINING: str(draining) if draining else None,
            r.A_DRAIN_SINCE: f"{since_s:.3f}" if draining and since_s is not None else None,
        }
        if applied_replicas is not None:
            ann[r.A_APPLIED_REPLICAS] = str(applied_replicas)
        self._call(
            "patch",
            "deployments",
            namespace,
            lambda: self.apps.patch_namespaced_deployment(
                name,
                namespace,
                {"metadata": {"annotations": ann}},
                field_manager=field_manager,
                dry_run=dry_run,
                _content_type=MERGE_PATCH,
                _request_timeout=REQUEST_TIMEOUT_S,
            ),
        )

    def _mark(
        self,
        namespace: str,
        pods: tuple[str, ...],
        label: str,
        *,
        drained: bool,
        dry_run: str | None,
        since_s: float | None = None,
    ) -> list[str]:
        """Take the named pods out of (or back into) service discovery; warnings for pods gone.
        `since_s` (scale_ref objects, whose drain state lives on the pods): record the drain's start
        on each pod, or clear it when restoring."""
        labels = {label: "false" if drained else "true"}
        annotations = {r.A_DELETION_COST: r.DRAINED_DELETION_COST if drained else None}
        if since_s is not None:
            annotations[A_DRAIN_SINCE] = f"{since_s:.3f}" if drained else None
        gone = []
        for name in pods:
            try:
                self.core.patch_namespaced_pod(
                    name,
                    namespace,
                    {"metadata": {"labels": labels, "annotations": annotations}},
                    dry_run=dry_run,
                    _content_type=MERGE_PATCH,
                    _request_timeout=REQUEST_TIMEOUT_S,
                )
            except k8s.ApiException as exc:
                if exc.status != 404:
                    raise api_error(exc, verb="patch", resource="pods", namespace=namespace) from None
                # Deleted since discovery (node lost, evicted): the next run re-syncs the marks.
                gone.append(f"skipped pod {namespace}/{name}: gone since discovery; the next run re-syncs")
            except Exception as exc:
                raise api_error(exc, verb="patch", resource="pods", namespace=namespace) from None
        return gone

    @staticmethod
    def _call(verb: str, resource: str, namespace: str | None, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as exc:  # classified into transient / conflict / permanent
            raise api_error(exc, verb=verb, resource=resource, namespace=namespace) from None
