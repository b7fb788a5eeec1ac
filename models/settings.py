"""Process-level settings from the environment (read at the edges, never at import time).

`PREFECT_DEFAULTS` are the Prefect settings the project needs; the CLI applies them at start-up,
before Prefect is imported (`apply_prefect_defaults`), each only when the user has not set it.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BUNDLED_TRACE = PROJECT_ROOT / "data" / "traces" / "azure_llm_2023" / "AzureLLMInferenceTrace_conv.csv"
DEMO_CONFIG = PROJECT_ROOT / "deployments" / "clusters" / "demo.yaml"


def data_dir() -> Path:
    """Where the store and run outputs live: `HETEROSCALE_DATA_DIR`, else the per-user XDG data
    dir (`$XDG_DATA_HOME/heteroscale`, else `~/.local/share/heteroscale`): the same store from
    whichever directory the command runs."""
    env = os.environ.get("HETEROSCALE_DATA_DIR")
    if env:
        return Path(env).expanduser().resolve()
    xdg = os.environ.get("XDG_DATA_HOME", "")
    # The XDG spec: a relative XDG_DATA_HOME is invalid and ignored.
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "share"
    return base / "heteroscale"


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


# What the project needs from Prefect wherever the console script runs (docs/install.md):
PREFECT_DEFAULTS = {
    # No usage analytics: offline machines, and the server's telemetry writes raced the flow's
    # own writes ("database is locked" on the ephemeral SQLite API).
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_TELEMETRY_ENABLE_RESOURCE_METRICS": "false",
    # The ephemeral API's first start took 16-27 s on a cold venv; Prefect's default limit is 20 s.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
}


def apply_prefect_defaults(environ: MutableMapping[str, str] | None = None) -> None:
    """Set each of `PREFECT_DEFAULTS` the environment does not set already (the user's wins).
    Prefect reads its settings when first imported: call this before importing it."""
    env = os.environ if environ is None else environ
    for name, value in PREFECT_DEFAULTS.items():
        env.setdefault(name, value)
