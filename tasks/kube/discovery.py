"""Topology discovery: nodes, pods and managed Deployments -> `ClusterView` and managed cells.

Two halves:
* `read_cluster_objects(api, config)` (I/O) lists nodes and pods cluster-wide and the managed
  Deployments of every configured namespace, page by page (`limit`/`continue`), as plain dicts in
  the API's JSON shape. Nothing is assumed about node names.
* `build_discovered(config, nodes, pods, deployments)` (pure) turns them into a `Discovered`:
  - capacity per (GPU type, S1 domain) from schedulable, Ready nodes without taints we do not
    tolerate, by allocatable GPU resource; GPU type from the configured node label (mapped through
    `kubernetes.gpu_type_values`), S1/S2 from the configured domain labels;
  - `gpus_other`: GPUs requested by running/pending pods on those nodes that are not instances
    of a managed cell of a configured service (other workloads, unmanaged or orphaned pods), plus
    the GPUs of instances being drained (they still hold their GPUs);
  - the placement running now: per managed cell, the replicas in service (spec.replicas minus
    those being drained), starting instances included, as the twin reports it;
  - per managed cell what actuation needs (resource version, drain state, last applied replicas,
    pause, who last set the replicas, its live pods: serving, drained or held by the startup skew
    guard, Ready, age), managed Deployments of services no longer configured
    (orphans), and warnings for nodes that cannot be used (missing labels, unknown GPU type).
"""

from __future__ import annotations

import datetime as dt
import functools
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from kubernetes import client as k8s

from models.config import ClusterConfig, Role, ScaleTargetKind
from models.values import CellKey, Placement
from tasks.core.actuation import ManagedCell, ManagedPod
from tasks.core.topology import ClusterView, DomainCapacity
from tasks.kube import render as r
from tasks.kube.client import REQUEST_TIMEOUT_S, api_error
from tasks.kube.scaleref import RefObject, RefTarget, build_targets

PAGE_SIZE = 500
JsonObj = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Discovered:
    view: ClusterView
    cells: Mapping[CellKey, ManagedCell] = field(default_factory=dict)
    orphans: tuple[tuple[str, str], ...] = ()  # (namespace, name) of managed Deployments of removed services
    warnings: tuple[str, ...] = ()
    # scale_ref objects by home cell (tasks.kube.scaleref); their cells are also in `cells`.
    targets: Mapping[CellKey, RefTarget] = field(default_factory=dict)

    def s2_of(self, s1: str) -> str:
        return self.view.s2_of().get(s1, s1)


# ---------------------------------------------------------------------------------------- I/O


def list_all(
    fn: Callable[..., Any], api: k8s.ApiClient, *, verb: str, resource: str, namespace: str | None = None, **kw: Any
) -> list[JsonObj]:
    """Every item of a list call, following `continue` tokens; items as JSON-shaped dicts."""
    items: list[JsonObj] = []
    token: str | None = None
    while True:
        try:
            resp = fn(limit=PAGE_SIZE, _continue=token, _request_timeout=REQUEST_TIMEOUT_S, **kw)
        except Exception as exc:  # classified: transient ones are retried by the Prefect task
            raise api_error(exc, verb=verb, resource=resource, namespace=namespace) from None
        if isinstance(resp, dict):  # CustomObjectsApi answers with plain JSON
            items.extend(resp.get("items") or ())
            token = (resp.get("metadata") or {}).get("continue")
        else:
            items.extend(api.sanitize_for_serialization(i) for i in resp.items or ())
            token = getattr(resp.metadata, "var_continue", None) or getattr(resp.metadata, "_continue", None)
        if not token:
            return items


