"""Thread counts sized to the CPUs this process may use, set before torch is imported.

torch's OpenMP runtime (libgomp) reads its settings once, when it initialises: at ``import torch``.
So the front-ends call :func:`configure` first thing in ``main``; everything is a default (an
environment variable the user set wins), and child processes inherit the same settings.

* Thread counts: libgomp and the cat-kernels pool both size themselves to the CPU affinity mask,
  but neither knows about a cgroup CPU quota (a container limited to 2 CPUs on a 64-core host
  would start 64 threads, each waiting on the others at every barrier).
* How OpenMP workers wait: by default libgomp spins for milliseconds between parallel regions.
  On a quiet machine that is what makes small back-to-back ops fast; beside another CPU-bound
  process it is ruinous: a spinning worker never sleeps, so the scheduler never lets it preempt
  the other process when work arrives, and every barrier waits for a time slice (SmolLM2 sampling
  3.1x slower beside one burner, measured in benchmarks/results/contention_2026-12-03.md). Sleeping
  waits (OMP_WAIT_POLICY=PASSIVE) make the contended run nearly as fast as a quiet one but cost
  ~40% on a quiet VM (a halted vCPU wakes slowly). So the waits are chosen from what the machine
  does when the command starts: PASSIVE when other processes keep at least
  ``BUSY_THRESHOLD`` CPUs busy, libgomp's default otherwise.
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

#: CPUs kept busy by other processes at start from which OpenMP's waits sleep instead of spin
BUSY_THRESHOLD = 0.5
#: how long the start-up load is sampled (seconds)
SAMPLE_S = 0.3
#: what configure() chose, for the commands' summaries
chosen: str = ""

#: the cgroup file system (overridable for tests)
CGROUP_ROOT = Path("/sys/fs/cgroup")


def _affinity() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def _quota_v2(folder: Path) -> float | None:
    try:
        quota, period = (folder / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return int(quota) / int(period)
    except (ValueError, ZeroDivisionError):
        return None


def _quota_v1(folder: Path) -> float | None:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def cgroup_cpus(root: Path | None = None, self_cgroup: str | None = None) -> float | None:
    """The CPU quota of this process's cgroup and its ancestors (v2 ``cpu.max``, v1
    ``cpu.cfs_quota_us``), in CPUs; None when there is none."""
    root = root or CGROUP_ROOT
    if self_cgroup is None:
        try:
            self_cgroup = Path("/proc/self/cgroup").read_text()
        except OSError:
            return None
    limits: list[float] = []
    for line in self_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, rel = parts
        rel = rel.strip().lstrip("/")
        if controllers == "":  # v2 unified hierarchy: every level may set cpu.max
            bases = [root]
            reader = _quota_v2
        elif "cpu" in controllers.split(","):
            bases = [root / "cpu", root / "cpu,cpuacct", root / controllers]
            reader = _quota_v1
        else:
            continue
        for base in bases:
            folder = base / rel if rel else base
            while True:
                q = reader(folder)
                if q is not None:
                    limits.append(q)
                if folder == base:
                    break
                folder = folder.parent
    return min(limits) if limits else None


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by its cgroup's CPU quota (rounded
    up: a quota of 1.5 CPUs still runs two threads usefully)."""
    n = _affinity()
    quota = cgroup_cpus()
    if quota is not None:
        n = min(n, max(1, math.ceil(quota - 1e-9)))
    return max(1, n)


def _cpu_jiffies() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            vals = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)  # idle + iowait
    total = sum(vals[:8])  # guest time is already inside user/nice
    return total - idle, total


def busy_elsewhere(window: float = SAMPLE_S) -> float | None:
    """CPUs kept busy by other processes over ``window`` seconds (this process's own CPU time
    subtracted); None where /proc/stat is not available."""
    a = _cpu_jiffies()
    if a is None:
        return None
    own0, t0 = sum(os.times()[:2]), time.perf_counter()
    time.sleep(window)
    b = _cpu_jiffies()
    own1, t1 = sum(os.times()[:2]), time.perf_counter()
    if b is None or t1 <= t0:
        return None
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    busy = (b[0] - a[0]) / hz - (own1 - own0)
    return max(0.0, busy / (t1 - t0))


def configure(env: dict | None = None, busy: float | None = -1.0) -> int:
    """Default the thread settings in ``env`` (``os.environ``) before torch is imported: the
    thread counts, and sleeping OpenMP waits when the machine is busy (``busy``: CPUs busy
    elsewhere; measured when left at -1). Returns the thread count chosen."""
    global chosen
    env = os.environ if env is None else env
    n = available_cpus()
    if env is os.environ and "torch" in sys.modules:  # libgomp read its settings already
        import torch

        chosen = f"{torch.get_num_threads()} threads (torch was imported before the command started)"
        return n
    env.setdefault("OMP_NUM_THREADS", str(n))
    env.setdefault("CAT_KERNELS_NUM_THREADS", str(n))
    threads = f"{env['OMP_NUM_THREADS']} threads"
    if "OMP_WAIT_POLICY" in env or "GOMP_SPINCOUNT" in env:
        chosen = f"{threads}, OpenMP waits as the environment sets them"
        return n
    if busy is not None and busy < 0:
        busy = busy_elsewhere()
    if busy is not None and busy >= BUSY_THRESHOLD:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
        chosen = f"{threads}, OpenMP waits sleep ({busy:.1f} CPUs busy elsewhere at start)"
    else:
        chosen = f"{threads}, OpenMP waits spin (machine quiet at start)"
    return n
