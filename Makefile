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
TINY_MODEL := models/tiny-gpt2

.PHONY: install stubs up test bench tiny-model up-tiny clean

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
	MODEL_ID=$(MODEL_ID) $(BIN)/splitgpt up --partitions $(PARTITIONS) --replicas $(REPLICAS)

# Offline: a small random GPT-2 with the real GPT-2 tokenizer, written by transformers.
$(TINY_MODEL)/config.json: | $(INSTALLED)
	$(BIN)/splitgpt tiny-model $(TINY_MODEL)

tiny-model: $(TINY_MODEL)/config.json

up-tiny: stubs tiny-model
	MODEL_ID=$(TINY_MODEL) $(BIN)/splitgpt up --partitions $(PARTITIONS) --replicas $(REPLICAS)

test: stubs
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

# The stack against one Hugging Face process on a GPT-2-small-shaped checkpoint;
# prints ratios measured in this run and writes run/bench/latest.{json,txt,png}.
bench: stubs
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	HF_HUB_OFFLINE=1 $(BIN)/splitgpt bench

clean:
	rm -rf $(VENV) $(STUBS) $(STUBS:_pb2.py=_pb2_grpc.py) $(STUBS:.py=.pyi) run
