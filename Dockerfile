# rnnstream server image: [server] and [otel] only (no torch), non-root, gRPC health check.
#   docker build -t rnnstream .                       # CPU (onnxruntime)
#   docker build --target gpu -t rnnstream:gpu .      # NVIDIA GPU (onnxruntime-gpu, CUDA 12)
#   docker run -p 50051:50051 -v rnnstream-state:/var/lib/rnnstream rnnstream
# Sessions are snapshotted at `docker stop` into the volume /var/lib/rnnstream and restored
# by the next container on the same volume.
#
# Stage order: the default image is the last stage, which BuildKit builds with only the
# stages it needs. The legacy builder (no BuildKit) builds every stage up to --target, so
# `--target runtime` builds the CPU image without ever pulling the CUDA base.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04

# ---- build: a self-contained virtual environment with the server installed
FROM ${PYTHON_IMAGE} AS build
ARG EXTRA=server
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY rnnstream ./rnnstream
COPY service ./service
COPY export ./export
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install ".[${EXTRA},otel]"

# ---- runtime: slim Python, the venv from build, the bundled models
FROM ${PYTHON_IMAGE} AS runtime
COPY --from=build /opt/venv /opt/venv
COPY models /app/models
RUN useradd --system --uid 10001 --home-dir /app rnnstream \
    && mkdir -p /var/lib/rnnstream \
    && chown rnnstream /var/lib/rnnstream
# The state directory is a volume the non-root user owns: `docker stop` snapshots the
# sessions there. ORT_DISABLE_TELEMETRY: onnxruntime's telemetry would persist a device id
# under the user's home (not writable here) and warn at every start; the image turns it off.
ENV PATH=/opt/venv/bin:$PATH \
    RNNSTREAM_MODELS=/app/models \
    RNNSTREAM_STATE_DIR=/var/lib/rnnstream \
    ORT_DISABLE_TELEMETRY=1 \
    PYTHONUNBUFFERED=1
VOLUME /var/lib/rnnstream
USER 10001
WORKDIR /app
EXPOSE 50051
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-m", "rnnstream.server.healthcheck"]
ENTRYPOINT ["rnnstream"]
CMD ["serve"]

# ---- gpu: CUDA runtime + cuDNN base, onnxruntime-gpu (serves on CPU if no GPU is visible)
FROM ${CUDA_IMAGE} AS gpu
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY rnnstream ./rnnstream
COPY service ./service
COPY export ./export
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install ".[server-gpu,otel]" \
    && rm -rf /src
COPY models /app/models
RUN useradd --system --uid 10001 --home-dir /app rnnstream \
    && mkdir -p /var/lib/rnnstream \
    && chown rnnstream /var/lib/rnnstream
# The state directory is a volume the non-root user owns: `docker stop` snapshots the
# sessions there. ORT_DISABLE_TELEMETRY: onnxruntime's telemetry would persist a device id
# under the user's home (not writable here) and warn at every start; the image turns it off.
ENV PATH=/opt/venv/bin:$PATH \
    RNNSTREAM_MODELS=/app/models \
    RNNSTREAM_STATE_DIR=/var/lib/rnnstream \
    RNNSTREAM_DEVICE=auto \
    ORT_DISABLE_TELEMETRY=1 \
    PYTHONUNBUFFERED=1
VOLUME /var/lib/rnnstream
USER 10001
WORKDIR /app
EXPOSE 50051
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-m", "rnnstream.server.healthcheck"]
ENTRYPOINT ["rnnstream"]
CMD ["serve"]

# ---- the default image (`docker build -t rnnstream .`): the CPU runtime
FROM runtime AS default
