"""Scale targets the operator already runs (`scale_targets.<role>.kind: scale_ref`).

A role whose scale target is `scale_ref` is not rendered or applied by heteroscale: it names
existing objects (a Deployment, a StatefulSet, a LeaderWorkerSet, Dynamo's
DynamoGraphDeploymentScalingAdapter or any object with a /scale subresource) that heteroscale
changes only through `/scale` (`spec.replicas`) and whose pods it only labels (soft scale-in).

Three halves:
* I/O, reads (`read_scale_refs`): each configured ref by name (`get`) or by label selector
  (`list`), then its scale subresource (`get .../scale`: `spec.replicas`, `status.selector`,
  resourceVersion). A named object or a /scale that does not exist is a permanent error naming
  the config field; a selector matching nothing is a warning.
* pure (`build_targets`, `map_plan`): the discovered target of each object and the plan each one
  is asked to run.
  - Its pods are the pods in its namespace matching the scale's `status.selector` (a
    LeaderWorkerSet's selects its leaders, one per instance; its workers are its pods too for
    GPU accounting). Pods carry their cells (GPU type, S1) through their nodes' labels, as
    discovery reads them for managed cells.
  - Its home cell is `cell` from the config, else the cell most of its pods run in, else the
    first S1 domain with the role's reference GPU type. The placement view counts its serving
    instances in the cells its pods really run in (the rest, not yet scheduled, at home).
  - heteroscale cannot move a scale_ref object's pods between domains: `map_plan` sums, per
    target, the plan's instances of its service and role (in reference-GPU units, converted to
    the target's GPU type, rounded up), each plan cell going to the target in the same cell, else
    one of the same GPU type in the same S2 domain, else of the same GPU type, else the first.
  - Soft scale-in needs to know which pod the object's controller removes on a scale-down:
    Deployments (ReplicaSets remove the lowest pod-deletion-cost first), StatefulSets and
    LeaderWorkerSets (highest ordinal / group index first: those are the ones drained). Any other
    kind is scaled in directly. The drain state lives on the pods (serving label "false",
    `heteroscale.io/draining-since-s`), never on the object; a pod without the serving label is
    serving.
  - The pause annotation on the object pauses its service, as on a managed Deployment. There is
    no manual-override record (heteroscale never writes the object itself): heteroscale owns the
    replica count of the objects the config names.
* I/O, writes (`read_scale`, `patch_scale`): the scale subresource of one target, through
  `AppsV1Api` for Deployments and StatefulSets and `CustomObjectsApi` for everything else.
"""

from __future__ import annotations

import functools
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from kubernetes import client as k8s

from models.config import ClusterConfig, Role, ScaleRef, ScaleTargetKind
from models.values import CellKey, Placement, PlacementPlan
from tasks.core.actuation import ManagedCell, ManagedPod
from tasks.kube.client import REQUEST_TIMEOUT_S, KubeError, KubePermanentError, api_error

JsonObj = dict[str, Any]
Lister = Callable[..., list[JsonObj]]
A_DRAIN_SINCE = "heteroscale.io/draining-since-s"
LWS_NAME_LABEL = "leaderworkerset.sigs.k8s.io/name"
LWS_GROUP_INDEX_LABEL = "leaderworkerset.sigs.k8s.io/group-index"
STS_POD_INDEX_LABEL = "apps.kubernetes.io/pod-index"
# Kinds whose controller removes a known pod on scale-down, so a drain can pick exactly those.
SOFT_SCALE_IN_KINDS = ("Deployment", "StatefulSet", "LeaderWorkerSet")


@dataclass(frozen=True, slots=True)
class RefObject:
    """One object a scale_ref found, with its scale subresource (as the API returned them)."""

    service: str
    role: Role
    ref: ScaleRef
    field: str  # the config path of the ref, for messages
    namespace: str
    name: str
    annotations: Mapping[str, str]
    scale: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class RefTarget:
    """A discovered scale_ref object: where it counts in placement and how to scale it."""

    key: CellKey  # home cell
    ref: ScaleRef
    namespace: str
    name: str
    cell: ManagedCell
    placement: Mapping[CellKey, int]  # serving instances per cell their pods run in
    group_pods: frozenset[tuple[str, str]]  # (namespace, pod) of every pod of it, leaders and workers

    @property
    def scale_resource(self) -> str:
        return f"{self.ref.resource}/scale"


