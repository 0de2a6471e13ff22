"""Is a TCP port free to listen on, and if not, which process holds it."""

from __future__ import annotations

import socket
from pathlib import Path


def can_listen(host: str, port: int) -> bool:
    """Whether a server could bind `host:port` now.

    SO_REUSEADDR as uvicorn and gRPC set it: a port left in TIME_WAIT by an
    earlier run counts as free (the servers would bind it), one with a
    listener does not.
    """
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError:
            return False
    return True


def listener_of(port: int) -> str | None:
    """'pid 123: <command line>' of a process listening on `port`, when this
    user may see it (Linux /proc); None otherwise."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            # local_address is HEXIP:HEXPORT; state 0A is LISTEN
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if any(str(fd.readlink()) in inodes for fd in (proc / "fd").iterdir()):
                command = " ".join((proc / "cmdline").read_bytes().decode(errors="replace").replace("\0", " ").split())
                return f"pid {proc.name}: {command[:120]}"
        except OSError:
            continue
    return None
