"""Where and how a training runs: the device, the precision, the CPU threads, torchrun's
processes, and signals.

Under torchrun each of WORLD_SIZE processes joins one process group (gloo on CPUs, NCCL on CUDA
GPUs) and takes its share of every global batch; rank 0 alone prints, evaluates and writes.
Ctrl-C, SIGTERM or SIGHUP is remembered (StopRequest) so the loop can finish its step, checkpoint
and leave.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import CnnlabError, Interrupted
from .config import TrainConfig


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CnnlabError("--device cuda was asked for but no CUDA GPU is available; use --device cpu or auto")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise CnnlabError("--device mps was asked for but Apple's MPS is not available; use --device cpu or auto")
    if name not in ("cuda", "mps"):
        raise CnnlabError(f"unknown device '{name}'; choose auto, cpu, cuda or mps")
    return torch.device(name)


def native_bf16(device: torch.device) -> bool:
    """Does this device compute bf16 natively (so autocast to bf16 is faster, not emulated)?"""
    if device.type == "cuda":
        # Without including_emulation=False, pre-Ampere GPUs (T4, V100) count too, where bf16 is emulated.
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        # The CPU's own bf16 instructions: AVX512-BF16 (Zen 4, Cooper Lake) or AMX (Sapphire Rapids).
        # Not oneDNN's _is_mkldnn_bf16_supported: it also says yes on AVX-512 CPUs that only emulate
        # bf16, where autocast made training slower. Measured on a 2-core Xeon (Ice Lake, no
        # AVX512-BF16), 2 threads: bf16 matmul 65 GFLOP/s against 303 in float32; the fast recipe
        # 7.3 s in bf16 against 4.1 s in float32, the lecture recipe 26.9 s against 19.3 s.
        # (Older torch without these checks: float32, the safe choice.)
        checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
        return any(check() for check in checks if check)
    return False


def resolve_precision(name: str, device: torch.device) -> str:
    """"fp32" or "bf16": what autocast will use for this run."""
    if name == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if name == "bf16" and device.type == "mps":
        raise CnnlabError("--precision bf16 is not supported on MPS; use --precision fp32 or auto")
    return name


# --- CPU threads ---------------------------------------------------------------------------------
# PyTorch runs each operation on all cores, its OpenMP threads meeting at a barrier after each one.
# These networks' operations take tens of microseconds, so when another job holds one of the cores,
# nearly every barrier waits for a thread the scheduler has put aside for a whole time slice
# (milliseconds): 2 threads beside 2 busy processes on 2 cores trained 5-100x slower than 1 thread
# (docs/benchmarks.md, "Training beside other jobs"). One thread never waits for another. So
# unless told, a training uses only the cores that were idle when it started.

IDLE_WINDOW = 0.25  # seconds of /proc/stat watched before a training starts


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


def choose_threads(asked: int | None, device: torch.device) -> int:
    """The intra-op threads a training uses: `asked` (--threads) when given; else, on a CPU, the
    cores idle right now (at least 1, at most PyTorch's own choice); OMP_NUM_THREADS, when set,
    and GPUs keep PyTorch's choice."""
    if asked:
        return asked
    default = torch.get_num_threads()
    if device.type != "cpu" or os.environ.get("OMP_NUM_THREADS"):
        return default
    idle = idle_cpus()
    # A core counts as free when it was idle at least 80% of the window.
    return default if idle is None else max(1, min(default, int(idle + 0.2)))


@dataclass
class Processes:
    """This process's place among torchrun's processes; rank 0 of 1 without torchrun."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # we joined torchrun's group, so we leave it when training ends

    @property
    def main(self) -> bool:
        return self.rank == 0

    def any(self, flag: bool) -> bool:
        """True on every process when it is True on any (so all stop at the same step)."""
        if self.world == 1:
            return flag
        t = torch.tensor([int(flag)], device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item())

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        if self.world == 1:
            return value
        value = value.clone()
        torch.distributed.all_reduce(value)
        return value / self.world


def start_processes(cfg: TrainConfig) -> Processes:
    """Join torchrun's process group (gloo on CPU, NCCL on CUDA) when WORLD_SIZE > 1."""
    device = resolve_device(cfg.device)
    world = env_world()
    if world == 1:
        return Processes(device=device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise CnnlabError(f"torchrun training runs on CPUs (gloo) or CUDA GPUs (NCCL), not on {device.type}; "
                          f"pass --device cpu")
    if cfg.batch_size % world:
        raise CnnlabError(f"--batch-size {cfg.batch_size} is the global batch and must split evenly over "
                          f"the {world} processes; use a multiple of {world}")
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Processes(dist.get_rank(), world, device, owns)


def env_rank() -> int:
    """This process's rank as torchrun sets it (0 without torchrun), known before the group is joined."""
    return int(os.environ.get("RANK", "0"))


def env_world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


# The signals that ask a training to stop: Ctrl-C, kill / a scheduler / a container stop, a closed terminal.
STOP_SIGNALS = [getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)]


class StopRequest:
    """SIGINT / SIGTERM / SIGHUP while training: remember it so the loop can finish its step,
    checkpoint and leave. The same signal again stops at once (KeyboardInterrupt; the last
    checkpoint stays intact: writes are atomic). A different one is not a repeat: on Ctrl-C,
    torchrun's workers get SIGINT from the terminal and SIGTERM from torchrun at the same moment.

    Requests nest (an ensemble's around each member's training): the inner one starts with a
    signal the outer one has already seen, and hands back one that arrived too late for it to act
    on, so no signal is lost between two members."""

    _active = None  # the innermost request in force in this process

    def __init__(self):
        self.signum = None
        self._old = {}
        self._outer = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._outer, StopRequest._active = StopRequest._active, self
            self.signum = self._outer.signum if self._outer else None
            for sig in STOP_SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum == signum:
            raise KeyboardInterrupt
        self.signum = self.signum or signum

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        if self._old:
            StopRequest._active = self._outer
            if self._outer and self._outer.signum is None:
                self._outer.signum = self.signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum or signal.SIGINT).name

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or signal.SIGINT)


def interrupted(stop: StopRequest, run_dir, line: str, resume: bool = True) -> Interrupted:
    """The one line a stop prints: `line` (the signal and what was saved), then how to go on."""
    if run_dir is None or not resume:
        return Interrupted(line, stop.exit_code, run_dir)
    return Interrupted(f"{line}. Resume with: cnnlab train --resume {run_dir}", stop.exit_code, run_dir)
