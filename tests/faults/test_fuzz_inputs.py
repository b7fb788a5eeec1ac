"""Property-based fuzzing of the config and trace loaders: every malformed input is a clear,
located error (ConfigError / TraceError), never a traceback from deep inside."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.config import ConfigError, load_config, parse_config
from sim.traces import TraceError, load_curve
from tests.builders import config_dict

pytestmark = pytest.mark.faults

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


def _paths(d: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(d, dict):
        for k, v in d.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            out += _paths(v, (*prefix, i))
    return out


BASE = config_dict()
PATHS = _paths(BASE)


def _set(d: Any, path: tuple[Any, ...], value: Any) -> None:
    for p in path[:-1]:
        d = d[p]
    d[path[-1]] = value


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(PATHS), value=values)
def test_any_field_replaced_by_junk_is_valid_or_a_located_config_error(path: tuple[Any, ...], value: Any) -> None:
    d = copy.deepcopy(BASE)
    _set(d, path, value)
    try:
        parse_config(d, source="fuzz.yaml")
    except ConfigError as exc:
        msg = str(exc)
        assert msg.startswith("fuzz.yaml: ")
        assert "  - " in msg  # at least one located problem line
        first_key = str(path[0])
        assert first_key in msg or "<top level>" in msg or "services" in msg or "topology" in msg


@settings(max_examples=200, deadline=None)
@given(path=st.sampled_from(PATHS))
def test_any_field_deleted_is_valid_or_a_located_config_error(path: tuple[Any, ...]) -> None:
    d = copy.deepcopy(BASE)
    parent = d
    for p in path[:-1]:
        parent = parent[p]
    del parent[path[-1]]
    try:
        parse_config(d, source="fuzz.yaml")
    except ConfigError as exc:
        assert str(exc).startswith("fuzz.yaml: ")


@settings(max_examples=150, deadline=None)
@given(text=st.text(max_size=300))
def test_arbitrary_yaml_text_never_escapes_as_another_exception(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "c.yaml"
        p.write_text(text, encoding="utf-8")
        with pytest.raises(ConfigError):
            load_config(p)


@settings(max_examples=60, deadline=None)
@given(cfg=st.builds(lambda v: {**copy.deepcopy(BASE), "services": v}, st.lists(values, max_size=2)))
def test_services_of_junk(cfg: dict[str, Any]) -> None:
    try:
        parse_config(yaml.safe_load(yaml.safe_dump(cfg)), source="fuzz.yaml")
    except ConfigError:
        pass


cells = st.one_of(
    st.integers(-5, 10**6).map(str),
    st.floats(allow_nan=True).map(str),
    st.text(alphabet='ab,-.:9 "', max_size=12),
    st.just(""),
)


@settings(max_examples=200, deadline=None)
@given(
    header=st.sampled_from(
        [
            "timestamp,input_tokens,output_tokens",
            "TIMESTAMP,ContextTokens,GeneratedTokens",
            "window_start_s,req_per_s",
            "window_start_s,total_req_per_s,all_zero_gap",
            "a,b,c",
            "",
        ]
    ),
    rows=st.lists(st.lists(cells, min_size=1, max_size=4), max_size=6),
)
def test_malformed_traces_give_trace_errors(header: str, rows: list[list[str]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "t.csv"
        p.write_text(header + "\n" + "\n".join(",".join(r) for r in rows) + "\n")
        lengths = Path(tmp) / "len.csv"
        lengths.write_text("timestamp,input_tokens,output_tokens\n0,100,10\n1,200,20\n")
        try:
            curve = load_curve(p, lengths=lengths, dt_s=10)
        except TraceError as exc:
            assert str(p) in str(exc)
        else:
            # A trace that loads is usable: finite, non-negative rates.
            assert len(curve.req_per_s) > 0
            assert (curve.req_per_s >= 0).all()
