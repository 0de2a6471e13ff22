# One image for every splitgpt service; `command:` picks the subcommand:
#   docker run IMAGE node | tokenizer | coordinator | api | tiny-model DIR | probe HOST:PORT
#
# Two stages: the builder installs the project into /opt/venv, the runtime
# stage copies that venv alone (no pip cache, no build tree).

FROM python:3.11-slim AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src

# torch==2.13.0 (pinned in pyproject.toml) from the CPU wheel index: its
# 2.13.0+cpu satisfies the pin and sorts above PyPI's 2.13.0, so the CUDA
# wheels never come in. The check after the install fails the build if they did.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

# Dependencies first, in a layer of their own: a change to the sources does not
# reinstall torch. An empty package stands in for the sources here.
COPY pyproject.toml README.md ./
RUN mkdir -p services/splitgpt \
    && touch services/splitgpt/__init__.py \
    && pip install --no-cache-dir --extra-index-url "$TORCH_INDEX_URL" . \
    && pip uninstall --yes splitgpt \
    && python -c "import torch, sys; sys.exit(f'CUDA torch {torch.__version__} in a CPU image' if torch.version.cuda else 0)"

# The sources, then the gRPC stubs from protos/ (gitignored, so generated here
# and never copied from a checkout: .dockerignore leaves them out), then the
# project itself over the dependencies already installed.
COPY protos ./protos
COPY services ./services
RUN python -m grpc_tools.protoc -I protos --python_out=services --pyi_out=services \
        --grpc_python_out=services protos/splitgpt/rpc/*.proto \
    && pip install --no-cache-dir --no-deps . \
    && python -c "import splitgpt.rpc.node_pb2_grpc, splitgpt.cli"


FROM python:3.11-slim

LABEL org.opencontainers.image.title="splitgpt" \
      org.opencontainers.image.description="GPT-2 served with its transformer blocks partitioned across gRPC nodes" \
      org.opencontainers.image.licenses="MIT"

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HOME=/home/splitgpt/.cache/huggingface

# A non-root user. /models and HF_HOME are created here, owned by it, so the
# named volumes mounted over them start out writable by it.
RUN groupadd --system --gid 10001 splitgpt \
    && useradd --system --uid 10001 --gid splitgpt --create-home --home-dir /home/splitgpt splitgpt \
    && mkdir -p /models "$HF_HOME" \
    && chown -R splitgpt:splitgpt /models /home/splitgpt

COPY --from=builder /opt/venv /opt/venv

# numeric, so Kubernetes runAsNonRoot can verify it
USER 10001:10001
WORKDIR /home/splitgpt

# node 50100, tokenizer 50051, coordinator 50050, api 8000
EXPOSE 8000 50050 50051 50100

ENTRYPOINT ["splitgpt"]
CMD ["--help"]
