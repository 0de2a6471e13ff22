"""One generation over the gateway's SSE route, as the benches that time tokens read it."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import httpx


def stream_tokens(url: str, body: dict, on_token: Callable[[int], None] | None = None) -> tuple[list[float], str]:
    """POST `body` to `url`/api/model/stream: each token's arrival time (perf_counter)
    and the whole generated text; `on_token(n)` runs as the n-th token arrives (a
    bench's fault goes in there, with no polling to load the stack)."""
    times, text = [], ""
    with httpx.stream("POST", f"{url}/api/model/stream", json=body, timeout=600) as r:
        r.raise_for_status()
        event = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "error":
                raise RuntimeError(line[6:])
            elif line.startswith("data: ") and event == "token" and json.loads(line[6:])["token_id"] >= 0:
                times.append(time.perf_counter())
                if on_token is not None:
                    on_token(len(times))
            elif line.startswith("data: ") and event == "done":
                text = json.loads(line[6:])["generated_text"]
    return times, text
