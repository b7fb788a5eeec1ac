"""The placement model built straight into HiGHS arrays, without PuLP objects (pure).

Contract: `build_arrays(pb, st, relax=False)` returns `Columns`: the `Arrays` (CSR) of exactly
the model `model.build_model` builds for the same problem (same columns in the same order, same
rows in the same order, same coefficients, bounds and objective; tested against `to_arrays` of
the PuLP model) and which column is which (`x_col`, `up_col`, `down_col`, `unmet_col`).
`columns_of(model)` gives the same for a PuLP `Model` (through `to_arrays`). No clock, no I/O.

Why: at 50k GPUs / 300 services the PuLP model (101k columns, 69k rows) took 2.1 s of CPU (6 s
wall under load) and `to_arrays` another 0.3 s, before any solve; the large-cluster path
(`large.solve_large`) only needs the arrays. PuLP is still what the small clusters and the
solver fallbacks (CBC) use; the column and row order is `build_model`'s, documented there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from models.config import PlacementSettings, Role
from models.values import CellKey
from tasks.core.placement.model import Arrays, Model, link_factors, model_cells, to_arrays
from tasks.core.placement.problem import Problem, change_coefs, move_coef, weight

K = TypeVar("K")

# Name prefixes of the group rows (`model.build_model`'s names for them).
_GROUP_ROWS = ("ratio_lo__", "ratio_hi__", "pair_p__", "pair_d__")


@dataclass(slots=True)
class Columns:
    """A placement model's HiGHS arrays and the column of each variable."""

    arr: Arrays
    x_col: dict[CellKey, int]
    up_col: dict[CellKey, int]
    down_col: dict[CellKey, int]
    unmet_col: dict[tuple[str, Role], int]
    model: Model | None = None  # the PuLP model the arrays came from, if any
    # The rows that tie a group's roles together (ratio_lo, ratio_hi, pair_p, pair_d of every
    # group): the rows `highs.Runner.lp(relax_groups=True)` leaves out.
    group_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


def subset(columns: Columns, keep: np.ndarray) -> Columns:
    """`columns` with only the columns where `keep` (a bool per column) is True.

    The same model as `columns` with every other column's upper bound 0 (what the large path's
    restricted MIP was), but HiGHS no longer presolves the columns away on every solve: at 100k
    GPUs that took 0.5-0.8 s per sub-MIP, where the restricted MIP keeps ~9k of 336k columns.
    Rows left with no term are dropped when 0 is within their bounds (they hold for any answer);
    `group_rows` are renumbered.
    """
    arr = columns.arr
    n_rows = len(arr.row_lo)
    kept = np.flatnonzero(keep)
    new_of = np.full(arr.n_cols, -1, dtype=np.int64)
    new_of[kept] = np.arange(len(kept))
    on = keep[arr.index]
    rows = arr.entry_rows()[on]
    terms = np.bincount(rows, minlength=n_rows)
    row_keep = (terms > 0) | (arr.row_lo > 0) | (arr.row_hi < 0)
    row_new = np.cumsum(row_keep) - 1
    indptr = np.zeros(int(row_keep.sum()) + 1, dtype=arr.indptr.dtype)
    np.cumsum(terms[row_keep], out=indptr[1:])
    groups = columns.group_rows[row_keep[columns.group_rows]]
    sub = Arrays(
        cost=arr.cost[kept],
        lo=arr.lo[kept],
        hi=arr.hi[kept],
        integer=arr.integer[kept],
        row_lo=arr.row_lo[row_keep],
        row_hi=arr.row_hi[row_keep],
        indptr=indptr,
        index=new_of[arr.index[on]].astype(arr.index.dtype),
        value=arr.value[on],
        sense=arr.sense,
    )

    def remap(col_of: dict[K, int]) -> dict[K, int]:
        return {k: int(new_of[c]) for k, c in col_of.items() if keep[c]}

    return Columns(
        arr=sub,
        x_col=remap(columns.x_col),
        up_col=remap(columns.up_col),
        down_col=remap(columns.down_col),
        unmet_col=remap(columns.unmet_col),
        group_rows=row_new[groups],
    )


def columns_of(model: Model, arr: Arrays | None = None) -> Columns:
    """`Columns` of a built PuLP model (`to_arrays` of its variables in creation order, or `arr`)."""
    col = {v.name: i for i, v in enumerate(model.cols)}
    return Columns(
        arr=arr if arr is not None else to_arrays(model.prob, model.cols),
        x_col={k: col[v.name] for k, v in model.x.items()},
        up_col={k: col[v.name] for k, v in model.up.items()},
        down_col={k: col[v.name] for k, v in model.down.items()},
        unmet_col={key: col[v.name] for key, v in model.unmet.items()},
        model=model,
        group_rows=np.array(
            [i for i, name in enumerate(model.prob.constraints) if name.startswith(_GROUP_ROWS)], dtype=np.int64
        ),
    )


