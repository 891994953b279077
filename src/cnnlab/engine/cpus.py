"""How busy the CPU cores are: what the training engine looks at before choosing its threads.

Why it matters (docs/benchmarks.md, "Training beside other jobs", has the measurements). PyTorch
runs each operation on all its threads, which meet at a barrier after it, and these networks'
operations take tens of microseconds. Beside jobs that keep cores busy, a thread mostly waits at
the barrier for a partner the scheduler has put aside for a whole time slice: with 2 busy
processes on 2 cores, 2 threads trained 1.2-2x slower than 1 thread (up to 4.4x slower when
other users' jobs were running too), while on idle cores 2 threads were 1.1-1.7x faster. So a
training uses only the cores other jobs leave free when it starts (engine/train.py). Tried and
dropped: timing a few steps with each thread count (short alternating samples flatter the larger
count: a thread that slept through the other count's steps is scheduled at once when it wakes;
in whole trainings beside busy processes it picked 2 threads half the time, at half the speed of
1), and OMP_WAIT_POLICY=passive (it cost 2 threads 11-64% on idle cores and never beat 1 thread
beside busy processes at 2-3 load). No torch here.
"""

from __future__ import annotations

import os
import time

IDLE_WINDOW = 0.1  # seconds of /proc/stat watched, at least (10 ticks of a 100 Hz clock per core)


class Watch:
    """Watches the cores from now on: `free_cores()` later says how many other jobs left free.

    Started before the work that precedes training (loading data, building the network), it
    watches that time instead of waiting: this process's own CPU time over the window counts as
    free, since training takes those cores over. Sleeps only what is missing of IDLE_WINDOW.
    """

    def __init__(self):
        self.allowed = _allowed()
        self.start, self.own = time.perf_counter(), time.process_time()
        self.times = _cpu_times(self.allowed) if self.allowed else None

    def idle_cpus(self) -> float | None:
        """How many of the CPUs this process may use sat idle since the watch began (idle and
        iowait time over all time in /proc/stat, so other jobs, other users and a VM's steal count
        as busy), plus the cores this process kept busy itself. None where /proc/stat is not there."""
        if not self.times:
            return None
        time.sleep(max(0.0, IDLE_WINDOW - (time.perf_counter() - self.start)))
        try:
            after = _cpu_times(self.allowed)
        except (OSError, ValueError):
            return None
        idle = 0.0
        for cpu, (busy0, idle0) in self.times.items():
            busy1, idle1 = after.get(cpu, (busy0, idle0))
            total = (busy1 - busy0) + (idle1 - idle0)
            idle += (idle1 - idle0) / total if total > 0 else 1.0
        own = (time.process_time() - self.own) / (time.perf_counter() - self.start)
        return min(float(len(self.times)), idle + own)

    def free_cores(self) -> int | None:
        """Cores other jobs leave free (a core counts when free 80% of the time); None: unknown."""
        idle = self.idle_cpus()
        return None if idle is None else int(idle + 0.2)


def idle_cpus() -> float | None:
    """How many cores sat idle over the next IDLE_WINDOW seconds (see Watch.idle_cpus)."""
    return Watch().idle_cpus()


def free_cores() -> int | None:
    """Cores other jobs leave free over the next IDLE_WINDOW seconds (see Watch.free_cores)."""
    return Watch().free_cores()


def _allowed() -> set:
    try:
        return {f"cpu{i}" for i in os.sched_getaffinity(0)}
    except (OSError, AttributeError):
        return set()


def _cpu_times(allowed: set) -> dict:
    """cpuN -> (busy, idle) jiffies since boot, for the allowed CPUs ({} where unreadable)."""
    out = {}
    try:
        with open("/proc/stat") as f:
            for line in f:
                name, *values = line.split()
                if name in allowed:
                    v = [int(x) for x in values[:8]]  # user nice system idle iowait irq softirq steal
                    out[name] = (v[0] + v[1] + v[2] + v[5] + v[6] + v[7], v[3] + v[4])
    except (OSError, ValueError):
        return {}
    return out
