"""Shared fixtures: small GPT-2 checkpoints written by transformers itself."""

from __future__ import annotations

import os

# No test reaches the Hugging Face Hub: set before huggingface_hub is imported,
# which reads it once.
os.environ["HF_HUB_OFFLINE"] = "1"

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from transformers import GPT2LMHeadModel

from splitgpt.core.tiny_model import GPT2_SMALL, write_checkpoint  # noqa: E402


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """4 blocks, d=64, the real GPT-2 vocabulary and tokenizer; `transformer.`-prefixed keys."""
    return write_checkpoint(tmp_path_factory.mktemp("tiny-gpt2"), n_layer=4, n_embd=64, n_head=4, n_positions=128, seed=1)


@pytest.fixture(scope="session")
def hf_model(tiny_checkpoint) -> GPT2LMHeadModel:
    return GPT2LMHeadModel.from_pretrained(tiny_checkpoint).eval()


@pytest.fixture(scope="session")
def gpt2_small_checkpoint(tmp_path_factory) -> Path:
    """Random weights in GPT-2-small's geometry (124 M parameters), no tokenizer files."""
    return write_checkpoint(tmp_path_factory.mktemp("gpt2-small"), seed=0, with_tokenizer=False, **GPT2_SMALL)


# Fixtures that start the whole stack (`splitgpt up`) as processes: every test
# that uses one, directly or through another fixture, is a `system` test.
STACK_FIXTURES = {"stack"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if STACK_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.system)
