"""Demand and capacity per role, from the signals and the capacity model: what `heteroscale` and
`dynamo-sla` size from. Demand is what is asked (arrivals, the queue), not only what was served:
a saturated pool serves its capacity whatever the queue. Capacity is what one instance sustains
within its SLO at the request sizes observed now. Pure."""

from __future__ import annotations

from dataclasses import dataclass

from models.config import Role
from tasks.core import capacity as cm
from tasks.core.policy.base import EPS, PolicyContext, fresh


@dataclass(frozen=True, slots=True)
class RoleDemand:
    """Load asked of each role (tokens/s), not only what was served, and the request sizes."""

    prefill_tps: float | None  # cache-missed prompt tokens/s asked of prefill
    decode_tps: float  # output tokens/s asked of decode
    mean_input_tokens: float | None
    mean_output_tokens: float | None
    cache_hit: float
    why: str
    burst: float = 1.0  # peak short-interval arrival rate / the window's mean (>= 1)


def role_demand(ctx: PolicyContext) -> RoleDemand | None:
    """Demand per role from the signals; None when the driving metric (decode TPS) is unreadable.

    Prefill: the arrival-side prompt counter (router/frontend) x the cache-miss share when the
    stack has one; else served cache-missed prefill TPS + the growth of the queued prompt tokens.
    Either way a standing queue adds what drains it within one cold start. A saturated pool thus
    reads as demand >= capacity, never as load = capacity. Decode: arrivals x output tokens per
    request when both are counted (a prefill bottleneck starves decode, so served decode TPS
    understates what decode will be asked once prefill catches up), never below what it served.
    """
    svc = ctx.service
    served_d, _ = fresh(ctx, "decode_tps")
    if served_d is None:
        return None
    hit, _ = fresh(ctx, "prefix_cache_hit_rate")
    hit = min(max(svc.prefix_cache_hit if hit is None else hit, 0.0), 0.99)
    mean_in, _ = fresh(ctx, "mean_input_tokens")
    mean_out, _ = fresh(ctx, "mean_output_tokens")
    arr_prompt, _ = fresh(ctx, "arrival_prompt_tps")
    arr_rps, _ = fresh(ctx, "arrival_rps")
    served_p, _ = fresh(ctx, "prefill_tps")
    queued, _ = fresh(ctx, "queued_prompt_tokens")
    waiting, _ = fresh(ctx, "waiting_requests")
    if queued is None and waiting is not None and mean_in is not None:
        queued = waiting * mean_in * (1.0 - hit)
    growth = ctx.signals.queue_growth_tps  # may be negative: a queue draining
    parts = []
    pre: float | None
    if arr_prompt is not None:
        pre = arr_prompt * (1.0 - hit)
        parts.append(f"prefill arrivals {pre:.0f}")
    elif served_p is not None:
        pre = served_p + max(0.0, growth or 0.0)
        parts.append(f"prefill served {served_p:.0f} + queue growth {max(0.0, growth or 0.0):.0f}")
    else:
        pre = None
    if pre is not None and queued:
        drain = queued / max(svc.cold_start_s, ctx.control_period_s)
        pre += drain
        parts.append(f"+ queue {queued:.0f} tok drained in a cold start")
    dec = served_d
    if arr_rps is not None and mean_out is not None:
        dec = max(served_d, arr_rps * mean_out)
        parts.append(f"decode arrivals {arr_rps:.2f} req/s x {mean_out:.0f} tok")
    else:
        parts.append(f"decode served {served_d:.0f}")
    # Bursts inside the window: latency is judged per short interval, so size for its peak.
    peak, _ = fresh(ctx, "arrival_peak_rps")
    burst = peak / arr_rps if peak is not None and arr_rps else 1.0
    if burst > 1.0 + EPS:
        parts.append(f"peak {burst:.2f}x the window's mean")
    return RoleDemand(pre, dec, mean_in, mean_out, hit, ", ".join(parts), max(burst, 1.0))


@dataclass(frozen=True, slots=True)
class RoleCapacity:
    """Tokens/s one reference instance of each role sustains within its SLO at the observed
    request sizes (before any headroom), and why a role's SLO cannot be met when it cannot."""

    prefill_tps: float
    decode_tps: float
    how: str
    ttft_infeasible: str = ""
    tbt_infeasible: str = ""


def role_capacity(ctx: PolicyContext, demand: RoleDemand, prefill_servers: int) -> RoleCapacity:
    """Per-instance capacity at the SLOs for the request sizes observed now (the capacity model,
    `ctx.engines`), or the config's `capacity_tokens_per_s` (curated at the sizes of its trace)
    when the model or the sizes are unknown. An SLO no instance meets even idle (its floor, see
    `tasks.core.capacity.slo_floor`) sizes that role for throughput and says so."""
    svc = ctx.service
    ref_p, ref_d = svc.prefill.reference_gpu_type, svc.decode.reference_gpu_type
    curated = RoleCapacity(svc.prefill.capacity_tokens_per_s[ref_p], svc.decode.capacity_tokens_per_s[ref_d], "curated")
    engines = ctx.engines
    if engines is None or demand.mean_input_tokens is None or demand.mean_output_tokens is None:
        return curated
    e_p, e_d = engines.get((Role.PREFILL, ref_p)), engines.get((Role.DECODE, ref_d))
    if e_p is None or e_d is None:
        return curated
    mean_in, mean_out = max(demand.mean_input_tokens, 1.0), max(demand.mean_output_tokens, 1.0)
    prompt = max(mean_in * (1.0 - demand.cache_hit), 1.0)
    ctx_len = mean_in + mean_out / 2.0
    ttft_budget = svc.slo.ttft_p99_s - cm.kv_transfer_s(e_d, cm.P99_INPUT_FACTOR * mean_in)
    cap_p = cm.prefill_capacity(e_p, prompt, ttft_budget, max(1, prefill_servers)) if ttft_budget > 0 else 0.0
    cap_d = cm.decode_capacity(e_d, ctx_len, svc.slo.tbt_p99_s)
    ttft_bad = tbt_bad = ""
    if cap_p <= 0:
        cap_p = cm.prefill_tokens_per_s(e_p, prompt)
        ttft_bad = f"TTFT SLO {svc.slo.ttft_p99_s:g}s infeasible for {mean_in:.0f}-token prompts (p99 x{cm.P99_INPUT_FACTOR:g})"
    if cap_d <= 0:
        cap_d = cm.decode_capacity(e_d, ctx_len)
        tbt_bad = f"TBT SLO {svc.slo.tbt_p99_s:g}s infeasible at {ctx_len:.0f}-token context"
    how = f"at {mean_in:.0f} in / {mean_out:.0f} out tokens: {cap_p:.0f} prefill, {cap_d:.0f} decode tok/s per instance"
    return RoleCapacity(cap_p, cap_d, how, ttft_bad, tbt_bad)
