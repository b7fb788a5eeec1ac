"""Trace loaders: real request logs and rate curves in, a `LoadCurve` per service out.

Accepted inputs (plain CSV, see docs/traces.md):
  * per-request: `timestamp` (seconds or ISO time), `input_tokens`, `output_tokens`; or the
    Azure LLM inference trace's native `TIMESTAMP, ContextTokens, GeneratedTokens`;
  * request rate: `window_start_s` and `req_per_s` (or ServeGen's `total_req_per_s`), optional
    `all_zero_gap` (1 = the window is missing data, not zero load); request sizes then come
    from a per-request trace (`lengths`).

A missing window stays missing: `observed` is False there and the twin reports no signal for it
(the load itself is interpolated, because real traffic did not stop when the logger did).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd


class TraceError(ValueError):
    """A trace file that cannot be used, with the file and what is expected."""


_REQUEST_COLUMNS = [
    ("timestamp", "input_tokens", "output_tokens"),
    ("TIMESTAMP", "ContextTokens", "GeneratedTokens"),
]


@dataclass(frozen=True)
class LoadCurve:
    """Offered load per window: `req_per_s[i]` over `[t_s[i], t_s[i] + dt_s)`."""

    name: str
    dt_s: float
    t_s: np.ndarray
    req_per_s: np.ndarray
    mean_input_tokens: np.ndarray
    mean_output_tokens: np.ndarray
    observed: np.ndarray  # bool; False = missing data
    start_epoch_s: float = 0.0  # wall-clock time of t_s = 0 (0 when the trace has none)
    scale: float = 1.0  # factor applied to the source's request rate

    @property
    def duration_s(self) -> float:
        return float(len(self.t_s) * self.dt_s)

    @property
    def peak_req_per_s(self) -> float:
        return float(np.nanmax(self.req_per_s)) if len(self.req_per_s) else 0.0

    def scaled_to_peak(self, peak_req_per_s: float) -> LoadCurve:
        if peak_req_per_s <= 0:
            raise TraceError(f"{self.name}: --peak-rps must be positive, got {peak_req_per_s}")
        factor = peak_req_per_s / self.peak_req_per_s
        return self.scaled(factor)

    def scaled(self, factor: float) -> LoadCurve:
        return replace(self, req_per_s=self.req_per_s * factor, scale=self.scale * factor)

    def split(self, share: float) -> tuple[LoadCurve, LoadCurve]:
        """The first `share` of the curve and the rest (curate on one, evaluate on the other)."""
        n = max(1, min(len(self.t_s) - 1, round(len(self.t_s) * share)))

        def part(sl: slice) -> LoadCurve:
            t = self.t_s[sl]
            return replace(
                self,
                t_s=t - t[0],
                req_per_s=self.req_per_s[sl],
                mean_input_tokens=self.mean_input_tokens[sl],
                mean_output_tokens=self.mean_output_tokens[sl],
                observed=self.observed[sl],
                start_epoch_s=self.start_epoch_s + float(t[0]),
            )

        return part(slice(0, n)), part(slice(n, None))

    def at(self, t_s: float) -> int:
        """Index of the window holding `t_s` (clamped to the trace)."""
        i = int((t_s - float(self.t_s[0])) // self.dt_s) if len(self.t_s) else 0
        return min(max(i, 0), len(self.t_s) - 1)


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except FileNotFoundError:
        raise TraceError(f"{path}: trace file not found") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise TraceError(f"{path}: not a readable CSV file: {exc}") from None


def _parse_times(path: Path, col: pd.Series) -> tuple[np.ndarray, float]:
    """Seconds from the first request, and the epoch time of the first request (0 if unknown)."""
    numeric = pd.to_numeric(col, errors="coerce")
    if numeric.notna().all():
        t = numeric.to_numpy(dtype=float)
        return t - t.min(), 0.0
    # Azure timestamps carry 7 fractional digits; pandas wants at most 6 (ns precision aside).
    text = col.astype(str).str.replace(r"(\.\d{6})\d+", r"\1", regex=True)
    with warnings.catch_warnings():
        # Mixed or unusual formats fall back to per-element parsing; failures are reported below.
        warnings.simplefilter("ignore", UserWarning)
        parsed = pd.to_datetime(text, errors="coerce", utc=True, format="mixed")
    bad = parsed.isna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise TraceError(f"{path}: row {row + 2}: timestamp {col.iloc[row]!r} is neither seconds nor an ISO time")
    epoch = (parsed - pd.Timestamp("1970-01-01", tz="UTC")).dt.total_seconds().to_numpy()
    return epoch - epoch.min(), float(epoch.min())


def load_requests(path: str | Path) -> pd.DataFrame:
    """A per-request trace as columns `t_s, input_tokens, output_tokens` (and `start_epoch_s`)."""
    p = Path(path)
    df = _read_csv(p)
    for cols in _REQUEST_COLUMNS:
        if all(c in df.columns for c in cols):
            ts, inp, out = cols
            break
    else:
        raise TraceError(
            f"{p}: a per-request trace needs columns timestamp, input_tokens, output_tokens "
            f"(or Azure's TIMESTAMP, ContextTokens, GeneratedTokens); found {list(df.columns)}"
        )
    if df.empty:
        raise TraceError(f"{p}: the trace has no requests")
    t, epoch = _parse_times(p, df[ts])
    sizes = {}
    for name, col in (("input_tokens", inp), ("output_tokens", out)):
        v = pd.to_numeric(df[col], errors="coerce")
        if v.isna().any() or (v < 0).any():
            row = int(np.flatnonzero((v.isna() | (v < 0)).to_numpy())[0])
            raise TraceError(f"{p}: row {row + 2}: {col} must be a non-negative number, got {df[col].iloc[row]!r}")
        sizes[name] = v.to_numpy(dtype=float)
    out_df = pd.DataFrame({"t_s": t, **sizes}).sort_values("t_s", kind="stable").reset_index(drop=True)
    out_df.attrs["start_epoch_s"] = epoch
    out_df.attrs["source"] = str(p)
    return out_df


def curve_from_requests(requests: pd.DataFrame, *, dt_s: float, name: str) -> LoadCurve:
    """Bin a per-request trace into windows of `dt_s`."""
    n = max(1, int(np.ceil((requests["t_s"].max() + 1e-9) / dt_s)))
    idx = np.minimum((requests["t_s"].to_numpy() // dt_s).astype(int), n - 1)
    counts = np.bincount(idx, minlength=n).astype(float)
    sum_in = np.bincount(idx, weights=requests["input_tokens"].to_numpy(), minlength=n)
    sum_out = np.bincount(idx, weights=requests["output_tokens"].to_numpy(), minlength=n)
    mean_in_all = float(requests["input_tokens"].mean())
    mean_out_all = float(requests["output_tokens"].mean())
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_in = np.where(counts > 0, sum_in / counts, mean_in_all)
        mean_out = np.where(counts > 0, sum_out / counts, mean_out_all)
    return LoadCurve(
        name=name,
        dt_s=float(dt_s),
        t_s=np.arange(n) * float(dt_s),
        req_per_s=counts / dt_s,
        mean_input_tokens=mean_in,
        mean_output_tokens=mean_out,
        observed=np.ones(n, dtype=bool),
        start_epoch_s=float(requests.attrs.get("start_epoch_s", 0.0)),
    )


def load_rates(path: str | Path, *, lengths: pd.DataFrame, name: str) -> LoadCurve:
    p = Path(path)
    df = _read_csv(p)
    rate_col = next((c for c in ("req_per_s", "total_req_per_s") if c in df.columns), None)
    if "window_start_s" not in df.columns or rate_col is None:
        raise TraceError(
            f"{p}: a rate trace needs columns window_start_s and req_per_s (or total_req_per_s); "
            f"found {list(df.columns)}"
        )
    if df.empty:
        raise TraceError(f"{p}: the trace has no windows")
    t = pd.to_numeric(df["window_start_s"], errors="coerce").to_numpy(dtype=float)
    rate = pd.to_numeric(df[rate_col], errors="coerce").to_numpy(dtype=float)
    if np.isnan(t).any():
        row = int(np.flatnonzero(np.isnan(t))[0])
        raise TraceError(f"{p}: row {row + 2}: window_start_s must be a number")
    steps = np.diff(t)
    if len(steps) and (steps <= 0).any():
        raise TraceError(f"{p}: window_start_s must increase strictly from row to row")
    dt_s = float(np.median(steps)) if len(steps) else 60.0
    observed = ~np.isnan(rate)
    if "all_zero_gap" in df.columns:
        observed &= pd.to_numeric(df["all_zero_gap"], errors="coerce").fillna(0).to_numpy() == 0
    if (rate[observed] < 0).any():
        raise TraceError(f"{p}: {rate_col} must not be negative")
    # The load during a gap is unknown, not zero: interpolate it for the twin to serve.
    series = pd.Series(np.where(observed, rate, np.nan))
    filled = series.interpolate(limit_direction="both").fillna(0.0).to_numpy()
    n = len(t)
    return LoadCurve(
        name=name,
        dt_s=dt_s,
        t_s=t - t[0],
        req_per_s=filled,
        mean_input_tokens=np.full(n, float(lengths["input_tokens"].mean())),
        mean_output_tokens=np.full(n, float(lengths["output_tokens"].mean())),
        observed=observed,
    )


def is_rate_trace(path: str | Path) -> bool:
    try:
        head = pd.read_csv(path, nrows=0)
    except FileNotFoundError:
        raise TraceError(f"{path}: trace file not found") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise TraceError(f"{path}: not a readable CSV file: {exc}") from None
    return "window_start_s" in head.columns


def load_curve(
    path: str | Path,
    *,
    lengths: str | Path | None = None,
    dt_s: float = 10.0,
    name: str | None = None,
) -> LoadCurve:
    """Load either kind of trace. A rate trace takes request sizes from `lengths`."""
    p = Path(path)
    label = name or p.stem
    if is_rate_trace(p):
        if lengths is None:
            raise TraceError(
                f"{p}: a rate trace carries no request sizes; pass --lengths with a per-request "
                "trace (e.g. data/traces/azure_llm_2023/AzureLLMInferenceTrace_conv.csv)"
            )
        return load_rates(p, lengths=load_requests(lengths), name=label)
    return curve_from_requests(load_requests(p), dt_s=dt_s, name=label)
