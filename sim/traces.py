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
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from models.config import ClusterConfig


class TraceError(ValueError):
    """A trace file that cannot be used, with the file and what is expected."""


class TraceWarning(UserWarning):
    """Something about a trace the operator should know (e.g. a detected time unit); the CLI prints it."""


# Numeric timestamps: seconds unless told (`time_unit`) or obvious. Epoch seconds are ~1.7e9
# today; at or above these magnitudes they can only be epoch milliseconds / microseconds.
TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6}
_EPOCH_MS_ABOVE = 1e11
_EPOCH_US_ABOVE = 1e14
# A per-request trace spanning longer than this in "seconds" is more likely milliseconds (a 1-h
# log in ms reads as 41 days): refused unless the unit is given explicitly.
MAX_AUTO_SPAN_S = 7 * 86400.0


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
    # Largest input + output tokens of one request (the lengths trace's for a rate trace); 0 = unknown.
    max_request_tokens: float = 0.0

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
    """The CSV as raw text cells (errors quote what the file says), blank lines dropped; the
    index is the row's 1-based line number in the file (header = line 1)."""
    if path.is_dir():
        raise TraceError(f"{path}: is a directory; give a CSV file")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False)
    except FileNotFoundError:
        raise TraceError(f"{path}: trace file not found") from None
    except PermissionError:
        raise TraceError(f"{path}: cannot read the trace file (permission denied)") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        raise TraceError(f"{path}: not a readable CSV file: {exc}") from None
    df.index = pd.RangeIndex(2, len(df) + 2)
    if len(df.columns):
        blank = (df.apply(lambda c: c.str.strip()) == "").all(axis=1)
        df = df[~blank]
    return df


def _numbers(path: Path, df: pd.DataFrame, col: str, what: str, *, allow_empty: bool = False) -> np.ndarray:
    """Column `col` as finite non-negative floats; the first bad cell is named by its file row
    and raw text. With `allow_empty`, empty cells (and 'nan') are NaN: missing data."""
    raw = df[col].str.strip()
    v = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(v) | (v < 0)
    if allow_empty:
        empty = (raw == "").to_numpy() | raw.str.lower().isin(["nan", "na"]).to_numpy()
        bad &= ~empty
        v = np.where(empty, np.nan, v)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise TraceError(f"{path}: row {df.index[i]}: {col} must be {what}, got {df[col].iloc[i]!r}")
    return v


def _to_seconds(path: Path, t: np.ndarray, time_unit: str, *, per_request: bool) -> np.ndarray:
    """Numeric timestamps in seconds: `time_unit` s/ms/us, or `auto` (epoch ms/us detected by
    magnitude, with a warning; a per-request span too long to be seconds is refused)."""
    if time_unit not in ("auto", *TIME_UNITS):
        raise TraceError(f"--time-unit must be one of auto, s, ms, us; got {time_unit!r}")
    if time_unit != "auto":
        return t * TIME_UNITS[time_unit]
    top = float(np.max(np.abs(t))) if len(t) else 0.0
    for unit, above in (("us", _EPOCH_US_ABOVE), ("ms", _EPOCH_MS_ABOVE)):
        if top >= above:
            long = "microseconds" if unit == "us" else "milliseconds"
            warnings.warn(
                f"{path}: timestamps up to {top:.4g} read as epoch {long} (as seconds they would be after "
                "the year 5000); pass --time-unit s|ms|us to override",
                TraceWarning,
                stacklevel=3,
            )
            return t * TIME_UNITS[unit]
    span = float(t.max() - t.min()) if len(t) else 0.0
    if per_request and span > MAX_AUTO_SPAN_S:
        raise TraceError(
            f"{path}: timestamps span {span / 86400:.1f} days if they are seconds ({span / 3.6e6:.2f} h if "
            "milliseconds); pass --time-unit ms if they are milliseconds, or --time-unit s to replay them as seconds"
        )
    return t


