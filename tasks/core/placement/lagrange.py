"""A proven lower bound on every placement: the LP's duals, tightened service by service.

Contract: `global_bound(run, x_lp, row_dual, deadline=...)` (and `proven_bound(config, view,
targets, deadline=...)`, the same from scratch, for benchmarks) returns a `Bound`: a number
no integer placement of the whole model (`run`'s full model, every cell allowed) can undercut,
and how it was reached. It is valid for any multipliers (duals are clipped to the sign their row
allows) and whether or not the sub-MIPs finish: an unfinished sub-MIP contributes its own proven
dual bound. Pure: time comes from `deadline`, which only limits how many services are tightened.

Why: the restricted MIP's bound (`large.solve_large`) holds only on the cells it may use, and the
LP bound is 1-18 % below the integer optimum at 20k GPUs (docs/placement.md). The model couples
services only through the capacity rows (GPU type, S1) and the GPU budget. Pricing those rows at
the LP's duals (Lagrangian relaxation) leaves one small MIP per service (its cells, demand, ratio,
pair and churn rows: ~100-300 columns), solved exactly in milliseconds, and

    bound = sum over coupling rows of dual x its right-hand side
          + sum over services of min (c + priced coupling) x_s over the service's own rows.

For a service whose LP columns are all integral that minimum is the LP's own value (the weak
duality sum below, no solve); only services with fractional LP columns are solved. Every term is
the weak-duality lower bound of its part, so rounding in the LP's duals cannot make it invalid.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import highspy
import numpy as np

from models.config import ClusterConfig, PlacementSettings
from models.values import RoleCounts
from tasks.core.placement.arrays import build_arrays
from tasks.core.placement.deadline import Deadline
from tasks.core.placement.highs import Runner
from tasks.core.placement.model import Arrays
from tasks.core.placement.problem import EPS, build_problem
from tasks.core.topology import ClusterView

# Reduced costs this close to 0 on a column without an upper bound count as 0.
_DUAL_TOL = 1e-6
# A sub-MIP stops at this relative gap (its proven dual bound is what counts, not its incumbent).
_SUB_GAP = 1e-4
# ...and gets at most this long; a harder one keeps its bound so far.
_SUB_TIME_S = 0.25


@dataclass(frozen=True, slots=True)
class Bound:
    """A proven lower bound on every placement of the full model, and how it was reached."""

    value: float
    lp_dual: float  # the weak-duality bound of the LP (every service at its LP value)
    solved: int  # services whose own MIP was solved (fractional in the LP)
    fractional: int  # services with a fractional integer column in the LP
    skipped: int  # fractional services left at their LP value (deadline)


def _owners(run: Runner) -> tuple[np.ndarray, list[str]]:
    """Column -> index of the service it belongs to (-1: none, e.g. node counts)."""
    names = [s.name for s in run.pb.services]
    idx = {n: i for i, n in enumerate(names)}
    owner = np.full(run.arr.n_cols, -1, dtype=np.int64)
    for k, c in run.x_col.items():
        owner[c] = idx[k.service]
    for cols in (run.up_col, run.down_col):
        for k, c in cols.items():
            owner[c] = idx[k.service]
    for (name, _role), c in run.unmet_col.items():
        owner[c] = idx[name]
    return owner, names


def _term(dual: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Weak-duality term of each dual: dual x the bound it presses on (-inf if that is infinite)."""
    with np.errstate(invalid="ignore"):
        out = np.where(dual > 0, dual * lo, np.where(dual < 0, dual * hi, 0.0))
    return np.nan_to_num(out, nan=0.0, neginf=-np.inf)