class _Coo:
    """Rows as blocks of (row, order, column, value) triples, turned into CSR once.

    Within a row, terms keep the order of `order` (then of appending); zero coefficients are
    dropped, as `to_arrays` drops them from a PuLP row.
    """

    def __init__(self) -> None:
        self.n_rows = 0
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self.lo: list[np.ndarray] = []
        self.hi: list[np.ndarray] = []

    def block(self, n: int, lo: np.ndarray | float, hi: np.ndarray | float) -> int:
        """Reserve `n` rows with these bounds; returns the first row's number."""
        first = self.n_rows
        self.n_rows += n
        self.lo.append(np.broadcast_to(np.asarray(lo, dtype=np.float64), (n,)))
        self.hi.append(np.broadcast_to(np.asarray(hi, dtype=np.float64), (n,)))
        return first

    def terms(self, row: np.ndarray, col: np.ndarray, value: np.ndarray, order: np.ndarray | None = None) -> None:
        row = np.asarray(row, dtype=np.int64)
        key = np.zeros(len(row), dtype=np.int64) if order is None else np.asarray(order, dtype=np.int64)
        self.parts.append((row, key, np.asarray(col, dtype=np.int64), np.asarray(value, dtype=np.float64)))

    def csr(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        row, key, col, val = (np.concatenate([p[i] for p in self.parts]) for i in range(4))
        seq = np.arange(len(row))
        perm = np.lexsort((seq, key, row))
        row, col, val = row[perm], col[perm], val[perm]
        keep = val != 0
        row, col, val = row[keep], col[keep], val[keep]
        indptr = np.concatenate([[0], np.cumsum(np.bincount(row, minlength=self.n_rows))])
        return (
            indptr.astype(np.int32),
            col.astype(np.int32),
            val,
            np.concatenate(self.lo) if self.lo else np.zeros(0),
            np.concatenate(self.hi) if self.hi else np.zeros(0),
        )


def build_arrays(pb: Problem, st: PlacementSettings, *, relax: bool = False) -> Columns:
    """`build_model(pb, st, relax=relax)` as arrays: same columns, rows and order (see module doc).

    Per-cell parameters come from per-(service, role, GPU type) blocks and per-S1 tables, and
    the rows are built as numpy blocks (capacity, churn, demand, max instances, the four rows
    of every group, the budget): no Python object per term.
    """
    inf = math.inf
    cells, stale = model_cells(pb)
    by_name = {s.name: s for s in pb.services}
    n_x = len(cells)
    # Per-cell block (service, role, GPU type), pool (GPU type, S1), group (service, domain).
    blocks: dict[tuple[str, Role, str], int] = {}
    pools: dict[tuple[str, str], int] = {}
    groups: dict[tuple[str, str], int] = {}
    blk, pool, grp, prio = [], [], [], []
    for k in cells:
        blk.append(blocks.setdefault((k.service, k.role, k.gpu_type), len(blocks)))
        pool.append(pools.setdefault((k.gpu_type, k.s1), len(pools)))
        grp.append(groups.setdefault((k.service, pb.group_of[(k.service, k.s1)]), len(groups)))
        prio.append(pb.prio.get(k.s1, 0))
    blk_a, pool_a, grp_a = np.array(blk, dtype=np.int64), np.array(pool, dtype=np.int64), np.array(grp, dtype=np.int64)
    bkeys = list(blocks)
    b_gpi = np.array([pb.gpi[(n, r.value)] for n, r, _g in bkeys], dtype=np.float64)
    b_unit = np.array([weight(by_name[n], r, g) for n, r, g in bkeys], dtype=np.float64)
    b_cost = np.array([pb.cost[g] for _n, _r, g in bkeys], dtype=np.float64)
    b_prefill = np.array([r is Role.PREFILL for _n, r, _g in bkeys], dtype=bool)
    b_move = np.array([move_coef(pb, st, CellKey(n, r, g, ""), start=True) for n, r, g in bkeys])
    gpi = b_gpi[blk_a] if n_x else np.zeros(0)
    units = b_unit[blk_a] if n_x else np.zeros(0)
    pkeys = list(pools)
    p_free = np.array([max(0, pb.free.get(key, 0)) for key in pkeys], dtype=np.int64)
    hi_x = (p_free[pool_a] // gpi.astype(np.int64)).astype(np.float64) if n_x else np.zeros(0)
    for k in stale:
        hi_x[n_x - len(stale) + stale.index(k)] = 0.0
    integer_kind = 0 if relax else 1

    # Columns: x, then (up, down) per running cell in sorted order, unmet per (service, role),
    # nodes per (GPU type, S1) when fragmentation is priced: `build_model`'s creation order.
    x_col = {k: i for i, k in enumerate(cells)}
    n_cur = len(pb.current)
    up_col: dict[CellKey, int] = {}
    down_col: dict[CellKey, int] = {}
    for j, k in enumerate(sorted(pb.current)):
        up_col[k], down_col[k] = n_x + 2 * j, n_x + 2 * j + 1
    unmet_keys = [(s.name, role) for s in pb.services for role in Role]
    unmet_col = {key: n_x + 2 * n_cur + j for j, key in enumerate(unmet_keys)}
    node_keys = sorted(pb.free) if st.fragmentation_weight > 0 else []
    n_nodes_0 = n_x + 2 * n_cur + len(unmet_keys)
    nodes_col = {key: n_nodes_0 + j for j, key in enumerate(node_keys)}
    n_cols = n_nodes_0 + len(node_keys)
    lo = np.zeros(n_cols)
    hi = np.full(n_cols, inf)
    hi[:n_x] = hi_x
    integer = np.zeros(n_cols, dtype=np.int32)
    integer[:n_x] = integer_kind
    for key, c in nodes_col.items():
        hi[c] = float(math.ceil(pb.gpus_total[key] / pb.gpus_per_node[key]))
        integer[c] = integer_kind

    # Objective: every cell priced as a start, then the running cells corrected.
    cost = np.zeros(n_cols)
    if n_x:
        own = gpi * (b_cost[blk_a] + st.priority_weight * np.array(prio, dtype=np.float64))
        cost[:n_x] = own + (st.churn_weight_h * gpi * b_cost[blk_a] + b_move[blk_a])
        for k in pb.current:
            i = x_col[k]
            cost[i] = own[i]
    for k in pb.current:
        cost[up_col[k]], cost[down_col[k]] = change_coefs(pb, st, k)
    for key, c in unmet_col.items():
        cost[c] = pb.unmet_penalty[key]
    for key, c in nodes_col.items():
        cost[c] = st.fragmentation_weight * pb.gpus_per_node[key]
    if nodes_col and n_x:
        in_free = np.array([key in nodes_col for key in pkeys], dtype=bool)
        cost[:n_x] -= np.where(in_free[pool_a], st.fragmentation_weight * gpi, 0.0)

    # Rows, in `build_model`'s order: capacity (and nodes), churn, demand and max instances per
    # service, ratio and pair rows per group, the GPU budget.
    rows = _Coo()
    cells_idx = np.arange(n_x, dtype=np.int64)
    # Capacity: one row per pool with cells and free GPUs, pools sorted; with fragmentation
    # priced, each followed by its nodes row.
    order = sorted((key, j) for j, key in enumerate(pkeys) if key in pb.free)
    per = 2 if nodes_col else 1
    cap_row = np.full(len(pkeys), -1, dtype=np.int64)
    first = rows.block(0, 0.0, 0.0)
    row_lo: list[float] = []
    row_hi: list[float] = []
    for r, (key, j) in enumerate(order):
        cap_row[j] = first + per * r
        row_lo.append(-inf)
        row_hi.append(float(max(0, pb.free[key])))
        if nodes_col:
            row_lo.append(-inf)
            row_hi.append(-float(pb.fixed_used.get(key, 0)))
    rows.block(per * len(order), np.array(row_lo), np.array(row_hi))
    on = cap_row[pool_a] >= 0 if n_x else np.zeros(0, dtype=bool)
    rows.terms(cap_row[pool_a][on], cells_idx[on], gpi[on])
    if nodes_col:
        rows.terms(cap_row[pool_a][on] + 1, cells_idx[on], gpi[on])
        node_c = [nodes_col[key] for key, _j in order]
        rows.terms(
            np.array([cap_row[j] + 1 for _key, j in order]),
            np.array(node_c),
            np.array([-pb.gpus_per_node[key] for key, _j in order], dtype=np.float64),
            order=np.ones(len(order)),
        )
    # Churn: x - up + down = current, per running cell in `pb.current`'s order.
    cur = list(pb.current.items())
    first = rows.block(len(cur), np.array([n for _k, n in cur], dtype=np.float64), np.array([n for _k, n in cur]))
    cur_rows = first + np.arange(len(cur))
    for j, (col_of, a) in enumerate(((x_col, 1.0), (up_col, -1.0), (down_col, 1.0))):
        rows.terms(cur_rows, np.array([col_of[k] for k, _n in cur]), np.full(len(cur), a), order=np.full(len(cur), j))
    # Demand (prefill, decode) and max instances per service: three rows per service.
    svc_idx = {s.name: j for j, s in enumerate(pb.services)}
    b_svc = np.array([svc_idx[n] for n, _r, _g in bkeys], dtype=np.int64)
    n_svc = len(pb.services)
    d_lo = np.array(
        [[pb.targets[s.name].of(Role.PREFILL), pb.targets[s.name].of(Role.DECODE), -inf] for s in pb.services]
    ).reshape(-1)
    d_hi = np.array([[inf, inf, s.policy.max_instances] for s in pb.services], dtype=np.float64).reshape(-1)
    first = rows.block(3 * n_svc, d_lo, d_hi)
    if n_x:
        svc_cell = b_svc[blk_a]
        role_off = np.where(b_prefill[blk_a], 0, 1)
        rows.terms(first + 3 * svc_cell + role_off, cells_idx, units)
        rows.terms(first + 3 * svc_cell + 2, cells_idx, np.ones(n_x))
    unmet_rows = [first + 3 * svc_idx[n] + (0 if r is Role.PREFILL else 1) for n, r in unmet_keys]
    rows.terms(
        np.array(unmet_rows),
        np.array(list(unmet_col.values())),
        np.ones(len(unmet_keys)),
        order=np.ones(len(unmet_keys)),
    )
    # Groups of services that need both roles, sorted: ratio_lo, ratio_hi, pair_p, pair_d.
    tol = st.ratio_tolerance
    gkeys = list(groups)
    paired = [
        (key, j)
        for j, key in enumerate(gkeys)
        if pb.targets[key[0]].num_prefill > 0 and pb.targets[key[0]].num_decode > 0
    ]
    paired.sort()
    g_row = np.full(len(gkeys), -1, dtype=np.int64)
    lo_g, hi_g = np.tile([-1.0, -inf, -inf, -inf], len(paired)), np.tile([inf, 1.0, 0.0, 0.0], len(paired))
    first = rows.block(4 * len(paired), lo_g, hi_g)
    group_rows = np.arange(first, first + 4 * len(paired), dtype=np.int64)
    for r, (_key, j) in enumerate(paired):
        g_row[j] = first + 4 * r
    if n_x:
        row0 = g_row[grp_a]
        on = row0 >= 0
        pre = b_prefill[blk_a]
        svc_cell = b_svc[blk_a]
        rho = np.array([s.pd_ratio.prefill_per_decode for s in pb.services])[svc_cell]
        links = np.array([link_factors(s, tol) for s in pb.services], dtype=np.float64).reshape(-1, 2)
        k_p, k_d = links[svc_cell, 0], links[svc_cell, 1]
        lo_v = np.where(pre, units, -rho * (1 - tol) * units)
        hi_v = np.where(pre, units, -rho * (1 + tol) * units)
        pp_v = np.where(pre, 1.0, -k_p)
        pd_v = np.where(pre, -k_d, 1.0)
        role_key = np.where(pre, 0, 1)
        rows.terms(row0[on], cells_idx[on], lo_v[on], order=role_key[on])
        rows.terms(row0[on] + 1, cells_idx[on], hi_v[on], order=role_key[on])
        rows.terms(row0[on] + 2, cells_idx[on], pp_v[on], order=role_key[on])
        rows.terms(row0[on] + 3, cells_idx[on], pd_v[on], order=1 - role_key[on])
    if pb.budget_left is not None:
        first = rows.block(1, -inf, float(pb.budget_left))
        rows.terms(np.full(n_x, first), cells_idx, gpi)
    indptr, index, value, row_lo_a, row_hi_a = rows.csr()
    arr = Arrays(
        cost=cost,
        lo=lo,
        hi=hi,
        integer=integer,
        row_lo=row_lo_a,
        row_hi=row_hi_a,
        indptr=indptr,
        index=index,
        value=value,
        sense=1,
    )
    return Columns(arr=arr, x_col=x_col, up_col=up_col, down_col=down_col, unmet_col=unmet_col, group_rows=group_rows)
