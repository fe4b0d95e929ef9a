# syntax=docker/dockerfile:1
#
# TUMSyn BIDS App image.  Usage, build arguments and the CPU/CUDA torch pairing are described
# in containers/README.md.  Quick reference:
#
#   docker build -t tumsyn-bids .
#   docker run --rm --gpus all -v /data/bids:/data:ro -v /data/out:/out tumsyn-bids \
#       /data /out participant --participant-label 01
#
# BASE_IMAGE is any Debian/Ubuntu image that has (or can apt-get) python3.11.  The default is
# NVIDIA's CUDA 12.8 runtime with cuDNN on Ubuntu 22.04, matching the cu128 torch wheel below.
# containers/test-build.sh swaps it for a debootstrapped Debian bookworm base.
ARG BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04

# ------------------------------------------------------------- base stage: Python 3.11, shared
FROM ${BASE_IMAGE} AS python
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
# POSIX sh throughout: buildah ignores SHELL in OCI images, so no bash-only syntax below.
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Not version-pinned: the same line must work on Ubuntu 22.04 (CUDA base) and Debian 12 (test).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# --------------------------------------------------------------------------- wheel build stage
FROM python AS wheel
# A host CA bundle for pip when the build runs behind a TLS-intercepting proxy (bind-mount it
# with the build engine and pass its path here); never baked into a layer.
ARG PIP_CERT
RUN python3.11 -m venv /opt/build
WORKDIR /src
COPY pyproject.toml setup.cfg README.md LICENSE ./
COPY tumsyn_bids ./tumsyn_bids
RUN /opt/build/bin/pip wheel --no-deps --wheel-dir /dist .

# ------------------------------------------------------------------------------ runtime stage
FROM python AS runtime
ARG BASE_IMAGE
ARG PIP_CERT
# torch: pinned, the same version CI tests on CPU (requirements-pins.txt), here as the CUDA
# build from PyTorch's index.  If containers/wheels/ holds wheels, torch comes from there
# instead, without any index (this is how the test build installs the CPU wheel offline).
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
# WITH_OFFICIAL_WEIGHTS=1: bake the official TUMSyn weights (Zenodo record 13119176) into
# /opt/tumsyn-weights and point TUMSYN_CHECKPOINT/TUMSYN_TEXT_ENCODER at them.  Empty (the
# default): the bundled demo model only, the two variables stay empty (= unset for the app).
ARG WITH_OFFICIAL_WEIGHTS=
ARG ZENODO_API_URL=https://zenodo.org/api
ARG VERSION=0.1.0
ARG VCS_REF=unknown
ARG BUILD_DATE=unknown

LABEL org.opencontainers.image.title="tumsyn-bids" \
      org.opencontainers.image.description="BIDS App for TUMSyn, text-guided brain MRI synthesis" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.created="${BUILD_DATE}" \
      org.opencontainers.image.source="https://github.com/tumsyn-bids/tumsyn-bids" \
      org.opencontainers.image.documentation="https://github.com/tumsyn-bids/tumsyn-bids/blob/main/containers/README.md" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"

RUN python3.11 -m venv /opt/tumsyn

COPY requirements-pins.txt /opt/tumsyn/requirements-pins.txt
RUN --mount=type=bind,source=containers/wheels,target=/wheels \
    --mount=type=bind,from=wheel,source=/dist,target=/dist \
    if ls /wheels/torch-*.whl >/dev/null 2>&1; then \
        /opt/tumsyn/bin/pip install --no-index --find-links /wheels "torch==${TORCH_VERSION}"; \
    else \
        /opt/tumsyn/bin/pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"; \
    fi \
    && /opt/tumsyn/bin/pip install -c /opt/tumsyn/requirements-pins.txt /dist/*.whl \
    && /opt/tumsyn/bin/python -c "import torch, tumsyn_bids; print('torch', torch.__version__)"

# Any UID, read-only root file system, no network at run time: HOME and all caches are in
# world-writable places (/home/tumsyn, /tmp) or pre-populated read-only folders.  (The venv is
# already world-readable; a chmod -R over it would only copy 1.5 GB into another layer.)
# The TemplateFlow home holds MNI152NLin2009aSym, written by `tumsyn-templates init` from the
# ICBM 2009a files inside nilearn's wheel (no download; docs/templates.md), read-only for all.
RUN mkdir -p /home/tumsyn /opt/torch \
    && chmod 1777 /home/tumsyn \
    && chmod go=u,go-w /opt/torch \
    && /opt/tumsyn/bin/tumsyn-templates init /opt/templateflow \
    && chmod -R a=rX /opt/templateflow
ENV PATH=/opt/tumsyn/bin:${PATH} \
    VIRTUAL_ENV=/opt/tumsyn \
    HOME=/home/tumsyn \
    XDG_CACHE_HOME=/tmp/.cache \
    MPLCONFIGDIR=/tmp/matplotlib \
    TEMPLATEFLOW_HOME=/opt/templateflow \
    TORCH_HOME=/opt/torch \
    DENO_DIR=/tmp/.cache/deno \
    NIPYPE_NO_ET=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    TUMSYN_CONTAINER_TYPE=docker \
    TUMSYN_CONTAINER_TAG=tumsyn-bids:${VERSION}

# The fetcher checks every file against the record's checksum and the table pinned in it.
COPY containers/fetch-weights /usr/local/bin/tumsyn-fetch-weights
RUN case "${WITH_OFFICIAL_WEIGHTS}" in \
        "") ;; \
        1) python3.11 /usr/local/bin/tumsyn-fetch-weights --api-url "${ZENODO_API_URL}" \
               --dest /opt/tumsyn-weights --no-progress \
           && if [ ! -e /opt/tumsyn-weights/checkpoint.pth ]; then \
                  mv /opt/tumsyn-weights/checkpoint.pt /opt/tumsyn-weights/checkpoint.pth; fi \
           && chmod -R go=u,go-w /opt/tumsyn-weights ;; \
        *) echo "WITH_OFFICIAL_WEIGHTS must be 1 or empty" >&2; exit 2 ;; \
    esac
ENV TUMSYN_CHECKPOINT=${WITH_OFFICIAL_WEIGHTS:+/opt/tumsyn-weights/checkpoint.pth} \
    TUMSYN_TEXT_ENCODER=${WITH_OFFICIAL_WEIGHTS:+/opt/tumsyn-weights/checkpoint_CLIP.pt}
WORKDIR /tmp
ENTRYPOINT ["tumsyn"]
CMD ["--help"]
