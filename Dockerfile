# One image for every splitgpt service; `command:` picks the subcommand:
#   docker run IMAGE node | tokenizer | coordinator | api | tiny-model DIR | probe HOST:PORT
#
# Debian's python3 (3.11 in bookworm) and a venv, on any Debian bookworm base.
# The builder installs the dependencies into /opt/venv, the project stage builds
# the project (stubs, wheel) over them; the runtime stage copies that venv and
# installs the project's wheel alone in a thin layer of its own, so a change to
# the sources neither reinstalls nor re-copies torch.
#
# Build arguments (docs/compose.md, "Offline builds"):
#   BASE_IMAGE       a Debian bookworm image. The default is the public one; an
#                    air-gapped build gives one made from Debian packages
#                    (mmdebstrap ... | docker import), as CI does.
#   TORCH_INDEX_URL  the PyTorch CPU wheel index. Empty: no extra index, torch
#                    comes from .wheels/ (below).
#
# .wheels/ (gitignored, optional) is a pip find-links folder sent with the
# context: put torch-2.13.0+cpu-cp311-*.whl there (and any other wheels) and
# build with TORCH_INDEX_URL= to install torch without downloading it.

ARG BASE_IMAGE=debian:bookworm-slim

FROM ${BASE_IMAGE} AS python

# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/*


FROM python AS builder

# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-venv \
    && rm -rf /var/lib/apt/lists/*

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src

# torch==2.13.0 (pinned in pyproject.toml) as a CPU wheel: 2.13.0+cpu, from the
# CPU index or from .wheels/, satisfies the pin and sorts above PyPI's 2.13.0,
# so the CUDA wheels never come in. The check after the install fails the build
# if they did.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

# The find-links folder: .wheels/ when it exists (the bracket makes the pattern
# optional; pyproject.toml, always there, is just a file pip ignores).
COPY pyproject.toml .wheel[s] /wheels/

# Dependencies first, in a layer of their own: a change to the sources does not
# reinstall torch. An empty package stands in for the sources here.
COPY pyproject.toml README.md ./
RUN mkdir -p services/splitgpt \
    && touch services/splitgpt/__init__.py \
    && pip install --no-cache-dir --find-links /wheels ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} . \
    && pip uninstall --yes splitgpt \
    && python -c "import torch, sys; sys.exit(f'CUDA torch {torch.__version__} in a CPU image' if torch.version.cuda else 0)"


FROM builder AS project

# The sources, then the gRPC stubs from protos/ (gitignored, so generated here
# and never copied from a checkout: .dockerignore leaves them out), then the
# project itself over the dependencies already installed, checked by importing
# it, and its wheel for the runtime stage. The stand-in's build tree goes first:
# setuptools would keep its newer, empty build/lib copies.
COPY protos ./protos
COPY services ./services
RUN rm -rf build \
    && python -m grpc_tools.protoc -I protos --python_out=services --pyi_out=services \
        --grpc_python_out=services protos/splitgpt/rpc/*.proto \
    && pip install --no-cache-dir --no-deps . \
    && python -c "import splitgpt.rpc.node_pb2_grpc, splitgpt.cli, splitgpt.api.main, splitgpt.shells.node_service" \
    && pip wheel --no-cache-dir --no-deps --wheel-dir /dist .


FROM python

LABEL org.opencontainers.image.title="splitgpt" \
      org.opencontainers.image.description="GPT-2 served with its transformer blocks partitioned across gRPC nodes" \
      org.opencontainers.image.licenses="MIT"

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HOME=/home/splitgpt/.cache/huggingface

# A non-root user. /models, HF_HOME and the Redis credentials' folder (compose's
# redis-secret volume) are created here, owned by it, so the named volumes mounted
# over them start out writable by it.
RUN groupadd --system --gid 10001 splitgpt \
    && useradd --system --no-log-init --uid 10001 --gid splitgpt --create-home --home-dir /home/splitgpt splitgpt \
    && mkdir -p /models "$HF_HOME" /etc/splitgpt/redis \
    && chown -R splitgpt:splitgpt /models /home/splitgpt /etc/splitgpt/redis

# The dependencies (a layer that changes with pyproject.toml only), then the project.
COPY --from=builder /opt/venv /opt/venv
COPY --from=project /dist /tmp/dist
RUN pip install --no-cache-dir --no-deps /tmp/dist/splitgpt-*.whl \
    && rm -rf /tmp/dist \
    && splitgpt --help >/dev/null

# numeric, so Kubernetes runAsNonRoot can verify it
USER 10001:10001
WORKDIR /home/splitgpt

# node 50100, tokenizer 50051, coordinator 50050, api 8000; metrics of the gRPC services 9100
EXPOSE 8000 50050 50051 50100 9100

ENTRYPOINT ["splitgpt"]
CMD ["--help"]
