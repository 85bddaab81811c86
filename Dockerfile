# syntax=docker/dockerfile:1
#
# lstm-serve serving image, one Dockerfile for both flavours:
#
#   docker build -t lstm-serve:0.1.0-gpu .                          # default: VARIANT=gpu
#   docker build -t lstm-serve:0.1.0-cpu --build-arg VARIANT=cpu .
#
# GPU: NVIDIA CUDA + cuDNN *runtime* base whose CUDA major matches the onnxruntime-gpu wheel.
# PyPI's onnxruntime-gpu 1.19-1.26 is built for CUDA 12 + cuDNN 9; 1.27 and newer for CUDA 13 +
# cuDNN 9 (see the wheel's `cuda`/`cudnn` extras). CUDA 13 needs NVIDIA driver >= 580 on the
# node. For nodes with an older (CUDA 12) driver build the matching pair instead:
#   --build-arg CUDA_IMAGE=nvidia/cuda:12.9.1-cudnn-runtime-ubuntu24.04 --build-arg ORT_VERSION=1.26.0
# tests/deploy/test_dockerfile.py checks that the two stay a matching pair.
#
# CPU: plain Ubuntu 24.04, same Python (3.12 from Ubuntu), same ONNX Runtime version.
#
# Any Debian-family base works for either variant: name it (CPU_IMAGE or CUDA_IMAGE) and its
# Python package (PYTHON; the default python3.12 is Ubuntu 24.04's). A Debian trixie base made
# locally with mmdebstrap, no registry (docs/image.md; deploy/image-check.sh builds and runs it):
#   podman build --format docker --build-arg VARIANT=cpu --build-arg CPU_IMAGE=localhost/lstm-serve-base:trixie --build-arg PYTHON=python3.13 .
# The GPU variant without NVIDIA's base image: CUDA and cuDNN from PyPI (onnxruntime-gpu's
# `cuda` and `cudnn` extras, ORT_GPU_EXTRAS), registered with the dynamic linker in the image:
#   ... --build-arg VARIANT=gpu --build-arg CUDA_IMAGE=localhost/lstm-serve-base:trixie --build-arg PYTHON=python3.13 --build-arg ORT_GPU_EXTRAS=cuda,cudnn .
# A GPU build checks itself: onnxruntime lists CUDAExecutionProvider and every library of its
# CUDA provider resolves.
#
# Stages: os-<variant> (base OS) -> python (adds the interpreter) -> builder (venv + pip) and
# runtime (venv copied in; no pip, no compilers, no torch).

ARG VARIANT=gpu
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04
ARG CPU_IMAGE=ubuntu:24.04
# One ONNX Runtime version for both variants: `onnxruntime==X` (cpu) or `onnxruntime-gpu==X` (gpu).
ARG ORT_VERSION=1.31.1
# The base image's Python package (`python3.12` on Ubuntu 24.04, `python3.13` on Debian trixie,
# `python3.11` on bookworm); the builder adds `${PYTHON}-venv`.
ARG PYTHON=python3.12
# Empty: CUDA and cuDNN come from the base image (nvidia/cuda). `cuda,cudnn`: from PyPI wheels.
ARG ORT_GPU_EXTRAS=
# grpcio-tools generates the gRPC front end's protobuf modules (app/grpc/protos/generate.py) in
# the builder only; the runtime venv gets grpcio and protobuf, never the generator.
ARG GRPC_TOOLS_VERSION=1.85.4

# ---------------------------------------------------------------------------------------------
FROM ${CUDA_IMAGE} AS os-gpu
# `auto` takes CUDA when a GPU is visible; the k8s gpu overlay pins `cuda` (fail fast).
ENV LSTM_SERVE_PROVIDERS=auto

FROM ${CPU_IMAGE} AS os-cpu
ENV LSTM_SERVE_PROVIDERS=cpu

