"""The optimisers a run can use: torch.optim's own, so that a process that trains need not import
torch._dynamo.

torch.optim keeps torch.compile out of its methods with wrappers, and those wrappers import
torch._dynamo the first time one runs: 1.1 s of the ~4.9 s a whole `cnnlab train --recipe fast`
process took, for a compiler that a run without --compile never uses (docs/benchmarks.md,
"Records"). Two wrappers are involved:
- every step() runs under one that imports torch._dynamo and marks graph breaks around the update
  (no-ops outside a compiled graph). The classes below run the same update under torch.no_grad(),
  which is all that wrapper does in eager mode; training never compiles a step (--compile compiles
  the network's forward only).
- add_param_group, zero_grad, state_dict and load_state_dict import it to build, once, a version of
  themselves that the compiler skips, and cache it on the function. `leave_dynamo_unloaded` fills
  that cache with the function itself. It changes torch for the whole process, so only the command
  line calls it (train and compare, whose processes compile no optimiser method: --compile
  compiles the network's forward); API users may call it too, and keep torch as it is otherwise.
The updates are torch's: tests/test_engine.py checks that a run gives the same weights, to the
bit, with and without this.
"""

from __future__ import annotations

import inspect

import torch

from .config import TrainConfig


def _eager_step(cls: type[torch.optim.Optimizer]) -> type[torch.optim.Optimizer]:
    """cls with its step() run under torch.no_grad() instead of torch.optim's compile guard."""
    update = inspect.unwrap(cls.step)

    def step(self, closure=None):
        with torch.no_grad():
            return update(self, closure)

    step.__doc__ = update.__doc__
    return type(cls.__name__, (cls,), {"step": step, "__module__": __name__})


Adam, AdamW, SGD = _eager_step(torch.optim.Adam), _eager_step(torch.optim.AdamW), _eager_step(torch.optim.SGD)


def _fused(params) -> dict:
    """fused=True where PyTorch has a fused Adam kernel for these tensors: one kernel per step
    instead of a dozen foreach passes (0.43 ms against 1.12 ms per step for fast_cnn, 1 thread)."""
    return {"fused": True} if all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params) else {}


OPTIMIZERS = {
    "adam": lambda params, c: Adam(params, lr=c.lr, weight_decay=c.weight_decay, **_fused(params)),
    "adamw": lambda params, c: AdamW(params, lr=c.lr, weight_decay=c.weight_decay, **_fused(params)),
    "sgd": lambda params, c: SGD(params, lr=c.lr, momentum=0.9, nesterov=True, weight_decay=c.weight_decay),
}


def build(params: list[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    return OPTIMIZERS[cfg.optimizer](params, cfg)


def leave_dynamo_unloaded() -> None:
    """Let this process's optimisers run without importing torch._dynamo (see the module's text).
    For processes that never call torch.compile; where torch's wrappers are not what this expects
    it does nothing, and torch._dynamo loads as before."""
    for name in ("add_param_group", "zero_grad", "state_dict", "load_state_dict"):
        method = getattr(torch.optim.Optimizer, name)
        plain = getattr(method, "__wrapped__", None)
        if plain is None or "__dynamo_disable" not in method.__code__.co_consts:
            continue
        plain.__dynamo_disable = plain
