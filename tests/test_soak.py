"""A day of traffic in minutes: thousands of mixed requests, then nothing left behind; and an
overload at several times the queue's capacity, answered only with 200 or 429, health in time.

The real stack (`splitgpt up`, tiny checkpoint, 3 partitions) behind an API key. Bounded: the
soak is SOAK_BLOCKS x BLOCK requests at SOAK_CONCURRENCY at once, the overload OVERLOAD_S seconds.
`SPLITGPT_SOAK_BLOCKS` runs a longer soak (the heavier version; README, *Security*).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import statistics
import time
from pathlib import Path

import httpx
import pytest

from splitgpt.bench.local_stack import Stack
from tests.api.test_api_contract import node_cached_sessions

pytestmark = pytest.mark.system  # starts real services as processes

KEY = "soak-key-0123456789abcdef0123"
AUTH = {"Authorization": f"Bearer {KEY}"}
BLOCK = 1000
SOAK_BLOCKS = int(os.environ.get("SPLITGPT_SOAK_BLOCKS", "3"))
SOAK_CONCURRENCY = 16
QUEUE = {
    "SPLITGPT_COORDINATOR_MAX_BATCH_SIZE": "4",
    "SPLITGPT_COORDINATOR_MAX_QUEUE": "4",
    "SPLITGPT_COORDINATOR_MAX_TENANT_SHARE": "1",
}  # one key here: it may fill the queue
OVERLOAD_CLIENTS = 40  # five times the queue's capacity of 8
OVERLOAD_S = 15.0


def stack_processes(stack: Stack) -> dict[str, int]:
    """The stack's services by name (`api`, `coordinator`, `tokenizer`, `node:PORT`): the launcher's children."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            status = (proc / "status").read_text()
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(next(line for line in status.splitlines() if line.startswith("PPid:")).split()[1])
        if ppid != stack.process.pid or b"splitgpt.cli" not in argv:
            continue
        service = argv[argv.index(b"splitgpt.cli") + 1].decode()
        if service == "node":
            service += ":" + argv[argv.index(b"--port") + 1].decode()
        found[service] = int(proc.name)
    return found


def resident_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise LookupError(pid)


def metric(url: str, name: str, headers=None) -> float:
    total = 0.0
    for line in httpx.get(url, headers=headers, timeout=10).text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def keyed_stack(tiny_checkpoint, run_dir: Path, **env: str):
    stack = Stack(tiny_checkpoint, run_dir, partitions=3, env={"SPLITGPT_API_KEYS": KEY, **env})
    try:
        stack.wait_ready()
        yield stack
    finally:
        assert stack.stop() == 0, stack.log_path.read_text()[-3000:]


@pytest.fixture
def soak_stack(tiny_checkpoint, tmp_path):
    # the default queue (64 + 256): the soak's 16 at once, 4 generations at most each, always fit
    yield from keyed_stack(tiny_checkpoint, tmp_path, SPLITGPT_API_MAX_CONCURRENT_PER_KEY="64")


@pytest.fixture
def small_queue_stack(tiny_checkpoint, tmp_path):
    yield from keyed_stack(tiny_checkpoint, tmp_path, **QUEUE)


