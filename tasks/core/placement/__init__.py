"""Placement: where each moving service's prefill and decode instances run (pure).

Contract: the public API below; every name is defined in one module of this package, which
imports only from the modules listed before it (no cycles, no private names across files):

  deadline   `Deadline` (a time limit on an injected clock)
  problem    `Problem`, `build_problem`, the rules (`weight`, `ratio_ok`, `prefill_band`, ...)
  score      `Score`, `evaluate` (any placement, by the ILP's objective and rules)
  greedy     `place_greedy` (HeteroScale's Algorithm 4), `group_counts`
  model      `build_model`, `model_cells`, `solve`, `lp_bound`, `reference_solve`
  arrays     `build_arrays`, `Columns` (the same model straight into HiGHS arrays, no PuLP)
  highs      `Runner` (one HiGHS model for every phase)
  start      `Start` (the constructive, ratio-keeping MIP start)
  search     `Search` (RINS rounds), `Parallel` (a second core, injected)
  lagrange   `global_bound`, `proven_bound` (a lower bound on every placement)
  large      `solve_large` (LP, start, RINS beside the MIP)
  repair     `whole_groups` (trim a placement's broken groups: the greedy fallback's)
  polish     `polish` (undo unneeded churn)
  ilp        `place_ilp` (the entry)
  incremental `place_incremental` (the control loop's: small MIP, full on a cadence, greedy), `full_due`
  realize    `realize` (instances onto nodes)

Nothing here reads a clock, starts a thread or does I/O: `tasks/placement_runner.py` runs
`place_ilp` on the wall clock with the RINS search on a thread.
"""

from tasks.core.placement.deadline import Clock, Deadline
from tasks.core.placement.greedy import group_counts, place_greedy
from tasks.core.placement.ilp import MIP_STARTS, place_ilp
from tasks.core.placement.incremental import full_due, place_incremental
from tasks.core.placement.lagrange import Bound, proven_bound
from tasks.core.placement.model import lp_bound, reference_solve
from tasks.core.placement.problem import Problem, build_problem
from tasks.core.placement.realize import NodeSlot, Realization, nodes_from_config, realize
from tasks.core.placement.score import Score, evaluate
from tasks.core.placement.search import Joinable, Parallel

__all__ = [
    "MIP_STARTS",
    "Bound",
    "Clock",
    "Deadline",
    "Joinable",
    "NodeSlot",
    "Parallel",
    "Problem",
    "Realization",
    "Score",
    "build_problem",
    "evaluate",
    "full_due",
    "group_counts",
    "lp_bound",
    "nodes_from_config",
    "place_greedy",
    "place_ilp",
    "place_incremental",
    "proven_bound",
    "realize",
    "reference_solve",
]
