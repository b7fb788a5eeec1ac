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
  * demand sized so the current fleet fills ~65 % of the GPUs; the new targets move each service
    by up to +-25 % (the change one control period brings at a ramp).

The current placement (`current=`):
  * "ratio" (default): a fleet a well-behaved autoscaler would have left, made by `ratio_fleet`:
    every deployment group holds both roles with P within pd_ratio x D (in reference units,
    +-1 instance of rounding), groups packed domain by domain from the lowest subgroup priority
    up. Neither placement method is handicapped: both start from groups that are already valid.
  * "greedy": what the paper's greedy made of the previous targets from an empty cluster. Its
    groups are often out of ratio, so an optimiser that keeps every group in ratio must reshape
    them (churn the greedy does not pay). Kept to reproduce the earlier benchmark.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from models.config import AffinityLevel, ClusterConfig, Role, Service, parse_config
from models.values import CellKey, Placement, RoleCounts
from tasks.core.placement import place_greedy
from tasks.core.topology import ClusterView, gpus_per_instance_map, view_from_config

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


def _take(
    free: dict[tuple[str, str], int], s1s: tuple[str, ...], gpu_type: str, gpi: int, n: int
) -> dict[str, int] | None:
    """Take `n` instances of `gpi` GPUs of `gpu_type` from `s1s`, fullest S1 first; None if short."""
    got: dict[str, int] = {}
    for s1 in sorted(s1s, key=lambda s: (-free.get((gpu_type, s), 0), s)):
        if n <= 0:
            break
        k = min(n, free.get((gpu_type, s1), 0) // gpi)
        if k > 0:
            got[s1] = k
            n -= k
    return got if n <= 0 else None


def _group_counts(svc: Service, d: int, g_p: str, g_d: str) -> tuple[int, int]:
    """(P, D) instances of one group with D = d and P nearest pd_ratio x D in reference units."""
    w_p, w_d = svc.prefill.weight(g_p), svc.decode.weight(g_d)
    return max(1, round(svc.pd_ratio.prefill_per_decode * d * w_d / w_p)), d


def ratio_fleet(config: ClusterConfig, view: ClusterView, wanted: Mapping[str, RoleCounts]) -> Placement:
    """A current placement whose every group keeps its service's P/D ratio (pure, deterministic).

    Services by descending priority; each walks the domains at its affinity level from the lowest
    subgroup priority up and opens the biggest group that fits (one prefill type and one decode
    type per group, the first allowed type with free GPUs in the domain), until its decode demand
    is covered or no domain has room. A service that does not fit gets less than it wanted; the
    caller reads what runs back as the previous targets.
    """
    gpi = gpus_per_instance_map(config)
    free = view.free_gpus(view.placement, gpi)
    cells: dict[CellKey, int] = dict(view.placement.cells)
    domains = {lvl: view.domains(lvl) for lvl in AffinityLevel}
    prios = {lvl: view.priorities(lvl) for lvl in AffinityLevel}
    for svc in sorted((s for s in config.services if s.name in wanted), key=lambda s: (-s.priority, s.name)):
        doms = domains[svc.affinity]
        prio = prios[svc.affinity]
        need_d = float(wanted[svc.name].num_decode)
        g_size = svc.prefill.gpus_per_instance
        for dom in sorted(doms, key=lambda d: (prio.get(d, 0), d)):
            if need_d <= 1e-9:
                break
            s1s = doms[dom]

            def first_type(role: Role, svc: Service = svc, s1s: tuple[str, ...] = s1s) -> str | None:
                spec = svc.role(role)
                for g in spec.gpu_types:
                    if any(free.get((g, s1), 0) >= spec.gpus_per_instance for s1 in s1s):
                        return g
                return None

            g_p, g_d = first_type(Role.PREFILL), first_type(Role.DECODE)
            if g_p is None or g_d is None:
                continue
            gpi_d = svc.decode.gpus_per_instance
            room_d = sum(free.get((g_d, s1), 0) // gpi_d for s1 in s1s)
            d = min(room_d, max(1, math.ceil(need_d / svc.decode.weight(g_d) - 1e-9)))
            while d > 0:
                p, d = _group_counts(svc, d, g_p, g_d)
                # Trial on this domain's pools only (copying the whole map per try is slow at 20k GPUs).
                trial = {(g, s1): free.get((g, s1), 0) for g in {g_p, g_d} for s1 in s1s}
                took_d = _take(trial, s1s, g_d, svc.decode.gpus_per_instance, d)
                if took_d is not None:
                    for s1, k in took_d.items():
                        trial[(g_d, s1)] -= k * svc.decode.gpus_per_instance
                    took_p = _take(trial, s1s, g_p, g_size, p)
                    if took_p is not None:
                        for s1, k in took_p.items():
                            trial[(g_p, s1)] -= k * g_size
                        free.update(trial)
                        for role, g, took in ((Role.DECODE, g_d, took_d), (Role.PREFILL, g_p, took_p)):
                            for s1, k in took.items():
                                key = CellKey(svc.name, role, g, s1)
                                cells[key] = cells.get(key, 0) + k
                        need_d -= d * svc.decode.weight(g_d)
                        break
                # Shrink by a quarter (at least one) so a big service finds its largest group fast.
                d -= max(1, d // 4)
    return Placement.of(cells.items())


def _units(placement: Placement, svc: Service) -> tuple[float, float]:
    have: dict[Role, float] = defaultdict(float)
    for k, n in placement.for_service(svc.name).items():
        have[k.role] += n * svc.role(k.role).weight(k.gpu_type)
    return have[Role.PREFILL], have[Role.DECODE]


def synth_cluster(
    *,
    gpus: int,
    services: int,
    gpu_types: int,
    seed: int,
    fill: float = 0.65,
    change: float = 0.25,
    current: str = "ratio",
) -> SynthCase:
    if current not in ("ratio", "greedy"):
        raise ValueError(f"current must be 'ratio' or 'greedy', got {current!r}")
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
    empty = view_from_config(config)
    if current == "greedy":
        running = place_greedy(config, empty, wanted).placement
    else:
        running = ratio_fleet(config, empty, wanted)
    view = view_from_config(config, running)
    # What runs now is what could be placed (a big service may not fit its allowed types); the
    # previous targets are those counts, so the current placement is a consistent state.
    previous: dict[str, RoleCounts] = {}
    targets: dict[str, RoleCounts] = {}
    for svc in config.services:
        have = _units(running, svc)
        previous[svc.name] = RoleCounts(int(have[0] + 1e-9), int(have[1] + 1e-9))
        rho = svc.pd_ratio.prefill_per_decode
        new_d = max(1, round(max(1, previous[svc.name].num_decode) * (1 + rng.uniform(-change, change))))
        targets[svc.name] = RoleCounts(max(1, round(new_d * rho)), new_d)
    return SynthCase(config=config, view=view, previous=previous, targets=targets)
