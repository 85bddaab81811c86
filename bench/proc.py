"""CPU and memory accounting from /proc: our own processes against everything else.

``own_cpu()`` is the CPU time (seconds) of this process, its reaped children and every live
child registered with :func:`track`; ``others`` during a window is the machine's busy time
(``/proc/stat``, steal included: it is CPU our cores did not give us) less that.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass

TICK = os.sysconf("SC_CLK_TCK")
_tracked: set[int] = set()


def track(pid: int) -> None:
    """Count a live child's CPU as ours (until :func:`untrack`, called once it is reaped)."""
    _tracked.add(pid)


def untrack(pid: int) -> None:
    _tracked.discard(pid)


def machine_busy() -> float:
    """Busy CPU-seconds of the whole machine since boot (user+nice+system+irq+softirq+steal)."""
    with open("/proc/stat") as f:
        parts = f.readline().split()
    v = [int(x) for x in parts[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = v[:7]
    steal = v[7] if len(v) > 7 else 0
    return (user + nice + system + irq + softirq + steal) / TICK


def pid_cpu(pid: int, children: bool = True) -> float:
    """utime+stime (+cutime+cstime) of a live process, seconds; 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            raw = f.read()
    except OSError:
        return 0.0
    fields = raw[raw.rindex(")") + 2 :].split()
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return (utime + stime + ((cutime + cstime) if children else 0)) / TICK


def main_thread_cpu(pid: int) -> float:
    """utime+stime of a process's main thread (the event loop in our servers), seconds."""
    try:
        with open(f"/proc/{pid}/task/{pid}/stat") as f:
            raw = f.read()
    except OSError:
        return 0.0
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def tree(pid: int) -> list[int]:
    """``pid`` and its live descendants (a multi-process server: supervisor, engine, workers)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            continue
    return out


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process tree: every live member, plus the children it has reaped."""
    return pid_cpu(pid, children=True) + sum(pid_cpu(p, children=False) for p in tree(pid)[1:])


def own_cpu() -> float:
    s = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime
    return total + sum(tree_cpu(p) for p in list(_tracked))


def memory(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak RSS) of a live process, MiB."""
    out: dict[str, float] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    k, v = line.split(":")
                    out[k] = int(v.split()[0]) / 1024
    except OSError:
        pass
    return {"rss_mib": out.get("VmRSS", float("nan")), "peak_rss_mib": out.get("VmHWM", float("nan"))}


@dataclass
class Window:
    """Machine CPU over a time window, split into ours and others' (in cores)."""

    t0: float
    busy0: float
    own0: float
    wall: float = 0.0
    others_cores: float = 0.0
    own_cores: float = 0.0

    @classmethod
    def start(cls) -> Window:
        return cls(time.monotonic(), machine_busy(), own_cpu())

    def stop(self) -> Window:
        self.wall = max(time.monotonic() - self.t0, 1e-9)
        busy = machine_busy() - self.busy0
        own = own_cpu() - self.own0
        self.own_cores = own / self.wall
        self.others_cores = max(busy - own, 0.0) / self.wall
        return self


def wait_idle(limit_s: float, threshold: float = 0.10, window_s: float = 2.0) -> dict[str, float | bool]:
    """Wait (at most ``limit_s``) until other processes use < ``threshold`` of a core for
    ``window_s``. Returns how long it waited, the last window's figure, and whether it got there."""
    t0 = time.monotonic()
    last = float("nan")
    while True:
        w = Window.start()
        time.sleep(window_s)
        last = w.stop().others_cores
        if last < threshold:
            return {"waited_s": round(time.monotonic() - t0, 1), "others_cores": last, "idle": True}
        if time.monotonic() - t0 >= limit_s:
            return {"waited_s": round(time.monotonic() - t0, 1), "others_cores": last, "idle": False}
