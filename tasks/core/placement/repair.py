"""Make a placement keep the ILP's group rules by removing instances (pure).

Contract: `whole_groups(pb, st, cells)` returns (cells, groups repaired, instances removed):
`cells` with every group (service x domain at its affinity level) of a moving service that needs
both roles either holding both roles within the ratio band (`problem.ratio_ok`) or empty. It
only removes instances (so capacity, the GPU budget and `max_instances` stay kept), never moves
or adds any; cells of services not in `pb` are returned unchanged. No clock, no I/O.

Why: the greedy (HeteroScale's Algorithm 4, `greedy.py`) is the ILP's fallback when the solver
cannot answer in time, and it breaks groups (measured at 50k GPUs / 300 services, seed 1: 58
affinity and 26 ratio violations). It places one instance at a time, the role furthest below its
target first, so a group opened by one role is left alone when the service's other role is
already at its target or goes to a domain that holds a group already; it scales each role in
independently, so a group can lose all of one role; and it adds to each role of an existing
group on its own, so the group leaves its ratio. A group holding one role serves nothing (its
prefill has no decode to hand the KV cache to) and an out-of-ratio group's excess idles
(`Score.usable_cost`), so dropping them costs no served demand and frees their GPUs. The greedy
itself is left as the paper describes it: it is also the baseline policy.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

from models.config import PlacementSettings, Role
from models.values import CellKey
from tasks.core.placement.problem import Problem, ratio_ok, weight


def whole_groups(
    pb: Problem, st: PlacementSettings, cells: Mapping[CellKey, int]
) -> tuple[dict[CellKey, int], int, int]:
    """`cells` with every broken group of a moving service trimmed back into the rules.

    A group holding one role loses all of it; an out-of-ratio group loses instances of its long
    role, started ones first (no churn saved by keeping them), then the dearest per reference
    unit, until it is in ratio (or, if that empties the role, the group is dropped).
    """
    out = dict(cells)
    by_name = {s.name: s for s in pb.services}
    groups: dict[tuple[str, str], list[CellKey]] = defaultdict(list)
    for k, n in out.items():
        if n > 0 and k.service in by_name:
            groups[(k.service, pb.group_of[(k.service, k.s1)])].append(k)
    repaired = removed = 0
    for (name, _dom), ks in sorted(groups.items()):
        t = pb.targets[name]
        if t.num_prefill == 0 or t.num_decode == 0:
            continue
        svc = by_name[name]

        def units(role: Role, svc_name: str = name, members: list[CellKey] = ks) -> float:
            return sum(out[k] * weight(by_name[svc_name], role, k.gpu_type) for k in members if k.role is role)

        def count(role: Role, members: list[CellKey] = ks) -> int:
            return sum(out[k] for k in members if k.role is role)

        broken = False
        while count(Role.PREFILL) > 0 and count(Role.DECODE) > 0:
            p, d = units(Role.PREFILL), units(Role.DECODE)
            if ratio_ok(svc, p, d, st.ratio_tolerance):
                break
            broken = True
            long = Role.PREFILL if p > svc.pd_ratio.prefill_per_decode * d else Role.DECODE
            mine = [k for k in ks if k.role is long and out[k] > 0]
            k = min(
                mine,
                key=lambda k: (
                    out[k] <= pb.current.get(k, 0),
                    -pb.gpi[(k.service, k.role.value)] * pb.cost[k.gpu_type] / max(weight(svc, long, k.gpu_type), 1e-9),
                    k,
                ),
            )
            out[k] -= 1
            removed += 1
        if (count(Role.PREFILL) > 0) != (count(Role.DECODE) > 0):
            broken = True
            for k in ks:
                removed += out[k]
                out[k] = 0
        repaired += broken
    return {k: n for k, n in out.items() if n > 0}, repaired, removed
