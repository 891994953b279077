"""Checkpoints: everything a run needs to continue exactly where it stopped, saved and restored side by side.

One safetensors file, checkpoint.safetensors in the run folder: every tensor (weights, optimiser
moments, random-number-generator states) as a tensor, and all other state as JSON in the file's
metadata, with a SHA-256 over both. Loading parses JSON and raw tensor bytes only - never pickle -
so a checkpoint from anywhere cannot run code, and a damaged or edited one is caught by the
checksum. One file means one atomic rename per checkpoint.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from ..errors import RunError
from ..files import atomic_write

CHECKPOINT = "checkpoint.safetensors"
FORMAT = "cnnlab-checkpoint-1"


def save(run_dir: Path, cfg, model, optimizer, scheduler, generators: dict, best: dict | None, state: dict) -> None:
    """Write the model, optimiser, schedule, random states, the best weights so far and `state`."""
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    tensors["rng/torch"] = torch.get_rng_state()
    device = next(model.parameters()).device
    if device.type == "cuda":
        tensors["rng/cuda"] = torch.cuda.get_rng_state(device)
    tensors.update({f"rng/{name}": g_state for name, g_state in generators.items()})
    tensors.update({f"best/{k}": v for k, v in (best or {}).items()})
    state = {**state, "config": asdict(cfg),
             "optimizer": pack(optimizer.state_dict(), "optim", tensors),
             "scheduler": pack(scheduler.state_dict(), "sched", tensors) if scheduler else None}
    write(run_dir / CHECKPOINT, tensors, state)


def restore(tensors: dict, state: dict, model, optimizer, scheduler, generators: dict, where: str) -> dict | None:
    """Put a checkpoint back into a freshly built model, optimiser, schedule and generators.

    Returns the best weights so far (None without early stopping). `where` names the run in errors.
    """
    try:
        model.load_state_dict(with_prefix(tensors, "model/"))
        optimizer.load_state_dict(unpack(state["optimizer"], tensors))
        # Checkpoints store tensors contiguous; give each moment its parameter's memory layout
        # again (channels_last), since the fused Adam kernel pairs elements in memory order.
        for p, moments in optimizer.state.items():
            for k, v in moments.items():
                if v.shape == p.shape and v.stride() != p.stride():
                    moments[k] = torch.empty_like(p, dtype=v.dtype).copy_(v)
        if scheduler:
            scheduler.load_state_dict(unpack(state["scheduler"], tensors))
    except (RuntimeError, KeyError, ValueError) as e:
        raise RunError(f"{where} does not fit this model and optimiser: {' '.join(str(e).split())[:200]}") from None
    torch.set_rng_state(tensors["rng/torch"])
    device = next(model.parameters()).device
    if "rng/cuda" in tensors and device.type == "cuda":
        torch.cuda.set_rng_state(tensors["rng/cuda"], device)
    for name, generator in generators.items():
        generator.set_state(tensors[f"rng/{name}"])
    return with_prefix(tensors, "best/") or None


def with_prefix(tensors: dict, prefix: str) -> dict:
    """The tensors stored under `prefix`, with the prefix taken off their names."""
    return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}


def pack(obj, prefix: str, tensors: dict):
    """Nested state (an optimiser or scheduler state_dict) -> JSON-able, moving tensors into `tensors`."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().cpu().contiguous()
        return {"__tensor__": prefix}
    if isinstance(obj, Counter):  # MultiStepLR's milestones: a plain dict would break its lookups
        return {"__counter__": [[pack(k, f"{prefix}/k", tensors), v] for k, v in obj.items()]}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {"__dict__": {k: pack(v, f"{prefix}/{k}", tensors) for k, v in obj.items()}}
        return {"__items__": [[k, pack(v, f"{prefix}/{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [pack(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [pack(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} at {prefix} in a checkpoint")


def unpack(obj, tensors: dict):
    """The inverse of pack."""
    if isinstance(obj, list):
        return [unpack(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    (tag, value), = obj.items()
    if tag == "__tensor__":
        return tensors[value]
    if tag == "__counter__":
        return Counter({unpack(k, tensors): v for k, v in value})
    if tag == "__dict__":
        return {k: unpack(v, tensors) for k, v in value.items()}
    if tag == "__items__":
        return {k: unpack(v, tensors) for k, v in value}
    if tag == "__tuple__":
        return tuple(unpack(v, tensors) for v in value)
    raise ValueError(f"unknown tag {tag}")


def _digest(tensors: dict, state_json: str) -> str:
    h = hashlib.sha256(state_json.encode())
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"{name}|{t.dtype}|{list(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def write(path, tensors: dict, state: dict) -> None:
    """Write tensors + JSON-able state as one checkpoint file, atomically."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    state_json = json.dumps(state)
    metadata = {"format": FORMAT, "state": state_json, "sha256": _digest(tensors, state_json)}
    atomic_write(path, save_tensors(tensors, metadata=metadata))


def read(path) -> tuple[dict, dict]:
    """(tensors, state) of a checkpoint, verified; RunError with one line for anything wrong."""
    path = Path(path)
    fix = "restore it from a backup or start a new run"
    if not path.is_file():
        raise RunError(f"{path.parent} has no {path.name} to resume from (it was stopped before training "
                       f"began); start a new run")
    raw = path.read_bytes()
    try:
        header_len = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8:8 + header_len])
        metadata = header.get("__metadata__") or {}
        tensors = load_tensors(raw)
    except (SafetensorError, ValueError, UnicodeDecodeError, AttributeError, RecursionError) as e:
        detail = " ".join(str(e).split())[:120] or "unreadable header"
        raise RunError(f"{path} is truncated or corrupt ({detail}); {fix}") from None
    if metadata.get("format") != FORMAT:
        raise RunError(f"{path} is not a cnnlab checkpoint (format {metadata.get('format')!r}, "
                       f"expected {FORMAT!r}); {fix}")
    state_json = metadata.get("state", "")
    if _digest(tensors, state_json) != metadata.get("sha256"):
        raise RunError(f"{path} fails its SHA-256 check: it was modified or damaged after it was "
                       f"written; {fix}")
    try:
        state = json.loads(state_json)
    except (ValueError, RecursionError):  # (a header nested 100,000 deep: RecursionError)
        state = None
    if not isinstance(state, dict):
        raise RunError(f"{path} holds a state cnnlab did not write (not a JSON object); {fix}")
    return tensors, state
