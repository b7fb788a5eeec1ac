"""Which failures the Prefect tasks retry: transient yes, permanent (403, bad query, invariant) no."""

from __future__ import annotations

import pytest
from prefect.states import Failed

from models.errors import retry_transient
from sim.faults import InjectedFault
from tasks.core.invariants import InvariantViolation
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


@pytest.mark.parametrize(
    "text",
    [
        "forbidden: Bearer abc.def-123",
        "Authorization: Basic dXNlcjpwYXNz",
        '{"token": "s3cr3t-value"}',
        "password=hunter2hunter2",
    ],
)
def test_redact_removes_credentials(text: str) -> None:
    from models.errors import redact

    out = redact(text)
    assert "<redacted>" in out
    for secret in ("abc.def-123", "dXNlcjpwYXNz", "s3cr3t-value", "hunter2hunter2"):
        assert secret not in out


def test_redact_removes_known_secret_values(monkeypatch: pytest.MonkeyPatch) -> None:
    from models.errors import redact

    monkeypatch.setenv("HETEROSCALE_PROMETHEUS_TOKEN", "tok-9876")
    assert redact("upstream said tok-9876 is invalid") == "upstream said <redacted> is invalid"
    assert redact("nothing secret here") == "nothing secret here"
