"""Which failures the Prefect tasks retry: transient yes, permanent (403, bad query, invariant) no."""

from __future__ import annotations

import pytest
from prefect.states import Failed

from sim.faults import InjectedFault
from tasks.core.invariants import InvariantViolation
from tasks.errors import retry_transient
from tasks.kube.client import KubePermanentError, KubeTransientError
from tasks.prometheus import PermanentQueryError, TransientQueryError

pytestmark = pytest.mark.faults


@pytest.mark.parametrize(
    ("exc", "retried"),
    [
        (InjectedFault("503"), True),
        (TimeoutError("slow"), True),
        (KubeTransientError("429"), True),
        (TransientQueryError("502"), True),
        (KubePermanentError("forbidden: patch deployments/scale"), False),
        (PermanentQueryError("400 bad query"), False),
        (InvariantViolation("scale-in without signal"), False),
        (PermissionError("read-only"), False),
    ],
)
def test_retry_rule(exc: Exception, retried: bool) -> None:
    assert retry_transient(None, None, Failed(data=exc)) is retried
