"""Capacity model: what one instance of a (model, GPU type, tensor parallel) does, from measured data.

Contract:
  * A `PerfTable` holds latencies per (gpu, tp, batch, seq_len): `prefill_ms` (whole batch of
    prompts of `seq_len` tokens) and `decode_step_ms` (one decode iteration of `batch` sequences
    holding `seq_len` tokens of context). Two sources:
      - `perf_from_aiconfigurator(model, gpu, tp)`: NVIDIA aiconfigurator-core's kernel tables
        (`EngineHandle.compile(...).predict_prefill_latency / predict_decode_latency`);
      - `perf_from_csv(path)`: a user's pressure-test table, either our layout (the columns
        above) or Splitwise's `perf_model.csv` layout (`hardware, tensor_parallel, batch_size,
        prompt_size, prompt_time, token_time`, repetitions reduced to the median).
  * `fit_engine(table)` reduces a table to an `EngineModel` with three-term fits the twin can
    evaluate in microseconds:
      prefill_s(b, L)      = p0 + p1 * b * L + p2 * b * L^2          (linear layers + attention)
      decode_step_s(b, L)  = d0 + d1 * b + d2 * b * L                (weights + per-seq + KV reads)
    and a KV-memory bound on the decode batch (`max_batch(ctx)`), from the model's KV bytes per
    token and the weights left over in GPU memory.
  * The engine's latency model and what follows from it (capacity at the SLOs, p99 TTFT and
    TBT, the SLO floor) are pure and live in `tasks.core.capacity`, where the policies read them.
  * Derived tables are cached (parquet) under `<data dir>/capacity-cache/`, keyed by source,
    model, GPU and TP, so a replay never recompiles an engine.
  * `validate_against_splitwise(path)` compares aiconfigurator's predictions with the measured
    Splitwise latencies (llama2-70b on A100 / H100) and returns the error per GPU, TP and role.

Nothing here reads a clock; the aiconfigurator import is lazy (it is only needed on a cache miss).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd

from models import settings
from tasks.core.capacity import EngineModel

PERF_COLUMNS = ("gpu", "tp", "batch", "seq_len", "prefill_ms", "decode_step_ms")
GRID_BATCH = (1, 2, 4, 8, 16, 32, 64, 128)
GRID_SEQ = (128, 256, 512, 1024, 2048, 4096, 8192)

# Config model names -> a model aiconfigurator ships. Llama-2-70B and CodeLlama-70B share
# Llama-3.1-70B's layer shapes (80 layers, hidden 8192, GQA with 8 KV heads, FFN 28672); only the
# vocabulary differs (32k vs 128k), which touches one GEMM of 80+ per token.
MODEL_ALIASES = {
    "meta-llama/Llama-2-70b-hf": "meta-llama/Meta-Llama-3.1-70B",
    "meta-llama/Llama-2-70b-chat-hf": "meta-llama/Meta-Llama-3.1-70B",
    "codellama/CodeLlama-70b-hf": "meta-llama/Meta-Llama-3.1-70B",
    "llama2-70b": "meta-llama/Meta-Llama-3.1-70B",
}
# Config GPU type names -> aiconfigurator system names.
GPU_SYSTEMS = {
    "a100": "a100_sxm",
    "a100-80gb": "a100_sxm",
    "h100": "h100_sxm",
    "h100-80gb": "h100_sxm",
    "h200": "h200_sxm",
    "l40s": "l40s",
    "b200": "b200_sxm",
}
GPU_MEMORY_GIB = {"a100": 80.0, "h100": 80.0, "h200": 141.0, "l40s": 48.0, "b200": 180.0}
# Share of GPU memory vLLM may use (gpu_memory_utilization default) minus activations.
_MEMORY_FRACTION = 0.9


class CapacityError(ValueError):
    """A capacity source that cannot be used (unknown model/GPU, bad table)."""


# --- sources -------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """aiconfigurator logs one 'low-fidelity fallback' warning per kernel it extrapolates; keep
    the count, drop the noise."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            yield
    finally:
        logging.disable(previous)


def resolve_model(model: str) -> str:
    return MODEL_ALIASES.get(model, model)


def resolve_system(gpu: str) -> str:
    try:
        return GPU_SYSTEMS[gpu]
    except KeyError:
        raise CapacityError(f"GPU type {gpu!r} has no aiconfigurator system; known: {sorted(GPU_SYSTEMS)}") from None


def _cache_path(kind: str, *parts: object) -> Path:
    key = hashlib.sha256(json.dumps([kind, *map(str, parts)]).encode()).hexdigest()[:16]
    root = Path(os.environ.get("HETEROSCALE_CAPACITY_CACHE", settings.data_dir() / "capacity-cache"))
    return root / f"{kind}-{key}.parquet"