def _parse_times(path: Path, df: pd.DataFrame, col: str, time_unit: str = "auto") -> tuple[np.ndarray, float]:
    """Seconds from the first request, and the epoch time of the first request (0 if unknown)."""
    raw = df[col].str.strip()
    numeric = pd.to_numeric(raw, errors="coerce")
    if numeric.notna().sum() * 2 > (raw != "").sum():
        # A numeric column: every cell must be a finite number (an empty or 'nan' one is named).
        t = _to_seconds(path, _numbers(path, df, col, "a finite number of seconds"), time_unit, per_request=True)
        return t - t.min(), 0.0
    # Azure timestamps carry 7 fractional digits; pandas wants at most 6 (ns precision aside).
    text = raw.str.replace(r"(\.\d{6})\d+", r"\1", regex=True)
    with warnings.catch_warnings():
        # Mixed or unusual formats fall back to per-element parsing; failures are reported below.
        warnings.simplefilter("ignore", UserWarning)
        parsed = pd.to_datetime(text, errors="coerce", utc=True, format="mixed")
    bad = parsed.isna().to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise TraceError(
            f"{path}: row {df.index[i]}: {col} {df[col].iloc[i]!r} is neither a number of seconds nor an ISO time"
        )
    epoch = (parsed - pd.Timestamp("1970-01-01", tz="UTC")).dt.total_seconds().to_numpy()
    return epoch - epoch.min(), float(epoch.min())


def load_requests(path: str | Path, *, time_unit: str = "auto") -> pd.DataFrame:
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
    sizes = {
        name: _numbers(p, df, col, "a finite non-negative number")
        for name, col in (("input_tokens", inp), ("output_tokens", out))
    }
    t, epoch = _parse_times(p, df, ts, time_unit)
    if float(t.max()) <= 0:
        raise TraceError(
            f"{p}: all {len(t)} request(s) are at the same time: the trace spans 0 s, nothing to replay; "
            "give timestamps over at least two control periods"
        )
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
        max_request_tokens=_max_tokens(requests),
    )


def _max_tokens(requests: pd.DataFrame) -> float:
    return float((requests["input_tokens"] + requests["output_tokens"]).max()) if len(requests) else 0.0


def load_rates(path: str | Path, *, lengths: pd.DataFrame, name: str, time_unit: str = "auto") -> LoadCurve:
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
    starts = _numbers(p, df, "window_start_s", "a finite number of seconds")
    t = _to_seconds(p, starts, time_unit, per_request=False)
    # An empty (or 'nan') rate is a missing window; inf or a negative rate is an error.
    rate = _numbers(p, df, rate_col, "a finite non-negative rate (empty = missing)", allow_empty=True)
    steps = np.diff(t)
    if len(steps) and (steps <= 0).any():
        i = int(np.flatnonzero(steps <= 0)[0]) + 1
        raise TraceError(
            f"{p}: row {df.index[i]}: window_start_s {df['window_start_s'].iloc[i]!r} does not increase "
            f"(previous row {df['window_start_s'].iloc[i - 1]!r}); windows must be strictly increasing"
        )
    if len(t) < 2:
        raise TraceError(f"{p}: a rate trace needs at least two windows (their spacing is the window length)")
    dt_s = float(np.median(steps))
    observed = ~np.isnan(rate)
    if "all_zero_gap" in df.columns:
        gap = pd.to_numeric(df["all_zero_gap"].str.strip(), errors="coerce").fillna(0).to_numpy()
        observed &= gap == 0
    if not observed.any():
        raise TraceError(f"{p}: every window is missing data ({rate_col} empty or all_zero_gap = 1): no load")
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
        max_request_tokens=_max_tokens(lengths),
    )


def is_rate_trace(path: str | Path) -> bool:
    p = Path(path)
    if p.is_dir():
        raise TraceError(f"{p}: is a directory; give a CSV file")
    try:
        head = pd.read_csv(p, nrows=0)
    except FileNotFoundError:
        raise TraceError(f"{p}: trace file not found") from None
    except PermissionError:
        raise TraceError(f"{p}: cannot read the trace file (permission denied)") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        raise TraceError(f"{p}: not a readable CSV file: {exc}") from None
    return "window_start_s" in head.columns


