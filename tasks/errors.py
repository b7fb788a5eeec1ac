"""Error classes and the retry rule of the Prefect tasks.

Transient errors (connection refused, timeouts, HTTP 429/5xx, 409 conflicts) are retried by the
task's retry policy. Permanent errors are raised at once with a message an operator can act on
(a missing RBAC permission, a plan that breaks an invariant, a bad config): retrying them only
delays the alarm.
"""

from __future__ import annotations

from typing import Any


class PermanentError(Exception):
    """Retrying cannot help; the message says what the operator must change."""


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """`retry_condition_fn` for Prefect tasks: retry unless the failure is permanent."""
    exc = getattr(state, "data", None)
    return not isinstance(exc, PermanentError | PermissionError)
