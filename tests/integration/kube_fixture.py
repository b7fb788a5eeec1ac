"""A Kubernetes API on loopback for tests: kmock's emulator plus what heteroscale relies on.

kmock 0.8 (`KubernetesEmulator`) serves real HTTP the official client talks to, and stores
objects in memory. It lacks behaviours our code depends on, so `ApiServer` adds them by
subclassing it (its documented extension point: "inherit and implement"), overriding
`_handle` for writes and `_serve_list` for lists:

* resourceVersion on every stored object, bumped on each write; a write whose body carries an
  older `metadata.resourceVersion` gets 409 Conflict (optimistic concurrency);
* server-side apply: PATCH with `application/apply-patch+yaml` requires `fieldManager` and
  creates the object when absent;
* `dryRun=All` on create/patch/delete: the result is returned, nothing is stored;
* the `/scale` subresource as an `autoscaling/v1` Scale (read and patch `spec.replicas`) for
  Deployments, StatefulSets and the custom resources in SCALABLE, with `status.selector` where
  the real API server takes it from (`spec.selector` for apps kinds; the CRD's
  `labelSelectorPath`: `.status.hpaPodSelector` for LeaderWorkerSet, `.status.selector` for
  Dynamo's scaling adapter and the example CRD); a resource outside SCALABLE has no /scale (404);
* `managedFields` for `spec.replicas` only: who (fieldManager) last set it and when;
* list `labelSelector` (`k=v`, `k!=v`, `k`) and `fieldSelector` (`spec.nodeName`,
  `status.phase`, `=`/`!=`), and pagination with `limit` / `continue`;
* fault injection: `fail(method, path_regex, status, times)` answers the next matching requests
  with that status (429/500 for retries, 403 for RBAC messages).

`KubeCluster` runs it in a background thread with its own event loop, so synchronous code (the
official client, Prefect flows) talks to it exactly as to a cluster, and offers helpers to seed
nodes and pods and to play the ReplicaSet controller (`reconcile_pods`) and the StatefulSet,
LeaderWorkerSet and Dynamo controllers (`reconcile_scaled`), which kmock does not run.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import itertools
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp.web
import attrs
import kmock
from kmock._internal import enums, rendering

DEPLOYMENTS = kmock.resource("apps", "v1", "deployments")
NODES = kmock.resource("", "v1", "nodes")
PODS = kmock.resource("", "v1", "pods")
STATEFULSETS = kmock.resource("apps", "v1", "statefulsets")
LEADERWORKERSETS = kmock.resource("leaderworkerset.x-k8s.io", "v1", "leaderworkersets")
DGDSA = kmock.resource("nvidia.com", "v1alpha1", "dynamographdeploymentscalingadapters")
INFERENCEPOOLS = kmock.resource("serving.example.com", "v1", "inferencepools")  # a CRD with /scale
WIDGETS = kmock.resource("example.com", "v1", "widgets")  # a CRD without /scale
# resource -> where its /scale reads the pod selector from ("spec.selector": matchLabels).
SCALABLE = {
    DEPLOYMENTS: "spec.selector",
    STATEFULSETS: "spec.selector",
    LEADERWORKERSETS: "status.hpaPodSelector",
    DGDSA: "status.selector",
    INFERENCEPOOLS: "status.selector",
}
LWS_NAME = "leaderworkerset.sigs.k8s.io/name"
LWS_GROUP = "leaderworkerset.sigs.k8s.io/group-index"
LWS_WORKER = "leaderworkerset.sigs.k8s.io/worker-index"


@dataclass
class Fault:
    method: str
    path: re.Pattern[str]
    status: int
    times: int


def _status(code: int, reason: str, message: str) -> aiohttp.web.Response:
    body = {"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure", "code": code}
    body |= {"reason": reason, "message": message}
    return aiohttp.web.json_response(body, status=code)


def _merge(base: Any, patch: Any) -> Any:
    """JSON merge patch (RFC 7386): dicts merge, None deletes, everything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(base) if isinstance(base, dict) else {}  # RFC 7386: a non-object target becomes {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = _merge(out.get(k), v)
    return out


def _match_labels(labels: dict[str, str], selector: str) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k) == v:
                return False
        elif "=" in term:
            k, v = term.split("=", 1)
            if labels.get(k.rstrip("=")) != v.lstrip("="):
                return False
        elif term not in labels:
            return False
    return True


