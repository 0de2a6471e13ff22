"""The real stack (`splitgpt up`) as a child process on free loopback ports, for tests and benchmarks."""

from __future__ import annotations

import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
from prometheus_client.parser import text_string_to_metric_families


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


# Ranges this process handed out: free when asked, but taken once their stack starts, so a
# later call (a stack's metrics ports after its gRPC ports) must not pick them again.
_handed_out: list[range] = []


def free_port_base(span: int) -> int:
    """A base port with [base, base + span) free, below the ephemeral range
    (where the kernel picks client ports, a free port can be taken at any moment),
    and overlapping no range this process handed out before."""
    top = min(_ephemeral_low(), 40000) - span
    for _ in range(200):
        base = random.randrange(10000, top)
        if any(base < r.stop and r.start < base + span for r in _handed_out):
            continue
        if all(port_is_free(base + i) for i in range(span)):
            _handed_out.append(range(base, base + span))
            return base
    raise RuntimeError("no free port range on 127.0.0.1")


def wait_until_ready(url: str, process: subprocess.Popen, timeout_s: float, logs=lambda: "") -> None:
    """Poll `url`/api/ready until 200; fail early if `process` exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"splitgpt {process.args[3]} exited with {process.returncode}:\n{logs()}")
        try:
            if httpx.get(f"{url}/api/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready in {timeout_s}s:\n{logs()}")


def scraped(url: str, name: str) -> float:
    """The sum of the samples named `name` in a /metrics (a counter's with `_total`)."""
    text = httpx.get(url, timeout=10).text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


class Stack:
    def __init__(
        self,
        model_dir: Path,
        run_dir: Path,
        partitions: int = 3,
        replicas: int = 1,
        split: str = "even",
        extra_args: list[str] = (),
        env: dict[str, str] | None = None,
        ui: bool = False,
        restart: bool = False,
        tls: bool = False,
        more_models: list[str] = (),
    ) -> None:
        """`tls`: `splitgpt up --tls` (mutual TLS inside, certificates in run_dir/tls).
        `more_models`: further `--model [NAME=]DIR`, each on partitions x replicas nodes of its own.
        The internal token is this object's own (`internal_token`), given by
        environment, so tests can call the services directly (`security()`)."""
        self.partitions, self.replicas = partitions, replicas
        self.run_dir, self.tls = run_dir, tls
        self.internal_token = secrets.token_urlsafe(32)
        nodes = (1 + len(more_models)) * partitions * replicas
        self.grpc_base = free_port_base(50 + nodes)
        # /metrics of the gRPC services: coordinator on it, tokenizer on +1, node i on +10+i.
        self.metrics_base = free_port_base(10 + nodes)
        self.api_port = free_port_base(1)
        self.url = f"http://127.0.0.1:{self.api_port}"
        self.log_path = run_dir / "stack.log"
        argv = [
            sys.executable, "-m", "splitgpt.cli", "up",
            "--model", str(model_dir), "--partitions", str(partitions), "--replicas", str(replicas),
            "--split", split, "--api-port", str(self.api_port), "--grpc-port-base", str(self.grpc_base),
            "--metrics-port-base", str(self.metrics_base), "--run-dir", str(run_dir), *extra_args,
        ]  # fmt: skip
        for spec in more_models:
            argv += ["--model", spec]
        # The web UI on a free port when asked; never on 5173, which a developer's own stack may hold.
        self.ui_port = free_port_base(1) if ui else None
        argv += ["--ui-port", str(self.ui_port)] if ui else ["--no-ui"]
        # Off unless asked: the failover tests kill replicas and count on them staying down.
        argv += ["--restart"] if restart else ["--no-restart"]
        argv += ["--tls"] if tls else []
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "SPLITGPT_INTERNAL_TOKEN": self.internal_token, **(env or {})}
        env.pop("SPLITGPT_INTERNAL_TOKEN_FILE", None)
        env.pop("REDIS_URL", None)
        self.log = open(self.log_path, "w")
        self.process = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def security_env(self) -> dict[str, str]:
        """A client's environment for this stack's gRPC services: the token, and with
        TLS the CA and the client certificate (e.g. for `tests.servers.ApiProcess`)."""
        env = {"SPLITGPT_INTERNAL_TOKEN": self.internal_token}
        if self.tls:
            tls = (self.run_dir / "tls").resolve()
            env |= {"SPLITGPT_TLS_CA": str(tls / "ca.pem"), "SPLITGPT_TLS_CLIENT_CERT": str(tls / "client.pem"),
                    "SPLITGPT_TLS_CLIENT_KEY": str(tls / "client-key.pem")}  # fmt: skip
        return env

    def security(self):
        """The client side of `security_env`, for channels to this stack's services
        (`shells.grpc_runtime.client_channel(address, stack.security())`)."""
        from ..shells.internal_auth import InternalSecurity

        if not self.tls:
            return InternalSecurity(token=self.internal_token)
        tls = (self.run_dir / "tls").resolve()
        return InternalSecurity(
            token=self.internal_token,
            ca=(tls / "ca.pem").read_bytes(),
            client_cert=(tls / "client.pem").read_bytes(),
            client_key=(tls / "client-key.pem").read_bytes(),
        )

    def node_address(self, partition: int, replica: int = 0) -> str:
        return f"127.0.0.1:{self.grpc_base + 50 + partition * self.replicas + replica}"

    def metrics_targets(self) -> dict[str, list[str]]:
        """host:port to scrape by Prometheus job (`splitgpt-api`, `-tokenizer`, `-coordinator`,
        `-node`), each at /metrics; the API's is its HTTP address."""
        from ..launcher import metrics_targets

        return metrics_targets(
            SimpleNamespace(host="127.0.0.1", api_port=self.api_port, metrics_port_base=self.metrics_base,
                            partitions=self.partitions, replicas=self.replicas)
        )  # fmt: skip

    def node_metrics_url(self, partition: int, replica: int = 0) -> str:
        return f"http://127.0.0.1:{self.metrics_base + 10 + partition * self.replicas + replica}/metrics"

    def node_pid(self, partition: int, replica: int = 0) -> int:
        """The process serving that replica (found by its port on the command line)."""
        port = self.node_address(partition, replica).rsplit(":", 1)[1]
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"node" in argv and b"--port" in argv and argv[argv.index(b"--port") + 1] == port.encode():
                return int(proc.name)
        raise LookupError(f"no node process on port {port}")

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        wait_until_ready(self.url, self.process, timeout_s, lambda: self.log_path.read_text()[-3000:])
        # The launcher polls readiness too: until it has said so, it counts a
        # child that dies as a failed start, not as one to restart.
        deadline = time.monotonic() + 10
        while "splitgpt is ready" not in self.log_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()
        return self.process.returncode
