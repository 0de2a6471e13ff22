"""Build the web UI when it is missing or stale: `npm ci`, then `npm run build` (tsc + vite build).

Each step is skipped when its output is newer than its inputs, so a second
`splitgpt up` starts at once. Node or npm missing, or a failed build, is a
`problem` (one line for the log), never an exception: the rest of the stack
runs without the UI.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

# What the build reads: when any of these is newer than dist/, build again.
BUILD_INPUTS = ("src", "index.html", "package.json", "package-lock.json", "vite.config.ts", "tsconfig.json")


# Vite 8 runs on Node 20.19+ (and 22.12+).
MIN_NODE = (20, 19)


def node_version(node: str) -> tuple[int, ...] | None:
    try:
        out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=10, check=False).stdout
        return tuple(int(x) for x in out.strip().lstrip("v").split(".")[:2])
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None


@dataclass
class BuildResult:
    dist: Path | None  # the page to serve, None when there is none
    problem: str | None = None  # one line saying what is wrong, when something is
    built: bool = False


def _newest_mtime(paths: list[Path]) -> float:
    newest = 0.0
    for path in paths:
        if path.is_dir():
            newest = max([newest] + [p.stat().st_mtime for p in path.rglob("*") if p.is_file()])
        elif path.exists():
            newest = max(newest, path.stat().st_mtime)
    return newest


def needs_install(frontend: Path) -> bool:
    """npm ci writes node_modules/.package-lock.json; older than package-lock.json: stale."""
    marker = frontend / "node_modules" / ".package-lock.json"
    return not marker.exists() or marker.stat().st_mtime < (frontend / "package-lock.json").stat().st_mtime


def needs_build(frontend: Path, dist: Path) -> bool:
    index = dist / "index.html"
    if not index.exists():
        return True
    return _newest_mtime([frontend / name for name in BUILD_INPUTS]) > index.stat().st_mtime


def _run(argv: list[str], cwd: Path, timeout_s: float) -> str | None:
    """None when it worked, else the last lines of its output."""
    try:
        result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return f"`{' '.join(argv)}` took over {timeout_s:.0f} s"
    if result.returncode == 0:
        return None
    tail = (result.stdout + result.stderr).strip().splitlines()[-3:]
    return f"`{' '.join(argv)}` exited {result.returncode}: " + " / ".join(line.strip() for line in tail)


def ensure_built(frontend: Path, dist: Path | None = None, log=print) -> BuildResult:
    dist = dist or frontend / "dist"
    built = dist / "index.html"
    if not (frontend / "package.json").exists():
        return BuildResult(dist if built.exists() else None, f"no web UI sources at {frontend}")
    # One build at a time per checkout: `splitgpt up` and a test may both ask.
    lock_name = "splitgpt-ui-build-" + hashlib.sha1(str(frontend.resolve()).encode()).hexdigest()[:12] + ".lock"
    with open(Path(tempfile.gettempdir()) / lock_name, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        install, build = needs_install(frontend), needs_build(frontend, dist)
        if not install and not build:
            return BuildResult(dist)
        npm, node = shutil.which("npm"), shutil.which("node")
        stale = " (serving the last build, which is out of date)" if built.exists() else ""
        if npm is None or node is None:
            return BuildResult(
                dist if built.exists() else None,
                f"Node.js and npm are needed to build the web UI and were not found{stale}; "
                f"install Node.js {'.'.join(map(str, MIN_NODE))}+ and npm",
            )
        version = node_version(node)
        if version is not None and version < MIN_NODE:
            return BuildResult(
                dist if built.exists() else None,
                f"the web UI needs Node.js {'.'.join(map(str, MIN_NODE))}+ (Vite 8) and found "
                f"{'.'.join(map(str, version))}{stale}",
            )
        if install:
            log("building the web UI: npm ci")
            if problem := _run([npm, "ci", "--no-audit", "--no-fund"], frontend, 600):
                return BuildResult(dist if built.exists() else None, f"the web UI did not build: {problem}")
        log("building the web UI: vite build")
        if problem := _run([npm, "run", "build"], frontend, 300):
            return BuildResult(dist if built.exists() else None, f"the web UI did not build: {problem}")
        return BuildResult(dist, built=True)