# ---------------------------------------------------------------------------------- reads


def _apps_fn(apps: k8s.AppsV1Api, kind: str, op: str) -> Callable[..., Any]:
    stem = {"Deployment": "deployment", "StatefulSet": "stateful_set"}[kind]
    return {
        "read": getattr(apps, f"read_namespaced_{stem}"),
        "list": getattr(apps, f"list_namespaced_{stem}"),
        "read_scale": getattr(apps, f"read_namespaced_{stem}_scale"),
        "patch_scale": getattr(apps, f"patch_namespaced_{stem}_scale"),
    }[op]


def _is_apps(ref: ScaleRef) -> bool:
    return ref.kind in ("Deployment", "StatefulSet") and ref.group_version[0] == "apps"


def _json(api: k8s.ApiClient, obj: Any) -> JsonObj:
    return obj if isinstance(obj, dict) else api.sanitize_for_serialization(obj)


def read_scale(api: k8s.ApiClient, ref: ScaleRef, namespace: str, name: str) -> JsonObj:
    """The object's Scale (`spec.replicas`, `status.replicas`, `status.selector`); raises ApiException."""
    if _is_apps(ref):
        fn = _apps_fn(k8s.AppsV1Api(api), ref.kind, "read_scale")
        return _json(api, fn(name, namespace, _request_timeout=REQUEST_TIMEOUT_S))
    group, version = ref.group_version
    return _json(
        api,
        k8s.CustomObjectsApi(api).get_namespaced_custom_object_scale(
            group, version, namespace, ref.resource, name, _request_timeout=REQUEST_TIMEOUT_S
        ),
    )


def patch_scale(
    api: k8s.ApiClient,
    ref: ScaleRef,
    namespace: str,
    name: str,
    body: Mapping[str, Any],
    *,
    dry_run: str | None,
    field_manager: str,
) -> JsonObj:
    """Merge-patch the object's Scale; raises ApiException."""
    kw: dict[str, Any] = {
        "dry_run": dry_run,
        "field_manager": field_manager,
        "_content_type": "application/merge-patch+json",
        "_request_timeout": REQUEST_TIMEOUT_S,
    }
    if _is_apps(ref):
        return _json(api, _apps_fn(k8s.AppsV1Api(api), ref.kind, "patch_scale")(name, namespace, body, **kw))
    group, version = ref.group_version
    return _json(
        api,
        k8s.CustomObjectsApi(api).patch_namespaced_custom_object_scale(
            group, version, namespace, ref.resource, name, body, **kw
        ),
    )


def _get_object(api: k8s.ApiClient, ref: ScaleRef, namespace: str, name: str) -> JsonObj:
    if _is_apps(ref):
        return _json(
            api, _apps_fn(k8s.AppsV1Api(api), ref.kind, "read")(name, namespace, _request_timeout=REQUEST_TIMEOUT_S)
        )
    group, version = ref.group_version
    return _json(
        api,
        k8s.CustomObjectsApi(api).get_namespaced_custom_object(
            group, version, namespace, ref.resource, name, _request_timeout=REQUEST_TIMEOUT_S
        ),
    )


def _list_objects(api: k8s.ApiClient, ref: ScaleRef, namespace: str, lister: Lister) -> list[JsonObj]:
    selector = ",".join(f"{k}={v}" for k, v in sorted((ref.selector or {}).items()))
    if _is_apps(ref):
        fn = functools.partial(_apps_fn(k8s.AppsV1Api(api), ref.kind, "list"), namespace)
    else:
        group, version = ref.group_version
        fn = functools.partial(
            k8s.CustomObjectsApi(api).list_namespaced_custom_object, group, version, namespace, ref.resource
        )
    return lister(fn, api, verb="list", resource=ref.resource, namespace=namespace, label_selector=selector)