def read_cluster_objects(
    api: k8s.ApiClient, config: ClusterConfig
) -> tuple[list[JsonObj], list[JsonObj], list[JsonObj]]:
    core, apps = k8s.CoreV1Api(api), k8s.AppsV1Api(api)
    nodes = list_all(core.list_node, api, verb="list", resource="nodes")
    pods = list_all(
        core.list_pod_for_all_namespaces,
        api,
        verb="list",
        resource="pods",
        field_selector="status.phase!=Succeeded,status.phase!=Failed",
    )
    deployments: list[JsonObj] = []
    # Only namespaces where heteroscale manages a role: scale_ref-only namespaces grant no list.
    managed_ns = {
        s.namespace for s in config.services for role in Role if s.scale_target(role).kind is ScaleTargetKind.MANAGED
    }
    for ns in sorted(managed_ns):
        deployments += list_all(
            functools.partial(apps.list_namespaced_deployment, ns),
            api,
            verb="list",
            resource="deployments",
            namespace=ns,
            label_selector=r.managed_selector(config),
        )
    return nodes, pods, deployments


# --------------------------------------------------------------------------------------- pure


def _labels(obj: Mapping[str, Any]) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("labels") or {})


def _annotations(obj: Mapping[str, Any]) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("annotations") or {})


def _quantity(value: Any) -> int:
    """Integer count of an extended resource quantity ("8", 8, "8.0")."""
    try:
        return int(float(str(value)))
    except (TypeError, ValueError):
        return 0


def _int_or_none(value: Any) -> int | None:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return None


def _float_or_none(value: Any) -> float | None:
    try:
        return float(str(value))
    except (TypeError, ValueError):
        return None


def pod_gpus(pod: Mapping[str, Any], resource: str) -> int:
    """GPUs a pod holds: max(sum over containers, largest init container), as the scheduler counts."""
    spec = pod.get("spec") or {}

    def one(c: Mapping[str, Any]) -> int:
        res = c.get("resources") or {}
        return max(
            _quantity((res.get("requests") or {}).get(resource)), _quantity((res.get("limits") or {}).get(resource))
        )

    main = sum(one(c) for c in spec.get("containers") or ())
    init = max((one(c) for c in spec.get("initContainers") or ()), default=0)
    return max(main, init)


def node_unusable_reason(node: Mapping[str, Any], tolerated: Iterable[str]) -> str | None:
    """Why new pods cannot land on this node, or None."""
    spec = node.get("spec") or {}
    if spec.get("unschedulable"):
        return "cordoned (unschedulable)"
    ok = set(tolerated)
    for taint in spec.get("taints") or ():
        if taint.get("effect") in ("NoSchedule", "NoExecute") and taint.get("key") not in ok:
            return f"taint {taint.get('key')}:{taint.get('effect')}"
    for cond in (node.get("status") or {}).get("conditions") or ():
        if cond.get("type") == "Ready" and cond.get("status") != "True":
            return "not Ready"
    return None


def gpu_type_of(config: ClusterConfig, label_value: str | None) -> str | None:
    if not label_value:
        return None
    for g in config.gpu_types:
        if label_value in r.gpu_label_values(config, g.name):
            return g.name
    lowered = label_value.lower()
    return next((g.name for g in config.gpu_types if g.name == lowered), None)


def managed_cell_of(config: ClusterConfig, dep: Mapping[str, Any]) -> CellKey | None:
    """The cell a Deployment runs, if heteroscale manages it for this cluster (any service)."""
    labels = _labels(dep)
    if labels.get(r.L_MANAGED_BY) != r.MANAGER or labels.get(r.L_CLUSTER) != config.cluster.name:
        return None
    try:
        return CellKey(labels[r.L_SERVICE], Role(labels[r.L_ROLE]), labels[r.L_GPU_TYPE], labels[r.L_S1])
    except (KeyError, ValueError):
        return None


def replicas_manager(dep: Mapping[str, Any]) -> str | None:
    """The field manager that most recently took ownership of spec.replicas (from managedFields)."""
    latest: tuple[str, str] | None = None
    for entry in (dep.get("metadata") or {}).get("managedFields") or ():
        fields = entry.get("fieldsV1") or {}
        if "f:replicas" in (fields.get("f:spec") or {}):
            stamp = str(entry.get("time") or "")
            if latest is None or stamp >= latest[0]:
                latest = (stamp, str(entry.get("manager") or "?"))
    return latest[1] if latest else None