def perf_from_aiconfigurator(model: str, gpu: str, tp: int, *, backend: str = "vllm") -> pd.DataFrame:
    """Latency grid predicted by aiconfigurator-core for `model` on `gpu` at tensor parallel `tp`."""
    path = _cache_path("aic", resolve_model(model), resolve_system(gpu), tp, backend, GRID_BATCH, GRID_SEQ)
    if path.exists():
        return pd.read_parquet(path)
    try:
        # late: aiconfigurator-core: seconds, only on a capacity-cache miss
        from aiconfigurator_core.sdk.engine import EngineHandle
    except ImportError as exc:  # pragma: no cover - the package is a project dependency
        raise CapacityError(f"aiconfigurator-core is not installed: {exc}") from None
    rows = []
    with _quiet():
        try:
            handle = EngineHandle.compile(resolve_model(model), resolve_system(gpu), backend, tp_size=tp)
        except Exception as exc:  # the package raises many types: report one clear error
            raise CapacityError(f"aiconfigurator cannot build {model} on {gpu} TP{tp} ({backend}): {exc}") from None
        for b in GRID_BATCH:
            for seq in GRID_SEQ:
                # predict_decode_latency(b, isl, osl) covers osl-1 steps; 2 -> one step at context isl.
                rows.append(
                    (gpu, tp, b, seq, handle.predict_prefill_latency(b, seq), handle.predict_decode_latency(b, seq, 2))
                )
    df = pd.DataFrame(rows, columns=list(PERF_COLUMNS))
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(path)
    return df


def perf_from_csv(path: str | Path, *, model: str | None = None) -> pd.DataFrame:
    """A pressure-test table in our layout or Splitwise's; repetitions reduced to the median."""
    p = Path(path)
    try:
        raw = pd.read_csv(p)
    except FileNotFoundError:
        raise CapacityError(f"{p}: perf table not found") from None
    if all(c in raw.columns for c in PERF_COLUMNS):
        df = raw[list(PERF_COLUMNS)]
    elif {"hardware", "tensor_parallel", "batch_size", "prompt_size", "prompt_time", "token_time"} <= set(raw.columns):
        if model is not None and "model" in raw.columns:
            raw = raw[raw["model"] == model]
        df = pd.DataFrame(
            {
                "gpu": raw["hardware"].str.replace("-80gb", "", regex=False),
                "tp": raw["tensor_parallel"],
                "batch": raw["batch_size"],
                "seq_len": raw["prompt_size"],
                "prefill_ms": raw["prompt_time"],
                "decode_step_ms": raw["token_time"],
            }
        )
    else:
        raise CapacityError(
            f"{p}: a perf table needs columns {list(PERF_COLUMNS)} (or Splitwise's perf_model.csv layout)"
        )
    if df.empty:
        raise CapacityError(f"{p}: no rows{f' for model {model!r}' if model else ''}")
    return df.groupby(["gpu", "tp", "batch", "seq_len"], as_index=False)[["prefill_ms", "decode_step_ms"]].median()


# --- fitted engine model ---------------------------------------------------------------------


