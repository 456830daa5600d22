"""How many threads specad computes with: the cores it may use that other programs leave idle.

A model beside a camera shares the machine with the acquisition software. Torch's default, one
thread per core, then makes its threads wait on each other while another process holds a core,
which runs slower than fewer threads would (benchmarks/speed/bands_results.md). So the count is
chosen at start from the cores this process may use (affinity, a container's CPU quota) less
those other processes are keeping busy, measured over a short sample; ``--threads`` overrides it.
This module imports no torch: the choice goes to the environment before torch starts.
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

from specad.errors import SpecadError

SAMPLE_SECONDS = 0.1
"""How long the CPU counters are sampled to see how busy the cores are."""
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
"""Where the choice goes: torch (and the libraries it loads) read these when they start."""


def usable_cores() -> int:
    """CPU cores this process may run on: its affinity (which containers and ``taskset``
    narrow), less where a cgroup CPU quota allows fewer; at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_quota()
    return max(1, min(cores, quota) if quota else cores)


def _cgroup_quota() -> int | None:
    """Whole cores a cgroup v2 CPU limit allows (``cpu.max``), rounded up; None where unlimited."""
    try:
        limit, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if limit == "max" else max(1, math.ceil(int(limit) / int(period)))
    except (OSError, ValueError):
        return None


def busy_cores(seconds: float = SAMPLE_SECONDS) -> float:
    """How many of this process's cores other programs kept busy over ``seconds`` (this
    process sleeps meanwhile), from the per-CPU counters of ``/proc/stat``; 0 where there are
    none."""
    try:
        cpus = {f"cpu{i}" for i in os.sched_getaffinity(0)}
    except AttributeError:
        return 0.0
    before = _cpu_times(cpus)
    time.sleep(seconds)
    after = _cpu_times(cpus)
    busy = 0.0
    for cpu, (idle, total) in after.items():
        if cpu in before and total > before[cpu][1]:
            busy += 1 - (idle - before[cpu][0]) / (total - before[cpu][1])
    return busy


def _cpu_times(cpus: set[str]) -> dict[str, tuple[int, int]]:
    """Idle (idle + iowait) and total jiffies of each of ``cpus``."""
    times = {}
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            name, *fields = line.split()
            if name in cpus:
                values = [int(v) for v in fields[:8]]
                times[name] = (values[3] + values[4], sum(values))
    except (OSError, ValueError, IndexError):
        return {}
    return times


def choose_threads(requested: int | None = None) -> int:
    """``requested`` (checked against the usable cores), else the usable cores that other
    programs leave idle, at least 1."""
    cores = usable_cores()
    if requested is not None:
        if not 1 <= requested <= cores:
            raise SpecadError(f"--threads must be 1..{cores} (the usable cores), got {requested}")
        return requested
    return max(1, min(cores, round(cores - busy_cores())))


def set_threads(requested: int | None = None) -> None:
    """Choose the thread count (`choose_threads`) and apply it: in the environment, where torch
    reads it when it starts (and child processes inherit it), and in torch if it already runs.
    A thread count already in the environment (``OMP_NUM_THREADS``) is the user's choice and is
    kept unless ``requested`` overrides it."""
    if requested is None and os.environ.get("OMP_NUM_THREADS", "").strip():
        return
    threads = choose_threads(requested)
    for name in THREAD_VARIABLES:
        os.environ[name] = str(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
