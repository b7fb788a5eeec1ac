"""The image without Docker (no engine runs here): the Dockerfile's key steps checked, then the
environment it describes built by the same script (scripts/build-env.sh) into a temp copy of the
build context (.dockerignore applied), from uv's cache offline, and `heteroscale validate` run in it.

Skipped, with the reason, when uv cannot build offline (an empty cache on a fresh machine).
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration

UV = ROOT / ".tools" / "bin" / "uv"


def _instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def test_dockerfile_is_multi_stage_non_root_and_runs_the_build_script() -> None:
    ins = _instructions()
    froms = [rest for op, rest in ins if op == "FROM"]
    assert len(froms) == 2 and froms[0].endswith("AS builder") and froms[1].endswith("AS runtime")
    runtime = ins[[i for i, (op, _) in enumerate(ins) if op == "FROM"][1] :]
    builds = [rest for op, rest in ins if op == "RUN" and "scripts/build-env.sh" in rest]
    assert builds == ["bash scripts/build-env.sh --deps-only", "bash scripts/build-env.sh"]
    assert ("WORKDIR", "/opt/heteroscale") in runtime
    assert any(op == "COPY" and rest.startswith("--from=builder /opt/heteroscale") for op, rest in runtime)
    env = " ".join(rest for op, rest in runtime if op == "ENV")
    assert "PATH=/opt/heteroscale/.venv/bin:$PATH" in env
    (user,) = [rest for op, rest in runtime if op == "USER"]
    assert user.split(":")[0] not in ("0", "root")
    # The build script syncs from the lock, without the dev extra, with Prefect's Kubernetes worker.
    script = (ROOT / "scripts" / "build-env.sh").read_text()
    assert "sync --frozen --no-dev --extra k8s" in script and "--extra dev" not in script


def _build_context(dest: Path) -> None:
    """Copy the tracked files the Docker build would send (.dockerignore applied)."""
    patterns = [
        p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines() if p.strip() and not p.startswith("#")
    ]
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True)
    for rel in files.stdout.splitlines():
        parts = Path(rel).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(
            fnmatch.fnmatch(p, pat.removeprefix("**/")) or fnmatch.fnmatch(p, pat) for p in prefixes for pat in patterns
        ):
            continue
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def test_the_image_environment_runs_heteroscale_validate(tmp_path: Path) -> None:
    if not UV.exists():
        pytest.skip(f"uv not installed at {UV} (make setup installs it)")
    ctx = tmp_path / "opt" / "heteroscale"
    _build_context(ctx)
    assert not (ctx / "tests").exists() and (ctx / "uv.lock").exists()
    env = {**os.environ, "UV": str(UV), "UV_OFFLINE": "1", "PYTHON": shutil.which("python3.11") or "python3"}
    env.pop("VIRTUAL_ENV", None)
    t0 = time.monotonic()
    build = subprocess.run(
        ["bash", "scripts/build-env.sh"], cwd=ctx, env=env, capture_output=True, text=True, timeout=300
    )
    build_s = time.monotonic() - t0
    if build.returncode != 0 and re.search(r"offline|network|cache|No solution", build.stderr, re.I):
        pytest.skip(f"uv cannot build the environment offline from its cache: {build.stderr[-500:]}")
    assert build.returncode == 0, build.stderr[-3000:]
    bin_dir = ctx / ".venv" / "bin"
    assert (bin_dir / "heteroscale").exists() and (bin_dir / "prefect").exists()
    listing = subprocess.run(
        [str(UV), "pip", "list", "--python", str(bin_dir / "python")], capture_output=True, text=True, env=env
    ).stdout
    packages = {line.split()[0].lower() for line in listing.splitlines()[2:] if line.strip()}
    assert "prefect-kubernetes" in packages and "heteroscale" in packages
    assert not packages & {"pytest", "ruff", "hypothesis", "kmock"}  # no dev extra in the image
    run_env = {**env, "PATH": f"{bin_dir}:{os.environ['PATH']}", "HETEROSCALE_DATA_DIR": str(tmp_path / "data")}
    out = subprocess.run(
        ["heteroscale", "validate", "deployments/clusters/demo.yaml"],
        cwd=ctx,
        env=run_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "demo" in out.stdout
    # The code runs from the copied tree (the image's /opt/heteroscale), not from this checkout.
    where = subprocess.run(
        [str(bin_dir / "python"), "-c", "import flows; print(flows.__file__)"],
        cwd=tmp_path,  # not this checkout: the import must come from the environment
        capture_output=True,
        text=True,
    )
    assert where.stdout.strip().startswith(str(ctx)), where.stdout
    print(f"environment built in {build_s:.1f} s")
