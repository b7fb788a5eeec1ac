"""Write a copy of a cluster config with some `policy` fields set for every service (the league's
variant configs: forecaster, risk, steps on/off), so a variant runs with the plain
`heteroscale bench policies --config OUT ...` / `bench matrix --config OUT` commands.

    .venv/bin/python scripts/policy_variant.py deployments/clusters/servegen-10-curated.yaml \
        /tmp/sg-lv.yaml --set forecaster=last-value --set risk=null
    .venv/bin/python scripts/policy_variant.py deployments/clusters/demo.yaml /tmp/demo-steps.yaml \
        --set steps.enabled=true
    .venv/bin/python scripts/policy_variant.py deployments/clusters/servegen-10-curated.yaml \
        /tmp/sg-paper-090.yaml --scale target_per_instance=0.9

Values are YAML scalars (`null`, `0.9`, `true`, names); a dotted key sets a nested field. `--scale
KEY=F` multiplies each service's own numeric `policy.<KEY>` by F (more headroom for the paper's
curated target below 1). The
result is validated with the project's own loader before it is written; nothing else changes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tasks.core.registry import load_config  # noqa: E402


def set_policy(doc: dict[str, Any], key: str, value: Any) -> None:
    """Set `policy.<key>` (dotted for nested fields) on every service of a config document."""
    parts = key.split(".")
    for svc in doc["services"]:
        node = svc.setdefault("policy", {})
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        node[parts[-1]] = value


def scale_policy(doc: dict[str, Any], key: str, factor: float) -> None:
    """Multiply `policy.<key>` (dotted for nested fields) by `factor` on every service that sets it."""
    parts = key.split(".")
    for svc in doc["services"]:
        node = svc.get("policy", {})
        for p in parts[:-1]:
            node = node.get(p, {}) if isinstance(node, dict) else {}
        if not isinstance(node, dict) or not isinstance(node.get(parts[-1]), (int, float)):
            raise SystemExit(f"service {svc.get('name')!r}: policy.{key} is not a number to scale")
        node[parts[-1]] = round(float(node[parts[-1]]) * factor, 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", type=Path)
    ap.add_argument("dest", type=Path)
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--scale", dest="scales", action="append", default=[], metavar="KEY=FACTOR")
    args = ap.parse_args()
    doc = yaml.safe_load(args.src.read_text())
    for item in args.sets:
        key, _, raw = item.partition("=")
        set_policy(doc, key.strip(), yaml.safe_load(raw))
    for item in args.scales:
        key, _, raw = item.partition("=")
        scale_policy(doc, key.strip(), float(raw))
    args.dest.write_text(yaml.safe_dump(doc, sort_keys=False))
    load_config(args.dest)
    print(f"{args.dest}: {', '.join(args.sets + args.scales) or 'unchanged'}")


if __name__ == "__main__":
    main()