def read_scale_refs(api: k8s.ApiClient, config: ClusterConfig, *, lister: Lister) -> tuple[list[RefObject], list[str]]:
    """Every object the config's scale_ref targets name, with its Scale; and warnings. `lister`
    pages through a list call (`tasks.kube.discovery.list_all`)."""
    found: list[RefObject] = []
    warnings: list[str] = []
    for i, svc in enumerate(config.services):
        ns = svc.namespace
        for role in Role:
            target = svc.scale_target(role)
            if target.kind is not ScaleTargetKind.SCALE_REF:
                continue
            for j, ref in enumerate(target.refs):
                field = f"services[{i}].scale_targets.{role.value}.refs[{j}]"
                if ref.name is not None:
                    try:
                        objs = [_get_object(api, ref, ns, ref.name)]
                    except k8s.ApiException as exc:
                        if exc.status == 404:
                            raise KubePermanentError(
                                f"{field}: {ref.describe()} not found in namespace {ns!r} (service {svc.name}, "
                                f"{role.value}); create it or fix the name"
                            ) from None
                        raise api_error(exc, verb="get", resource=ref.resource, namespace=ns) from None
                    except KubeError:
                        raise
                    except Exception as exc:
                        raise api_error(exc, verb="get", resource=ref.resource, namespace=ns) from None
                else:
                    objs = _list_objects(api, ref, ns, lister)
                    if not objs:
                        warnings.append(f"{field}: no {ref.describe()} in namespace {ns!r}; nothing to scale for it")
                for obj in sorted(objs, key=lambda o: str((o.get("metadata") or {}).get("name"))):
                    meta = obj.get("metadata") or {}
                    name = str(meta.get("name"))
                    try:
                        scale = read_scale(api, ref, ns, name)
                    except k8s.ApiException as exc:
                        if exc.status == 404:
                            raise KubePermanentError(
                                f"{field}: {ref.describe()} ({ns}/{name}) has no /scale subresource; scale_ref "
                                "targets must have one (CRDs: spec.versions[].subresources.scale)"
                            ) from None
                        raise api_error(exc, verb="get", resource=f"{ref.resource}/scale", namespace=ns) from None
                    except Exception as exc:
                        raise api_error(exc, verb="get", resource=f"{ref.resource}/scale", namespace=ns) from None
                    found.append(
                        RefObject(
                            service=svc.name,
                            role=role,
                            ref=ref,
                            field=field,
                            namespace=ns,
                            name=name,
                            annotations=dict(meta.get("annotations") or {}),
                            scale=scale,
                        )
                    )
    return found, warnings


# ----------------------------------------------------------------------------------- pure

_TERM = re.compile(r"\s*([^,(]+?(?:\([^)]*\))?)\s*(?:,|$)")


def selector_matches(selector: str, labels: Mapping[str, str]) -> bool:
    """Does a label selector string (as `status.selector` writes it) match `labels`?

    Supports `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k` and `!k`. An empty selector
    matches nothing here (an object that does not say which pods are its own has none we can use).
    """
    if not selector.strip():
        return False
    for term in (t.strip() for t in _TERM.findall(selector)):
        if not term:
            continue
        m = re.fullmatch(r"(\S+)\s+(in|notin)\s*\(([^)]*)\)", term)
        if m:
            values = {v.strip() for v in m.group(3).split(",")}
            has = m.group(1) in labels and labels[m.group(1)] in values
            if has != (m.group(2) == "in"):
                return False
        elif "!=" in term:
            k, v = (x.strip() for x in term.split("!=", 1))
            if labels.get(k) == v:
                return False
        elif "=" in term:
            k, v = (x.strip() for x in term.replace("==", "=").split("=", 1))
            if labels.get(k) != v:
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


def _removal_rank(kind: str, pod: Mapping[str, Any]) -> int:
    """Lower = removed earlier by the object's controller on a scale-down (0: unknown)."""
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    raw: Any = None
    if kind == "StatefulSet":
        raw = labels.get(STS_POD_INDEX_LABEL) or str(meta.get("name", "")).rpartition("-")[2]
    elif kind == "LeaderWorkerSet":
        raw = labels.get(LWS_GROUP_INDEX_LABEL) or str(meta.get("name", "")).rpartition("-")[2]
    try:
        return -int(str(raw))
    except (TypeError, ValueError):
        return 0