async def one_request(client: httpx.AsyncClient, i: int, model: str) -> str:
    """One of ten kinds, by i: what it did, for the tally (`unexpected ...` fails the soak)."""
    kind = i % 10
    if kind == 0:  # a fresh generation
        r = await client.post("/api/model/process", json={"text": f"Soak {i}", "max_tokens": 4, "cache": False})
        return "ok" if r.status_code == 200 else f"unexpected {r.status_code} {r.text[:200]}"
    if kind == 1:  # the same deterministic request again and again: cache hits
        r = await client.post("/api/model/process", json={"text": "Cached soak", "max_tokens": 4, "temperature": 0})
        return ("hit" if r.json().get("cached") else "ok") if r.status_code == 200 else f"unexpected {r.status_code}"
    if kind == 2:  # a stream read to its end
        async with client.stream("POST", "/api/model/stream", json={"text": f"Stream {i}", "max_tokens": 5}) as r:
            text = "".join([chunk async for chunk in r.aiter_text()])
        return "ok" if r.status_code == 200 and "event: done" in text else f"unexpected {r.status_code} {text[-200:]}"
    if kind == 3:  # a stream whose client leaves after its first event
        async with client.stream(
            "POST", "/api/model/stream", json={"text": f"Leave {i}", "max_tokens": 60, "ignore_eos": True}
        ) as r:
            async for _ in r.aiter_bytes():
                break
        return "ok" if r.status_code == 200 else f"unexpected {r.status_code}"
    if kind == 4:  # a /v1 list with n > 1
        body = {"model": model, "prompt": [f"A {i}", f"B {i}"], "n": 2, "max_tokens": 3}
        r = await client.post("/v1/completions", json=body)
        return "ok" if r.status_code == 200 and len(r.json()["choices"]) == 4 else f"unexpected {r.status_code} {r.text[:200]}"
    if kind == 5:  # a body that is not JSON
        r = await client.post("/api/model/process", content=b'{"text": "x",', headers={"content-type": "application/json"})
        return "refused" if r.status_code == 400 else f"unexpected {r.status_code}"
    if kind == 6:  # a number that is not finite
        r = await client.post("/api/model/process", content=b'{"text": "x", "temperature": NaN}', headers={"content-type": "application/json"})  # fmt: skip
        return "refused" if r.status_code == 422 else f"unexpected {r.status_code}"
    if kind == 7:  # cancelled by its id while it streams
        rid = f"soak-cancel-{i}"
        body = {"text": f"Cancel {i}", "max_tokens": 80, "ignore_eos": True}
        async with client.stream("POST", "/api/model/stream", json=body, headers={"X-Request-ID": rid}) as r:
            chunks = r.aiter_text()
            await anext(chunks)
            await client.delete(f"/api/tasks/{rid}")
            rest = "".join([chunk async for chunk in chunks])
        return "ok" if '"finish_reason": "cancelled"' in rest or "event: done" in rest else f"unexpected {rest[-200:]}"
    if kind == 8:  # a chat stream with usage
        body = {"model": model, "messages": [{"role": "user", "content": f"Hi {i}"}], "max_tokens": 4, "stream": True,
                "stream_options": {"include_usage": True}}  # fmt: skip
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            text = "".join([chunk async for chunk in r.aiter_text()])
        return "ok" if r.status_code == 200 and "data: [DONE]" in text else f"unexpected {r.status_code} {text[-200:]}"
    # kind 9: a client that gives up on a whole answer before it comes
    try:
        await client.post("/api/model/process", json={"text": f"Give up {i}", "max_tokens": 100, "ignore_eos": True,
                                                       "cache": False}, timeout=0.05)  # fmt: skip
    except httpx.TimeoutException:
        return "left"
    return "ok"


async def soak_block(url: str, start: int, model: str) -> dict[str, int]:
    tally: dict[str, int] = {}
    gate = asyncio.Semaphore(SOAK_CONCURRENCY)
    limits = httpx.Limits(max_connections=SOAK_CONCURRENCY * 2)
    async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=60, limits=limits) as client:

        async def run(i: int) -> None:
            async with gate:
                outcome = await one_request(client, i, model)
            tally[outcome] = tally.get(outcome, 0) + 1

        await asyncio.gather(*(run(i) for i in range(start, start + BLOCK)))
    return tally


def settled(stack: Stack) -> None:
    """Nothing running anywhere: no task at the coordinator, no request in the gateway, no KV session on a node."""
    deadline = time.monotonic() + 15
    while True:
        tasks = httpx.get(f"{stack.url}/api/tasks", headers=AUTH, timeout=10).json()["tasks"]
        in_progress = metric(f"{stack.url}/metrics", "splitgpt_requests_in_progress", AUTH)
        coordinator = f"http://127.0.0.1:{stack.metrics_base}/metrics"
        queued = metric(coordinator, "splitgpt_coordinator_requests_running") + metric(
            coordinator, "splitgpt_coordinator_requests_waiting"
        )
        if not tasks and in_progress == 0 and queued == 0:
            break
        assert time.monotonic() < deadline, f"left running: tasks {tasks}, gateway {in_progress}, coordinator {queued}"
        time.sleep(0.2)
    for p in range(stack.partitions):
        assert node_cached_sessions(stack.node_address(p), stack.security()) == 0, f"partition {p} kept KV sessions"


