"""`flows.fanout.Engine`: names checked at parse time; sequential fan-out is the plain loop."""

from __future__ import annotations

import pytest

from flows.fanout import SEQUENTIAL, Engine, EngineKind, fan_out


def test_engine_names_and_address() -> None:
    assert Engine.of("dask").kind is EngineKind.DASK
    assert Engine.of("dask", "tcp://dask-scheduler.example:8786").describe() == "dask tcp://dask-scheduler.example:8786"
    assert Engine.of("sequential").describe() == "sequential"
    with pytest.raises(ValueError, match="choose from"):
        Engine.of("ray")
    with pytest.raises(ValueError, match="at least 1"):
        Engine.of("dask", workers=0)
    with pytest.raises(ValueError, match="needs the dask engine"):
        Engine(kind=EngineKind.SEQUENTIAL, address="tcp://x:1")


def test_sequential_fan_out_is_the_plain_loop() -> None:
    calls = [(f"c{i}", {"a": i, "b": 10}) for i in range(3)]
    assert fan_out(lambda a, b: a + b, calls, SEQUENTIAL) == [10, 11, 12]


def test_weights_must_match_the_calls() -> None:
    calls = [(f"c{i}", {"a": i, "b": 10}) for i in range(3)]
    with pytest.raises(ValueError, match="2 weights for 3 calls"):
        fan_out(lambda a, b: a + b, calls, SEQUENTIAL, weights=[1.0, 2.0])
    assert fan_out(lambda a, b: a + b, calls, SEQUENTIAL, weights=[1.0, 3.0, 2.0]) == [10, 11, 12]
