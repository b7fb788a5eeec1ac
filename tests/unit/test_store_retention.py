"""Store retention: old metric samples are pruned, the window the forecasters read is kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.config import ConfigError, parse_config
from tasks.store import Store, StoreUnavailable
from tests.builders import config_dict


def test_prune_samples_deletes_only_older_samples_of_that_cluster(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    for t in (0.0, 100.0, 200.0):
        store.append_samples("a", t, {"chat": t})
    store.append_samples("b", 0.0, {"chat": 0.0})
    assert store.prune_samples("a", 150.0) == 2
    assert store.history("a", -1.0) == {"chat": [(200.0, 200.0)]}
    assert store.history("b", -1.0) == {"chat": [(0.0, 0.0)]}


def test_retention_defaults_to_the_history_window_and_cannot_be_shorter() -> None:
    d = config_dict()
    d["cluster"]["history_window_s"] = 7200
    cfg = parse_config(d)
    assert cfg.cluster.retention_s == 7200
    d["cluster"]["sample_retention_s"] = 3600
    with pytest.raises(ConfigError, match="sample_retention_s"):
        parse_config(d)


def test_an_unreachable_database_is_a_transient_error(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailable):
        Store(f"sqlite:///{tmp_path / 'no-such-dir' / 's.db'}")
