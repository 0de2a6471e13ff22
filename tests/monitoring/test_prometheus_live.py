"""The board and the alerts, proven against a real Prometheus scraping a running stack.

A local stack (2 partitions x 2 replicas) and Debian's Prometheus, configured by
splitgpt.monitoring.local_prometheus with the jobs of prometheus/prometheus.yml and
the real prometheus/alerts.yml, scraping every second. Traffic: a request, the same
one again (a result-cache hit), a stream, a validation error, then requests in flight
while one node replica is drained (its sequences' K/V moved) and another killed (SIGKILL) and more after it (a cache miss and hit
among them); every generation succeeds. Then, through Prometheus' HTTP API: every dashboard query (and variable)
and every alert expression parses and evaluates, every panel query that this traffic
must fill returns series with a value (ALLOWED_EMPTY says which may not, and why), and
SplitgptNodeReplicaDown fires for the killed replica while no partition is reported
without a healthy one.
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import signal
import subprocess
import tempfile
import time

import httpx
import pytest

from splitgpt.bench.local_stack import Stack, free_port_base
from splitgpt.monitoring import local_prometheus

from .files import ALERTS, JOBS, alert_rules, dashboard, substitute, targets, variable_queries

pytestmark = pytest.mark.system  # starts real services as processes

SCRAPE_S = 1.0  # scrape and rule evaluation interval: the alert's `for` is what the test waits for
FAST_HEALTH = {
    "SPLITGPT_COORDINATOR_HEALTH_INTERVAL_S": "0.3",
    "SPLITGPT_COORDINATOR_STEP_TIMEOUT_S": "5",
    "SPLITGPT_COORDINATOR_ROUTING": "round_robin",  # both replicas of each partition carry requests
    "SPLITGPT_COORDINATOR_UNAVAILABLE_GRACE_S": "3",
    # Off by default: on here, so the prefix-reuse panels are proven on data (the hit rate is 0/0 without).
    "SPLITGPT_COORDINATOR_PREFIX_CACHE": "true",
}
KILLED = (1, 0)  # partition, replica
DRAINED = "part0-r0"  # drained (its sequences' K/V moved) before the kill
# (panel title, refId) -> why that query may return nothing (no series, or only NaN) after this test's traffic.
ALLOWED_EMPTY = {
    ("Request success / error rates", "C"): "no request is rejected: nothing overloads, every partition keeps a replica",
    ("Failovers / replays", "B"): "a killed replica may be marked down by its health probe before a circuit opens",
    ("Node health by partition and replica", "C"): "circuit opens, as above",
    ("KV sessions and evictions", "C"): "no session is evicted: the KV budget is far from full",
    ("KV sessions and evictions", "D"): "no session lives out its TTL in this short test",
    ("KV sessions and evictions", "E"): "a refused step needs a live replica that lost a session",
    ("Tokenizer operations", "B"): "no tokenizer call fails",
    ("Result-cache hit rate", "B"): "no lookup fails: the stack runs without Redis, on the in-process cache",
    ("Result-cache hit rate", "C"): "no entry is forged: the in-process cache holds only what this gateway sealed",
}


@pytest.fixture
def replicated_stack(tiny_checkpoint, tmp_path):
    stack = Stack(tiny_checkpoint, tmp_path, partitions=2, replicas=2, env=FAST_HEALTH)
    try:
        stack.wait_ready()
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def prometheus(replicated_stack, tmp_path):
    """A real Prometheus scraping the stack; its URL. Stopped, and its data removed, after."""
    exe = local_prometheus.find_prometheus()
    if exe is None:
        if os.environ.get("SPLITGPT_REQUIRE_REAL_SERVICES") == "1":
            pytest.fail("prometheus is not installed (apt-get install prometheus)")
        pytest.skip("prometheus is not installed (apt-get install prometheus)")
    data = tempfile.mkdtemp(prefix="splitgpt-prometheus-")
    config = local_prometheus.write_local_config(tmp_path / "prometheus", replicated_stack.metrics_targets(), SCRAPE_S, [ALERTS])
    port = free_port_base(1)
    url = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "prometheus.log", "w")
    process = subprocess.Popen(
        local_prometheus.prometheus_argv(config, data, "127.0.0.1", port, binary=exe),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, f"prometheus exited:\n{(tmp_path / 'prometheus.log').read_text()[-3000:]}"
            try:
                if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "prometheus not ready in 30 s"
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        shutil.rmtree(data, ignore_errors=True)


def query(prom: str, expr: str) -> tuple[str | None, list]:
    """(error or None, result) of an instant query."""
    r = httpx.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=30)
    body = r.json()
    if body.get("status") != "success":
        return f"{body.get('errorType')}: {body.get('error')}", []
    return None, body["data"]["result"]


def node_targets(prom: str) -> dict[str, str]:
    """instance -> health of the splitgpt-node targets."""
    active = httpx.get(f"{prom}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
    return {t["labels"]["instance"]: t["health"] for t in active if t["labels"]["job"] == "splitgpt-node"}


def wait_scraped(prom: str, timeout_s: float = 30) -> None:
    """Until every target of every job has been scraped and is up."""
    deadline = time.monotonic() + timeout_s
    while True:
        active = httpx.get(f"{prom}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
        if active and all(t["health"] == "up" for t in active):
            return
        assert time.monotonic() < deadline, [(t["scrapeUrl"], t["health"], t["lastError"]) for t in active]
        time.sleep(0.5)


def generate(url: str, path: str = "/api/model/process", **body) -> httpx.Response:
    return httpx.post(f"{url}{path}", json={"text": "The meaning of monitoring is", "max_tokens": 8, **body}, timeout=120)


def traffic_with_a_killed_replica(stack: Stack) -> float:
    """The traffic of the module docstring; returns when the replica was killed (monotonic)."""
    url = stack.url
    assert generate(url, cache=True).status_code == 200  # a miss, stored
    assert generate(url, cache=True).status_code == 200  # the same deterministic request: a hit
    with httpx.stream("POST", f"{url}/api/model/stream", json={"text": "Streams of tokens", "max_tokens": 12}, timeout=120) as r:
        assert r.status_code == 200
        assert "event: done" in r.read().decode()
    assert generate(url, max_tokens=0).status_code == 422  # an error answer

    prompts = [f"Request number {i} asks the model about" for i in range(8)]

    def one(prompt: str) -> int:
        r = generate(url, text=prompt, max_tokens=100, ignore_eos=True, cache=False)
        return r.status_code

    pid = stack.node_pid(*KILLED)
    with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
        futures = [pool.submit(one, p) for p in prompts]
        deadline = time.monotonic() + 30
        while True:  # every request generating, some through the replica to kill
            tasks = httpx.get(f"{url}/api/tasks", timeout=10).json()["tasks"]
            if len(tasks) == len(prompts) and all(t["generated_tokens"] >= 3 for t in tasks):
                break
            assert not all(f.done() for f in futures), "the requests finished before the kill: make them longer"
            assert time.monotonic() < deadline, tasks
            time.sleep(0.02)
        assert f"part{KILLED[0]}-r{KILLED[1]}" in {n for t in tasks for n in t["chain"]}, tasks  # so it fails over
        # A drain first (the migration panels' data): partition 0's first replica hands its
        # sequences' K/V to the other one, and leaves.
        drained = httpx.post(f"{url}/api/nodes/{DRAINED}/drain", json={"timeout_s": 30}, timeout=60)
        assert drained.status_code == 200 and drained.json()["removed"], drained.text
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        statuses = [f.result() for f in futures]
    assert statuses == [200] * len(prompts), statuses  # none lost to the kill
    for i in range(3):  # and the stack keeps answering on the replica left
        assert generate(url, text=f"After the kill, request {i}", cache=False).status_code == 200
    # A miss and a hit again, now that Prometheus has seen both series: a counter's
    # first sample counts for rate() only if it was exported at 0 before its first event.
    assert generate(url, text="The cache after the kill", cache=True).status_code == 200
    assert generate(url, text="The cache after the kill", cache=True).status_code == 200
    return killed_at


@pytest.mark.timeout(240)
def test_every_dashboard_query_and_alert_evaluates_and_the_node_down_alert_fires(replicated_stack, prometheus):
    stack, prom = replicated_stack, prometheus
    assert set(stack.metrics_targets()) == set(JOBS)
    wait_scraped(prom)
    before = node_targets(prom)
    assert len(before) == 4 and set(before.values()) == {"up"}, before

    killed_at = traffic_with_a_killed_replica(stack)
    time.sleep(3 * SCRAPE_S)  # the last counters scraped

    problems = []
    # Every dashboard query parses and evaluates; each one the traffic must fill has series.
    board = dashboard()
    empty = set()
    for title, ref, expr in targets(board):
        error, result = query(prom, substitute(expr, rate_interval="5m", interval="15s", range_="10m"))
        if error:
            problems.append(f"panel '{title}' {ref}: {error}\n    {expr}")
        elif not any(sample["value"][1] != "NaN" for sample in result):
            empty.add((title, ref))  # no series, or only NaN (a quantile or ratio of nothing)
    for name, expr in variable_queries(board):
        error, result = query(prom, expr)
        if error or not result:
            problems.append(f"variable ${name}: {error or 'no values'}\n    {expr}")
    unexpected = sorted(empty - set(ALLOWED_EMPTY))
    if unexpected:
        exprs = {(t, r): e for t, r, e in targets(board)}
        problems += [f"panel '{t}' {r} has no data:\n    {exprs[(t, r)]}" for t, r in unexpected]
    # Every alert expression evaluates, and Prometheus evaluates every rule without error.
    for rule in alert_rules():
        error, _ = query(prom, rule["expr"])
        if error:
            problems.append(f"alert {rule['alert']}: {error}")
    groups = httpx.get(f"{prom}/api/v1/rules", timeout=10).json()["data"]["groups"]
    loaded = {r["name"]: r for g in groups for r in g["rules"]}
    assert set(loaded) == {r["alert"] for r in alert_rules()}
    problems += [f"rule {n}: {r['health']} {r.get('lastError')}" for n, r in loaded.items() if r["health"] == "err"]

    # The killed replica: its target is down, and after the rule's `for` its alert fires.
    down = [instance for instance, health in node_targets(prom).items() if health != "up"]
    assert len(down) == 1, node_targets(prom)
    deadline = killed_at + 100  # for: 1m, plus scrapes and evaluations
    firing = {}
    while time.monotonic() < deadline:
        alerts = httpx.get(f"{prom}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
        firing = {(a["labels"]["alertname"], a["labels"].get("instance")): a for a in alerts if a["state"] == "firing"}
        if ("SplitgptNodeReplicaDown", down[0]) in firing:
            break
        time.sleep(1)
    active = {a["labels"]["alertname"] for a in alerts}
    print(f"\nalerts after the kill (+{time.monotonic() - killed_at:.0f} s): "
          f"{sorted((a['labels']['alertname'], a['state']) for a in alerts)}")  # fmt: skip
    print(f"panel queries with no data (allowed): {sorted(empty & set(ALLOWED_EMPTY))}")
    assert ("SplitgptNodeReplicaDown", down[0]) in firing, alerts
    assert firing[("SplitgptNodeReplicaDown", down[0])]["labels"]["severity"] == "warning"
    # The coordinator stopped routing to it too (that alert at least pending: its `for` runs from the probe's verdict).
    unhealthy = [a["labels"] for a in alerts if a["labels"]["alertname"] == "SplitgptReplicaUnhealthy"]
    assert [(u["partition"], u["node"]) for u in unhealthy] == [(str(KILLED[0]), f"part{KILLED[0]}-r{KILLED[1]}")], alerts
    # One replica of partition 1 is left: no partition without a healthy replica, no service down.
    assert not {"SplitgptPartitionNoHealthyReplica", "SplitgptServiceDown", "SplitgptServerErrorRateHigh"} & active, alerts
    assert not problems, "\n".join(problems)