def _nnls(a: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative least squares on relative error (1 ms and 10 s rows alike), refitted once
    without rows off by more than 50%: one artefact row (Splitwise's batch-64 prefill) must not
    bend the whole fit."""
    # late: scipy: only when fitting
    from scipy.optimize import nnls

    keep = np.ones(len(y), dtype=bool)
    coef = np.zeros(a.shape[1])
    for _ in range(2):
        w = 1.0 / np.maximum(y[keep], 1e-9)
        coef, _ = nnls(a[keep] * w[:, None], y[keep] * w)
        rel = np.abs(a @ coef / np.maximum(y, 1e-9) - 1.0)
        if (rel[keep] <= 0.5).all() or (rel <= 0.5).sum() < a.shape[1]:
            break
        keep = rel <= 0.5
    return coef


def model_memory(model: str) -> tuple[float, float]:
    """(KV bytes per token, weight bytes) of a dense decoder from its config, 16-bit weights.

    Falls back to Llama-70B's shape when the model is not among aiconfigurator's configs."""
    name = resolve_model(model).replace("/", "--")
    shape = {"hidden_size": 8192, "intermediate_size": 28672, "num_attention_heads": 64}
    shape |= {"num_hidden_layers": 80, "num_key_value_heads": 8, "vocab_size": 32000}
    with contextlib.suppress(ImportError, FileNotFoundError):
        # late: aiconfigurator-core: seconds, only on a capacity-cache miss
        import aiconfigurator_core

        cfg_path = Path(aiconfigurator_core.__file__).parent / "model_configs" / f"{name}_config.json"
        shape |= {k: v for k, v in json.loads(cfg_path.read_text()).items() if k in shape or k == "head_dim"}
    h, layers = shape["hidden_size"], shape["num_hidden_layers"]
    head_dim = shape.get("head_dim") or h // shape["num_attention_heads"]
    kv_dim = shape["num_key_value_heads"] * head_dim
    kv_bytes = 2 * layers * kv_dim * 2.0  # K and V, 2 bytes each
    params = layers * (2 * h * h + 2 * h * kv_dim + 3 * h * shape["intermediate_size"]) + 2 * h * shape["vocab_size"]
    return kv_bytes, params * 2.0


def fit_engine(table: pd.DataFrame, *, gpu: str, tp: int, model: str, source: str) -> EngineModel:
    rows = table[(table["gpu"] == gpu) & (table["tp"] == tp)]
    if len(rows) < 3:
        raise CapacityError(f"perf table has {len(rows)} row(s) for {gpu} TP{tp}; need at least 3")
    b = rows["batch"].to_numpy(float)
    seq = rows["seq_len"].to_numpy(float)
    t_p = rows["prefill_ms"].to_numpy(float) / 1e3
    # A row whose prompt tokens/s is 3x the table's median is a measurement artefact (Splitwise's
    # batch-64 prefill), not a faster regime: leave it out of the prefill fit.
    rate = b * seq / np.maximum(t_p, 1e-12)
    ok = rate <= 3.0 * np.median(rate)
    p = _nnls(np.column_stack([np.ones_like(b), b * seq, b * seq * seq])[ok], t_p[ok])
    d = _nnls(np.column_stack([np.ones_like(b), b, b * seq]), rows["decode_step_ms"].to_numpy(float) / 1e3)
    kv_bytes, weight_bytes = model_memory(model)
    mem = GPU_MEMORY_GIB.get(gpu, 80.0) * 2**30 * tp * _MEMORY_FRACTION
    return EngineModel(gpu, tp, *map(float, p), *map(float, d), kv_bytes, mem - weight_bytes, source)


@cache
def engine_for(model: str, gpu: str, tp: int, perf_csv: str | None = None) -> EngineModel:
    """The fitted engine for a role instance: from `perf_csv` when given, else aiconfigurator."""
    if perf_csv is not None:
        table = perf_from_csv(perf_csv)
        if ((table["gpu"] == gpu) & (table["tp"] == tp)).any():
            return fit_engine(table, gpu=gpu, tp=tp, model=model, source=f"csv:{Path(perf_csv).name}")
    return fit_engine(perf_from_aiconfigurator(model, gpu, tp), gpu=gpu, tp=tp, model=model, source="aiconfigurator")


# --- validation against Splitwise ------------------------------------------------------------


def validate_against_splitwise(path: str | Path, *, model: str = "llama2-70b") -> pd.DataFrame:
    """aiconfigurator's prediction vs the measured Splitwise latency, per GPU, TP and role.

    Returns one row per (gpu, tp, role) with the number of measured points, the median and the
    mean absolute percentage error, and the signed median error (prediction / measured - 1).
    Batch-64 prefill rows are excluded: Splitwise's measured prompt_time there is 8x below its
    batch-32 value (41k prompt tokens/s on two A100s, above the GPUs' peak FLOP rate), which is
    a measurement artefact, not a latency.
    """
    measured = perf_from_csv(path, model=model)
    rows = []
    for (gpu, tp), grp in measured.groupby(["gpu", "tp"]):
        if gpu not in GPU_SYSTEMS:
            continue  # e.g. the power-capped H100 has no aiconfigurator system
        # late: aiconfigurator-core: seconds, only on a capacity-cache miss
        from aiconfigurator_core.sdk.engine import EngineHandle

        with _quiet():
            handle = EngineHandle.compile(resolve_model(model), resolve_system(gpu), "vllm", tp_size=int(tp))
            for r in grp.itertuples():
                rows.append(
                    {
                        "gpu": gpu,
                        "tp": int(tp),
                        "batch": int(r.batch),
                        "seq_len": int(r.seq_len),
                        "prefill_pred": handle.predict_prefill_latency(int(r.batch), int(r.seq_len)),
                        "prefill_meas": r.prefill_ms,
                        "decode_pred": handle.predict_decode_latency(int(r.batch), int(r.seq_len), 2),
                        "decode_meas": r.decode_step_ms,
                    }
                )
    pts = pd.DataFrame(rows)
    out = []
    for (gpu, tp), grp in pts.groupby(["gpu", "tp"]):
        for role in ("prefill", "decode"):
            g = grp[grp["batch"] < 64] if role == "prefill" else grp
            err = g[f"{role}_pred"] / g[f"{role}_meas"] - 1.0
            out.append(
                {
                    "gpu": gpu,
                    "tp": tp,
                    "role": role,
                    "points": len(g),
                    "median_abs_err": float(err.abs().median()),
                    "mean_abs_err": float(err.abs().mean()),
                    "median_signed_err": float(err.median()),
                }
            )
    return pd.DataFrame(out)
