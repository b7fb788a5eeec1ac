"""Register heteroscale's Prefect deployments: one scheduled `scale_cluster` per cluster config.

Why a script and not a static `prefect.yaml`: the cluster configs in `deployments/clusters/` are
the source of truth for which clusters exist and how often each is controlled
(`cluster.control_period_s`). A hand-written `prefect.yaml` would repeat every cluster's name,
interval and tags and drift from them; this script reads the configs (validated by
`load_config`, so a broken config fails here, not at 3 a.m. in a worker) and registers exactly
one deployment per file. `--print-yaml` renders the equivalent `prefect.yaml` for review.

Contract:
- one deployment `scale_cluster/<file stem>` per `*.yaml` in the clusters directory, with an
  interval schedule (the config's `control_period_s`, default 60 s, or `--interval`),
  concurrency limit 1 with CANCEL_NEW (a run that would overlap the previous one is dropped, not
  queued: a stale scaling decision is worse than none), tags `heteroscale`, `scale`,
  `cluster:<name>`;
- one controller per cluster: when several files declare the same cluster (a curated variant
  next to the original), the file named `<cluster>.yaml` (else the first by name) gets the active
  schedule and the others are registered with their schedule paused, to switch over in the UI;
- the manual flows `plan_capacity/manual`, `replay/manual` and `bench_policies/manual`
  (no schedule) so operators can run them from the UI with parameters;
- target `process` (local): a process work pool, code loaded from this checkout;
  target `kubernetes`: a kubernetes work pool whose base job template is
  `deployments/k8s/work-pool-job-template.json` (owned by the Kubernetes work), code baked in the image;
- parameters carry paths and names only. Secrets (Prometheus token, kubeconfig) are never
  parameters: the backends read them from Prefect Secret blocks or the worker's environment.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from tasks.core.registry import load_config

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CLUSTERS_DIR = PROJECT_ROOT / "deployments" / "clusters"
K8S_TEMPLATE = PROJECT_ROOT / "deployments" / "k8s" / "work-pool-job-template.json"
PROCESS_POOL = "heteroscale-process"
K8S_POOL = "heteroscale-k8s"
K8S_CODE_DIR = "/opt/heteroscale"  # where the image keeps this repository

# Manual (unscheduled) flows: (flow name, entrypoint relative to the project root).
MANUAL_FLOWS: tuple[tuple[str, str], ...] = (
    ("plan_capacity", "flows/plan_capacity.py:plan_capacity"),
    ("replay", "flows/replay_flow.py:replay_flow"),
    ("bench_policies", "flows/replay_flow.py:bench_policies_flow"),
)
SCALE_ENTRYPOINT = "flows/scale_cluster.py:scale_cluster"


@dataclass(frozen=True)
class ClusterDeployment:
    """What one cluster's scheduled deployment says (pure data; registering is separate)."""

    name: str  # the config file's stem
    cluster: str
    config_path: str  # relative to the project root, so the same value works in the image
    interval_s: float
    tags: tuple[str, ...]
    parameters: dict[str, Any] = field(default_factory=dict)
    paused: bool = False  # another config of the same cluster holds the active schedule


def cluster_deployments(
    clusters_dir: Path = CLUSTERS_DIR,
    *,
    backend: str = "twin",
    interval_s: float | None = None,
    only: Sequence[str] = (),
) -> list[ClusterDeployment]:
    """One deployment per cluster config file. Raises `ConfigError` on an invalid config."""

    out = []
    for path in sorted(clusters_dir.glob("*.yaml")):
        cfg = load_config(path)
        name = cfg.cluster.name
        if only and name not in only:
            continue
        try:
            rel = str(path.resolve().relative_to(PROJECT_ROOT))
        except ValueError:
            rel = str(path.resolve())
        out.append(
            ClusterDeployment(
                name=path.stem,
                cluster=name,
                config_path=rel,
                interval_s=float(interval_s or cfg.cluster.control_period_s or 60.0),
                tags=("heteroscale", "scale", f"cluster:{name}"),
                parameters={"config_path": rel, "backend": backend, "mode": "apply"},
            )
        )
    active: dict[str, str] = {}
    for d in sorted(out, key=lambda d: (d.name != d.cluster, d.name)):
        active.setdefault(d.cluster, d.name)
    return [replace(d, paused=active[d.cluster] != d.name) for d in out]


def prefect_yaml(deployments: Sequence[ClusterDeployment], *, pool: str = PROCESS_POOL) -> dict[str, Any]:
    """The `prefect.yaml` equivalent of what `register` does (for review and `prefect deploy`)."""
    return {
        "name": "heteroscale",
        "prefect-version": "3.8.8",
        "pull": [{"prefect.deployments.steps.set_working_directory": {"directory": str(PROJECT_ROOT)}}],
        "deployments": [
            {
                "name": d.name,
                "entrypoint": SCALE_ENTRYPOINT,
                "tags": list(d.tags),
                "parameters": d.parameters,
                "schedules": [{"interval": d.interval_s, "active": not d.paused}],
                "concurrency_limit": {"limit": 1, "collision_strategy": "CANCEL_NEW"},
                "work_pool": {"name": pool},
            }
            for d in deployments
        ]
        + [
            {"name": "manual", "entrypoint": ep, "tags": ["heteroscale", flow_name], "work_pool": {"name": pool}}
            for flow_name, ep in MANUAL_FLOWS
        ],
    }


