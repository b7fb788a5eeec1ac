"""Error classes and the retry rule of the Prefect tasks.

Transient errors (connection refused, timeouts, HTTP 429/5xx, 409 conflicts) are retried by the
task's retry policy. Permanent errors are raised at once with a message an operator can act on
(a missing RBAC permission, a plan that breaks an invariant, a bad config): retrying them only
delays the alarm.
"""

from __future__ import annotations

import os
import re
from typing import Any


class PermanentError(Exception):
    """Retrying cannot help; the message says what the operator must change."""


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """`retry_condition_fn` for Prefect tasks: retry unless the failure is permanent."""
    exc = getattr(state, "data", None)
    return not isinstance(exc, PermanentError | PermissionError)


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
