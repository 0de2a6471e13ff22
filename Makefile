# Two commands on a fresh machine: `make up` runs the stack, `make test` runs the tests.
# Both create .venv, install the project and generate the gRPC stubs from protos/.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
PROTOS := $(wildcard protos/splitgpt/rpc/*.proto)
STUBS := $(patsubst protos/%.proto,services/%_pb2.py,$(PROTOS))
MODEL_ID ?= gpt2
PARTITIONS ?= 3
REPLICAS ?= 1
API_PORT ?= 8000
GRPC_PORT_BASE ?= 50050
UI_PORT ?= 5173
# What the nodes compute in: float32 (exact), or bfloat16 (half the weights and wire bytes; README: bf16)
DTYPE ?= float32
# More `splitgpt up` options, e.g. make up UP_FLAGS=--monitoring (a Prometheus too)
UP_FLAGS ?=
TINY_MODEL := models/tiny-gpt2

.PHONY: install stubs up test test-fast lint bench bench-failover bench-migration soak tiny-model up-tiny clean

install: $(INSTALLED)

$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

# protos/ is the single source of the stubs; they are regenerated when it changes.
$(STUBS) &: $(PROTOS) $(INSTALLED)
	$(BIN)/python -m grpc_tools.protoc -I protos --python_out=services --pyi_out=services \
		--grpc_python_out=services $(PROTOS)

stubs: $(STUBS)

up: stubs
	MODEL_ID=$(MODEL_ID) $(BIN)/splitgpt up --partitions $(PARTITIONS) --replicas $(REPLICAS) --api-port $(API_PORT) --grpc-port-base $(GRPC_PORT_BASE) --ui-port $(UI_PORT) --dtype $(DTYPE) $(UP_FLAGS)

# Offline: a small random GPT-2 with the real GPT-2 tokenizer, written by transformers.
$(TINY_MODEL)/config.json: | $(INSTALLED)
	$(BIN)/splitgpt tiny-model $(TINY_MODEL)

tiny-model: $(TINY_MODEL)/config.json

up-tiny: stubs tiny-model
	MODEL_ID=$(TINY_MODEL) $(BIN)/splitgpt up --partitions $(PARTITIONS) --replicas $(REPLICAS) --api-port $(API_PORT) --grpc-port-base $(GRPC_PORT_BASE) --ui-port $(UI_PORT) --dtype $(DTYPE) $(UP_FLAGS)

# The web UI's npm dependencies, exactly as frontend/package-lock.json pins them: its
# Vitest and browser tests run under pytest (tests/ui/), which skips them without npm.
frontend/node_modules/.package-lock.json: frontend/package-lock.json
	@command -v npm >/dev/null || { echo 'npm not found: the web UI tests will be skipped'; exit 0; }; \
	cd frontend && npm ci --no-audit --no-fund

test: lint stubs frontend/node_modules/.package-lock.json
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

# Without the tests that start real services as processes (marked `system`).
test-fast: stubs frontend/node_modules/.package-lock.json
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -m 'not system'

# One configuration (pyproject.toml [tool.ruff]); `make test` runs it first.
lint: $(INSTALLED)
	$(BIN)/ruff check services tests
	$(BIN)/ruff format --check services tests

# The stack against one Hugging Face process on a GPT-2-small-shaped checkpoint;
# prints ratios measured in this run and writes run/bench/latest.{json,txt,png}.
# BENCH_FLAGS: more options, e.g. the big-model mode (a 6.2 GB checkpoint, ~15 min):
#   make bench BENCH_FLAGS="--geometry gpt2-xl --partitions 4 --new-tokens 32 --rounds 2"
BENCH_FLAGS ?=
bench: stubs
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	HF_HUB_OFFLINE=1 $(BIN)/splitgpt bench $(BENCH_FLAGS)

# The soak and overload tests at length: SOAK_BLOCKS thousands of mixed requests (make test runs 3).
SOAK_BLOCKS ?= 20
soak: stubs
	HF_HUB_OFFLINE=1 SPLITGPT_SOAK_BLOCKS=$(SOAK_BLOCKS) $(BIN)/python -m pytest -s tests/test_soak.py

# What a failover costs one request: the serving middle replica killed mid-generation.
bench-failover: stubs
	HF_HUB_OFFLINE=1 $(BIN)/python -m splitgpt.bench.failover $(BENCH_FLAGS)

# What a drain costs the requests on the drained node (K/V moved), against removing it (K/V rebuilt).
bench-migration: stubs
	HF_HUB_OFFLINE=1 $(BIN)/python -m splitgpt.bench.migration $(BENCH_FLAGS)

clean:
	rm -rf $(VENV) $(STUBS) $(STUBS:_pb2.py=_pb2_grpc.py) $(STUBS:.py=.pyi) run
