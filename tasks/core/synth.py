"""Synthetic heterogeneous clusters for the placement benchmark, deterministic per seed.

Contract: `synth_cluster(gpus=N, services=S, gpu_types=T, seed=K)` returns a `SynthCase`: a valid
`ClusterConfig` of about N GPUs, the `ClusterView` with a current placement, and the new targets
(reference-GPU instances per service and role) that placement must realise. Same arguments, same
case. Pure: no I/O, no clock.

Shape (what an operator of a large fleet sees):
  * nodes of 8 GPUs; racks of 4 nodes; an S1 (leaf) domain is 2-4 racks; an S2 (big-pod) domain
    is 4-8 S1s;
  * T GPU types (2-5) from a catalogue with list prices; most S1s are one type, about 1 in 8
    mixes two types (the scarce, high-priority pools), and about 1 in 4 S2s mixes types;
  * services with 1-8 GPUs per instance, prefill on compute-strong types and decode on
    bandwidth-strong ones, P/D ratios from 1:3 to 3:2, affinity S1 / S2 / none at about
    30/50/20 %, priorities 0-3;
  * demand sized so the current fleet fills ~70 % of the GPUs; the current placement is what the
    paper's greedy made of the previous targets; the new targets move each service by up to
    +-25 % (the change one control period brings at a ramp).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from models.config import ClusterConfig, Role, parse_config
from models.values import RoleCounts
from tasks.core.greedy import place_greedy
from tasks.core.topology import ClusterView, view_from_config

# name, $/GPU-hour, relative prefill speed, relative decode speed (per GPU, rough public figures).
_CATALOGUE: tuple[tuple[str, float, float, float], ...] = (
    ("h100", 4.0, 1.00, 1.00),
    ("a100", 2.2, 0.45, 0.62),
    ("h20", 1.9, 0.30, 1.15),
    ("l40s", 1.3, 0.36, 0.30),
    ("b200", 6.5, 2.20, 2.00),
)
GPUS_PER_NODE = 8
NODES_PER_RACK = 4


@dataclass(frozen=True, slots=True)
class SynthCase:
    config: ClusterConfig
    view: ClusterView  # with the current placement
    previous: dict[str, RoleCounts]  # the targets the current placement was made for
    targets: dict[str, RoleCounts]  # the new targets to place


def _topology(rng: random.Random, gpus: int, types: list[str]) -> list[dict[str, Any]]:
    nodes_left = max(1, gpus // GPUS_PER_NODE)
    pools: list[dict[str, Any]] = []
    s2 = s1 = 0
    while nodes_left > 0:
        s2 += 1
        s2_name = f"s2-{s2:03d}"
        mixed_s2 = len(types) > 1 and rng.random() < 0.25
        s2_type = rng.choice(types)
        for _ in range(rng.randint(4, 8)):
            if nodes_left <= 0:
                break
            s1 += 1
            s1_name = f"s1-{s1:04d}"
            nodes = min(nodes_left, NODES_PER_RACK * rng.randint(2, 4))
            nodes_left -= nodes
            own = rng.choice(types) if mixed_s2 else s2_type
            if len(types) > 1 and nodes >= 2 and rng.random() < 0.125:
                other = rng.choice([t for t in types if t != own])
                split = rng.randint(1, nodes - 1)
                parts = [(own, nodes - split), (other, split)]
            else:
                parts = [(own, nodes)]
            for g, n in parts:
                pools.append(
                    {
                        "name": f"{s1_name}-{g}",
                        "gpu_type": g,
                        "nodes": n,
                        "gpus_per_node": GPUS_PER_NODE,
                        "s1": s1_name,
                        "s2": s2_name,
                    }
                )
    return pools


def _service(rng: random.Random, i: int, types: list[str], speed: dict[str, tuple[float, float]]) -> dict[str, Any]:
    gpi = rng.choice((1, 2, 2, 4, 4, 8))
    by_prefill = sorted(types, key=lambda t: -speed[t][0])
    by_decode = sorted(types, key=lambda t: -speed[t][1])
    n_p = rng.randint(1, min(2, len(types)))
    n_d = rng.randint(1, min(3, len(types)))
    start_p = rng.randint(0, max(0, len(types) - n_p - 1))
    p_types = by_prefill[start_p : start_p + n_p]
    d_types = by_decode[:n_d] if rng.random() < 0.5 else rng.sample(types, n_d)
    base_p, base_d = rng.uniform(4000, 12000), rng.uniform(600, 1800)

    def cap(t: str, k: int, base: float) -> float:
        # Speed differs from the catalogue by up to +-15 % per model (kernels, batch shape).
        return round(base * speed[t][k] * rng.uniform(0.85, 1.15) * gpi / 2, 1)

    ratio = rng.choice(((1, 3), (1, 2), (2, 3), (3, 4), (1, 1), (3, 2)))
    return {
        "name": f"svc-{i:03d}",
        "model": f"model-{i % 17}",
        "prefill": {
            "gpu_types": p_types,
            "gpus_per_instance": gpi,
            "capacity_tokens_per_s": {t: cap(t, 0, base_p) for t in p_types},
        },
        "decode": {
            "gpu_types": d_types,
            "gpus_per_instance": gpi,
            "capacity_tokens_per_s": {t: cap(t, 1, base_d) for t in d_types},
        },
        "pd_ratio": {"prefill": ratio[0], "decode": ratio[1]},
        "slo": {"ttft_p99_s": 2.0, "tbt_p99_s": 0.1},
        "affinity": rng.choices(("S1", "S2", "none"), weights=(3, 5, 2))[0],
        "priority": rng.randint(0, 3),
        "policy": {"target_per_instance": 600, "min_instances": 2, "max_instances": 100_000},
    }


def synth_cluster(
    *, gpus: int, services: int, gpu_types: int, seed: int, fill: float = 0.65, change: float = 0.25
) -> SynthCase:
    if not 1 <= gpu_types <= len(_CATALOGUE):
        raise ValueError(f"gpu_types must be 1..{len(_CATALOGUE)}, got {gpu_types}")
    if gpus < GPUS_PER_NODE or services < 1:
        raise ValueError(f"need at least {GPUS_PER_NODE} GPUs and one service (got {gpus}, {services})")
    rng = random.Random(seed)
    cat = _CATALOGUE[:gpu_types]
    types = [c[0] for c in cat]
    speed = {c[0]: (c[2], c[3]) for c in cat}
    pools = _topology(rng, gpus, types)
    svcs = [_service(rng, i, types, speed) for i in range(services)]
    data = {
        "cluster": {"name": f"synth-{seed}"},
        "gpu_types": [{"name": n, "memory_gib": 80, "cost_per_gpu_hour": c} for n, c, _, _ in cat],
        "topology": {"node_pools": pools},
        "services": svcs,
    }
    config = parse_config(data, source=f"synth(gpus={gpus}, services={services}, seed={seed})")
    total = sum(p["nodes"] * p["gpus_per_node"] for p in pools)
    # Split the filled GPUs among services with a heavy tail (a few big services, many small).
    shares = [rng.paretovariate(1.5) for _ in svcs]
    norm = sum(shares)
    wanted: dict[str, RoleCounts] = {}
    for svc, share in zip(config.services, shares, strict=True):
        rho = svc.pd_ratio.prefill_per_decode
        gpi = svc.prefill.gpus_per_instance
        instances = max(2.0, fill * total * share / norm / gpi)
        num_d = max(1, round(instances / (1 + rho)))
        wanted[svc.name] = RoleCounts(max(1, round(num_d * rho)), num_d)
    current = place_greedy(config, view_from_config(config), wanted).placement
    view = view_from_config(config, current)
    # What runs now is what the greedy could place (a big service may not fit its allowed types);
    # the previous targets are those counts, so the current placement is a consistent state.
    previous: dict[str, RoleCounts] = {}
    targets: dict[str, RoleCounts] = {}
    for svc in config.services:
        have = [
            sum(
                n * svc.role(k.role).weight(k.gpu_type) for k, n in current.for_service(svc.name).items() if k.role is r
            )
            for r in (Role.PREFILL, Role.DECODE)
        ]
        previous[svc.name] = RoleCounts(int(have[0] + 1e-9), int(have[1] + 1e-9))
        rho = svc.pd_ratio.prefill_per_decode
        new_d = max(1, round(max(1, previous[svc.name].num_decode) * (1 + rng.uniform(-change, change))))
        targets[svc.name] = RoleCounts(max(1, round(new_d * rho)), new_d)
    return SynthCase(config=config, view=view, previous=previous, targets=targets)
