#!/usr/bin/env bash
# The image's Python environment, built exactly as the Dockerfile's builder stage builds it
# (the Dockerfile runs this script; tests/integration/test_image_env.py runs it into a temp copy).
#
#   scripts/build-env.sh [--deps-only] [PROJECT_DIR]
#
# In PROJECT_DIR (default: the current directory) it creates PROJECT_DIR/.venv from uv.lock:
# the runtime dependencies and the `k8s` extra (Prefect's Kubernetes worker), no dev extra, the
# project itself installed from PROJECT_DIR (so the code runs from there, /opt/heteroscale in the
# image). --deps-only installs only the dependencies (a cached Docker layer before the code).
# Environment: UV (the uv binary, default `uv`), PYTHON (default python3), UV_OFFLINE=1 to use
# only uv's cache, UV_COMPILE_BYTECODE=1 to compile bytecode (the Dockerfile sets it).
set -euo pipefail

deps_only=()
if [[ "${1:-}" == "--deps-only" ]]; then
    deps_only=(--no-install-project)
    shift
fi
cd "${1:-.}"
export UV_PYTHON_DOWNLOADS=never
"${UV:-uv}" sync --frozen --no-dev --extra k8s "${deps_only[@]}" --python "${PYTHON:-python3}"