def _match_fields(obj: dict[str, Any], selector: str) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        neg = "!=" in term
        path, value = term.split("!=" if neg else "=", 1)
        cur: Any = obj
        for part in path.split("."):
            cur = cur.get(part) if isinstance(cur, dict) else None
        if (str(cur or "") == value) == neg:
            return False
    return True


@attrs.define(kw_only=True)
class ApiServer(kmock.KubernetesEmulator):
    faults: list[Fault] = attrs.field(factory=list)
    _rv: Iterator[int] = attrs.field(factory=lambda: itertools.count(1000), init=False)

    @property
    def requests(self) -> list[rendering.Request]:
        """Every request served so far, in order (kmock records them all)."""
        return list(self._requests)

    def fail(self, method: str, path: str, status: int, times: int = 1) -> None:
        self.faults.append(Fault(method.upper(), re.compile(path), status, times))

    def _next_rv(self) -> str:
        return str(next(self._rv))

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        for f in self.faults:
            if f.times > 0 and request.method.value == f.method and f.path.search(request.url.path):
                f.times -= 1
                return _status(f.status, "Injected", f"injected fault {f.status} for {f.method} {f.path.pattern}")
        if request.subresource == "scale" and request.resource is not None and request.resource not in SCALABLE:
            return _status(404, "NotFound", "the server could not find the requested resource")
        if request.resource is not None and request.action is enums.action.FETCH and request.subresource == "scale":
            obj = self._get(request)
            if obj is None:
                return _status(404, "NotFound", "not found")
            return aiohttp.web.json_response(self._scale(obj, SCALABLE[request.resource]))
        if request.resource is not None and request.action in (
            enums.action.CREATE,
            enums.action.UPDATE,
            enums.action.DELETE,
        ):
            return self._write(request)
        return await super()._handle(request)

    def _key(self, request: rendering.Request) -> tuple[Any, str | None, str]:
        data = request.data if isinstance(request.data, dict) else {}
        meta = data.get("metadata") or {}
        return (request.resource, request.namespace or meta.get("namespace"), request.name or meta.get("name"))

    def _get(self, request: rendering.Request) -> dict[str, Any] | None:
        key = self._key(request)
        if key not in self.objects or self.objects[key].deleted:
            return None
        return copy.deepcopy(self.objects[key].raw)

    @staticmethod
    def _scale(obj: dict[str, Any], selector_path: str = "spec.selector") -> dict[str, Any]:
        meta = obj["metadata"]
        if selector_path == "spec.selector":
            labels = ((obj.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
            selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        else:
            selector = str((obj.get("status") or {}).get(selector_path.split(".", 1)[1]) or "")
        status: dict[str, Any] = {"replicas": obj.get("status", {}).get("replicas", 0)}
        if selector:
            status["selector"] = selector
        return {
            "apiVersion": "autoscaling/v1",
            "kind": "Scale",
            "metadata": {k: meta.get(k) for k in ("name", "namespace", "resourceVersion")},
            "spec": {"replicas": obj.get("spec", {}).get("replicas", 1)},
            "status": status,
        }

    def _write(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        dry = request.params.get("dryRun") == "All"
        manager = request.params.get("fieldManager")
        apply = "apply-patch" in request.headers.get("Content-Type", "")
        key = self._key(request)
        current = self._get(request)
        data = copy.deepcopy(request.data) if isinstance(request.data, dict) else {}
        if request.action is enums.action.DELETE:
            if current is None:
                return _status(404, "NotFound", f"{key[2]} not found")
            if not dry:
                self.objects[key].delete()
            return aiohttp.web.json_response(current)
        if apply and not manager:
            return _status(400, "BadRequest", "fieldManager is required for apply patch")
        if request.action is enums.action.CREATE and current is not None:
            return _status(409, "AlreadyExists", f"{key[2]} already exists")
        if request.action is enums.action.UPDATE and current is None and not apply:
            return _status(404, "NotFound", f"{key[2]} not found")
        wanted_rv = (data.get("metadata") or {}).pop("resourceVersion", None)
        if current is not None and wanted_rv is not None and wanted_rv != current["metadata"].get("resourceVersion"):
            return _status(
                409, "Conflict", "the object has been modified; please apply your changes to the latest version"
            )
        if request.subresource == "scale":
            data = {"spec": {"replicas": (data.get("spec") or {}).get("replicas")}}
        new = _merge(current or {}, data)
        meta = new.setdefault("metadata", {})
        meta["resourceVersion"] = self._next_rv()
        if current is None:
            meta.setdefault("namespace", key[1])
            meta.setdefault("uid", f"uid-{meta['resourceVersion']}")
            meta.setdefault("creationTimestamp", dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
        touched_replicas = "replicas" in (data.get("spec") or {})
        if key[0] == DEPLOYMENTS and touched_replicas:
            stamp = f"{dt.datetime.now(dt.UTC):%Y-%m-%dT%H:%M:%S.%f}Z"
            fields = [e for e in meta.get("managedFields") or [] if e.get("manager") != (manager or "unknown")]
            for e in fields:
                e.get("fieldsV1", {}).get("f:spec", {}).pop("f:replicas", None)
            fields.append(
                {
                    "manager": manager or "unknown",
                    "operation": "Apply" if apply else "Update",
                    "time": stamp,
                    "fieldsV1": {"f:spec": {"f:replicas": {}}},
                    **({"subresource": "scale"} if request.subresource == "scale" else {}),
                }
            )
            meta["managedFields"] = fields
        if not dry:
            if key in self.objects and not self.objects[key].deleted:
                self.objects[key].history.append(new)
            else:
                self.objects[key] = new
        out = self._scale(new, SCALABLE[key[0]]) if request.subresource == "scale" else new
        return aiohttp.web.json_response(out, status=201 if current is None else 200)

    async def _serve_list(self, request: rendering.Request) -> rendering.Payload:
        items = []
        for (resource, namespace, _name), obj in self.objects.items():
            if resource != request.resource or obj.deleted:
                continue
            if request.namespace is not None and namespace != request.namespace:
                continue
            raw = copy.deepcopy(obj.raw)
            if not _match_labels(
                (raw.get("metadata") or {}).get("labels") or {}, request.params.get("labelSelector", "")
            ):
                continue
            if not _match_fields(raw, request.params.get("fieldSelector", "")):
                continue
            items.append(raw)
        items.sort(key=lambda o: (o["metadata"].get("namespace") or "", o["metadata"]["name"]))
        start = int(request.params.get("continue") or 0)
        limit = int(request.params.get("limit") or 0) or len(items)
        page = items[start : start + limit]
        more = start + limit < len(items)
        meta: dict[str, Any] = {"resourceVersion": str(next(self._rv))}
        if more:
            meta["continue"] = str(start + limit)
        return {"apiVersion": "v1", "kind": "List", "metadata": meta, "items": page}


class KubeCluster:
    """`ApiServer` on 127.0.0.1 in a background thread; `url` is what a kubeconfig would point at."""

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.server: ApiServer
        self.url = ""
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True, name="kmock")

    async def _main(self) -> None:
        async with ApiServer() as km, kmock.Server(km) as srv:
            self.server, self.url = km, str(srv.url).rstrip("/")
            self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> KubeCluster:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("kmock API server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    # ---- seeding and inspection (the test thread; the server only reads between requests)

    def add_node(
        self, name: str, *, product: str, s1: str, s2: str, gpus: int = 8, cordoned: bool = False, taints: tuple = ()
    ) -> None:
        labels = {"nvidia.com/gpu.product": product, "heteroscale.io/s1": s1, "heteroscale.io/s2": s2}
        self.server.objects[NODES, None, name] = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": labels, "resourceVersion": "1"},
            "spec": {"unschedulable": cordoned, "taints": list(taints)},
            "status": {
                "allocatable": {"nvidia.com/gpu": str(gpus), "cpu": "96"},
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        }

    def add_pod(
        self, namespace: str, name: str, *, node: str | None, gpus: int, labels: dict[str, str] | None = None
    ) -> None:
        self.server.objects[PODS, namespace, name] = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": labels or {}, "resourceVersion": "1"},
            "spec": {
                "nodeName": node,
                "containers": [{"name": "c", "image": "x", "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}],
            },
            "status": {"phase": "Running" if node else "Pending", "conditions": [{"type": "Ready", "status": "True"}]},
        }

    def deployments(self, namespace: str | None = None) -> dict[str, dict[str, Any]]:
        return {
            name: copy.deepcopy(obj.raw)
            for (res, ns, name), obj in list(self.server.objects.items())
            if res == DEPLOYMENTS and not obj.deleted and (namespace is None or ns == namespace)
        }

    def pods(self, namespace: str) -> dict[str, dict[str, Any]]:
        return {
            name: copy.deepcopy(obj.raw)
            for (res, ns, name), obj in list(self.server.objects.items())
            if res == PODS and ns == namespace and not obj.deleted
        }

    def reconcile_pods(self) -> None:
        """Play the ReplicaSet controller: one Running pod per replica, removing lowest deletion cost first."""
        for name, dep in self.deployments().items():
            ns = dep["metadata"]["namespace"]
            want = int(dep["spec"].get("replicas", 1))
            sel = dep["spec"]["selector"]["matchLabels"]
            mine = {
                n: p
                for n, p in self.pods(ns).items()
                if all(p["metadata"]["labels"].get(k) == v for k, v in sel.items())
            }
            if len(mine) > want:

                def cost(item: tuple[str, dict[str, Any]]) -> int:
                    return int(
                        item[1]["metadata"].get("annotations", {}).get("controller.kubernetes.io/pod-deletion-cost", 0)
                    )

                for pname, _ in sorted(mine.items(), key=cost)[: len(mine) - want]:
                    self.server.objects[PODS, ns, pname].delete()
            for i in range(len(mine), want):
                tmpl = dep["spec"]["template"]
                pname = f"{name}-{i}-{len(self.server.objects)}"
                self.server.objects[PODS, ns, pname] = {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {
                        "name": pname,
                        "namespace": ns,
                        "labels": dict(tmpl["metadata"]["labels"]),
                        "resourceVersion": "1",
                    },
                    "spec": copy.deepcopy(tmpl["spec"]),
                    "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
                }

    # ---- brownfield workloads: objects the operator owns, and their controllers

    def add_object(self, resource: Any, body: dict[str, Any]) -> None:
        """Seed any object (a StatefulSet, a LeaderWorkerSet, a custom resource) as it is."""
        meta = body.setdefault("metadata", {})
        meta.setdefault("resourceVersion", "1")
        meta.setdefault("creationTimestamp", "2026-01-01T00:00:00Z")
        self.server.objects[resource, meta.get("namespace"), meta["name"]] = copy.deepcopy(body)

    def objects_of(self, resource: Any, namespace: str | None = None) -> dict[str, dict[str, Any]]:
        return {
            name: copy.deepcopy(obj.raw)
            for (res, ns, name), obj in list(self.server.objects.items())
            if res == resource and not obj.deleted and (namespace is None or ns == namespace)
        }

    def reconcile_scaled(self, resource: Any, pod_spec: dict[str, Any], *, workers: int = 0) -> None:
        """Play a workload controller for every object of `resource`: one pod per replica, its
        labels those of the object's /scale selector (`k=v` terms), on the node `pod_spec` names.
        StatefulSets and LeaderWorkerSets add and remove by ordinal (highest removed first; a
        LeaderWorkerSet's group is its leader plus `workers` worker pods); any other kind removes
        by the same order, ignoring the deletion cost (its controller picks, not heteroscale)."""
        for name, obj in self.objects_of(resource).items():
            ns = obj["metadata"]["namespace"]
            scale = self.server._scale(obj, SCALABLE[resource])
            want = int(scale["spec"]["replicas"])
            labels = dict(t.split("=", 1) for t in scale["status"].get("selector", "").split(",") if "=" in t)
            mine = {
                n: p
                for n, p in self.pods(ns).items()
                if all(p["metadata"]["labels"].get(k) == v for k, v in labels.items())
            }

            def index(pod_name: str) -> int:
                return int(pod_name.rsplit("-", 1)[1])

            for pname in sorted(mine, key=index, reverse=True)[: max(0, len(mine) - want)]:
                self.server.objects[PODS, ns, pname].delete()
                for wname in [w for w in self.pods(ns) if w.startswith(f"{pname}-")]:
                    self.server.objects[PODS, ns, wname].delete()
            used = {index(n) for n in mine}
            free = (i for i in itertools.count() if i not in used)
            for _ in range(len(mine), want):
                i = next(free)
                extra: dict[str, str] = {}
                if resource == STATEFULSETS:
                    extra = {"apps.kubernetes.io/pod-index": str(i)}
                elif resource == LEADERWORKERSETS:
                    extra = {LWS_NAME: name, LWS_GROUP: str(i), LWS_WORKER: "0"}
                self._add_pod(ns, f"{name}-{i}", {**labels, **extra}, pod_spec)
                for j in range(1, workers + 1):
                    self._add_pod(
                        ns, f"{name}-{i}-{j}", {LWS_NAME: name, LWS_GROUP: str(i), LWS_WORKER: str(j)}, pod_spec
                    )

    def _add_pod(self, ns: str, name: str, labels: dict[str, str], spec: dict[str, Any]) -> None:
        self.server.objects[PODS, ns, name] = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": ns,
                "labels": dict(labels),
                "resourceVersion": "1",
                "creationTimestamp": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            },
            "spec": copy.deepcopy(spec),
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
        }
