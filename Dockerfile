# heteroscale's image: the code at /opt/heteroscale, `heteroscale` and `prefect` on PATH, run as a
# non-root user. Used by the Kubernetes work pool's job template
# (deployments/k8s/work-pool-job-template.json), the worker and the exporter (deployments/k8s/base).
#   docker build -t REGISTRY/heteroscale:TAG .
# The environment is built by scripts/build-env.sh (uv sync --frozen from uv.lock, runtime
# dependencies and the `k8s` extra, no dev extra); tests/integration/test_image_env.py builds the
# same environment without Docker and runs `heteroscale validate` in it.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV=uv \
    PYTHON=/usr/local/bin/python3
RUN pip install --no-cache-dir uv==0.13.8
WORKDIR /opt/heteroscale
# Dependencies first: this layer is rebuilt only when the lock changes.
COPY pyproject.toml uv.lock ./
COPY scripts/build-env.sh scripts/build-env.sh
RUN bash scripts/build-env.sh --deps-only
COPY . .
RUN bash scripts/build-env.sh

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 heteroscale \
    && useradd --system --uid 10001 --gid heteroscale --home-dir /var/lib/heteroscale --create-home \
       --shell /usr/sbin/nologin heteroscale
# Same base image and path as the builder: the venv's interpreter links and shebangs hold.
COPY --from=builder /opt/heteroscale /opt/heteroscale
ENV PATH=/opt/heteroscale/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HETEROSCALE_DATA_DIR=/var/lib/heteroscale \
    PREFECT_HOME=/var/lib/heteroscale/prefect \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    DO_NOT_TRACK=1
WORKDIR /opt/heteroscale
USER 10001:10001
EXPOSE 9464
CMD ["heteroscale", "--help"]
