"""Policy curation, HeteroScale's Algorithm 1, on the capacity model and the replay twin (a flow:
it runs replays, so it sits with them, above `sim`).

Contract (pure apart from the replays it runs in simulated time):
  * `capacity_at_slo(svc, engines, lengths)`: tokens/s one instance of each (role, GPU type)
    sustains within the service's TTFT / TBT targets (the config's `capacity_tokens_per_s`);
  * `pd_curve(svc, engines, lengths, budget)`: for a fixed budget of reference instances, the
    highest request rate each P/D split serves within the SLOs (the twin's steady state);
  * `curate(config, service, curve)`: 1) pressure test: best P/D ratio on a 16-instance budget
    and the per-instance decode TPS at the SLO; 2) candidate policies (heteroscale-paper and
    heteroscale: `PolicySpec.curation_candidate`), each tuned on its own knob (heteroscale-paper: targets at 40-90% of that
    capacity; heteroscale: `slo_headroom` 0.6-1.0), replayed on `curve`; 3) per policy, the
    candidate with the fewest GPU-hours at >= 99% SLO attainment (else the best attainment); the
    best of those names the service's policy, and each policy's knob is written. The result is
    a `Service` the config accepts (`service_yaml`).
Run it on one part of a trace and evaluate on another: never pick targets on the test load.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from flows.replay import replay
from models.config import ClusterConfig, Role, Service
from sim.traces import LoadCurve
from sim.twin import TwinParams, engines_for
from tasks.core import capacity as cap
from tasks.core.capacity import EngineModel
from tasks.core.policy import POLICIES

Engines = Mapping[tuple[str, Role, str], EngineModel]
# The paper's pressure test used a 16-instance budget (best 9P7D / 10P6D).
PRESSURE_BUDGET = 16
TARGET_SHARES = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
# The policies curation tries: those the registry marks as candidates.
CANDIDATE_POLICIES = tuple(name for name, spec in POLICIES.items() if spec.curation_candidate)
# `heteroscale` sizes at a share of the capacity at the SLO for the observed sizes, not at the
# curated target: its knob is `slo_headroom`, swept over these.
SLO_HEADROOMS = (0.6, 0.7, 0.8, 0.9, 1.0)


@dataclass(frozen=True)
class Lengths:
    mean_input_tokens: float
    mean_output_tokens: float

    @staticmethod
    def of(curve: LoadCurve) -> Lengths:
        w = curve.req_per_s
        tot = float(w.sum()) or 1.0
        return Lengths(
            float((curve.mean_input_tokens * w).sum() / tot), float((curve.mean_output_tokens * w).sum() / tot)
        )


def capacity_at_slo(svc: Service, engines: Engines, lengths: Lengths, *, pool: int = 4) -> dict[Role, dict[str, float]]:
    prompt = max(lengths.mean_input_tokens * (1 - svc.prefix_cache_hit), 1.0)
    ctx = lengths.mean_input_tokens + lengths.mean_output_tokens / 2
    out: dict[Role, dict[str, float]] = {Role.PREFILL: {}, Role.DECODE: {}}
    for g in svc.prefill.gpu_types:
        out[Role.PREFILL][g] = cap.prefill_capacity(
            engines[(svc.name, Role.PREFILL, g)], prompt, svc.slo.ttft_p99_s, pool
        )
    for g in svc.decode.gpu_types:
        out[Role.DECODE][g] = cap.decode_capacity(engines[(svc.name, Role.DECODE, g)], ctx, svc.slo.tbt_p99_s)
    return out


def max_rps(svc: Service, engines: Engines, lengths: Lengths, n_prefill: int, n_decode: int) -> float:
    """Highest request rate `n_prefill` + `n_decode` reference instances serve within the SLOs."""
    if n_prefill <= 0 or n_decode <= 0:
        return 0.0
    prompt = max(lengths.mean_input_tokens * (1 - svc.prefix_cache_hit), 1.0)
    e_p = engines[(svc.name, Role.PREFILL, svc.prefill.reference_gpu_type)]
    e_d = engines[(svc.name, Role.DECODE, svc.decode.reference_gpu_type)]
    ctx = lengths.mean_input_tokens + lengths.mean_output_tokens / 2
    pre = cap.prefill_capacity(e_p, prompt, svc.slo.ttft_p99_s, n_prefill) * n_prefill / prompt
    dec = cap.decode_capacity(e_d, ctx, svc.slo.tbt_p99_s) * n_decode / max(lengths.mean_output_tokens, 1.0)
    return min(pre, dec)


def pd_curve(
    svc: Service, engines: Engines, lengths: Lengths, budget: int = PRESSURE_BUDGET
) -> list[tuple[int, int, float]]:
    return [(p, budget - p, max_rps(svc, engines, lengths, p, budget - p)) for p in range(1, budget)]


@dataclass(frozen=True)
class Candidate:
    policy: str
    target_per_instance: float
    gpu_hours: float
    slo_attainment: float
    slo_headroom: float | None = None  # heteroscale's knob (None: the policy does not read it)


@dataclass(frozen=True)
class CurationResult:
    service: Service
    ratio: tuple[int, int]
    decode_capacity_at_slo: float
    candidates: tuple[Candidate, ...]
    chosen: Candidate


def curate(
    config: ClusterConfig,
    service: str,
    curve: LoadCurve,
    *,
    engines: Engines | None = None,
    policies: Sequence[str] = CANDIDATE_POLICIES,
    shares: Sequence[float] = TARGET_SHARES,
    headrooms: Sequence[float] = SLO_HEADROOMS,
) -> CurationResult:
    svc = config.service(service)
    engines = engines or engines_for(config, TwinParams())
    lengths = Lengths.of(curve)
    caps = capacity_at_slo(svc, engines, lengths)
    curve_pts = pd_curve(svc, engines, lengths)
    n_p, n_d, _ = max(curve_pts, key=lambda r: (r[2], -r[0]))
    g = math.gcd(n_p, n_d)
    ratio = (n_p // g, n_d // g)
    dec_cap = caps[Role.DECODE][svc.decode.reference_gpu_type]
    base = svc.model_copy(
        update={
            "pd_ratio": svc.pd_ratio.model_copy(update={"prefill": float(ratio[0]), "decode": float(ratio[1])}),
            "prefill": svc.prefill.model_copy(update={"capacity_tokens_per_s": _rounded(caps[Role.PREFILL])}),
            "decode": svc.decode.model_copy(update={"capacity_tokens_per_s": _rounded(caps[Role.DECODE])}),
        }
    )
    # Replay the service alone: its curation must not depend on its neighbours' load. Each
    # candidate policy is tuned on its own knob (the target share, or heteroscale's SLO headroom),
    # so the league compares every policy at its best on this load, not at another's setting.
    candidates = []
    for pol in policies:
        knobs: Sequence[tuple[float, float | None]] = (
            [(round(dec_cap * 0.5, 1), h) for h in headrooms]
            if pol == "heteroscale"
            else [(round(dec_cap * share, 1), None) for share in shares]
        )
        for target, headroom in knobs:
            update: dict[str, object] = {"name": pol, "target_per_instance": target}
            if headroom is not None:
                update["slo_headroom"] = headroom
            trial = base.model_copy(update={"policy": base.policy.model_copy(update=update)})
            cfg = config.model_copy(update={"services": (trial,)})
            res = replay(cfg, {service: curve}, pol, keep_ticks=False, placement="greedy").summary()
            candidates.append(Candidate(pol, target, float(res["gpu_hours"]), float(res["slo_attainment"]), headroom))

    def best(cands: Sequence[Candidate]) -> Candidate:
        good = [c for c in cands if c.slo_attainment >= 0.99]
        return (
            min(good, key=lambda c: c.gpu_hours) if good else max(cands, key=lambda c: (c.slo_attainment, -c.gpu_hours))
        )

    chosen = best(candidates)
    per_policy = {pol: best([c for c in candidates if c.policy == pol]) for pol in policies}
    target = next(
        (c.target_per_instance for p, c in per_policy.items() if p != "heteroscale"), chosen.target_per_instance
    )
    update = {"name": chosen.policy, "target_per_instance": target}
    if "heteroscale" in per_policy and per_policy["heteroscale"].slo_headroom is not None:
        update["slo_headroom"] = per_policy["heteroscale"].slo_headroom
    final = base.model_copy(update={"policy": base.policy.model_copy(update=update)})
    return CurationResult(final, ratio, dec_cap, tuple(candidates), chosen)


def _rounded(d: Mapping[str, float]) -> dict[str, float]:
    # Config validation wants positive capacities; an engine that cannot meet the SLO at all
    # still gets a token value so the GPU type stays listed (and is never chosen by weight).
    return {k: max(round(v, 1), 1.0) for k, v in d.items()}


def service_yaml(config: ClusterConfig, svc: Service) -> dict:
    """The whole config as a mapping with `svc` replaced: what `load_config` accepts."""
    data = config.model_dump(mode="json", exclude_defaults=False)
    data["services"] = [svc.model_dump(mode="json") if s["name"] == svc.name else s for s in data["services"]]
    return data
