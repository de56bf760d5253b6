# rnnstream server image: [server] and [otel] only (no torch), non-root, gRPC health check.
#   docker build -t rnnstream .                       # CPU (onnxruntime)
#   docker build --target gpu -t rnnstream:gpu .      # NVIDIA GPU (onnxruntime-gpu, CUDA 13 pip libs)
#   docker run -p 50051:50051 -v rnnstream-state:/var/lib/rnnstream rnnstream
# Sessions are snapshotted at `docker stop` into the volume /var/lib/rnnstream and restored
# by the next container on the same volume.
#
# Stage order: the default image is the last stage, which BuildKit builds with only the
# stages it needs. The legacy builder (no BuildKit) builds every stage up to --target, so
# the GPU stages come after runtime: `--target runtime` never installs onnxruntime-gpu.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

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

# ---- gpu: slim Python + onnxruntime-gpu with its CUDA and cuDNN pip libraries
# No CUDA base image: the [server-gpu] extra installs onnxruntime-gpu's cuda and cudnn extras
# (nvidia-*-cu13 wheels), which the server preloads at start, so the CUDA major is always
# the one onnxruntime-gpu was built for (tests/test_dockerfile_cuda.py checks this against
# onnxruntime-gpu's own metadata). The host needs only the NVIDIA driver and the container
# toolkit (`docker run --gpus all`). This stage was not built where it was written (no
# Docker daemon, no GPU); the default image's build is tested by tests/test_docker_image.py.
FROM ${PYTHON_IMAGE} AS gpu-build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY rnnstream ./rnnstream
COPY service ./service
COPY export ./export
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install ".[server-gpu,otel]"

FROM ${PYTHON_IMAGE} AS gpu
COPY --from=gpu-build /opt/venv /opt/venv
COPY models /app/models
RUN useradd --system --uid 10001 --home-dir /app rnnstream \
    && mkdir -p /var/lib/rnnstream \
    && chown rnnstream /var/lib/rnnstream
# The state directory is a volume the non-root user owns: `docker stop` snapshots the
# sessions there. ORT_DISABLE_TELEMETRY: onnxruntime's telemetry would persist a device id
# under the user's home (not writable here) and warn at every start; the image turns it off.
# NVIDIA_VISIBLE_DEVICES/NVIDIA_DRIVER_CAPABILITIES: what the container toolkit mounts (a
# CUDA base image sets them; a slim one must).
ENV PATH=/opt/venv/bin:$PATH \
    RNNSTREAM_MODELS=/app/models \
    RNNSTREAM_STATE_DIR=/var/lib/rnnstream \
    RNNSTREAM_DEVICE=auto \
    ORT_DISABLE_TELEMETRY=1 \
    PYTHONUNBUFFERED=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
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
