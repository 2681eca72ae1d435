# syntax=docker/dockerfile:1
# The fedrank image: Flower's SuperLink, SuperNode and SuperExec commands, the
# `fedrank` command, and the fedrank app itself (ServerApp and ClientApp).
#
#   CPU:  docker build --build-arg TORCH_VARIANT=cpu \
#           --build-arg TORCH_INDEX_URL=<PyTorch CPU wheel index> -t fedrank:0.1.0-cpu .
#   CUDA: docker build --build-arg TORCH_VARIANT=cuda -t fedrank:0.1.0-cuda .
# then push both where the cluster pulls from (docs/kubernetes.md, step 1).
#
# The two variants differ only in the torch wheel: the CUDA build bundles its
# CUDA runtime libraries (the node's NVIDIA driver is mounted in by the NVIDIA
# container toolkit), so both start from the same Python base image. The CUDA
# variant takes torch from the default package index, whose Linux x86_64 torch
# wheels are CUDA builds; the CPU variant needs PyTorch's CPU wheel index
# (TORCH_INDEX_URL) or it gets the much larger CUDA wheel. Not built in CI here:
# these machines have no Docker engine (see docs/kubernetes.md).
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ARG TORCH_VARIANT=cpu
ARG TORCH_INDEX_URL=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN case "$TORCH_VARIANT" in cpu|cuda) ;; \
      *) echo "TORCH_VARIANT must be cpu or cuda, got '$TORCH_VARIANT'" >&2; exit 1 ;; esac
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first (cached while only sources change): torch from the chosen
# index, pinned by the same constraints file as everything else.
COPY requirements/constraints.txt requirements/constraints.txt
RUN pip install --upgrade pip setuptools wheel \
 && if [ -n "$TORCH_INDEX_URL" ]; then \
      pip install -c requirements/constraints.txt --index-url "$TORCH_INDEX_URL" torch ; \
    elif [ "$TORCH_VARIANT" = "cpu" ]; then \
      echo "warning: TORCH_VARIANT=cpu without TORCH_INDEX_URL installs the CUDA torch wheel" >&2 ; \
    fi
# A C compiler for fedrank's two compiled modules (setup.py: the reply gate's permutation
# check, an FRL layer's top-k selection and ranking on the CPU); it stays in this stage.
# Without a compiler pip would build fedrank without them (numpy and torch would do the
# same at about twice the cost): the import check below refuses such an image.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml setup.py README.md ./
COPY fedrank fedrank
COPY protos protos
COPY strategies strategies
COPY client client
COPY server server
COPY simulations simulations
# Import check from outside the source tree, so the installed package is what loads;
# the `fedrank` entry point too (the Kubernetes init containers and Jobs run it).
RUN pip install -c requirements/constraints.txt . \
 && cd / && python -c "import fedrank.server.app, fedrank.client.app" \
 && python -c "from fedrank.protos.packing import COMPILED_CHECK; assert COMPILED_CHECK" \
 && python -c "from fedrank.models.topk import COMPILED_SELECTION; assert COMPILED_SELECTION" \
 && fedrank --version

FROM ${BASE_IMAGE}
ARG TORCH_VARIANT=cpu
LABEL org.opencontainers.image.title="fedrank" \
      org.opencontainers.image.description="Federated rank learning and DP-LoRA on Flower and Ray" \
      org.opencontainers.image.licenses="Apache-2.0" \
      ai.fedrank.torch-variant="${TORCH_VARIANT}"
# A fixed non-root user; the Kubernetes manifests run as this uid/gid.
RUN groupadd --system --gid 10001 fedrank \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/fedrank --create-home \
      --shell /usr/sbin/nologin fedrank
COPY --from=build /opt/venv /opt/venv
# The app's pyproject.toml alone, for `flwr run /opt/fedrank/app` (the submit-run
# Job): the bundle it builds names the components (fedrank.server.app:app,
# fedrank.client.app:app) and carries no code, so every SuperExec runs the
# fedrank installed in this image, the code each site has vetted.
COPY pyproject.toml README.md /opt/fedrank/app/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOME=/home/fedrank \
    FLWR_HOME=/tmp/flwr \
    FLWR_DISABLE_UPDATE_CHECK=1 \
    FLWR_TELEMETRY_ENABLED=0 \
    FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 \
    HF_HUB_OFFLINE=1 \
    MPLCONFIGDIR=/tmp/matplotlib
USER 10001:10001
WORKDIR /home/fedrank
# No secrets in the image: certificates, node keys and the SuperExec secret are
# mounted from Kubernetes Secrets at run time.
CMD ["fedrank", "--help"]
