"""Multi-host: every node on its own host (network namespace + veth + IP); a host's cable is cut
mid-generation and the requests complete on the replica, token for token.

Topology (all on this machine, on a bridge this test creates):

    root namespace: tokenizer, coordinator, API on 127.0.0.1; 10.213.<k>.1 on the bridge
    p0a 10.213.<k>.2   p0b 10.213.<k>.3   (partition 0: blocks [0, 2))
    p1a 10.213.<k>.4   p1b 10.213.<k>.5   (partition 1: blocks [2, 4) + head)

The cut takes the bridge port of p0a and p1a down: packets are dropped, nothing answers and no
RST comes back, so the coordinator only learns of it from its step deadline and its probes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import httpx
import pytest

from splitgpt.bench.local_stack import free_port_base
from tests.netns import Hosts, available, wait_until

pytestmark = pytest.mark.system  # starts real services as processes

NODE_PORT = 50100
HOSTS = {"p0a": 0, "p0b": 0, "p1a": 1, "p1b": 1}
CUT = ("p0a", "p1a")  # one replica of every partition
PROMPTS = [
    "The quick brown fox",
    "Once upon a time",
    "In the beginning",
    "My favourite colour is",
    "The capital of France",
    "To be or not to be",
    "Machine learning is",
    "Hello, my name is",
]
MAX_TOKENS = 40
# A stop string that never appears: it changes the result-cache key, not the output.
NEVER = "\u0000never-appears\u0000"
READY_TIMEOUT_S = 120
REQUEST_TIMEOUT_S = 60
MARK_DOWN_TIMEOUT_S = 30


def _tail(path: Path, n: int = 2500) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError as exc:
        return f"<{exc}>"


def _logs(log_dir: Path) -> str:
    return "\n".join(f"----- {p.name} -----\n{_tail(p)}" for p in sorted(log_dir.glob("*.log")))


def _post_all(
    url: str, bodies: list[dict], request_ids: list[str] | None = None
) -> tuple[list[httpx.Response | BaseException], float]:
    """POST every body at once; (responses or exceptions in order, wall seconds)."""
    results: list[httpx.Response | BaseException | None] = [None] * len(bodies)

    def one(i: int) -> None:
        headers = {"X-Request-ID": request_ids[i]} if request_ids else {}
        try:
            results[i] = httpx.post(f"{url}/api/model/process", json=bodies[i], headers=headers, timeout=REQUEST_TIMEOUT_S)
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            results[i] = exc

    t0 = time.perf_counter()
    with ThreadPoolExecutor(len(bodies)) as pool:
        done, pending = wait([pool.submit(one, i) for i in range(len(bodies))], timeout=REQUEST_TIMEOUT_S + 10)
        assert not pending, "requests did not return within their timeout"
    return results, time.perf_counter() - t0  # type: ignore[return-value]


def _describe(r: httpx.Response | BaseException) -> str:
    if isinstance(r, BaseException):
        return f"{type(r).__name__}: {r}"
    return f"{r.status_code} {r.text[:300]}"


def _tasks(client: httpx.Client, url: str, ids: set[str]) -> dict[str, dict] | None:
    """Our requests the coordinator is generating now, by id; None where the API has no /api/tasks."""
    try:
        r = client.get(f"{url}/api/tasks", timeout=2)
    except httpx.HTTPError:
        return {}
    if r.status_code == 404:
        return None
    if r.status_code != 200:
        return {}
    return {t["request_id"]: t for t in r.json().get("tasks", []) if t.get("request_id") in ids}


def _cluster(url: str) -> dict[str, str]:
    try:
        r = httpx.get(f"{url}/api/cluster", timeout=2)
        if r.status_code == 200:
            return {n["id"]: n["status"] for n in r.json()["nodes"]}
    except httpx.HTTPError:
        pass
    return {}


@pytest.mark.timeout(300)
def test_cut_hosts_mid_generation_requests_complete_on_replicas(tiny_checkpoint: Path, tmp_path: Path):
    reason = available()
    if reason:
        pytest.skip(reason)
    started = time.monotonic()
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}  # the API's in-process cache
    env.update(MODEL_ID=str(tiny_checkpoint), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    root_procs: list[subprocess.Popen] = []
    root_logs = []

    def start_root(name: str, argv: list[str], extra_env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(log_dir / f"{name}.log", "wb")
        root_logs.append(log)
        proc = subprocess.Popen(
            [sys.executable, "-m", "splitgpt.cli", *argv],
            env={**env, **(extra_env or {})},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        root_procs.append(proc)
        return proc

    hosts = Hosts(list(HOSTS))
    try:
        with hosts:
            # -- the nodes, one per host ------------------------------------------------
            for name, partition in HOSTS.items():
                hosts.spawn(
                    name,
                    [
                        sys.executable,
                        "-m",
                        "splitgpt.cli",
                        "node",
                        "--node-id",
                        name,
                        "--partition",
                        str(partition),
                        "--num-partitions",
                        "2",
                        "--split",
                        "even",
                        "--host",
                        "0.0.0.0",
                        "--port",
                        str(NODE_PORT),
                        "--torch-threads",
                        "1",
                    ],  # fmt: skip
                    env,
                    log_dir / f"node-{name}.log",
                )
            config = {
                "num_partitions": 2,
                "split": "even",
                "nodes": [{"id": name, "address": f"{hosts.ip(name)}:{NODE_PORT}", "partition": p} for name, p in HOSTS.items()],
            }
            config_path = tmp_path / "cluster.json"
            config_path.write_text(json.dumps(config, indent=1))

            # -- tokenizer, coordinator, API in the root namespace ------------------------
            base = free_port_base(3)
            tok_port, coord_port, api_port = base, base + 1, base + 2
            url = f"http://127.0.0.1:{api_port}"
            start_root("tokenizer", ["tokenizer", "--port", str(tok_port)])
            start_root(
                "coordinator",
                [
                    "coordinator",
                    "--cluster-config",
                    str(config_path),
                    "--port",
                    str(coord_port),
                    "--health-interval-s",
                    "0.5",
                    "--step-timeout-s",
                    "2",
                ],  # fmt: skip
            )
            start_root(
                "api",
                ["api", "--port", str(api_port)],
                {
                    "SPLITGPT_API_TOKENIZER_ADDRESS": f"127.0.0.1:{tok_port}",
                    "SPLITGPT_API_COORDINATOR_ADDRESS": f"127.0.0.1:{coord_port}",
                },
            )

            def ready() -> bool:
                for proc in [*root_procs, *hosts.processes]:
                    if proc.poll() is not None:
                        raise AssertionError(f"{proc.args[:8]} exited with {proc.returncode}\n{_logs(log_dir)}")
                try:
                    return httpx.get(f"{url}/api/ready", timeout=2).status_code == 200
                except httpx.HTTPError:
                    return False

            try:
                wait_until(ready, READY_TIMEOUT_S, interval_s=0.25, what="GET /api/ready == 200")
            except TimeoutError as exc:
                pytest.fail(f"{exc}\n{_logs(log_dir)}")
            t_ready = time.monotonic() - started
            # Ready needs one SERVING replica per partition; this test needs all four.
            all_serving = {name: "SERVING" for name in HOSTS}
            try:
                wait_until(lambda: _cluster(url) == all_serving, 60, interval_s=0.25, what="every node SERVING")
            except TimeoutError as exc:
                pytest.fail(f"{exc}: {_cluster(url)}\n{_logs(log_dir)}")

            # -- warm-up (first steps on every node), then the fault-free run ------------
            warm, _ = _post_all(url, [{"text": p, "max_tokens": 4, "ignore_eos": True} for p in PROMPTS])
            assert all(not isinstance(r, BaseException) and r.status_code == 200 for r in warm), [_describe(r) for r in warm]
            bodies = [{"text": p, "max_tokens": MAX_TOKENS, "ignore_eos": True} for p in PROMPTS]
            results, clean_s = _post_all(url, bodies)
            bad = [
                f"{p!r}: {_describe(r)}" for p, r in zip(PROMPTS, results) if isinstance(r, BaseException) or r.status_code != 200
            ]
            assert not bad, "fault-free run failed:\n" + "\n".join(bad) + f"\n{_logs(log_dir)}"
            expected = {p: r.json()["generated_text"] for p, r in zip(PROMPTS, results)}
            for r in results:
                body = r.json()
                assert body["usage"]["completion_tokens"] == MAX_TOKENS and body["cached"] is False, body
                assert NEVER not in body["generated_text"]
            print(f"\n[multihost] ready after {t_ready:.1f}s; fault-free run: 8 x {MAX_TOKENS} tokens in {clean_s:.2f}s")

            # -- faulted run: cut one replica of every partition mid-generation ---------
            faulted_bodies = [{**b, "stop": [NEVER]} for b in bodies]
            outcome: dict = {}
            request_ids = [f"multihost-{i}-{os.getpid()}" for i in range(len(PROMPTS))]

            def run_faulted() -> None:
                try:
                    outcome["results"], outcome["wall_s"] = _post_all(url, faulted_bodies, request_ids)
                except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
                    outcome["error"] = exc

            runner = threading.Thread(target=run_faulted, daemon=True)
            t_start = time.monotonic()
            runner.start()
            # Under way: GET /api/tasks (where the API has it) shows at least half of the requests
            # decoding, a few tokens in and far from done, one of them on a host about to be cut.
            # Without /api/tasks: a fifth of the fault-free wall time (at least 0.3 s).
            ids, at_cut, seen = set(request_ids), None, []
            fallback_s = max(0.3, min(0.5, clean_s * 0.2))
            with httpx.Client() as client:
                while time.monotonic() - t_start < max(clean_s, 3.0):
                    tasks = _tasks(client, url, ids)
                    if tasks is None:
                        time.sleep(max(0.0, fallback_s - (time.monotonic() - t_start)))
                        break
                    seen.append(
                        (round(time.monotonic() - t_start, 2), sorted(t.get("generated_tokens", 0) for t in tasks.values()))
                    )
                    decoding = [t for t in tasks.values() if 3 <= t.get("generated_tokens", 0) <= MAX_TOKENS - 10]
                    if len(decoding) >= len(ids) // 2 and any(set(t.get("chain", [])) & set(CUT) for t in decoding):
                        at_cut = tasks
                        break
                    time.sleep(0.03)
            for name in CUT:
                hosts.cut(name)
            t_cut = time.monotonic()
            assert runner.is_alive(), f"the faulted run finished before the cut: nothing was tested; tasks seen: {seen}"
            print(f"[multihost] cut {', '.join(CUT)} at {t_cut - t_start:.2f}s into the faulted run")
            on_cut_hosts = []
            if at_cut:
                on_cut_hosts = [rid for rid, t in at_cut.items() if set(t.get("chain", [])) & set(CUT)]
                print(
                    "[multihost] at the cut (GET /api/tasks): "
                    + ", ".join(f"{t['generated_tokens']} tokens on {'+'.join(t.get('chain', []))}" for t in at_cut.values())
                )

            # The coordinator marks the cut replicas down (any status but SERVING).
            marked_down_s = None
            deadline = t_cut + MARK_DOWN_TIMEOUT_S
            last: dict[str, str] = {}
            while time.monotonic() < deadline:
                last = _cluster(url) or last
                if last and all(last.get(name) not in (None, "SERVING") for name in CUT):
                    marked_down_s = time.monotonic() - t_cut
                    break
                time.sleep(0.05)
            runner.join(timeout=REQUEST_TIMEOUT_S + 15)
            assert not runner.is_alive(), "the faulted run did not return"
            if "error" in outcome:
                raise outcome["error"]
            results, faulted_s = outcome["results"], outcome["wall_s"]
            print(
                f"[multihost] faulted run: {faulted_s:.2f}s vs fault-free {clean_s:.2f}s "
                f"(added latency of one failover: {faulted_s - clean_s:+.2f}s)"
            )
            if marked_down_s is not None:
                print(f"[multihost] cut replicas marked down {marked_down_s:.2f}s after the cut: {last}")

            failures = []
            for p, r in zip(PROMPTS, results):
                if isinstance(r, BaseException) or r.status_code != 200:
                    failures.append(f"{p!r}: {_describe(r)}")
                elif r.json()["generated_text"] != expected[p]:
                    failures.append(f"{p!r}: {r.json()['generated_text']!r} != fault-free {expected[p]!r}")
                elif r.json()["cached"]:
                    failures.append(f"{p!r}: answered from the result cache")
            assert not failures, (
                f"{len(failures)}/8 requests failed or differ after cutting {CUT}:\n"
                + "\n".join(failures)
                + f"\n{_logs(log_dir)}"
            )
            if at_cut is not None:
                # The cut landed mid-generation on requests that were using a cut host.
                assert on_cut_hosts, f"no request was on a cut host at the cut; nothing failed over: {at_cut}"
                print(f"[multihost] {len(on_cut_hosts)}/8 requests were on a cut host mid-generation and completed on a replica")
            assert marked_down_s is not None, (
                f"/api/cluster still shows a cut replica SERVING {MARK_DOWN_TIMEOUT_S}s after the cut: {last}"
            )
            # The survivors still serve.
            assert all(last.get(name) == "SERVING" for name in HOSTS if name not in CUT), last
    finally:
        for proc in root_procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for proc in root_procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        for log in root_logs:
            log.close()
    assert hosts.leftovers() == [], hosts.leftovers()
    print(f"[multihost] total {time.monotonic() - started:.1f}s")
