"""Shared test set-up: Prefect offline and quiet, a temporary data dir per test session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
# Task retries still happen in tests, without the production back-off.
os.environ.setdefault("HETEROSCALE_TASK_RETRY_DELAY_S", "0")

ROOT = Path(__file__).resolve().parent.parent
DEMO_CONFIG = ROOT / "deployments" / "clusters" / "demo.yaml"
BUNDLED_TRACE = ROOT / "data" / "traces" / "azure_llm_2023" / "AzureLLMInferenceTrace_conv.csv"
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One temporary Prefect API (SQLite) for every flow test of the session (~13 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture()
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh HETEROSCALE_DATA_DIR (store, twin state) for one test."""
    d = tmp_path / "data"
    monkeypatch.setenv("HETEROSCALE_DATA_DIR", str(d))
    monkeypatch.delenv("HETEROSCALE_DATABASE_URL", raising=False)
    return d
