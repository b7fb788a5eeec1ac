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


class _Flaky:
    """A signals backend that raises `exc` on its first `fails` reads, counting every call."""

    def __init__(self, exc: Exception, fails: int) -> None:
        self.exc, self.fails, self.calls = exc, fails, 0

    def read_signals(self, config: object, now_s: float) -> dict:
        self.calls += 1
        if self.calls <= self.fails:
            raise self.exc
        return {}


@pytest.mark.parametrize(
    ("exc", "calls", "ok"),
    [
        (KeyError("a bug, not an outage"), 1, False),  # failed at once: not retried
        (TransientQueryError("HTTP 503"), 3, True),  # retried (2 retries), then served
        (ConnectionRefusedError("nothing listening"), 3, True),
    ],
)
def test_the_collect_task_retries_transient_errors_only(
    prefect_harness: None, exc: Exception, calls: int, ok: bool
) -> None:
    from prefect import flow

    from flows.scale_cluster import collect_task
    from models.config import load_config
    from tests.conftest import DEMO_CONFIG

    cfg = load_config(DEMO_CONFIG)
    backend = _Flaky(exc, fails=2)

    @flow
    def one_collect() -> dict:
        return collect_task.with_options(retry_delay_seconds=0)(backend, cfg, 0.0)

    if ok:
        assert set(one_collect().signals) == {s.name for s in cfg.services}
    else:
        with pytest.raises(type(exc)):
            one_collect()
    assert backend.calls == calls


def test_the_replay_fails_at_once_on_a_bug_and_names_the_step(monkeypatch: pytest.MonkeyPatch) -> None:
    import sim.faults as faults
    from flows.replay import replay
    from models.config import load_config
    from sim.traces import load_curve
    from tests.conftest import BUNDLED_TRACE, DEMO_CONFIG

    cfg = load_config(DEMO_CONFIG)
    curve = load_curve(BUNDLED_TRACE, dt_s=10.0)
    curves = {s.name: curve.scaled_to_peak(5.0) for s in cfg.services}

    def buggy(self: object, config: object, now_s: float) -> dict:
        raise KeyError("bug")

    monkeypatch.setattr(faults.FaultySignals, "read_signals", buggy)
    with pytest.raises(KeyError) as info:
        replay(cfg, curves, "static-peak", keep_ticks=False, placement="greedy", faults=faults.FaultPlan())
    assert "in replay step 'collect signals'" in "".join(getattr(info.value, "__notes__", []))