# ---------------------------------------------------------------------------------------------
# `os-${VARIANT}` is one of the two stages above (their images are tagged in the ARGs); hadolint
# cannot resolve a stage name built from an ARG.
# hadolint ignore=DL3006
FROM os-${VARIANT} AS python
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG PYTHON
ARG DEBIAN_FRONTEND=noninteractive
# Unpinned apt versions on purpose: the archive drops superseded versions (a pin breaks the
# build at the next security update); the base image tag fixes the release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends "${PYTHON}" \
    && rm -rf /var/lib/apt/lists/*

# ---------------------------------------------------------------------------------------------
FROM python AS builder
ARG VARIANT
ARG ORT_VERSION
ARG ORT_GPU_EXTRAS
ARG PYTHON
ARG DEBIAN_FRONTEND=noninteractive
# venv/ensurepip for the builder only (unpinned for the same reason as above); ca-certificates
# for pip's HTTPS. Extra CAs of the build host (a TLS-intercepting proxy in front of the package
# index) arrive as a read-only mount of /usr/local/share/ca-certificates (`podman build -v`,
# docs/image.md): the package's postinst adds them here, in the builder only.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends "${PYTHON}-venv" ca-certificates \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The build context is an allowlist (.dockerignore): pyproject.toml, app/ and models/ only.
COPY . /src
# The gRPC modules (not in git) from app/grpc/protos, before the install packages them.
ARG GRPC_TOOLS_VERSION
RUN "${PYTHON}" -m venv /tmp/protoc \
    && PIP_CERT=/etc/ssl/certs/ca-certificates.crt /tmp/protoc/bin/pip install --no-cache-dir --disable-pip-version-check \
        "grpcio-tools==${GRPC_TOOLS_VERSION}" \
    && rm -rf app/grpc/generated \
    && /tmp/protoc/bin/python app/grpc/protos/generate.py \
    && rm -rf /tmp/protoc
# Exactly one ONNX Runtime package: the extra of this variant, pinned by a constraint. The
# project itself comes from pyproject.toml (its `export` extra, torch and onnx, is never asked for).
# ORT_GPU_EXTRAS (gpu only) adds the wheel's CUDA/cuDNN extras to the same install.
RUN "${PYTHON}" -m venv /opt/venv \
    && if [ "${VARIANT}" = "gpu" ]; then echo "onnxruntime-gpu==${ORT_VERSION}"; \
       else echo "onnxruntime==${ORT_VERSION}"; fi > /tmp/constraints.txt \
    && extras="" \
    && if [ "${VARIANT}" = "gpu" ] && [ -n "${ORT_GPU_EXTRAS}" ]; then extras="onnxruntime-gpu[${ORT_GPU_EXTRAS}]"; fi \
    && PIP_CERT=/etc/ssl/certs/ca-certificates.crt /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check \
        -c /tmp/constraints.txt ".[${VARIANT}]" ${extras:+"${extras}"} \
    && /opt/venv/bin/pip uninstall --yes pip
# Fail the build if the venv is wrong: both ORT packages, the other variant's, or training deps.
RUN ["/opt/venv/bin/python", "-c", "import importlib.metadata as md, os, sys; names = {d.metadata['Name'].lower().replace('_', '-') for d in md.distributions()}; want = {'gpu': 'onnxruntime-gpu', 'cpu': 'onnxruntime'}[os.environ['VARIANT']]; ort = sorted(names & {'onnxruntime', 'onnxruntime-gpu'}); bad = sorted(names & {'torch', 'onnx', 'onnxscript', 'tensorflow', 'jax'}); sys.exit(0 if ort == [want] and not bad else f'bad runtime venv: onnxruntime packages {ort} (want {want}), forbidden {bad}')"]
# ...and the gRPC front end's generated modules were packaged (grpcio-tools was not).
RUN ["/opt/venv/bin/python", "-c", "import importlib.util as u, sys; import app.grpc.generated.grpc_service_pb2_grpc; sys.exit('grpcio-tools in the runtime venv' if u.find_spec('grpc_tools') else 0)"]

# ---------------------------------------------------------------------------------------------
FROM python AS runtime
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG VARIANT
LABEL org.opencontainers.image.title="lstm-serve" \
      org.opencontainers.image.description="Stacked-LSTM serving over the KServe v2 REST protocol (ONNX Runtime, ${VARIANT})" \
      org.opencontainers.image.licenses="Apache-2.0"

# Numeric, non-root user; Kubernetes' runAsNonRoot can only verify a numeric USER.
# No package manager at serve time: apt's and dpkg's programs go (dpkg's database stays, so
# image scanners still see what is installed). No compiler was ever installed in this stage.
RUN groupadd --system --gid 10001 lstm \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin lstm \
    && rm -rf /usr/bin/apt /usr/bin/apt-* /usr/lib/apt /etc/apt /var/lib/apt /var/cache/apt \
        /usr/bin/dpkg /usr/bin/dpkg-* /usr/sbin/dpkg-*

# The venv's python links to /usr/bin/${PYTHON} of the same `python` stage: identical paths.
# Its .pyc files were compiled at install time, so a read-only root filesystem costs no startup.
COPY --from=builder /opt/venv /opt/venv
# CUDA/cuDNN from PyPI (ORT_GPU_EXTRAS) live in the venv's nvidia/*/lib folders: register them
# with the dynamic linker (nothing to do on the nvidia/cuda base or for cpu). Then a GPU image
# checks itself, no GPU needed: onnxruntime lists CUDAExecutionProvider, and every library its
# CUDA provider needs resolves (ld.so --list, i.e. ldd), and cuDNN, which ONNX Runtime opens by
# name at run time (not a link dependency), loads. libcuda.so.1 is the driver's, mounted at run
# time by the NVIDIA container toolkit; it is never in the image.
RUN find /opt/venv -path '*/site-packages/nvidia/*' -name 'lib*.so*' -printf '%h\n' | sort -u \
        > /etc/ld.so.conf.d/zz-nvidia-pypi.conf \
    && if [ -s /etc/ld.so.conf.d/zz-nvidia-pypi.conf ]; then ldconfig; else rm /etc/ld.so.conf.d/zz-nvidia-pypi.conf; fi \
    && if [ "${VARIANT}" = "gpu" ]; then \
        /opt/venv/bin/python -c "import onnxruntime as ort, sys; p = ort.get_available_providers(); print(p); sys.exit(0 if 'CUDAExecutionProvider' in p else 'no CUDAExecutionProvider')" \
        && lib="$(find /opt/venv -name libonnxruntime_providers_cuda.so)" \
        && test -n "${lib}" \
        && ldd "${lib}" \
        && ! ldd "${lib}" | grep -v 'libcuda\.so\.1' | grep 'not found' \
        && /opt/venv/bin/python -c "import ctypes; ctypes.CDLL('libcudnn.so.9')"; \
    fi
