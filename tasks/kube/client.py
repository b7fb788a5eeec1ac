"""Connecting to a Kubernetes API server, and what its errors mean for a scaling run.

Contract:
* `connect(config)` returns an `ApiClient` for, in order of precedence, an explicit API URL
  (HETEROSCALE_KUBE_API_URL or `kubernetes.api_url`; credentials from the kubeconfig when one is
  readable, else none), a kubeconfig context (KUBECONFIG / `kubernetes.kubeconfig`, context from
  HETEROSCALE_KUBE_CONTEXT / `kubernetes.context`), or the in-cluster service account.
* `api_error(exc, verb=..., resource=..., namespace=...)` turns an `ApiException` or a connection
  error into `KubeTransientError` (429, 5xx, timeouts, refused connections: Prefect task retries
  take them), `KubeConflict` (409: the caller re-reads and retries) or `KubePermanentError` (403
  names the missing RBAC verb and resource; other 4xx name the request). Nothing is swallowed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import urllib3.exceptions
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from models.config import ClusterConfig
from models.errors import PermanentError, TransientError, redact

ENV_API_URL = "HETEROSCALE_KUBE_API_URL"
ENV_CONTEXT = "HETEROSCALE_KUBE_CONTEXT"
# Seconds (connect, read) for every API call: a hung API server must fail the task, not the run.
REQUEST_TIMEOUT_S = (5.0, 30.0)


class KubeError(Exception):
    """Base of the errors this package raises."""


class KubeTransientError(KubeError, TransientError):
    """Worth retrying as is: throttling, server errors, timeouts, connection resets."""


class KubePermanentError(KubeError, PermanentError):
    """Retrying will not help; the message says what an operator must change."""

    permanent = True


class KubeConflict(KubeError, TransientError):
    """409: the object changed since it was read (or already exists): re-read, decide again."""


def connect(config: ClusterConfig) -> k8s.ApiClient:
    settings = config.kubernetes
    api_url = os.environ.get(ENV_API_URL) or settings.api_url
    context = os.environ.get(ENV_CONTEXT) or settings.context
    kubeconfig = os.environ.get("KUBECONFIG") or settings.kubeconfig
    if api_url:
        cfg = k8s.Configuration()
        if kubeconfig and Path(kubeconfig.split(os.pathsep)[0]).expanduser().exists():
            # The URL wins; the kubeconfig only lends credentials (token, client certificate, CA).
            k8s_config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=cfg)
        cfg.host = api_url.rstrip("/")
        return k8s.ApiClient(cfg)
    in_cluster = "KUBERNETES_SERVICE_HOST" in os.environ and not kubeconfig and not context
    try:
        if in_cluster:
            k8s_config.load_incluster_config()
            return k8s.ApiClient()
        cfg = k8s.Configuration()
        k8s_config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=cfg)
        return k8s.ApiClient(cfg)
    except (k8s_config.ConfigException, FileNotFoundError) as exc:
        raise KubePermanentError(
            f"cannot configure the Kubernetes client: {exc}. Give --api-url, --kubeconfig/--context "
            f"(or {ENV_API_URL}, KUBECONFIG, {ENV_CONTEXT}), or run in a pod with a service account"
        ) from None


def api_error(exc: BaseException, *, verb: str, resource: str, namespace: str | None = None) -> KubeError:
    """Classify a failed API call; `verb`/`resource` are RBAC terms (e.g. "patch", "deployments/scale").

    Raise the result `from None`: an `ApiException`'s text is the HTTP response, which a hostile or
    careless server may fill with the request's credentials; chained as the cause, it was printed
    unredacted in the traceback Prefect logs for a failed run (tests/faults/test_secrets.py). The
    message here carries the status and the redacted reason instead.
    """
    where = f" in namespace {namespace!r}" if namespace else " (cluster scope)"
    if isinstance(exc, urllib3.exceptions.HTTPError | ConnectionError | TimeoutError):
        return KubeTransientError(f"{verb} {resource}{where}: API server unreachable or slow: {exc}")
    if not isinstance(exc, k8s.ApiException):
        return KubePermanentError(f"{verb} {resource}{where}: unexpected {type(exc).__name__}: {redact(str(exc))}")
    status = exc.status or 0
    reason = _status_message(exc)
    if status == 409:
        return KubeConflict(f"{verb} {resource}{where}: conflict: {reason}")
    # 410: a list's continue token expired mid-pagination; the whole read starts again.
    if status in (0, 410, 429) or status >= 500:
        return KubeTransientError(f"{verb} {resource}{where}: HTTP {status}: {reason}")
    if status == 403:
        scope = f"a Role in namespace {namespace!r}" if namespace else "the ClusterRole"
        return KubePermanentError(
            f"forbidden: the service account may not {verb!r} {resource!r}{where}; grant verb {verb!r} on "
            f"resource {resource!r} in {scope} (deployments/k8s/rbac.yaml). Server said: {reason}"
        )
    if status == 401:
        return KubePermanentError(f"{verb} {resource}{where}: unauthorized: check the kubeconfig credentials")
    return KubePermanentError(f"{verb} {resource}{where}: HTTP {status}: {reason}")


def _status_message(exc: k8s.ApiException) -> str:

    try:
        body = json.loads(exc.body or "{}")
    except (ValueError, TypeError):
        return redact(str(exc.reason or ""))
    return redact(str(body.get("message") or exc.reason or ""))
