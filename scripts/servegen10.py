"""The 10-service ServeGen league of docs/league.md, shared by the research scripts.

One definition of the setup the scripts replay (`floor_misses.py`, `steps_eval.py`,
`bench_reselect.py`, `bench_ilp_loop.py`): the curated cluster config, each service's ServeGen
rate curve (m-small or m-mid, 10-minute windows) shifted by some hours, its peak request rate,
and the Azure conversation request sizes. The same as the league command in docs/league.md
(`$TR`, `$PK`, `$L`).

    from servegen10 import load            # scripts/ is on sys.path when a script runs
    config, curves = load()                # the whole fortnight
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SMALL = ROOT / "data/traces/servegen/servegen_m-small_10min.csv"
MID = ROOT.parent / "shared/data/traces/servegen/servegen_m-mid_10min.csv"
LENGTHS = ROOT / "data/traces/azure_llm_2023/AzureLLMInferenceTrace_conv.csv"
CONFIG = ROOT / "deployments/clusters/servegen-10-curated.yaml"
# (service, ServeGen category "S" = m-small or "M" = m-mid, shift, peak requests per second)
SERVICES: tuple[tuple[str, str, str, int], ...] = (
    ("chat", "S", "", 80),
    ("chat-eu", "S", "@7h", 50),
    ("chat-us", "S", "@13h", 60),
    ("code", "M", "", 70),
    ("code-eu", "M", "@7h", 40),
    ("agent", "S", "@3h", 30),
    ("rag", "S", "@10h", 50),
    ("translate", "M", "@13h", 40),
    ("summarize", "S", "@18h", 60),
    ("batch-eval", "M", "@20h", 50),
)


def trace_specs(files: Mapping[str, Path] | None = None) -> list[str]:
    """`--trace` specs (`name=file@shift`); `files` replaces the m-small ("S") / m-mid ("M") CSVs."""
    files = files or {"S": SMALL, "M": MID}
    return [f"{name}={files[kind]}{shift}" for name, kind, shift, _ in SERVICES]


def peak_specs() -> list[str]:
    """`--peak-rps` specs (`name=rps`)."""
    return [f"{name}={peak}" for name, _, _, peak in SERVICES]


def load(config: Path = CONFIG, files: Mapping[str, Path] | None = None) -> tuple[Any, dict[str, Any]]:
    """The cluster config and every service's curve over the whole fortnight."""
    # late: the scripts that only need the specs do not pay for the flows' imports
    from flows.replay import load_service_curves
    from tasks.core.registry import load_config

    cfg = load_config(config)
    curves, _ = load_service_curves(cfg, trace_specs(files), [str(LENGTHS)], peak_specs())
    return cfg, curves
