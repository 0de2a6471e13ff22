"""Hosts on one machine: each in its own Linux network namespace, on a bridge the test creates.

    with Hosts(["a", "b"]) as hosts:
        proc = hosts.spawn("a", [sys.executable, "-m", "http.server", "8000"], env, log_path)
        hosts.ip("a")          # "10.213.<k>.2"
        hosts.cut("a")         # the cable is pulled: packets are dropped, nothing answers, no RST
        hosts.restore("a")

Topology: a bridge `sgbr<tag>` in the root namespace with 10.213.<k>.1/24, and for host number n
(from 0) a namespace `sg<tag>-<name>` holding `eth0` with 10.213.<k>.<n + 2>/24, whose veth peer
`sgv<tag><n>` is a port of the bridge. The root namespace reaches every host through the bridge;
the hosts reach each other and the root namespace's 10.213.<k>.1. Nothing is routed anywhere
else: the addresses exist only on this bridge.

Everything created (processes, namespaces, veths, the bridge) is removed on exit, failures
included. Needs root (CAP_NET_ADMIN + CAP_SYS_ADMIN) and iproute2; `available()` says why not.
"""

from __future__ import annotations

import ipaddress
import os
import random
import re
import shutil
import signal
import string
import subprocess
import time
from pathlib import Path

SUBNET_PREFIX = "10.213"
IFNAMSIZ = 15  # the kernel's limit on interface names, without the NUL


class NetnsError(RuntimeError):
    pass


def _ip(*args: str, check: bool = True, timeout: float = 10.0) -> subprocess.CompletedProcess:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise NetnsError(f"`ip {' '.join(args)}` failed ({result.returncode}): {result.stderr.strip() or result.stdout.strip()}")
    return result


def _tag() -> str:
    return "".join(random.choices(string.ascii_lowercase + string.digits, k=4))