def test_thousands_of_mixed_requests_leave_nothing_behind_and_memory_flat(soak_stack):
    stack = soak_stack
    model = httpx.get(f"{stack.url}/v1/models", headers=AUTH, timeout=10).json()["data"][0]["id"]
    processes = stack_processes(stack)
    assert {"api", "coordinator", "tokenizer"} <= set(processes) and len(processes) == 3 + stack.partitions
    memory: list[dict[str, int]] = []
    tallies = []
    started = time.monotonic()
    for block in range(SOAK_BLOCKS):
        tallies.append(asyncio.run(soak_block(stack.url, block * BLOCK, model)))
        settled(stack)
        memory.append({name: resident_bytes(pid) for name, pid in processes.items()})
    elapsed = time.monotonic() - started
    unexpected = {k: v for t in tallies for k, v in t.items() if k.startswith("unexpected")}
    assert not unexpected, unexpected
    assert all(t.get("hit", 0) > 0 for t in tallies), f"the cache never hit: {tallies}"
    # Every process's resident memory, the second thousand against the last.
    growth = {name: memory[-1][name] / memory[1][name] - 1 for name in processes}
    print(f"\nsoak: {SOAK_BLOCKS * BLOCK} requests in {elapsed:.0f} s; outcomes per block {tallies}")
    print("resident MiB after each thousand: " + "; ".join(
        f"{name} " + "/".join(f"{m[name] / 2**20:.0f}" for m in memory) for name in sorted(processes)))  # fmt: skip
    assert all(g < 0.10 for g in growth.values()), f"resident memory grew 10% or more: {growth}"
    # No slot of the key's concurrency limit leaked: as many at once as it allows still run.
    with httpx.Client(base_url=stack.url, headers=AUTH, timeout=60) as client:
        from concurrent.futures import ThreadPoolExecutor

        def one(i: int) -> int:
            return client.post("/api/model/process", json={"text": f"After {i}", "max_tokens": 2, "cache": False}).status_code

        with ThreadPoolExecutor(8) as pool:
            assert list(pool.map(one, range(8))) == [200] * 8
    for name, pid in processes.items():
        assert os.path.exists(f"/proc/{pid}"), f"{name} died during the soak"


def probe_health(url: str, ready, stop, results) -> None:
    """In a process of its own, so the load generator's GIL does not delay the probe it times."""
    latencies = []
    with httpx.Client(base_url=url, timeout=5) as client:
        ready.set()
        while not stop.is_set():
            t0 = time.perf_counter()
            status = client.get("/api/health").status_code
            latencies.append((time.perf_counter() - t0) * 1000 if status == 200 else float("inf"))
            time.sleep(0.05)
    results.put(latencies)


def test_an_overload_gets_200s_and_429s_only_and_health_answers_throughout(small_queue_stack):
    stack = small_queue_stack
    spawn = multiprocessing.get_context("spawn")
    ready, stop, results = spawn.Event(), spawn.Event(), spawn.Queue()
    prober = spawn.Process(target=probe_health, args=(stack.url, ready, stop, results), daemon=True)
    prober.start()
    assert ready.wait(60), "the health prober did not start"
    statuses: dict[int, int] = {}
    failures: list[str] = []

    async def client_loop(client: httpx.AsyncClient, c: int, deadline: float) -> None:
        i = 0
        while time.monotonic() < deadline:
            i += 1
            try:
                r = await client.post("/api/model/process", json={"text": f"Load {c} {i}", "max_tokens": 16,
                                                                   "ignore_eos": True, "cache": False})  # fmt: skip
            except httpx.HTTPError as exc:  # a dropped connection, a timeout
                failures.append(f"{type(exc).__name__}: {exc}")
                continue
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            if r.status_code == 429:
                assert int(r.headers["retry-after"]) >= 1
                await asyncio.sleep(0.2)  # back again well before the Retry-After (1 s) a polite client waits
            elif r.status_code != 200:
                failures.append(f"{r.status_code}: {r.text[:200]}")

    async def overload() -> None:
        deadline = time.monotonic() + OVERLOAD_S
        limits = httpx.Limits(max_connections=OVERLOAD_CLIENTS)
        async with httpx.AsyncClient(base_url=stack.url, headers=AUTH, timeout=60, limits=limits) as client:
            await asyncio.gather(*(client_loop(client, c, deadline) for c in range(OVERLOAD_CLIENTS)))

    try:
        asyncio.run(overload())
    finally:
        stop.set()
        health_ms = results.get(timeout=30)
        prober.join(10)
    print(f"\noverload: {OVERLOAD_CLIENTS} clients for {OVERLOAD_S:.0f} s: {statuses}; health probes {len(health_ms)}, "
          f"median {statistics.median(health_ms):.1f} ms, p99 {statistics.quantiles(health_ms, n=100)[98]:.1f} ms, "
          f"max {max(health_ms):.1f} ms, over 50 ms {sum(ms > 50 for ms in health_ms)}, over 100 ms {sum(ms > 100 for ms in health_ms)}")  # fmt: skip
    assert not failures, failures[:5]
    assert statuses.get(429, 0) > 0 and statuses.get(200, 0) > 0, statuses
    assert set(statuses) == {200, 429}, statuses
    # Every probe answered, 99% of them within 100 ms. The slowest on this 2-vCPU machine, where the
    # load generator, the prober and six services share two cores, took 60-200 ms in repeated runs
    # (the gateway's median stays near 4 ms): a single maximum there measures the scheduler.
    assert all(ms < 1000 for ms in health_ms), f"a health probe took {max(health_ms):.0f} ms"
    p99 = statistics.quantiles(health_ms, n=100)[98]
    assert p99 < 100, f"99% of health probes within {p99:.0f} ms"
    settled(stack)
