"""What the benchmark ran on: the CPU (/proc/cpuinfo) and who else was using it (/proc/stat).

On a shared machine a measurement can be slowed by other people's work by
a factor of ten, seconds before or after its pair is measured undisturbed.
`CpuWatch` counts, for each measurement, the CPU time spent on the machine by
processes that are not this benchmark's (itself and all its descendants: the
baseline process, the stack's launcher and services) and the time the
hypervisor stole, so the report can say how quiet the machine was.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

# The /proc/cpuinfo flags that decide which kernels torch (oneDNN) can use.
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # either one: bf16 matrix products in hardware


def cpu_facts(cpuinfo: str | None = None) -> dict:
    """The CPU's model, cores, and the flags that matter to torch's kernels, from /proc/cpuinfo."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    model, flags, cores_per_package, package = None, set(), {}, None
    for line in cpuinfo.splitlines():
        key, _, value = (part.strip() for part in line.partition(":"))
        if key == "model name" and model is None:
            model = value
        elif key == "flags" and not flags:
            flags = set(value.split())
        elif key == "physical id":
            package = value
        elif key == "cpu cores" and value.isdigit():
            cores_per_package[package] = int(value)
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count()
    try:
        import torch

        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # an old torch: the flags say enough
        capability = None
    has = {f: f in flags for f in CPU_FLAGS}
    return {
        "model": model or platform.processor() or platform.machine(),
        "logical_cpus": os.cpu_count(),
        "physical_cores": sum(cores_per_package.values()) or None,
        "usable_cpus": usable,
        "flags": has,
        "flags_known": bool(flags),
        "bf16_units": any(has[f] for f in BF16_FLAGS),
        "torch_cpu_capability": capability,
    }


def cpu_line(cpu: dict) -> str:
    cores = f"{cpu['logical_cpus']} logical CPUs"
    if cpu["physical_cores"]:
        cores += f" ({cpu['physical_cores']} physical cores)"
    if cpu["usable_cpus"] != cpu["logical_cpus"]:
        cores += f", {cpu['usable_cpus']} usable"
    flags = ", ".join(f"{f} {'yes' if v else 'no'}" for f, v in cpu["flags"].items())
    if not cpu["flags_known"]:
        flags = "flags unknown (no /proc/cpuinfo)"
    capability = f"; torch kernels: {cpu['torch_cpu_capability']}" if cpu["torch_cpu_capability"] else ""
    return f"CPU: {cpu['model']}, {cores}\n  {flags}; bf16 units: {'yes' if cpu['bf16_units'] else 'no'}{capability}"


class CpuWatch:
    """CPU use by others than this process tree, and steal, between a snapshot and now.

    Figures are in cores (CPU seconds per second of wall time); without /proc they are None."""

    def __init__(self, root_pid: int | None = None) -> None:
        self.root = root_pid or os.getpid()
        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def snapshot(self) -> tuple | None:
        try:
            return time.monotonic(), *self._system(), self._tree()
        except (OSError, ValueError, IndexError):
            return None

    def since(self, snap: tuple | None) -> dict:
        now = self.snapshot()
        if snap is None or now is None or now[0] <= snap[0]:
            return {"other_cores": None, "steal_cores": None}
        wall = now[0] - snap[0]
        busy, steal, ours = (now[i] - snap[i] for i in (1, 2, 3))
        return {
            "other_cores": round(max(0.0, (busy - ours) / self.tick / wall), 3),
            "steal_cores": round(max(0.0, steal / self.tick / wall), 3),
        }

    def measure(self, fn, *args, **kwargs) -> tuple:
        """(fn's result, the CPU use by others while it ran)."""
        snap = self.snapshot()
        result = fn(*args, **kwargs)
        return result, self.since(snap)

    @staticmethod
    def _system() -> tuple[int, int]:
        # cpu  user nice system idle iowait irq softirq steal guest guest_nice (ticks)
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
        return user + nice + system + irq + softirq, steal  # guest time is inside user already

    def _tree(self) -> int:
        """CPU time of the root and all its descendants, the reaped ones included, in ticks."""
        parent, ticks = {}, {}
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                stat = (proc / "stat").read_text()
            except OSError:  # gone meanwhile
                continue
            rest = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
            pid = int(proc.name)
            parent[pid] = int(rest[1])
            # utime, stime, and cutime, cstime: a descendant that exits and is reaped
            # moves its time into its parent's, so the tree's total stays whole.
            ticks[pid] = sum(int(v) for v in rest[11:15])
        children: dict[int, list[int]] = {}
        for pid, ppid in parent.items():
            children.setdefault(ppid, []).append(pid)
        total, todo = 0, [self.root]
        while todo:
            pid = todo.pop()
            total += ticks.get(pid, 0)
            todo += children.get(pid, [])
        return total