def _used_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network on an address or a route of the root namespace."""
    nets: list[ipaddress.IPv4Network] = []
    text = _ip("-4", "addr", "show").stdout + "\n" + _ip("-4", "route", "show", "table", "all", check=False).stdout
    for m in re.finditer(r"(\d+\.\d+\.\d+\.\d+)(/\d+)?", text):
        try:
            nets.append(ipaddress.IPv4Network(m.group(1) + (m.group(2) or "/32"), strict=False))
        except ValueError:
            pass
    return nets


def _free_subnet() -> int:
    """A k in 1..250 such that 10.213.<k>.0/24 overlaps nothing on this machine."""
    used = _used_networks()
    candidates = list(range(1, 251))
    random.shuffle(candidates)
    for k in candidates:
        net = ipaddress.IPv4Network(f"{SUBNET_PREFIX}.{k}.0/24")
        if not any(net.overlaps(u) for u in used if u.prefixlen > 0):  # ignore a default route
            return k
    raise NetnsError(f"every {SUBNET_PREFIX}.k.0/24 (k in 1..250) is in use on this machine")


def available() -> str | None:
    """None when namespaces, veth pairs and bridges can be made here; else why not (a skip reason)."""
    if not shutil.which("ip"):
        return "iproute2 (`ip`) is not installed"
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        return f"network namespaces need root (CAP_NET_ADMIN, CAP_SYS_ADMIN); running as uid {os.geteuid()}"
    tag = _tag()
    ns, br, veth, peer = f"sg{tag}-probe", f"sgbr{tag}", f"sgv{tag}p", f"sgp{tag}p"
    steps = [
        ("netns add", ["netns", "add", ns]),
        ("bridge", ["link", "add", br, "type", "bridge"]),
        ("veth", ["link", "add", veth, "type", "veth", "peer", "name", peer]),
        ("move veth into netns", ["link", "set", peer, "netns", ns]),
        ("exec in netns", ["netns", "exec", ns, "ip", "link", "set", "lo", "up"]),
    ]
    try:
        for what, args in steps:
            try:
                _ip(*args)
            except (NetnsError, subprocess.TimeoutExpired, OSError) as exc:
                return f"the kernel refuses network namespaces here ({what}): {exc}"
        return None
    finally:
        _ip("link", "del", veth, check=False)
        _ip("link", "del", br, check=False)
        _ip("netns", "del", ns, check=False)


class Hosts:
    """Named hosts, each a network namespace with one address on a bridge in the root namespace."""

    def __init__(self, names: list[str]) -> None:
        if len(set(names)) != len(names) or not names:
            raise ValueError(f"host names must be distinct and non-empty: {names}")
        if len(names) > 240:
            raise ValueError("at most 240 hosts")
        for name in names:
            if not re.fullmatch(r"[A-Za-z0-9_]{1,20}", name):
                raise ValueError(f"host name {name!r}: letters, digits and _ only, at most 20")
        self.names = list(names)
        self.tag = _tag()
        self.k: int | None = None
        self.bridge = f"sgbr{self.tag}"
        self._ns = {name: f"sg{self.tag}-{name}" for name in names}
        self._veth = {name: f"sgv{self.tag}{i}" for i, name in enumerate(names)}  # bridge side
        self._peer = {name: f"sgp{self.tag}{i}" for i, name in enumerate(names)}  # renamed eth0 inside
        for ifname in (self.bridge, *self._veth.values(), *self._peer.values()):
            assert len(ifname) <= IFNAMSIZ, ifname
        self._created_ns: list[str] = []
        self._created_links: list[str] = []
        self._forward_rule: list[str] | None = None  # the iptables rule `_accept_forwarding` added
        self._procs: list[subprocess.Popen] = []
        self._logs: list = []

    # -- addresses ----------------------------------------------------------

    @property
    def gateway(self) -> str:
        """The root namespace's address on the bridge."""
        return f"{SUBNET_PREFIX}.{self.k}.1"

    def ip(self, host: str) -> str:
        return f"{SUBNET_PREFIX}.{self.k}.{self.names.index(host) + 2}"

    def netns(self, host: str) -> str:
        return self._ns[host]

    # -- life cycle ---------------------------------------------------------

    def __enter__(self) -> Hosts:
        try:
            self._create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _create(self) -> None:
        self.k = _free_subnet()
        _ip("link", "add", self.bridge, "type", "bridge")
        self._created_links.append(self.bridge)
        # No STP, no forwarding delay: a port forwards the moment it is up.
        _ip("link", "set", self.bridge, "type", "bridge", "stp_state", "0", "forward_delay", "0", check=False)
        _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        self._accept_forwarding()
        for name in self.names:
            ns, veth, peer = self._ns[name], self._veth[name], self._peer[name]
            _ip("netns", "add", ns)
            self._created_ns.append(ns)
            _ip("link", "add", veth, "type", "veth", "peer", "name", peer)
            self._created_links.append(veth)
            _ip("link", "set", peer, "netns", ns)
            _ip("-n", ns, "link", "set", peer, "name", "eth0")
            _ip("-n", ns, "addr", "add", f"{self.ip(name)}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("link", "set", veth, "master", self.bridge)
            _ip("link", "set", veth, "up")

    def _accept_forwarding(self) -> None:
        """Let traffic between this bridge's ports through the host's firewall.

        Where a Docker engine runs (or ran), br_netfilter is loaded, so bridged packets
        pass iptables' FORWARD chain, whose policy Docker sets to DROP: without this
        rule the hosts could not reach each other. Removed again by `close`."""
        self._forward_rule = ["FORWARD", "-i", self.bridge, "-o", self.bridge, "-j", "ACCEPT"]
        if shutil.which("iptables") is None:
            self._forward_rule = None  # no iptables, so no FORWARD chain to pass either
            return
        added = subprocess.run(["iptables", "-I", *self._forward_rule], capture_output=True, text=True, timeout=10)
        if added.returncode != 0:
            self._forward_rule = None

    def close(self) -> None:
        """Kill what was spawned, then delete namespaces and links. Safe to call twice."""
        for proc in self._procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for proc in self._procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self._procs.clear()
        for f in self._logs:
            f.close()
        self._logs.clear()
        errors = []
        for link in reversed(self._created_links):
            r = _ip("link", "del", link, check=False)
            if r.returncode != 0 and "Cannot find device" not in r.stderr:
                errors.append(f"link {link}: {r.stderr.strip()}")
        self._created_links.clear()
        for ns in reversed(self._created_ns):
            r = _ip("netns", "del", ns, check=False)
            if r.returncode != 0 and "No such file" not in r.stderr:
                errors.append(f"netns {ns}: {r.stderr.strip()}")
        self._created_ns.clear()
        if self._forward_rule:
            subprocess.run(["iptables", "-D", *self._forward_rule], capture_output=True, timeout=10)
            self._forward_rule = None
        if errors:
            raise NetnsError("cleanup left something behind: " + "; ".join(errors))

    def leftovers(self) -> list[str]:
        """Names of this instance's namespaces and links that still exist (empty after close)."""
        out = []
        namespaces = set(_ip("netns", "list", check=False).stdout.split())
        out += [ns for ns in self._ns.values() if ns in namespaces]
        links = _ip("-o", "link", "show", check=False).stdout
        out += [name for name in (self.bridge, *self._veth.values()) if re.search(rf"\b{re.escape(name)}[@:]", links)]
        return out

    # -- faults -------------------------------------------------------------

    def cut(self, host: str) -> None:
        """Pull the host's cable: its bridge port goes down, packets to and from it are dropped."""
        _ip("link", "set", self._veth[host], "down")

    def restore(self, host: str) -> None:
        _ip("link", "set", self._veth[host], "up")

    # -- processes ----------------------------------------------------------

    @property
    def processes(self) -> list[subprocess.Popen]:
        """Everything spawned so far (still running or not)."""
        return list(self._procs)

    def spawn(self, host: str, argv: list[str], env: dict[str, str] | None, log_path: Path | str) -> subprocess.Popen:
        """Run argv inside the host's namespace (own session); killed with its group on exit."""
        log = open(log_path, "wb")
        self._logs.append(log)
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self._ns[host], *argv],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._procs.append(proc)
        return proc

    def exec(self, host: str, argv: list[str], timeout: float = 10.0) -> subprocess.CompletedProcess:
        """Run argv inside the host's namespace and wait for it."""
        return subprocess.run(["ip", "netns", "exec", self._ns[host], *argv], capture_output=True, text=True, timeout=timeout)


def wait_until(predicate, timeout_s: float, interval_s: float = 0.05, what: str = "condition"):
    """Poll predicate until it returns a truthy value; raise TimeoutError after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout_s}s")
        time.sleep(interval_s)
