"""The checkpoint file: exact round trip of optimiser/scheduler state, and a clear error (never
unpickling, never a traceback) for truncated, tampered or foreign files."""

from __future__ import annotations

import pickle

import pytest
import torch
from safetensors.torch import save_file

from cnnlab.engine import checkpoint
from cnnlab.errors import RunError


def trained_state():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[2, 4], gamma=0.1)
    for _ in range(3):
        model(torch.randn(5, 4)).pow(2).mean().backward()
        opt.step()
        sched.step()
    return model, opt, sched


def write(path):
    model, opt, sched = trained_state()
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    state = {"epoch": 3, "optimizer": checkpoint.pack(opt.state_dict(), "optim", tensors),
             "scheduler": checkpoint.pack(sched.state_dict(), "sched", tensors)}
    checkpoint.write(path, tensors, state)
    return model, opt, sched


def test_round_trip_restores_optimizer_and_scheduler_exactly(tmp_path):
    path = tmp_path / checkpoint.CHECKPOINT
    model, opt, sched = write(path)
    tensors, state = checkpoint.read(path)
    assert state["epoch"] == 3
    m2 = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    m2.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model/")})
    o2 = torch.optim.Adam(m2.parameters(), lr=0.01)
    s2 = torch.optim.lr_scheduler.MultiStepLR(o2, milestones=[2, 4], gamma=0.1)
    o2.load_state_dict(checkpoint.unpack(state["optimizer"], tensors))
    s2.load_state_dict(checkpoint.unpack(state["scheduler"], tensors))
    # Continue both for two more steps on the same data: the parameters stay bit-identical,
    # which needs Adam's moments and step counts, and the milestone crossing at step 4.
    for m, o, s in ((model, opt, sched), (m2, o2, s2)):
        torch.manual_seed(1)
        for _ in range(2):
            o.zero_grad()
            m(torch.randn(5, 4)).pow(2).mean().backward()
            o.step()
            s.step()
    assert s2.get_last_lr() == sched.get_last_lr() == [pytest.approx(0.0001)]
    for a, b in zip(model.parameters(), m2.parameters()):
        assert torch.equal(a, b)


def test_truncated_checkpoint_is_one_line(tmp_path):
    path = tmp_path / checkpoint.CHECKPOINT
    write(path)
    raw = path.read_bytes()
    for cut in (5, 100, len(raw) - 10):
        path.write_bytes(raw[:cut])
        with pytest.raises(RunError, match="is truncated or corrupt .*; restore it from a backup or start a new run"):
            checkpoint.read(path)


def test_tampered_tensor_or_state_fails_the_checksum(tmp_path):
    path = tmp_path / checkpoint.CHECKPOINT
    write(path)
    raw = bytearray(path.read_bytes())
    flipped = bytearray(raw)
    flipped[-3] ^= 0x40  # one bit of the last tensor's data
    path.write_bytes(bytes(flipped))
    with pytest.raises(RunError, match="fails its SHA-256 check"):
        checkpoint.read(path)
    # Edit the JSON state (epoch 3 -> 9) keeping the header length: still caught.
    edited = bytes(raw).replace(b'\\"epoch\\": 3', b'\\"epoch\\": 9')
    assert edited != bytes(raw) and len(edited) == len(raw)
    path.write_bytes(edited)
    with pytest.raises(RunError, match="fails its SHA-256 check"):
        checkpoint.read(path)


def test_foreign_files_are_refused_and_pickles_never_run(tmp_path):
    weights = tmp_path / "model.safetensors"
    save_file({"w": torch.zeros(2)}, str(weights))
    with pytest.raises(RunError, match="is not a cnnlab checkpoint"):
        checkpoint.read(weights)

    class Evil:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    path = tmp_path / checkpoint.CHECKPOINT
    torch.save({"model": Evil()}, path)  # what a malicious .pt checkpoint looks like
    with pytest.raises(RunError, match="truncated or corrupt"):
        checkpoint.read(path)
    path.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(RunError, match="truncated or corrupt"):
        checkpoint.read(path)
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(RunError, match="has no checkpoint.safetensors to resume from"):
        checkpoint.read(tmp_path / "other" / checkpoint.CHECKPOINT)