def load_curve(
    path: str | Path,
    *,
    lengths: str | Path | None = None,
    dt_s: float = 10.0,
    name: str | None = None,
    time_unit: str = "auto",
) -> LoadCurve:
    """Load either kind of trace. A rate trace takes request sizes from `lengths`.

    `time_unit` (auto | s | ms | us) says what numeric timestamps count; `auto` detects epoch
    milliseconds/microseconds by magnitude (with a `TraceWarning`)."""
    p = Path(path)
    label = name or p.stem
    if is_rate_trace(p):
        if lengths is None:
            raise TraceError(
                f"{p}: a rate trace carries no request sizes; pass --lengths with a per-request "
                "trace (e.g. data/traces/azure_llm_2023/AzureLLMInferenceTrace_conv.csv)"
            )
        return load_rates(p, lengths=load_requests(lengths), name=label, time_unit=time_unit)
    return curve_from_requests(load_requests(p, time_unit=time_unit), dt_s=dt_s, name=label)


# --- sanity against the cluster ------------------------------------------------------------

# A trace whose peak asks for more than this many times what the whole cluster could serve
# (every GPU of the allowed types on this one service) is not a load but a mistake (a wrong
# --peak-rps, a time unit): refused unless the caller allows it.
OVERLOAD_MARGIN = 10.0


def check_duration(curve: LoadCurve, control_period_s: float, *, what: str = "") -> None:
    """At least two control periods of load: the replay decides once per period."""
    if curve.duration_s < 2 * control_period_s:
        raise TraceError(
            f"{curve.name}: {what}the trace covers {curve.duration_s:g} s, fewer than two control periods "
            f"({2 * control_period_s:g} s at control_period_s {control_period_s:g}): nothing to scale on"
        )


def max_servable_req_per_s(config: ClusterConfig, service: str, curve: LoadCurve) -> float:
    """Upper bound on the req/s the whole cluster could serve for `service` at the curve's mean
    request sizes: every GPU of an allowed type spent on one role (the smaller of the two)."""
    svc = config.service(service)
    gpus: dict[str, int] = {}
    for pool in config.topology.node_pools:
        gpus[pool.gpu_type] = gpus.get(pool.gpu_type, 0) + pool.nodes * pool.gpus_per_node
    obs = curve.observed if curve.observed.any() else np.ones(len(curve.t_s), dtype=bool)
    inp = max(1.0, float(np.mean(curve.mean_input_tokens[obs])) * (1.0 - svc.prefix_cache_hit))
    out = max(1.0, float(np.mean(curve.mean_output_tokens[obs])))
    bounds = []
    for spec, tokens in ((svc.prefill, inp), (svc.decode, out)):
        tps = sum(gpus.get(g, 0) // spec.gpus_per_instance * spec.capacity_tokens_per_s[g] for g in spec.gpu_types)
        bounds.append(tps / tokens)
    return min(bounds)


def check_against_config(config: ClusterConfig, curves: Mapping[str, LoadCurve], *, allow: bool = False) -> list[str]:
    """Physically impossible load: a request longer than its service's `max_context_tokens`, or a
    peak rate above OVERLOAD_MARGIN x what the whole cluster could serve. Raises TraceError
    naming the fix unless `allow`; returns the findings (warnings' text when allowed)."""
    found = []
    for name, curve in curves.items():
        svc = config.service(name)
        if curve.max_request_tokens > svc.max_context_tokens:
            found.append(
                f"{curve.name}: a request of {curve.max_request_tokens:.4g} tokens (input + output) is above "
                f"the max_context_tokens ({svc.max_context_tokens}) of service {name!r}; fix the trace or raise "
                "services[].max_context_tokens"
            )
        bound = max_servable_req_per_s(config, name, curve)
        if not curve.peak_req_per_s <= OVERLOAD_MARGIN * bound:
            found.append(
                f"{curve.name}: peak {curve.peak_req_per_s:.4g} req/s is {curve.peak_req_per_s / max(bound, 1e-12):.3g}x "
                f"what the whole cluster could serve for service {name!r} (at most ~{bound:.4g} req/s); "
                "check --peak-rps and the trace's time unit"
            )
    if found and not allow:
        more = f" (and {len(found) - 1} more like it)" if len(found) > 1 else ""
        raise TraceError(f"{found[0]}{more}; or pass --allow-implausible to replay it anyway")
    return found
