"""A synthetic fleet for the replay benchmark: N services on a cluster sized for them, ServeGen loads.

Contract: `synthetic_fleet(services=N, days=D, seed=K)` returns a `Fleet`: a valid `ClusterConfig`
(topology and services from `tasks.core.synth.synth_cluster`, two GPU types, about
`GPUS_PER_SERVICE` GPUs per service) and one `LoadCurve` per service, D days long. Same arguments,
same fleet (the trace files are read, nothing else).

The loads, as docs/league.md's ServeGen setup: the bundled ServeGen m-small rate curve (10-minute
windows, 14 days) with request sizes from the Azure conversation trace, time-shifted per service
(service i starts `SHIFT_STEP_H * i` hours later, wrapped around the trace: another time zone, the
same shape), each service's peak proportional to the fleet the synthetic case gives it (its
heavy-tailed share of the cluster), and one factor for all so that static-peak needs
`AUTO_GPU_SHARE` of the cluster's GPUs (`sim.sizing.fit_to_cluster`, as `--peak-rps auto`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from models.config import ClusterConfig, load_config, parse_config
from sim.sizing import fit_to_cluster
from sim.traces import LoadCurve, TraceError, load_rates, load_requests
from tasks.core.synth import synth_cluster

_ROOT = Path(__file__).resolve().parents[1]
_DATA = _ROOT / "data" / "traces"
# The services: the ten of the ServeGen league's config (Llama-2-70B / CodeLlama-70B, capacities from
# the capacity model, S1 / S2 / no affinity, priorities 0-30), cycled.
TEMPLATES_YAML = _ROOT / "deployments" / "clusters" / "servegen-10.yaml"
RATES_CSV = _DATA / "servegen" / "servegen_m-small_10min.csv"
LENGTHS_CSV = _DATA / "azure_llm_2023" / "AzureLLMInferenceTrace_conv.csv"
# servegen-10.yaml has 1,728 GPUs for ten services.
GPUS_PER_SERVICE = 170
GPU_TYPES = 2  # h100 and a100 (the synthetic catalogue's first two), as servegen-10.yaml
# 7 h is coprime with 24: the first 24 services get 24 different phases of the daily shape.
SHIFT_STEP_H = 7


@dataclass(frozen=True)
class Fleet:
    config: ClusterConfig
    curves: dict[str, LoadCurve]
    load_factor: float  # what fit_to_cluster multiplied every curve by

    @property
    def total_gpus(self) -> int:
        return sum(p.nodes * p.gpus_per_node for p in self.config.topology.node_pools)


def _rolled(curve: LoadCurve, windows: int, name: str) -> LoadCurve:
    """The curve `windows` later, wrapped around its end (as `PATH@SHIFT` on the command line)."""
    k = windows % max(1, len(curve.t_s))
    fields = ("req_per_s", "mean_input_tokens", "mean_output_tokens", "observed")
    return replace(curve, name=name, **{f: np.roll(getattr(curve, f), k) for f in fields})


def _services(templates: ClusterConfig, n: int, rng: random.Random) -> list[dict[str, Any]]:
    """n services cycling through the template config's services (`<template>-<i>`); a service's
    max_instances is raised so that only the cluster bounds it."""
    out = []
    for i in range(n):
        t = templates.services[i % len(templates.services)]
        data = t.model_dump(mode="json")
        data["name"] = f"{t.name}-{i:03d}"
        data["policy"]["max_instances"] = 100_000
        out.append(data)
    rng.shuffle(out)  # affinities and priorities mixed along the list, as the cluster's services
    return sorted(out, key=lambda d: d["name"])


def synthetic_fleet(
    *,
    services: int,
    days: float,
    seed: int = 1,
    rates_csv: Path = RATES_CSV,
    lengths_csv: Path = LENGTHS_CSV,
    templates_yaml: Path = TEMPLATES_YAML,
) -> Fleet:
    if services < 1:
        raise ValueError(f"services must be at least 1, got {services}")
    base = load_rates(rates_csv, lengths=load_requests(lengths_csv), name="servegen")
    if not 0 < days * 86400.0 <= base.duration_s + 1e-9:
        raise TraceError(f"days must be in (0, {base.duration_s / 86400:g}] (the trace's length), got {days}")
    rng = random.Random(seed)
    templates = load_config(templates_yaml)
    # The topology of a synthetic cluster of this size (its services are the placement benchmark's).
    case = synth_cluster(gpus=GPUS_PER_SERVICE * services, services=1, gpu_types=GPU_TYPES, seed=seed)
    data = templates.model_dump(mode="json")
    data["cluster"]["name"] = f"fleet-{services}"
    data["topology"] = case.config.topology.model_dump(mode="json")
    data["rdma_subgroups"] = []
    data["services"] = _services(templates, services, rng)
    config = parse_config(data, source=f"synthetic_fleet(services={services}, seed={seed})")
    share = min(1.0, days * 86400.0 / base.duration_s)
    curves: dict[str, LoadCurve] = {}
    for i, svc in enumerate(config.services):
        shift_h = (SHIFT_STEP_H * i) % 24
        # A heavy tail of service sizes (a few big services, many small), as synth_cluster's shares.
        size = min(rng.paretovariate(1.5), 20.0)
        curve = _rolled(base, round(shift_h * 3600.0 / base.dt_s), f"servegen@{shift_h}h").scaled(size)
        curves[svc.name] = curve.split(share)[0] if share < 1.0 else curve
    fitted, factor = fit_to_cluster(config, curves)
    return Fleet(config=config, curves=fitted, load_factor=factor)
