"""`splitgpt up`'s metrics ports: planned, passed to each service, checked, and listed as Prometheus targets."""

from __future__ import annotations

import socket
from pathlib import Path

from splitgpt.bench.local_stack import free_port_base
from splitgpt.launcher import metrics_port_claims, metrics_targets, metrics_urls, parse_args, plan, port_problems


def metrics_flag(argv: list[str]) -> int | None:
    return int(argv[argv.index("--metrics-port") + 1]) if "--metrics-port" in argv else None


def test_each_grpc_service_gets_its_metrics_port_in_creation_order():
    args = parse_args(["--replicas", "2", "--no-ui"])
    children, _, _ = plan(args, Path("model"))
    ports = {child.name: metrics_flag(child.argv) for child in children}
    assert ports == {
        "tokenizer": 9401, "coordinator": 9400, "api": None,
        "part0-r0": 9410, "part0-r1": 9411, "part1-r0": 9412, "part1-r1": 9413, "part2-r0": 9414, "part2-r1": 9415,
    }  # fmt: skip


def test_metrics_targets_name_the_prometheus_jobs():
    args = parse_args(["--host", "0.0.0.0", "--api-port", "8100", "--metrics-port-base", "9500"])
    assert metrics_targets(args) == {
        "splitgpt-api": ["127.0.0.1:8100"],
        "splitgpt-tokenizer": ["127.0.0.1:9501"],
        "splitgpt-coordinator": ["127.0.0.1:9500"],
        "splitgpt-node": ["127.0.0.1:9510", "127.0.0.1:9511", "127.0.0.1:9512"],
    }
    urls = metrics_urls(args)
    assert len(urls) == 6 and urls[0].endswith("http://127.0.0.1:8100/metrics")


def test_base_zero_turns_the_metrics_ports_off():
    args = parse_args(["--metrics-port-base", "0", "--no-ui"])
    children, _, _ = plan(args, Path("model"))
    assert all(metrics_flag(child.argv) is None for child in children)
    assert metrics_port_claims(args) == []
    assert metrics_targets(args) == {"splitgpt-api": ["127.0.0.1:8000"], "splitgpt-tokenizer": [], "splitgpt-coordinator": [],
                                     "splitgpt-node": []}  # fmt: skip


def test_a_taken_metrics_port_names_the_flag_that_moves_it():
    base = free_port_base(13)
    args = parse_args(["--metrics-port-base", str(base), "--grpc-port-base", str(free_port_base(53)), "--no-ui",
                       "--api-port", str(free_port_base(1))])  # fmt: skip
    children, _, _ = plan(args, Path("model"))
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", base + 1))
        holder.listen()
        problems = port_problems(args.host, children, metrics_port_claims(args))
    assert len(problems) == 1, problems
    assert f"port {base + 1}" in problems[0] and "tokenizer metrics" in problems[0] and "--metrics-port-base" in problems[0]


def test_a_metrics_port_planned_twice_is_refused_before_anything_starts():
    args = parse_args(
        ["--metrics-port-base", "50040", "--grpc-port-base", "50050", "--no-ui"]
    )  # node 0's metrics = coordinator's gRPC
    children, _, _ = plan(args, Path("model"))
    problems = port_problems(args.host, children, metrics_port_claims(args))
    assert any("50050 is planned for both coordinator and part0-r0 metrics: change --metrics-port-base" in p for p in problems)