def _float(value: Any) -> float | None:
    try:
        return float(str(value))
    except (TypeError, ValueError):
        return None


def build_targets(
    config: ClusterConfig,
    refs: Iterable[RefObject],
    pods: Sequence[Mapping[str, Any]],
    node_cell: Mapping[str, tuple[str, str]],
    domains: Sequence[tuple[str, str]],
    pod_view: Callable[[Mapping[str, Any]], ManagedPod],
) -> tuple[dict[CellKey, RefTarget], list[str]]:
    """The targets of the discovered objects, keyed by home cell, and warnings.

    `node_cell` maps usable nodes to (GPU type, S1); `domains` lists the (GPU type, S1) cells with
    capacity; `pod_view` turns a pod into a `ManagedPod` (serving label, Ready, age).
    """
    ks = config.kubernetes
    out: dict[CellKey, RefTarget] = {}
    warnings: list[str] = []
    live = [
        p
        for p in pods
        if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
        and not (p.get("metadata") or {}).get("deletionTimestamp")
    ]
    paused_services: set[str] = set()
    for obj in refs:
        svc = config.service(obj.service)
        selector = str((obj.scale.get("status") or {}).get("selector") or "")
        mine = [
            p
            for p in live
            if (p.get("metadata") or {}).get("namespace") == obj.namespace
            and selector_matches(selector, (p.get("metadata") or {}).get("labels") or {})
        ]
        if not selector:
            warnings.append(
                f"{obj.field}: {obj.namespace}/{obj.name} reports no status.selector on /scale; its pods are unknown "
                "(no soft scale-in, GPUs counted as other workloads)"
            )
        group = {str(p["metadata"]["name"]) for p in mine}
        if obj.ref.kind == "LeaderWorkerSet":
            group |= {
                str(p["metadata"]["name"])
                for p in live
                if (p.get("metadata") or {}).get("namespace") == obj.namespace
                and ((p.get("metadata") or {}).get("labels") or {}).get(LWS_NAME_LABEL) == obj.name
            }
        cells_of = [node_cell[n] for p in mine if (n := (p.get("spec") or {}).get("nodeName")) in node_cell]
        if obj.ref.cell is not None:
            home = (obj.ref.cell.gpu_type, obj.ref.cell.s1)
        elif cells_of:
            home = sorted(Counter(cells_of).items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
        else:
            ref_gpu = svc.role(obj.role).reference_gpu_type
            home = next(((g, s1) for g, s1 in domains if g == ref_gpu), (ref_gpu, domains[0][1] if domains else "none"))
        key = CellKey(obj.service, obj.role, home[0], home[1])
        if key in out:
            warnings.append(
                f"{obj.field}: {obj.namespace}/{obj.name} runs in the same cell ({home[0]}, {home[1]}) as "
                f"{out[key].namespace}/{out[key].name}; only the latter is scaled (pin each with `cell:`)"
            )
            continue

        views = [(p, pod_view(p)) for p in mine]
        serving_pods = [(p, v) for p, v in views if v.serving]
        drained = [(p, v) for p, v in views if not v.serving]
        replicas = int((obj.scale.get("spec") or {}).get("replicas") or 0)
        # Drained pods beyond what the replicas still hold are being removed (scaled down already).
        draining = min(len(drained), max(0, replicas - len(serving_pods)))
        since = {
            v.name: _float(((p.get("metadata") or {}).get("annotations") or {}).get(A_DRAIN_SINCE)) for p, v in drained
        }
        kept = sorted(drained, key=lambda pv: (since[pv[1].name] is None, since[pv[1].name] or 0.0, pv[1].name))[
            :draining
        ]
        starts = [s for _, v in kept if (s := since[v.name]) is not None]
        kind = obj.ref.kind
        pods_out = tuple(
            sorted(
                (
                    ManagedPod(v.name, v.serving, v.ready, v.created_s, removal_rank=_removal_rank(kind, p))
                    for p, v in serving_pods + kept
                ),
                key=lambda mp: mp.name,
            )
        )
        paused = obj.annotations.get(ks.pause_annotation, "").lower() in ("true", "1", "yes")
        if paused:
            paused_services.add(obj.service)
        cell = ManagedCell(
            key=key,
            name=obj.name,
            namespace=obj.namespace,
            replicas=replicas,
            resource_version=str((obj.scale.get("metadata") or {}).get("resourceVersion") or "") or None,
            template_hash=None,
            applied_replicas=None,
            draining=draining,
            drain_since_s=min(starts) if starts else None,
            paused=paused,
            soft_scale_in=kind in SOFT_SCALE_IN_KINDS,
            pods=pods_out,
        )
        # Where its serving instances run: their pods' cells, the rest (not yet scheduled) at home.
        per_cell: Counter[CellKey] = Counter()
        for p, _ in serving_pods:
            node = (p.get("spec") or {}).get("nodeName")
            if node in node_cell:
                g, s1 = node_cell[node]
                per_cell[CellKey(obj.service, obj.role, g, s1)] += 1
        total = replicas if paused else cell.serving
        placed = sum(per_cell.values())
        if placed > total:  # more serving pods than wanted (a scale-down in flight): trim from home
            per_cell = Counter(dict(_trim(per_cell, placed - total)))
        else:
            per_cell[key] += total - placed
        out[key] = RefTarget(
            key=key,
            ref=obj.ref,
            namespace=obj.namespace,
            name=obj.name,
            cell=cell,
            placement={k: n for k, n in per_cell.items() if n > 0},
            group_pods=frozenset((obj.namespace, n) for n in group),
        )
    if paused_services:
        for k, t in list(out.items()):
            if k.service in paused_services and not t.cell.paused:
                out[k] = _replace_cell(t, paused=True)
    return out, warnings


def _trim(counts: Counter[CellKey], n: int) -> Iterable[tuple[CellKey, int]]:
    left = n
    for k, c in sorted(counts.items(), key=lambda kv: kv[1]):
        cut = min(c, left)
        left -= cut
        yield k, c - cut


def _replace_cell(t: RefTarget, **kw: Any) -> RefTarget:
    return replace(t, cell=replace(t.cell, **kw))


def map_plan(
    config: ClusterConfig, plan: PlacementPlan, targets: Mapping[CellKey, RefTarget], s2_of: Mapping[str, str]
) -> tuple[PlacementPlan, list[str]]:
    """The plan with each scale_ref role's cells replaced by its targets' home cells (see the
    module docstring); managed roles are left as they are. Also warnings for instances no target
    can take."""
    by_role: dict[tuple[str, Role], list[RefTarget]] = {}
    for t in sorted(targets.values(), key=lambda t: t.key):
        by_role.setdefault((t.key.service, t.key.role), []).append(t)
    ref_roles = {
        (s.name, role)
        for s in config.services
        for role in Role
        if s.scale_target(role).kind is ScaleTargetKind.SCALE_REF
    }
    units: dict[CellKey, float] = {t.key: 0.0 for t in targets.values()}
    kept: list[tuple[CellKey, int]] = []
    warnings: list[str] = []
    for key, n in sorted(plan.placement.cells.items()):
        if (key.service, key.role) not in ref_roles:
            kept.append((key, n))
            continue
        choices = by_role.get((key.service, key.role), [])
        if not choices:
            warnings.append(
                f"{key.service} {key.role.value}: plan wants {n} on {key.gpu_type}/{key.s1} but no scale_ref object was found"
            )
            continue
        spec = config.service(key.service).role(key.role)
        s2 = s2_of.get(key.s1)
        tiers = (
            [t for t in choices if (t.key.gpu_type, t.key.s1) == (key.gpu_type, key.s1)],
            [t for t in choices if t.key.gpu_type == key.gpu_type and s2_of.get(t.key.s1) == s2],
            [t for t in choices if t.key.gpu_type == key.gpu_type],
            choices,
        )
        target = next(t for tier in tiers for t in tier[:1])
        units[target.key] += n * spec.weight(key.gpu_type)
    for k, u in units.items():
        weight = config.service(k.service).role(k.role).weight(k.gpu_type)
        kept.append((k, math.ceil(u / weight - 1e-9)))
    return replace(plan, placement=Placement.of(kept)), warnings
