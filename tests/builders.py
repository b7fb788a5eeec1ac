"""Test builders: small valid configs and contexts, overridable field by field."""

from __future__ import annotations

import copy
from typing import Any

from models.config import ClusterConfig, Service, parse_config
from models.values import RoleCounts, ServicePolicyState, ServiceSignals
from tasks.core.policy import PolicyContext


def config_dict(**overrides: Any) -> dict[str, Any]:
    """A two-GPU-type, three-S2-domain cluster with one service, as a plain mapping."""
    d: dict[str, Any] = {
        "cluster": {"name": "test", "control_period_s": 60},
        "gpu_types": [
            {"name": "h100", "memory_gib": 80, "cost_per_gpu_hour": 4.0},
            {"name": "a100", "memory_gib": 80, "cost_per_gpu_hour": 2.0},
        ],
        "topology": {
            "node_pools": [
                {"name": "a1", "gpu_type": "h100", "nodes": 2, "gpus_per_node": 8, "s1": "a1", "s2": "pod-a"},
                {"name": "b1", "gpu_type": "a100", "nodes": 2, "gpus_per_node": 8, "s1": "b1", "s2": "pod-b"},
                {"name": "c1h", "gpu_type": "h100", "nodes": 1, "gpus_per_node": 8, "s1": "c1", "s2": "pod-c"},
                {"name": "c1a", "gpu_type": "a100", "nodes": 1, "gpus_per_node": 8, "s1": "c1", "s2": "pod-c"},
            ]
        },
        "services": [service_dict()],
    }
    for k, v in overrides.items():
        d[k] = v
    return d


def service_dict(name: str = "chat", **overrides: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "name": name,
        "model": "llama2-70b",
        "prefill": {
            "gpu_types": ["h100", "a100"],
            "gpus_per_instance": 2,
            "capacity_tokens_per_s": {"h100": 6500, "a100": 2900},
        },
        "decode": {
            "gpu_types": ["a100", "h100"],
            "gpus_per_instance": 2,
            "capacity_tokens_per_s": {"a100": 950, "h100": 1500},
        },
        "pd_ratio": {"prefill": 1, "decode": 2},
        "slo": {"ttft_p99_s": 2.0, "tbt_p99_s": 0.1},
        "policy": {"target_per_instance": 600, "min_instances": 3, "max_instances": 60},
    }
    for k, v in overrides.items():
        if isinstance(v, dict) and isinstance(d.get(k), dict):
            d[k] = {**d[k], **v}
        else:
            d[k] = v
    return d


def make_config(**overrides: Any) -> ClusterConfig:
    return parse_config(copy.deepcopy(config_dict(**overrides)), source="test")


def make_service(**overrides: Any) -> Service:
    return make_config(services=[service_dict(**overrides)]).services[0]


def make_context(
    service: Service | None = None,
    *,
    now_s: float = 10_000.0,
    current: tuple[int, int] = (5, 10),
    age_s: float = 30.0,
    **signals: float | None,
) -> PolicyContext:
    svc = service or make_service()
    sig = ServiceSignals(service=svc.name, sampled_at_s=now_s - age_s, **signals)
    return PolicyContext(service=svc, now_s=now_s, signals=sig, current=RoleCounts(*current))


NO_STATE = ServicePolicyState()
