"""The training engine's recipes, precision and --target-accuracy (issue 5). Correctness only;
speed is measured by benchmarks/time_to_accuracy.py, never asserted here."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict

import pytest
import torch
from safetensors.torch import load_file

import cnnlab
from cnnlab.engine import config as recipes
from cnnlab.engine import cpus
from cnnlab.engine.config import TrainConfig
from cnnlab.engine.models import build_model
from cnnlab.engine.processes import resolve_precision
from cnnlab.runs.evaluate import evaluate
from conftest import ROOT, cli_flags, probe, run_cli


def _lecture_code():
    spec = importlib.util.spec_from_file_location("lecture_code", ROOT / "benchmarks" / "lecture_code.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lecture_recipe_is_the_default_and_the_lectures_numbers():
    lecture = recipes.config("lecture")
    default = TrainConfig()
    assert {k: v for k, v in asdict(lecture).items()} == asdict(default)
    assert (lecture.model, lecture.batch_size, lecture.optimizer, lecture.lr, lecture.epochs) == \
        ("simple_cnn", 64, "adam", 1e-3, 2)
    assert lecture.augment == "none" and lecture.schedule == "constant" and lecture.label_smoothing == 0


def test_engine_lecture_recipe_matches_torchvision_dataloader_path(data_dir):
    # Same recipe, same subset, two seeds each: the engine's batched uint8 pipeline (bf16 where
    # native) must land in the same accuracy band as the lecture's DataLoader + ToTensor code.
    lecture_code = _lecture_code()
    subset = dict(limit_train=4000, limit_test=2000)
    ref = [lecture_code.run(str(data_dir), epochs=1, seed=s, verbose=False, **subset) for s in (0, 1)]
    eng = [cnnlab.train(recipes.config("lecture", epochs=1, seed=s, **subset), data_dir=data_dir, save=False,
                        progress=False, log=None).test_accuracy for s in (0, 1)]
    assert min(ref) > 0.8 and min(eng) > 0.8, (ref, eng)
    assert abs(sum(ref) / 2 - sum(eng) / 2) < 0.025, (ref, eng)


def test_target_accuracy_stops_once_met(data_dir, tmp_path):
    cfg = recipes.config("fast", limit_train=6000, limit_test=1000, epochs=3, batch_size=128, target_accuracy=0.9,
                         eval_every=5)
    result = cnnlab.train(cfg, data_dir=data_dir, out=tmp_path / "run", progress=False, log=None)
    assert result.target_seconds is not None and result.target_seconds <= result.train_seconds
    assert result.test_accuracy >= 0.9
    # It stopped early: in the first epoch, after a multiple of 5 steps, not after 3 full epochs.
    assert len(result.epochs) == 1
    assert result.target_images < 6000 and result.target_images % (5 * 128) == 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["test_accuracy"] >= 0.9
    assert result.to_json()["target_reached"] is True


def test_target_accuracy_not_reached_runs_all_epochs(data_dir):
    cfg = recipes.config("fast", limit_train=1000, limit_test=500, epochs=2, target_accuracy=1.0)
    result = cnnlab.train(cfg, data_dir=data_dir, save=False, progress=False, log=None)
    assert len(result.epochs) == 2 and result.target_seconds is None
    assert result.to_json()["target_reached"] is False


def test_cli_recipe_with_override_and_target(data_dir, tmp_path):
    out = tmp_path / "fast"
    r = run_cli("train", "--recipe", "fast", "--epochs", "2", "--limit-train", "3000", "--limit-test", "1000",
                "--target-accuracy", "0.85", "--out", out, "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["recipe"] == "fast" and report["model"] == "fast_cnn"
    assert report["target_reached"] is True and report["test_accuracy"] >= 0.85
    config = json.loads((out / "config.json").read_text())
    saved = config["recipe"]
    assert saved["recipe"] == "fast" and saved["epochs"] == 2 and saved["batch_size"] == recipes.RECIPES["fast"]["batch_size"]
    # What was asked (auto) and what autocast used on this machine, as the run reported it.
    assert config["precision"] == {"asked": "auto", "used": resolve_precision("auto", torch.device("cpu"))}
    assert report["precision"] == config["precision"]["used"]
    assert "reached 85.00% test accuracy after" in r.stderr
    assert "training fast_cnn (32,394 parameters, 31,978 of them trained)" in r.stderr
    # fast_cnn's first conv was computed from the first 2,000 training images and never trained.
    fresh = build_model("fast_cnn")
    fresh.init_from_data(cnnlab.engine.data.normalize(cnnlab.engine.data.load("mnist", "train", data_dir).images[:2000], 0.5, 0.5))
    assert torch.equal(cnnlab.load(out).model.features[0].weight, fresh.features[0].weight)


def test_precision_and_layout_are_recorded_and_fp32_still_trains(data_dir, tmp_path):
    result = cnnlab.train(recipes.config("lecture", epochs=1, limit_train=2000, limit_test=500, precision="fp32",
                                         channels_last=False), data_dir=data_dir, out=tmp_path / "r",
                          progress=False, log=None)
    assert result.precision == "fp32" and result.test_accuracy > 0.7
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["recipe"]["precision"] == "fp32" and config["recipe"]["channels_last"] is False
    assert config["precision"] == {"asked": "fp32", "used": "fp32"}
    assert config["threads"] == {"asked": None, "used": result.threads} and result.threads >= 1
    # The saved weights load back into an ordinary (NCHW, fp32) model with the same accuracy.
    assert evaluate(tmp_path / "r", data_dir=data_dir, limit=500)["accuracy"] == pytest.approx(result.test_accuracy)


def test_auto_precision_is_bf16_only_where_the_cpu_has_bf16_instructions():
    # Read the CPU's flags independently of torch: emulated bf16 (AVX-512 without AVX512-BF16)
    # trains 1.4-1.8x slower than float32, so `auto` must not pick it there.

    flags = set()
    for line in open("/proc/cpuinfo"):
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    native = bool(flags & {"avx512_bf16", "amx_bf16"})
    assert resolve_precision("auto", torch.device("cpu")) == ("bf16" if native else "fp32")
    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"  # asked for: always honoured


def test_bf16_when_asked_for_trains_and_reports_the_float32_accuracy(data_dir, tmp_path):
    # bf16 autocast runs wherever it is asked for (emulated where the CPU lacks bf16 instructions);
    # the accuracy the run reports is the float32 one `cnnlab evaluate` gives back.
    result = cnnlab.train(recipes.config("lecture", epochs=1, limit_train=2000, limit_test=500, precision="bf16"),
                          data_dir=data_dir, out=tmp_path / "r", progress=False, log=None)
    assert result.precision == "bf16" and result.test_accuracy > 0.7
    assert evaluate(tmp_path / "r", data_dir=data_dir, limit=500)["accuracy"] == result.test_accuracy


SPIN = "import time\nend = time.monotonic() + 60\nwhile time.monotonic() < end:\n    pass\n"


@pytest.fixture
def busy_cores():
    """Two processes keeping two cores busy (stopped after the test, or after a minute)."""
    busy = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(2)]
    time.sleep(0.3)
    yield
    for p in busy:
        p.kill()
        p.wait()


def test_beside_busy_jobs_a_training_uses_only_the_free_cores(busy_cores, data_dir, tmp_path, monkeypatch):
    # Beside busy processes, threads waiting at OpenMP's barriers for a partner the scheduler put
    # aside train slower than fewer threads (cpus.py, docs/benchmarks.md).
    cores = len(os.sched_getaffinity(0))
    assert 0 <= cpus.idle_cpus() <= cores - 1.5 and cpus.free_cores() <= cores - 2  # two cores' worth of work seen
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    lines, before = [], torch.get_num_threads()
    result = cnnlab.train(model="lenet5", epochs=1, limit_train=640, limit_test=100, data_dir=data_dir,
                          out=tmp_path / "r", progress=False, log=lines.append)
    assert 1 <= result.threads <= max(1, cores - 2), (result.threads, cores)
    if result.threads < before:  # (a machine with more cores than PyTorch uses may need no cut)
        assert lines[0].startswith("other jobs kept ") and f"training with {result.threads} thread" in lines[0]
    assert f", {result.threads} thread" in next(line for line in lines if line.startswith("training "))
    assert json.loads((tmp_path / "r" / "config.json").read_text())["threads"] == {"asked": None, "used": result.threads}
    assert torch.get_num_threads() == before  # the caller's process as it was


def test_fashion_recipe_trains_clothes_with_mirror_augmentation(data_dir, tmp_path):
    # The recipe picks its dataset (a flag still overrides it) and its augmentation flips clothes.
    out = tmp_path / "f"
    r = run_cli("train", "--recipe", "fashion", "--epochs", "1", "--limit-train", "3000", "--limit-test", "1000",
                "--out", out, "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["recipe"] == "fashion" and report["model"] == "wide5_cnn"
    assert 0.6 < report["test_accuracy"] < 1.0  # 10 classes of clothes: chance is 10%
    saved = json.loads((out / "config.json").read_text())["recipe"]
    assert (saved["dataset"], saved["augment"]) == ("fashion-mnist", "mirror")
    assert recipes.config("fashion", dataset="mnist").dataset == "mnist"



# The Python API's path, in a fresh interpreter: torch.optim as it ships, then whether torch._dynamo was loaded.
API_TRAIN = """
import json, sys
import cnnlab
cnnlab.train(cnnlab.config("fast", **json.loads(sys.argv[1])), out=sys.argv[2], progress=False, log=None)
print(json.dumps("torch._dynamo" in sys.modules))
"""


@pytest.mark.parametrize("optimizer,schedule", [("adam", "onecycle"), ("adamw", "cosine"), ("sgd", "step")])
def test_the_command_line_trains_without_torch_dynamo_to_the_same_bits(data_dir, tmp_path, optimizer, schedule):
    # torch.optim imports torch._dynamo (1.1 s) on first use unless engine/optimizers.py's shortcut
    # is on; the shortcut must change nothing else: the same weights, bit for bit, and the same
    # optimiser state in the checkpoint.
    settings = dict(optimizer=optimizer, schedule=schedule, lr=0.005, limit_train=2000, limit_test=300,
                    threads=1, seed=4)
    flags = cli_flags(settings)
    step = probe([["train", "--recipe", "fast", *flags, "--out", str(tmp_path / "cli")]], "torch._dynamo")[0]
    assert step["code"] == 0, step
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "CNNLAB_DATA_DIR": str(data_dir)}
    r = subprocess.run([sys.executable, "-c", API_TRAIN, json.dumps(settings), str(tmp_path / "api")], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    loaded = {"cli": bool(step["loaded"]), "api": json.loads(r.stdout.splitlines()[-1])}
    runs = {how: {part: load_file(tmp_path / how / f"{part}.safetensors") for part in ("model", "checkpoint")}
            for how in ("cli", "api")}
    assert loaded == {"cli": False, "api": True}  # (the API run is torch.optim's own path)
    for part in ("model", "checkpoint"):
        cli, api = runs["cli"][part], runs["api"][part]
        assert cli.keys() == api.keys() and len(cli) > 5
        for name in cli:
            assert torch.equal(cli[name], api[name]), (part, name)
