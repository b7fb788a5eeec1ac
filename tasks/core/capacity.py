"""What one instance does at given request sizes and SLOs: the pure half of the capacity model.

An `EngineModel` is a fitted latency model of one (model, GPU type, tensor parallel) engine
(`sim.capacity` fits it from aiconfigurator-core's kernel tables or a pressure-test table):
    prefill_s(b, L)      = p0 + p1 * b * L + p2 * b * L^2          (linear layers + attention)
    decode_step_s(b, L)  = d0 + d1 * b + d2 * b * L                (weights + per-seq + KV reads)
with a KV-memory bound on the decode batch (`max_batch(ctx)`).

From it, at the request sizes observed now:
  * `prefill_capacity` / `decode_capacity`: tokens/s one instance sustains within the TTFT / TBT
    target (0 when even an idle instance misses it);
  * `prefill_ttft_p99_s` / `decode_tbt_p99_s`: the latencies the twin reports;
  * `slo_floor`: the lowest p99 TTFT and TBT any allowed GPU reaches for the p99 request, and
    whether the p99 context fits in an instance's KV memory: an SLO below its floor cannot be met
    by any fleet (`SloFloor.feasible`).
Pure: no clock, no I/O; the twin, the policies and the floor all read these same functions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from models.config import Role, Service

# vLLM's default max_num_seqs: the engine never batches more sequences than this.
ENGINE_MAX_BATCH = 256
# p99 of a request's prompt length relative to the mean (Azure conv trace: 4142 / 1155).
P99_INPUT_FACTOR = 3.6
# p99 of the number of sequences in a decode batch over its mean: Poisson fluctuation, z = 2.33.
_Z99 = 2.33
# Per-instance RDMA bandwidth for the KV transfer (200 Gb/s NIC), when the caller has none.
KV_BANDWIDTH_GB_PER_S = 25.0


@dataclass(frozen=True, slots=True)
class EngineModel:
    """Fitted latency of one (model, GPU, TP) engine, seconds. See the module docstring."""

    gpu: str
    tp: int
    p0: float
    p1: float
    p2: float
    d0: float
    d1: float
    d2: float
    kv_bytes_per_token: float
    kv_budget_bytes: float
    source: str

    def prefill_s(self, batch: float, seq_len: float) -> float:
        return self.p0 + self.p1 * batch * seq_len + self.p2 * batch * seq_len * seq_len

    def decode_step_s(self, batch: float, ctx_len: float) -> float:
        return self.d0 + self.d1 * batch + self.d2 * batch * ctx_len

    def max_batch(self, ctx_len: float) -> int:
        """Sequences whose KV cache fits next to the weights, capped by the engine's limit."""
        if self.kv_budget_bytes <= 0:
            return 1
        fit = int(self.kv_budget_bytes // max(self.kv_bytes_per_token * ctx_len, 1.0))
        return max(1, min(ENGINE_MAX_BATCH, fit))

    def fits(self, ctx_len: float) -> bool:
        """Whether one sequence of `ctx_len` tokens fits in the KV memory left by the weights."""
        return self.kv_bytes_per_token * ctx_len <= self.kv_budget_bytes


# Engines of one service, by (role, GPU type).
ServiceEngines = Mapping[tuple[Role, str], EngineModel]


def config_engine(svc: Service, role: Role, gpu: str) -> EngineModel:
    """An engine whose throughput matches the config's `capacity_tokens_per_s`, for models and
    GPUs no measured source covers. Shape constants come from Splitwise's llama2-70b A100 TP2
    rows: a batch-1 decode step is 0.82 of a batch-64 step; a batch-1 prefill has 30 ms of
    fixed cost. Its decode batch limit is 64 sequences at any context (no memory model)."""
    per = svc.role(role).capacity_tokens_per_s[gpu]
    if role is Role.PREFILL:
        return EngineModel(gpu, 0, 0.03, 1.0 / per, 0.0, 0.05, 0.0, 0.0, 1.0, 64e12, "config")
    step64 = 64.0 / per
    return EngineModel(gpu, 0, 0.0, 0.0, 0.0, 0.82 * step64, 0.18 * step64 / 64, 0.0, 1.0, 64.0, "config")


# p99 of a request's prompt length relative to the mean (Azure conv trace: 4142 / 1155).
P99_INPUT_FACTOR = 3.6
# p99 of the number of sequences in a decode batch over its mean: Poisson fluctuation, z = 2.33.
_Z99 = 2.33


def decode_batch(engine: EngineModel, tokens_per_s: float, ctx_len: float) -> float:
    """Mean decode batch (sequences in flight) one instance holds to serve `tokens_per_s`
    (Little's law with step time a + c*b: b = r*a / (1 - r*c)); inf when it cannot."""
    a = engine.d0
    c = engine.d1 + engine.d2 * ctx_len
    if tokens_per_s <= 0:
        return 0.0
    den = 1.0 - tokens_per_s * c
    return math.inf if den <= 0 else tokens_per_s * a / den


def decode_tbt_p99_s(engine: EngineModel, batch: float, ctx_len: float) -> float:
    """p99 time between tokens at mean batch `batch`: the step time of the p99 batch."""
    b99 = min(batch + _Z99 * math.sqrt(max(batch, 0.0)), engine.max_batch(ctx_len))
    return engine.decode_step_s(max(b99, 1.0), ctx_len)


def decode_capacity(engine: EngineModel, ctx_len: float, tbt_slo_s: float | None = None) -> float:
    """Output tokens/s one instance sustains: at its KV-memory batch limit, or (with an SLO) at
    the largest mean batch whose p99 TBT stays within `tbt_slo_s`."""
    bmax = engine.max_batch(ctx_len)
    best = bmax / engine.decode_step_s(bmax, ctx_len)
    if tbt_slo_s is None:
        return best
    lo, hi = 0.0, float(bmax)
    if decode_tbt_p99_s(engine, hi, ctx_len) <= tbt_slo_s:
        return best
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if decode_tbt_p99_s(engine, mid, ctx_len) <= tbt_slo_s else (lo, mid)
    return lo / engine.decode_step_s(max(lo, 1e-9), ctx_len) if lo > 0 else 0.0


def prefill_tokens_per_s(engine: EngineModel, seq_len: float) -> float:
    """Prompt tokens/s one busy instance processes (batched prefill, marginal cost per prompt)."""
    return seq_len / (engine.p1 * seq_len + engine.p2 * seq_len * seq_len)


def prefill_ttft_p99_s(engine: EngineModel, rho: float, servers: int, seq_len: float) -> float:
    """p99 TTFT of a pool of `servers` prefill instances at utilisation `rho` (no backlog):
    the p99 prompt's own prefill plus the p99 wait for an instance (Sakasegawa's M/M/c mean
    wait x 4.6, the p99 of an exponential tail)."""
    mean_s = engine.prefill_s(1, seq_len)
    floor = engine.prefill_s(1, P99_INPUT_FACTOR * seq_len)
    if rho <= 0:
        return floor
    if rho >= 1:
        return math.inf
    c = max(servers, 1)
    wait = mean_s * rho ** (math.sqrt(2.0 * (c + 1)) - 1.0) / (c * (1.0 - rho))
    return floor + 4.6 * wait


def prefill_capacity(engine: EngineModel, seq_len: float, ttft_slo_s: float | None = None, servers: int = 1) -> float:
    """Prompt tokens/s one instance (in a pool of `servers`) sustains within the TTFT target."""
    full = prefill_tokens_per_s(engine, seq_len)
    if ttft_slo_s is None:
        return full
    if prefill_ttft_p99_s(engine, 0.0, servers, seq_len) > ttft_slo_s:
        return 0.0
    lo, hi = 0.0, 0.999
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if prefill_ttft_p99_s(engine, mid, servers, seq_len) <= ttft_slo_s else (lo, mid)
    return lo * full


def kv_transfer_s(
    engine: EngineModel, prompt_tokens: float, bandwidth_gb_per_s: float = KV_BANDWIDTH_GB_PER_S
) -> float:
    """Seconds to ship the KV cache of `prompt_tokens` from prefill to decode over RDMA."""
    return engine.kv_bytes_per_token * prompt_tokens / (bandwidth_gb_per_s * 1e9)


@dataclass(frozen=True, slots=True)
class SloFloor:
    """The lowest latencies any allowed GPU reaches for the p99 request, and what follows."""

    ttft_floor_s: float
    tbt_floor_s: float
    fits_kv: bool  # the p99 context fits in one decode instance's KV memory
    ttft_slo_s: float
    tbt_slo_s: float

    @property
    def feasible(self) -> bool:
        return self.fits_kv and self.ttft_floor_s <= self.ttft_slo_s and self.tbt_floor_s <= self.tbt_slo_s

    def why(self) -> str:
        """One line naming what makes the SLO infeasible ("" when it is feasible)."""
        parts = []
        if self.ttft_floor_s > self.ttft_slo_s:
            parts.append(f"TTFT SLO {self.ttft_slo_s:g}s < floor {self.ttft_floor_s:.2f}s (p99 prompt, idle GPU)")
        if self.tbt_floor_s > self.tbt_slo_s:
            parts.append(f"TBT SLO {self.tbt_slo_s:g}s < floor {self.tbt_floor_s:.3f}s (batch 1, p99 context)")
        if not self.fits_kv:
            parts.append("the p99 context does not fit in a decode instance's KV memory")
        return "; ".join(parts)

    def as_dict(self) -> dict[str, float | bool]:
        return {
            "ttft_floor_s": round(self.ttft_floor_s, 4),
            "tbt_floor_s": round(self.tbt_floor_s, 4),
            "fits_kv": self.fits_kv,
            "feasible": self.feasible,
        }


def slo_floor(
    svc: Service,
    engines: ServiceEngines,
    mean_input_tokens: float,
    mean_output_tokens: float,
    *,
    bandwidth_gb_per_s: float = KV_BANDWIDTH_GB_PER_S,
) -> SloFloor:
    """The service's latency floor on its best allowed GPU at these request sizes.

    TTFT floor: prefill of the p99 prompt (cache-missed part) on an idle instance + the KV transfer
    of the whole p99 prompt; TBT floor: one decode step at batch 1 holding the p99 context. The
    p99 prompt is `P99_INPUT_FACTOR` x the mean, as the twin models it."""
    p99_in = P99_INPUT_FACTOR * max(mean_input_tokens, 1.0)
    p99_prompt = max(p99_in * (1.0 - svc.prefix_cache_hit), 1.0)
    p99_ctx = p99_in + max(mean_output_tokens, 0.0)
    ref_d = engines[(Role.DECODE, svc.decode.reference_gpu_type)]
    kv = kv_transfer_s(ref_d, p99_in, bandwidth_gb_per_s)
    ttft = min(engines[(Role.PREFILL, g)].prefill_s(1, p99_prompt) for g in svc.prefill.gpu_types) + kv
    decoders = [engines[(Role.DECODE, g)] for g in svc.decode.gpu_types]
    tbt = min(e.decode_step_s(1, p99_ctx) for e in decoders)
    return SloFloor(ttft, tbt, any(e.fits(p99_ctx) for e in decoders), svc.slo.ttft_p99_s, svc.slo.tbt_p99_s)
