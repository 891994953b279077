"""cnnlab code: the model class and the training step it prints are the code that runs."""

from __future__ import annotations

import json

import torch
from torch import nn

import cnnlab
from cnnlab.engine.train import _Run
from conftest import SRC, assert_usage_error, run_main


def test_prints_simple_cnn_and_the_training_step(capsys):
    code, out, err = run_main(capsys, "code")
    assert code == 0, err
    model_part, step_part = out.split("# One training step")
    assert model_part.startswith("# The model: simple_cnn - cnnlab/engine/models.py (SimpleCNN)")
    # The printed class is a working network: the lecture's 206,922 parameters, 10 scores per image.
    source = model_part[model_part.index("class SimpleCNN"):]
    scope = {"nn": nn, "torch": torch}
    exec(source, scope)
    net = scope["SimpleCNN"]()
    assert sum(p.numel() for p in net.parameters()) == 206_922
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    # The step: forward and loss, backward, optimiser step, in that order.
    order = [step_part.index(s) for s in ("loss = F.cross_entropy(self.forward(x), y", "loss.backward()",
                                          "self.optimizer.step()")]
    assert order == sorted(order)


def test_the_printed_step_is_the_one_training_runs(data_dir, monkeypatch):
    calls = []
    step = _Run._step

    def counted(self, x, y):
        calls.append(len(y))
        return step(self, x, y)

    monkeypatch.setattr(_Run, "_step", counted)
    cnnlab.train(model="simple_cnn", limit_train=256, limit_test=100, batch_size=64, epochs=2, threads=1,
                 data_dir=data_dir, save=False, progress=False, log=None)
    assert calls == [64] * 8  # every batch of both epochs went through _Run._step


def test_json_names_file_and_lines_of_each_part(capsys):
    code, out, _ = run_main(capsys, "code", "lenet5", "--json")
    parts = json.loads(out)["sections"]
    assert [p["name"] for p in parts] == ["LeNet5", "_Run._step"]
    for p in parts:
        lines = (SRC / p["file"]).read_text().splitlines()[p["first_line"] - 1:p["last_line"]]
        assert "\n".join(lines).strip().startswith(p["source"].splitlines()[0].strip())
        assert len(lines) == len(p["source"].rstrip("\n").splitlines())
    code, _, err = run_main(capsys, "code", "resnet")
    assert_usage_error(code, err, "unknown model 'resnet'")
