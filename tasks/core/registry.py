"""Names a config chooses from a registry, checked by the registries' owner.

`models.config` validates the schema and every cross-field rule but sits below the policies and
forecasters, so it cannot know their names. `check_names` does, and `load_config` /
`parse_config` here are the loaders to run with: the models' loader, then this check. Errors are
`ConfigError`s in the models' format: the file, the field path, the valid names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from models import config as model
from models.config import ClusterConfig, ConfigError
from tasks.core.forecast import FORECASTERS
from tasks.core.policy import POLICIES


def check_names(config: ClusterConfig, *, source: str = "<config>") -> ClusterConfig:
    """`config` itself when every policy and forecaster it names is registered; else ConfigError."""
    problems = []
    for i, svc in enumerate(config.services):
        if svc.policy.name not in POLICIES:
            problems.append(
                f"services[{i}].policy.name: {svc.policy.name!r} is unknown; choose one of {sorted(POLICIES)}"
            )
        if svc.policy.forecaster not in FORECASTERS:
            problems.append(
                f"services[{i}].policy.forecaster: {svc.policy.forecaster!r} is unknown; "
                f"choose one of {sorted(FORECASTERS)}"
            )
    if problems:
        lines = [f"{source}: invalid cluster config ({len(problems)} problem(s)):", *(f"  - {p}" for p in problems)]
        raise ConfigError("\n".join(lines))
    return config


def parse_config(data: Any, *, source: str = "<config>") -> ClusterConfig:
    """`models.config.parse_config`, then the registered names."""
    return check_names(model.parse_config(data, source=source), source=source)


def load_config(path: str | Path) -> ClusterConfig:
    """`models.config.load_config`, then the registered names: the loader to run with."""
    return check_names(model.load_config(path), source=str(Path(path)))