def global_bound(
    run: Runner,
    x_lp: np.ndarray,
    row_dual: np.ndarray,
    *,
    deadline: Deadline,
) -> Bound:
    """The Lagrangian bound at the LP's duals, each fractional service's own MIP solved exactly."""
    arr = run.arr
    n_rows = len(arr.row_lo)
    owner, _names = _owners(run)
    n_svc = len(_names)
    # Duals with the sign their row allows (a <= row: <= 0, a >= row: >= 0 in a minimisation).
    y = np.asarray(row_dual, dtype=np.float64).copy()
    y[np.isinf(arr.row_lo) & (y > 0)] = 0.0
    y[np.isinf(arr.row_hi) & (y < 0)] = 0.0
    row_of = arr.entry_rows()
    col_owner = owner[arr.index]
    lo_own = np.full(n_rows, n_svc, dtype=np.int64)
    hi_own = np.full(n_rows, -1, dtype=np.int64)
    np.minimum.at(lo_own, row_of, np.where(col_owner < 0, n_svc, col_owner))
    np.maximum.at(hi_own, row_of, col_owner)
    has_free = np.zeros(n_rows, dtype=bool)
    np.logical_or.at(has_free, row_of, col_owner < 0)
    local = (lo_own == hi_own) & ~has_free
    coupling = ~local
    # Costs with the coupling rows priced in, and the reduced costs they leave.
    y_c = np.where(coupling, y, 0.0)
    adj = arr.cost - np.bincount(arr.index, weights=arr.value * y_c[row_of], minlength=arr.n_cols)
    y_l = np.where(local, y, 0.0)
    red = adj - np.bincount(arr.index, weights=arr.value * y_l[row_of], minlength=arr.n_cols)
    const = float(_term(y_c, arr.row_lo, arr.row_hi).sum())
    # Each part's weak-duality bound: its local rows' terms plus its columns' reduced-cost terms.
    # Reduced costs of an unbounded column a hair below 0 are rounding (HiGHS's dual tolerance is
    # 1e-7): read as 0, they would otherwise make the whole bound -inf.
    red = np.where((red < 0) & (red > -_DUAL_TOL) & np.isinf(arr.hi), 0.0, red)
    col_terms = _term(red, arr.lo, arr.hi)
    row_terms = _term(y_l, arr.row_lo, arr.row_hi)
    part = np.zeros(n_svc + 1)
    np.add.at(part, np.where(owner < 0, n_svc, owner), col_terms)
    np.add.at(part, np.where(local, lo_own, n_svc), np.where(local, row_terms, 0.0))
    lp_dual = const + float(part.sum())
    frac_col = (arr.integer > 0) & (np.abs(x_lp - np.round(x_lp)) > 1e-6) & (owner >= 0)
    fractional = np.unique(owner[frac_col])
    # Largest LP shortfall first: where integrality costs most, usually.
    order = sorted(fractional.tolist(), key=lambda s: -float(np.abs(x_lp - np.round(x_lp))[owner == s].sum()))
    solved = skipped = 0
    for s in order:
        if deadline.left_s() <= 0.02:
            skipped += 1
            continue
        sub = _sub_bound(arr, adj, owner, s, local, lo_own, min(_SUB_TIME_S, deadline.left_s()))
        if sub is not None and sub > part[s]:
            part[s] = sub
        solved += 1
    value = const + float(part.sum())
    return Bound(value=value, lp_dual=lp_dual, solved=solved, fractional=len(order), skipped=skipped)


def _sub_bound(
    a: Arrays,
    adj: np.ndarray,
    owner: np.ndarray,
    s: int,
    local: np.ndarray,
    lo_own: np.ndarray,
    time_limit_s: float,
) -> float | None:
    """Proven lower bound of service `s`'s own MIP at the priced costs (None: no bound)."""
    cols = np.flatnonzero(owner == s)
    pos = np.full(len(owner), -1, dtype=np.int64)
    pos[cols] = np.arange(len(cols))
    rows = np.flatnonzero(local & (lo_own == s))
    starts, ends = a.indptr[rows], a.indptr[rows + 1]
    take = (
        np.concatenate([np.arange(b, e) for b, e in zip(starts, ends, strict=True)]) if len(rows) else np.zeros(0, int)
    )
    indptr = np.concatenate([[0], np.cumsum(ends - starts)]).astype(np.int32)
    h = highspy.Highs()
    for key, value in (("output_flag", False), ("threads", 1), ("mip_rel_gap", _SUB_GAP)):
        h.setOptionValue(key, value)
    h.setOptionValue("time_limit", max(0.01, float(time_limit_s)))
    h.passModel(
        len(cols), len(rows), len(take), 2, 1, 0.0,
        adj[cols], a.lo[cols], a.hi[cols], a.row_lo[rows], a.row_hi[rows],
        indptr, pos[a.index[take]].astype(np.int32), a.value[take], a.integer[cols],
    )  # fmt: skip
    h.run()
    bound = float(h.getInfo().mip_dual_bound)
    if not np.isfinite(bound):
        return None
    return bound - EPS * max(1.0, abs(bound))


def proven_bound(
    config: ClusterConfig,
    view: ClusterView,
    targets: Mapping[str, RoleCounts],
    *,
    deadline: Deadline,
    settings: PlacementSettings | None = None,
) -> Bound | None:
    """The benchmark's certificate: `global_bound` of the whole model, from its own LP (None: no LP).

    Apart from the placement call (which does not need it): every fractional service is solved
    unless `deadline` passes first (`Bound.skipped` says how many were left at their LP value).
    """
    st = settings or config.cluster.placement
    pb = build_problem(config, view, targets)
    run = Runner(build_arrays(pb, st), pb, st)
    lp = run.lp()
    if lp is None or run.row_dual is None:
        return None
    return global_bound(run, lp, run.row_dual, deadline=deadline)
