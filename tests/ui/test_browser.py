"""The web UI end to end: headless Chromium against the real stack that `splitgpt up` starts.

3 partitions x 2 replicas of a tiny GPT-2, and of a second, smaller one beside
it, the UI on its own port. The browser script (frontend/e2e/browser.mjs) types
a prompt, clicks Process Input, and checks the streamed text against the API's
greedy text, the metrics, and each model's chain; asks this test to kill -9 one
replica and then start it again, and sees the page mark it down, then up; stops
a long generation with Stop and checks nothing runs on the cluster after; picks
the second model and checks its greedy text; cordons a replica and uncordons it.
Screenshots: run/ui-screenshots/.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import httpx
import pytest
from transformers import GPT2LMHeadModel, GPT2TokenizerFast

from splitgpt.bench.local_stack import Stack
from splitgpt.core.tiny_model import write_checkpoint
from tests.hf_reference import hf_text

from .conftest import FRONTEND, ROOT

pytestmark = pytest.mark.system  # starts real services as processes

PROMPT = "The meaning of life is"
SCREENSHOTS = ROOT / "run" / "ui-screenshots"
# A stop string that never matches: the same greedy text under another result-cache key,
# so the page's own request really runs through the nodes.
NEVER = "\u2400never"
SECOND = "second"  # the other model's name: `splitgpt up --model ... --model second=DIR`
CORDON_NODE = "m1-part2-r1"  # a replica of the second model (ids of the k-th other model: m{k}-part{p}-r{r})


def hf_text_of_checkpoint(checkpoint, prompt: str, max_new_tokens: int) -> str:
    """The unpartitioned Hugging Face model's greedy text: what the page must show, per model."""
    model = GPT2LMHeadModel.from_pretrained(checkpoint).eval()
    return hf_text(model, GPT2TokenizerFast.from_pretrained(checkpoint), prompt, max_new_tokens)


def wait_for_page(url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"the web UI at {url} did not answer in {timeout_s}s")


def kill_replica(stack: Stack, node_id: str) -> None:
    partition, replica = (int(x) for x in node_id.removeprefix("part").split("-r"))
    os.kill(stack.node_pid(partition, replica), signal.SIGKILL)


@pytest.fixture
def ui_stack(long_context_checkpoint, built_frontend, tmp_path):
    # Another geometry than the default's (3 blocks of width 32): its own chain, its own greedy text.
    second = write_checkpoint(tmp_path / "second-gpt2", n_layer=3, n_embd=32, n_head=2, n_positions=128, seed=7)
    # restart: like `make up`, the launcher starts a killed node again, and the page must see it return.
    stack = Stack(
        long_context_checkpoint, tmp_path, partitions=3, replicas=2, ui=True, restart=True, more_models=[f"{SECOND}={second}"]
    )
    try:
        stack.wait_ready()
        wait_for_page(f"http://127.0.0.1:{stack.ui_port}/")
        yield stack, {"": long_context_checkpoint, SECOND: second}
    finally:
        code = stack.stop()
        assert code == 0, stack.log_path.read_text()[-3000:]


@pytest.mark.timeout(300)
def test_the_page_streams_shows_the_split_marks_a_dead_node_and_stops_a_request(ui_stack, chromium):
    stack, checkpoints = ui_stack
    # What the page must show for each model: the API's greedy text, itself Hugging Face's.
    r = httpx.post(f"{stack.url}/api/model/process", json={"text": PROMPT, "stop": [NEVER]}, timeout=60)
    assert r.status_code == 200, r.text
    expected = r.json()["generated_text"]
    assert expected, "the tiny model generated nothing to compare"
    assert expected == hf_text_of_checkpoint(checkpoints[""], PROMPT, r.json()["usage"]["completion_tokens"])
    r = httpx.post(f"{stack.url}/api/model/process", json={"text": PROMPT, "model": SECOND, "stop": [NEVER]}, timeout=60)
    assert r.status_code == 200 and r.json()["model"] == SECOND, r.text
    expected_second = r.json()["generated_text"]
    assert expected_second and expected_second != expected, f"the second model's text is no test: {expected_second!r}"
    assert expected_second == hf_text_of_checkpoint(checkpoints[SECOND], PROMPT, r.json()["usage"]["completion_tokens"])

    env = {
        **os.environ,
        "UI_URL": f"http://127.0.0.1:{stack.ui_port}",
        "PROMPT": PROMPT,
        "EXPECTED_TEXT": expected,
        "SCREENSHOT_DIR": str(SCREENSHOTS),
        "E2E_FAILOVER": "1",
        "KILL_NODE": "part1-r0",
        "SECOND_MODEL": SECOND,
        "EXPECTED_SECOND_TEXT": expected_second,
        "CORDON_NODE": CORDON_NODE,
        "CHROMIUM": chromium,
    }
    script = subprocess.Popen(
        ["node", "e2e/browser.mjs"], cwd=FRONTEND, env=env, text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    output = []
    try:
        assert script.stdout and script.stdin
        for line in script.stdout:  # the script's requests, answered one line each
            output.append(line)
            words = line.split()
            if words[:2] != ["E2E", "KILL"]:
                continue
            kill_replica(stack, words[2])
            script.stdin.write("ok\n")
            script.stdin.flush()
        code = script.wait(timeout=30)
    finally:
        if script.poll() is None:
            script.kill()
    log = "".join(output)
    print(log)
    assert code == 0, f"the browser script failed (screenshots in {SCREENSHOTS}):\n{log}"
    for name in ("desktop-streamed", "desktop-node-down", "desktop-streaming", "desktop-models-admin", "phone"):
        assert (SCREENSHOTS / f"{name}.png").stat().st_size > 10_000, name