# Baked-in model repository, owned by root and read-only for the server; mount a volume at
# /models to serve other models with the same image.
COPY models/ /models/

# ORT_DISABLE_TELEMETRY: ONNX Runtime's telemetry off (it also logs "Failed to persist
# telemetry device ID" on a read-only root).
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    ORT_DISABLE_TELEMETRY=1 \
    PYTHONUNBUFFERED=1 \
    LSTM_SERVE_MODEL_REPOSITORY=/models \
    LSTM_SERVE_HOST=0.0.0.0 \
    LSTM_SERVE_PORT=8000 \
    LSTM_SERVE_GRPC_PORT=8001 \
    LSTM_SERVE_WORKERS=2

USER 10001:10001
WORKDIR /tmp
# HTTP (KServe v2 REST, /metrics) and gRPC (KServe v2 / Triton, grpc.health.v1).
EXPOSE 8000 8001

# For docker/compose only (Kubernetes ignores it and uses the probes). No curl in the image.
HEALTHCHECK --interval=30s --timeout=3s --start-period=120s --retries=3 \
    CMD ["/opt/venv/bin/python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('LSTM_SERVE_PORT', '8000') + '/v2/health/live', timeout=2)"]

# Exec form: the server is PID 1 and receives SIGTERM itself (then drains; see
# LSTM_SERVE_DRAIN_TIMEOUT_S). With LSTM_SERVE_WORKERS >= 2 PID 1 is the supervisor of the HTTP
# workers and the engine process: it forwards the stop in order and reaps them. Arguments after the image name become lstm-serve flags.
ENTRYPOINT ["/opt/venv/bin/lstm-serve"]