def ensure_pool(name: str, pool_type: str, template: dict[str, Any] | None = None) -> None:
    """Create the work pool if missing (an existing pool is left as the operator set it)."""
    # late: prefect: ~2 s at import, flow runs only
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client:
        try:
            kwargs: dict[str, Any] = {"name": name, "type": pool_type}
            if template is not None:
                kwargs["base_job_template"] = template
            client.create_work_pool(WorkPoolCreate(**kwargs))
        except ObjectAlreadyExists:
            pass


def register(
    deployments: Sequence[ClusterDeployment],
    *,
    target: str = "process",
    image: str | None = None,
    paused: bool = False,
    manual: bool = True,
) -> dict[str, str]:
    """Create or update the deployments on the Prefect API in `PREFECT_API_URL`. Returns name -> id."""
    # late: prefect: ~2 s at import, flow runs only
    from prefect import Flow
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

    if target == "process":
        pool = PROCESS_POOL
        ensure_pool(pool, "process")
    elif target == "kubernetes":
        if not K8S_TEMPLATE.exists():
            raise FileNotFoundError(
                f"{K8S_TEMPLATE.relative_to(PROJECT_ROOT)} is missing: the Kubernetes work pool needs its job template"
            )
        if not image:
            raise ValueError("target kubernetes needs --image (the heteroscale image the jobs run)")
        pool = K8S_POOL
        ensure_pool(pool, "kubernetes", json.loads(K8S_TEMPLATE.read_text()))
    else:
        raise ValueError(f"unknown target {target!r}; choose process or kubernetes")

    def load(entrypoint: str) -> Flow[..., Any]:
        # Process: the worker runs the flow from this checkout. Kubernetes: from the image.
        if target == "process":
            return Flow.from_source(source=str(PROJECT_ROOT), entrypoint=entrypoint)  # type: ignore[return-value]
        module, _, attr = entrypoint.partition(":")
        return getattr(importlib.import_module(module.removesuffix(".py").replace("/", ".")), attr)

    extra: dict[str, Any] = {"print_next_steps": False, "ignore_warnings": True}
    if target == "kubernetes":
        extra |= {"image": image, "build": False, "push": False, "job_variables": {"working_dir": K8S_CODE_DIR}}
    ids: dict[str, str] = {}
    scale = load(SCALE_ENTRYPOINT)
    for d in deployments:
        dep_id = scale.deploy(
            name=d.name,
            work_pool_name=pool,
            interval=d.interval_s,
            paused=paused or d.paused,
            concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW),
            parameters=d.parameters,
            tags=list(d.tags),
            description=f"Scale cluster {d.cluster} every {d.interval_s:g} s ({d.config_path})."
            + (" Paused: another config of this cluster holds the active schedule." if d.paused else ""),
            **extra,
        )
        ids[f"scale_cluster/{d.name}"] = str(dep_id)
    if manual:
        for flow_name, ep in MANUAL_FLOWS:
            dep_id = load(ep).deploy(
                name="manual",
                work_pool_name=pool,
                tags=["heteroscale", flow_name],
                description=f"{flow_name}: run by hand from the UI with parameters.",
                **extra,
            )
            ids[f"{flow_name}/manual"] = str(dep_id)
    return ids


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clusters-dir", type=Path, default=CLUSTERS_DIR)
    ap.add_argument("--target", choices=("process", "kubernetes"), default="process")
    ap.add_argument("--backend", default="twin", help="cluster backend the runs use (twin | kubernetes)")
    ap.add_argument("--interval", type=float, default=None, help="override every cluster's interval (s)")
    ap.add_argument("--cluster", action="append", default=[], help="only this cluster (repeat)")
    ap.add_argument("--image", default=None, help="image for the kubernetes target")
    ap.add_argument("--paused", action="store_true", help="register schedules paused")
    ap.add_argument("--no-manual", action="store_true", help="skip the manual plan/replay deployments")
    ap.add_argument("--print-yaml", action="store_true", help="print the equivalent prefect.yaml and exit")
    args = ap.parse_args(argv)
    deps = cluster_deployments(args.clusters_dir, backend=args.backend, interval_s=args.interval, only=args.cluster)
    if not deps:
        print(f"no cluster configs in {args.clusters_dir}", file=sys.stderr)
        return 2
    if args.print_yaml:
        pool = PROCESS_POOL if args.target == "process" else K8S_POOL
        print(yaml.safe_dump(prefect_yaml(deps, pool=pool), sort_keys=False))
        return 0
    ids = register(deps, target=args.target, image=args.image, paused=args.paused, manual=not args.no_manual)
    for name, dep_id in ids.items():
        print(f"deployment {name}  {dep_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
