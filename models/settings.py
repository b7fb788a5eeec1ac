"""Process-level settings from the environment (read at the edges, never at import time)."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BUNDLED_TRACE = PROJECT_ROOT / "data" / "traces" / "azure_llm_2023" / "AzureLLMInferenceTrace_conv.csv"
DEMO_CONFIG = PROJECT_ROOT / "deployments" / "clusters" / "demo.yaml"


def data_dir() -> Path:
    """Where the store and run outputs live (`HETEROSCALE_DATA_DIR`, default ./.heteroscale)."""
    return Path(os.environ.get("HETEROSCALE_DATA_DIR", ".heteroscale")).resolve()


def database_url() -> str:
    """The store's SQLAlchemy URL (`HETEROSCALE_DATABASE_URL`; default SQLite in the data dir)."""
    url = os.environ.get("HETEROSCALE_DATABASE_URL")
    if url:
        return url
    d = data_dir()
    d.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{d / 'heteroscale.db'}"


def task_retry_delay_s() -> float:
    """Seconds between retries of the I/O tasks (`HETEROSCALE_TASK_RETRY_DELAY_S`, default 2)."""
    return float(os.environ.get("HETEROSCALE_TASK_RETRY_DELAY_S", "2"))
