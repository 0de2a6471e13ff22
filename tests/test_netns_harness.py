"""The multi-host harness itself: reachability through the bridge, a cut link, a restore, no leftovers."""

from __future__ import annotations

import re
import socket
import sys
import time

import pytest

from tests.netns import Hosts, _ip, available, wait_until

pytestmark = pytest.mark.system  # starts real services as processes

ECHO_SERVER = (
    "import socket,sys\n"
    "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('0.0.0.0', int(sys.argv[1]))); s.listen(16); print('listening', flush=True)\n"
    "while True:\n"
    "    c,_=s.accept(); d=c.recv(1024); c.sendall(d); c.close()\n"
)
PORT = 47001


def echo(address: str, payload: bytes, timeout_s: float) -> bytes:
    with socket.create_connection((address, PORT), timeout=timeout_s) as s:
        s.sendall(payload)
        return s.recv(1024)


def try_echo(address: str, payload: bytes) -> bytes | None:
    try:
        return echo(address, payload, timeout_s=1.0)
    except OSError:
        return None


@pytest.mark.timeout(60)
def test_hosts_reach_cut_restore_and_clean_up(tmp_path):
    reason = available()
    if reason:
        pytest.skip(reason)
    started = time.monotonic()
    hosts = Hosts(["a", "b"])
    with hosts:
        a, b = hosts.ip("a"), hosts.ip("b")
        assert a != b and a.startswith("10.213.") and hosts.gateway.startswith("10.213.")
        # Each namespace holds exactly its own address (plus lo).
        inside = hosts.exec("a", ["ip", "-4", "-o", "addr", "show"]).stdout
        assert f"{a}/24" in inside and b not in inside and "127.0.0.1" in inside
        # Interface names fit IFNAMSIZ (the kernel would have refused otherwise).
        assert len(hosts.bridge) <= 15 and all(len(v) <= 15 for v in hosts._veth.values())

        server = hosts.spawn("a", [sys.executable, "-c", ECHO_SERVER, str(PORT)], None, tmp_path / "echo.log")
        # The server listens in namespace a only: not on the root namespace's loopback.
        wait_until(lambda: try_echo(a, b"ping") == b"ping", 10, what=f"echo server on {a}:{PORT}")
        assert try_echo("127.0.0.1", b"x") is None

        # Host b reaches host a across the bridge as well.
        from_b = hosts.exec(
            "b",
            [
                sys.executable,
                "-c",
                f"import socket; s=socket.create_connection(('{a}', {PORT}), 2); s.sendall(b'hi'); print(s.recv(9).decode())",
            ],
        )
        assert from_b.stdout.strip() == "hi", from_b.stderr

        # Cut: the connection attempt times out (dropped, not refused).
        hosts.cut("a")
        t0 = time.monotonic()
        with pytest.raises((socket.timeout, TimeoutError)):
            echo(a, b"lost", timeout_s=1.0)
        assert 0.9 <= time.monotonic() - t0 < 3
        assert server.poll() is None  # the process is alive; only its link is gone
        # Host b is unaffected by a's cut.
        assert hosts.exec("b", ["ip", "-o", "link", "show", "eth0"]).returncode == 0

        # Restore: it works again.
        hosts.restore("a")
        wait_until(lambda: try_echo(a, b"again") == b"again", 10, what="echo after restore")

        namespaces = [hosts.netns("a"), hosts.netns("b")]
        assert all(ns in _ip("netns", "list").stdout for ns in namespaces)

    # Everything is gone: processes, namespaces, veths, the bridge.
    assert server.poll() is not None
    assert hosts.leftovers() == []
    netns_list = _ip("netns", "list").stdout
    links = _ip("-o", "link", "show").stdout
    assert f"sg{hosts.tag}" not in netns_list
    assert hosts.tag not in links
    assert f"10.213.{hosts.k}." not in _ip("-4", "addr", "show").stdout
    assert time.monotonic() - started < 10


@pytest.mark.timeout(60)
def test_hosts_clean_up_after_failure(tmp_path):
    reason = available()
    if reason:
        pytest.skip(reason)
    hosts = Hosts(["x", "y"])
    proc = None
    with pytest.raises(RuntimeError, match="boom"):
        with hosts:
            proc = hosts.spawn("x", [sys.executable, "-c", "import time; time.sleep(60)"], None, tmp_path / "sleep.log")
            raise RuntimeError("boom")
    assert proc is not None and proc.wait(timeout=5) is not None
    assert hosts.leftovers() == []
    assert hosts.tag not in _ip("netns", "list").stdout + _ip("-o", "link", "show").stdout


def test_available_leaves_nothing_behind():
    def probes() -> set[str]:
        # available() names its namespace sg<tag>-probe and its links sgbr<tag>, sgv<tag>p, sgp<tag>p.
        names = set(_ip("netns", "list", check=False).stdout.split())
        names |= {m.group(1) for m in re.finditer(r"^\d+: ([^:@\s]+)", _ip("-o", "link", "show", check=False).stdout, re.M)}
        return {n for n in names if re.fullmatch(r"sg\w{4}-probe|sgbr\w{4}|sg[vp]\w{4}p", n)}

    before = probes()
    reason = available()
    if reason:
        pytest.skip(reason)
    assert probes() <= before
