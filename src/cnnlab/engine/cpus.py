"""How a training shares the CPU cores with other jobs: which cores are idle, how PyTorch's threads
wait for each other, how many of them to use. No torch here: the command line sets the wait
policy before PyTorch loads, and the training engine picks the threads (engine/train.py).

Why it matters (docs/benchmarks.md, "Training beside other jobs", has the measurements). PyTorch
runs each operation on all its threads, which meet at a barrier after it, and these networks'
operations take tens of microseconds. On idle cores, 2 threads that spin briefly at the barrier
(GOMP_SPINCOUNT=10000) are fastest; threads that sleep at once (OMP_WAIT_POLICY=passive) lose
22-25% to the wake-ups. Beside jobs that keep the cores busy, a spinning thread waits at nearly
every barrier for a partner the scheduler has put aside for a whole time slice: 2 such threads
trained 2-5x slower than 1. Threads that sleep at once are woken promptly instead, and beside
busy loops 2 of them beat 1 thread by 2-2.5x; beside other PyTorch jobs 1 thread was faster.
So on a busy machine the command line makes threads sleep at once, and the engine times a few
steps with each thread count and keeps the faster.
"""

from __future__ import annotations

import os
import time

IDLE_WINDOW = 0.2  # seconds of /proc/stat watched

# The commands whose long CPU-bound loops the wait policy is chosen for (the others keep the spin).
TRAINING_COMMANDS = ("train", "compare")


def idle_cpus(window: float = IDLE_WINDOW) -> float | None:
    """How many of the CPUs this process may use sat idle over `window` seconds (idle and iowait
    time over all time in /proc/stat, so other jobs, other users and a VM's steal count as busy).
    None where /proc/stat is not there (not Linux)."""
    try:
        allowed = {f"cpu{i}" for i in os.sched_getaffinity(0)}
        before = _cpu_times(allowed)
        time.sleep(window)
        after = _cpu_times(allowed)
    except (OSError, AttributeError, ValueError):
        return None
    idle = 0.0
    for cpu, (busy0, idle0) in before.items():
        busy1, idle1 = after.get(cpu, (busy0, idle0))
        total = (busy1 - busy0) + (idle1 - idle0)
        idle += (idle1 - idle0) / total if total > 0 else 1.0
    return idle


def _cpu_times(allowed: set) -> dict:
    """cpuN -> (busy, idle) jiffies since boot, for the allowed CPUs."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            name, *values = line.split()
            if name in allowed:
                v = [int(x) for x in values[:8]]  # user nice system idle iowait irq softirq steal
                out[name] = (v[0] + v[1] + v[2] + v[5] + v[6] + v[7], v[3] + v[4])
    return out


def free_cores() -> int | None:
    """Cores other jobs leave free right now (a core counts when idle 80% of the time); None: unknown."""
    idle = idle_cpus()
    return None if idle is None else int(idle + 0.2)


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # (not Linux)
        return os.cpu_count() or 1


def wait_policy(command: str | None) -> dict:
    """The OpenMP environment the command line sets before PyTorch loads (nothing when the user set
    their own): threads that sleep at once for a training on cores other jobs are using, else a
    short spin (libgomp's default spins ~300,000 times, which starves shared cores)."""
    if any(os.environ.get(name) for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")):
        return {}
    if command in TRAINING_COMMANDS:
        free = free_cores()
        if free is not None and free < cores():
            return {"OMP_WAIT_POLICY": "passive"}
    return {"GOMP_SPINCOUNT": "10000"}