def managed_pod(pod: Mapping[str, Any], serving_label: str, *, absent_serves: bool = False) -> ManagedPod:
    """What actuation needs to know about one pod: serving, drained or held, Ready, age. A pod of a
    scale_ref object (`absent_serves`) serves unless its serving label says "false"."""
    meta = pod.get("metadata") or {}
    value = _labels(pod).get(serving_label)
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (pod.get("status") or {}).get("conditions") or ()
    )
    serving = value == "true" or (absent_serves and value != "false")
    # Drained pods carry the drain's deletion cost; a pod out of service without it is a new one
    # the startup skew guard has not admitted yet.
    drained = _annotations(pod).get(r.A_DELETION_COST) == r.DRAINED_DELETION_COST
    return ManagedPod(
        name=str(meta.get("name")),
        serving=serving,
        ready=ready,
        created_s=_timestamp_s(meta.get("creationTimestamp")),
        held=not serving and not drained,
    )


def _timestamp_s(value: Any) -> float:
    """Epoch seconds of an RFC 3339 timestamp (0 when absent or unreadable: oldest)."""
    try:
        return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def build_discovered(
    config: ClusterConfig,
    nodes: Iterable[Mapping[str, Any]],
    pods: Iterable[Mapping[str, Any]],
    deployments: Iterable[Mapping[str, Any]],
    refs: Iterable[RefObject] = (),
) -> Discovered:
    ks = config.kubernetes
    pods = list(pods)
    warnings: list[str] = []
    services = {s.name: s for s in config.services}

    # Nodes -> usable GPU capacity per (gpu type, s1).
    node_cell: dict[str, tuple[str, str]] = {}
    total: dict[tuple[str, str], int] = defaultdict(int)
    per_node: dict[tuple[str, str], int] = defaultdict(int)
    s2_of: dict[str, str] = {}
    for node in nodes:
        name = str((node.get("metadata") or {}).get("name"))
        gpus = _quantity(((node.get("status") or {}).get("allocatable") or {}).get(ks.gpu_resource))
        if gpus <= 0:
            continue
        labels = _labels(node)
        gpu_type = gpu_type_of(config, labels.get(ks.gpu_type_label))
        s1, s2 = labels.get(ks.s1_label), labels.get(ks.s2_label)
        if gpu_type is None:
            warnings.append(
                f"node {name}: {gpus} GPUs but label {ks.gpu_type_label}={labels.get(ks.gpu_type_label)!r} is not a "
                f"configured GPU type (map it in kubernetes.gpu_type_values); not used"
            )
            continue
        if not s1 or not s2:
            warnings.append(f"node {name}: missing network-domain label {ks.s1_label} or {ks.s2_label}; not used")
            continue
        if s2_of.setdefault(s1, s2) != s2:
            warnings.append(f"node {name}: S1 {s1!r} labelled under S2 {s2!r} but other nodes say {s2_of[s1]!r}")
        reason = node_unusable_reason(node, ks.tolerated_taints)
        if reason is not None:
            continue
        node_cell[name] = (gpu_type, s1)
        total[(gpu_type, s1)] += gpus
        per_node[(gpu_type, s1)] = max(per_node[(gpu_type, s1)], gpus)

    # Managed Deployments -> cells (configured services) and orphans.
    cells: dict[CellKey, ManagedCell] = {}
    orphans: list[tuple[str, str]] = []
    paused_services: set[str] = set()
    for dep in deployments:
        key = managed_cell_of(config, dep)
        if key is None:
            continue
        meta = dep.get("metadata") or {}
        ann = _annotations(dep)
        if key.service not in services:
            orphans.append((str(meta.get("namespace")), str(meta.get("name"))))
            continue
        paused = ann.get(ks.pause_annotation, "").lower() in ("true", "1", "yes")
        if paused:
            paused_services.add(key.service)
        replicas = _int_or_none((dep.get("spec") or {}).get("replicas"))
        replicas = 1 if replicas is None else replicas  # the API server's default
        applied = _int_or_none(ann.get(r.A_APPLIED_REPLICAS))
        manager = replicas_manager(dep)
        # A mismatch we caused ourselves (scaled, then failed before recording) is not a human's.
        manual = applied is not None and replicas != applied and manager != ks.field_manager
        cells[key] = ManagedCell(
            key=key,
            name=str(meta.get("name")),
            namespace=str(meta.get("namespace")),
            replicas=replicas,
            resource_version=meta.get("resourceVersion"),
            template_hash=ann.get(r.A_TEMPLATE_HASH),
            applied_replicas=applied,
            draining=max(0, _int_or_none(ann.get(r.A_DRAINING)) or 0),
            drain_since_s=_float_or_none(ann.get(r.A_DRAIN_SINCE)),
            paused=paused,
            replicas_manager=manager,
            manual_override=manual,
        )
    # A pause on any one Deployment of a service pauses the whole service.
    cells = {k: _with_paused(c, k.service in paused_services) for k, c in cells.items()}

    # scale_ref objects: their pods, home cells and drain state (tasks.kube.scaleref).
    targets, ref_warnings = build_targets(
        config,
        refs,
        pods,
        node_cell,
        sorted(total),
        lambda p: managed_pod(p, ks.serving_label, absent_serves=True),
    )
    warnings += ref_warnings
    ref_pods = frozenset().union(*(t.group_pods for t in targets.values()))

    # Pods -> GPUs held by everything that is not a managed instance of a configured service.
    managed_instances = {(c.namespace, c.name): c for c in cells.values()}
    pods_of: dict[CellKey, list[ManagedPod]] = defaultdict(list)
    for pod in pods:
        labels = _labels(pod)
        ns = (pod.get("metadata") or {}).get("namespace")
        cell = managed_instances.get((str(ns), labels.get(r.L_INSTANCE, "")))
        if cell is not None and (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
            pods_of[cell.key].append(managed_pod(pod, ks.serving_label))
    cells = {k: replace(c, pods=tuple(sorted(pods_of[k], key=lambda p: p.name))) for k, c in cells.items()}
    managed_instances = {(c.namespace, c.name): c for c in cells.values()}
    other: dict[tuple[str, str], int] = defaultdict(int)
    for pod in pods:
        phase = (pod.get("status") or {}).get("phase")
        if phase in ("Succeeded", "Failed"):
            continue
        node_name = (pod.get("spec") or {}).get("nodeName")
        if node_name not in node_cell:
            continue
        labels = _labels(pod)
        ns = (pod.get("metadata") or {}).get("namespace")
        cell = managed_instances.get((str(ns), labels.get(r.L_INSTANCE, "")))
        if cell is not None and labels.get(r.L_MANAGED_BY) == r.MANAGER:
            continue
        if (str(ns), str((pod.get("metadata") or {}).get("name"))) in ref_pods:
            continue
        other[node_cell[node_name]] += pod_gpus(pod, ks.gpu_resource)
    cells.update({k: t.cell for k, t in targets.items()})
    for c in cells.values():
        if c.draining:
            other[(c.key.gpu_type, c.key.s1)] += c.draining * services[c.key.service].role(c.key.role).gpus_per_instance

    caps = tuple(
        DomainCapacity(
            gpu_type=g,
            s1=s1,
            s2=s2_of[s1],
            gpus_total=n,
            gpus_per_node=per_node[(g, s1)],
            gpus_other=min(n, other.get((g, s1), 0)),
        )
        for (g, s1), n in sorted(total.items())
    )
    placement = Placement.of(
        [
            (k, c.replicas if (c.manual_override or c.paused) else c.serving)
            for k, c in sorted(cells.items())
            if k not in targets
        ]
        + [(k, n) for t in targets.values() for k, n in sorted(t.placement.items())]
    )
    override = tuple((sg.level.value, d, sg.priority) for sg in config.rdma_subgroups for d in sg.domains)
    view = ClusterView(
        capacities=caps, placement=placement, priority_override=override, gpu_budget=config.cluster.gpu_budget
    )
    return Discovered(view=view, cells=cells, orphans=tuple(sorted(orphans)), warnings=tuple(warnings), targets=targets)


def _with_paused(cell: ManagedCell, paused: bool) -> ManagedCell:
    return cell if cell.paused == paused else replace(cell, paused=paused)
