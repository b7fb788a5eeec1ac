"""The error taxonomy and the retry rule, shared by every adapter and both drivers.

Two bases, as kopf splits them: a `TransientError` may succeed when tried again (connection
refused, timeouts, HTTP 429/5xx, 409 conflicts, a locked database) and is retried by the Prefect
task; a `PermanentError` is raised at once with a message an operator can act on (a missing RBAC
permission, a plan that breaks an invariant, a bad query). Each adapter maps its library's
errors to one of them at its boundary (tasks/prometheus.py, tasks/kube/client.py,
tasks/store.py). Anything else is a bug: `is_transient` says no, so the step fails at once.
"""

from __future__ import annotations

import os
import re
from typing import Any


class TransientError(Exception):
    """Trying again may succeed: the outside was unreachable, slow, overloaded or busy."""


class PermanentError(Exception):
    """Retrying cannot help; the message says what the operator must change."""


def is_transient(exc: BaseException | None) -> bool:
    """The one retry predicate (Prefect tasks and the replay): our `TransientError`s, and the
    OS's own connection and timeout errors, transient wherever they come from. Everything else,
    a `KeyError` included, is not retried."""
    if isinstance(exc, PermanentError):
        return False
    return isinstance(exc, TransientError | ConnectionError | TimeoutError)


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """`retry_condition_fn` for Prefect tasks: retry transient failures only (`is_transient`)."""
    return is_transient(getattr(state, "data", None))


# Credentials that can appear in a server's error text (servers and proxies do echo request
# headers back): an auth scheme and its token, or a key that names a secret and its value.
_SCHEME = re.compile(r"(?i)\b(bearer|basic)(\s+)([A-Za-z0-9._~+/=-]+)")
_KEYVAL = re.compile(r"(?i)\b(token|password|passwd|secret|api[_-]?key|authorization)(\"?\s*[:=]\s*\"?)([^\s\"',;}]+)")
# Environment variables whose values are secrets wherever they show up.
SECRET_ENV = ("HETEROSCALE_PROMETHEUS_TOKEN",)


def redact(text: str, *secrets: str | None) -> str:
    """`text` with credentials removed: known secret values and `Bearer …`-style tokens.

    Applied where text from outside (a server's error message) becomes ours (an exception, a
    log line, a run record), so a hostile or careless server cannot make us store a secret.
    """
    for value in (*secrets, *(os.environ.get(name) for name in SECRET_ENV)):
        if value and len(value) >= 4:
            text = text.replace(value, "<redacted>")
    text = _SCHEME.sub(lambda m: f"{m.group(1)}{m.group(2)}<redacted>", text)
    return _KEYVAL.sub(lambda m: f"{m.group(1)}{m.group(2)}<redacted>", text)
