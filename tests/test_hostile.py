"""Issue #18, the run's lifecycle: what broke when cnnlab was attacked, one test per item.

1 two writers on one run folder; 2 the last moments of a run; 3 --resume with --epochs; 7
non-finite numbers; 11 files that used to give tracebacks; 12 smaller holes (an ensemble member
killed before its first checkpoint, a torchrun checkpoint in one process, float IDX labels,
orphaned temporaries). Reading, writing and serving files are tests/test_hostile_io.py's.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from safetensors.torch import save as save_tensors

import cnnlab
from cnnlab.cli import print_json
from cnnlab.engine import checkpoint, data
from cnnlab.errors import CnnlabError, Interrupted
from cnnlab.files import atomic_write
from cnnlab.runs import folder
from conftest import DATA_DIR, SRC, assert_usage_error, cli_flags, run_main

TINY = dict(limit_train=1000, limit_test=200, epochs=2, batch_size=50, seed=0, threads=1)
DATA = ["--data-dir", DATA_DIR]
LOCK = ".lock"  # a run folder's lock file (runs/folder.py), there while a process writes the run


class SignalAt:
    """A log callback that sends this process a real `sig` when a line starting with `prefix` is
    logged. A signal cnnlab does not catch fails the test (instead of ending pytest)."""

    def __init__(self, prefix: str, sig: int = signal.SIGTERM):
        self.prefix, self.sig = prefix, sig

    def __call__(self, line: str):
        if line.startswith(self.prefix):
            signal.raise_signal(self.sig)


def uncaught(signum, frame):
    raise AssertionError(f"{signal.Signals(signum).name} reached the test: cnnlab was not catching it")


@pytest.fixture(autouse=True)
def signals_fail_the_test():
    old = {sig: signal.signal(sig, uncaught) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in old.items():
        signal.signal(sig, handler)


def weights_of(run_dir) -> dict:
    return load_file(str(run_dir / folder.WEIGHTS))


def same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def finished(data_dir, tmp_path_factory):
    """A finished 2-epoch run on 1,000 images; tests copy it before changing anything."""
    run_dir = tmp_path_factory.mktemp("hostile") / "finished"
    cnnlab.train(data_dir=data_dir, out=run_dir, progress=False, log=None, **TINY)
    return run_dir


def copy_of(run_dir, tmp_path, name="copy"):
    return shutil.copytree(run_dir, tmp_path / name)


# --- 1 ------------------------------------------------------------------------------------------

def test_1_a_second_writer_is_refused_and_a_dead_writers_lock_is_taken_over(data_dir, tmp_path, capsys):
    """While one `cnnlab train --out same` runs, a second one (another model) and a --resume are
    each one line naming the first process; nothing of the run changes. After kill -9 the next
    resume explains the stale lock, takes it over and finishes the run it found."""
    same = tmp_path / "same"
    env = {**os.environ, "CNNLAB_DATA_DIR": str(DATA_DIR), "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
    first = subprocess.Popen([sys.executable, "-m", "cnnlab", "train", "--out", same,
                              *cli_flags({**TINY, "epochs": 50})], env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert first.stdout.readline().startswith("training simple_cnn"), first.stderr.read()
        config = (same / folder.CONFIG).read_text()
        for args in (["--out", same, "--model", "lenet5", *cli_flags(TINY), *DATA], ["--resume", same]):
            code, _, err = run_main(capsys, "train", *args)
            assert_usage_error(code, err, f"{same} is being written by process {first.pid} on host ")
        assert (same / folder.CONFIG).read_text() == config  # still simple_cnn's
    finally:
        first.kill()  # SIGKILL: its lock file stays behind, with its pid
        out = first.communicate()[0]
    # Its checkpoint is at the last epoch it printed, or the one before (killed between the two).
    done = max([int(line.split("/")[0].split()[1]) for line in out.splitlines() if line.startswith("epoch ")] or [1])
    assert json.loads((same / LOCK).read_text())["pid"] == first.pid
    log = []
    result = cnnlab.train(resume=same, epochs=done, data_dir=data_dir, progress=False, log=log.append)
    assert log[0].startswith(f"note: {same} was left locked by process {first.pid}") and "taking it over" in log[0]
    assert [e.epoch for e in result.epochs] == list(range(1, done + 1))
    assert [r["epoch"] for r in folder.read_metrics(same)] == list(range(1, done + 1))
    assert cnnlab.load(same).config["model"] == "simple_cnn" and not (same / LOCK).exists()


# --- 2 ------------------------------------------------------------------------------------------

def test_2_every_state_a_run_can_be_left_in_is_recoverable(finished, data_dir, tmp_path, capsys):
    # SIGTERM the moment the last epoch's line is printed: one line, and the run is complete.
    run_dir = tmp_path / "last-moment"
    with pytest.raises(Interrupted) as stop:
        cnnlab.train(data_dir=data_dir, out=run_dir, progress=False, log=SignalAt("epoch 2/2"), **TINY)
    assert stop.value.exit_code == 143
    assert str(stop.value) == (f"stopped by SIGTERM as training ended; the final weights are saved, {run_dir} is "
                               f"complete (nothing to resume)")
    assert same_tensors(weights_of(run_dir), weights_of(finished))

    # Killed after the last checkpoint, before the final weights: --resume writes them.
    no_weights = copy_of(finished, tmp_path, "no-weights")
    (no_weights / folder.WEIGHTS).unlink()
    code, _, err = run_main(capsys, "evaluate", no_weights)
    assert_usage_error(code, err, f"its training did not finish; finish it with 'cnnlab train --resume {no_weights}'")
    code, out, err = run_main(capsys, "train", "--resume", no_weights, "--json", *DATA)
    assert code == 0, err
    assert json.loads(out)["test_accuracy"] == folder.read_metrics(finished)[-1]["test_accuracy"]
    assert same_tensors(weights_of(no_weights), weights_of(finished))

    # Killed before its first checkpoint (settings written, nothing trained): it starts again.
    unstarted = copy_of(finished, tmp_path, "unstarted")
    for name in (folder.WEIGHTS, folder.METRICS, checkpoint.CHECKPOINT):
        (unstarted / name).unlink()
    cnnlab.train(resume=unstarted, data_dir=data_dir, progress=False, log=None)
    assert same_tensors(weights_of(unstarted), weights_of(finished))

    # Killed as its folder was claimed (only the lock): one line that says how to start it again,
    # and --out may take the folder.
    claimed = tmp_path / "claimed"
    claimed.mkdir()
    (claimed / LOCK).write_text('{"pid": 999999999}')
    code, _, err = run_main(capsys, "train", "--resume", claimed)
    assert_usage_error(code, err, f"its training was stopped before it began, so nothing was trained; start it "
                                  f"again with 'cnnlab train --out {claimed}'")
    cnnlab.train(data_dir=data_dir, out=claimed, progress=False, log=None, **{**TINY, "epochs": 1})
    assert folder.read_metrics(claimed)[0]["test_accuracy"] == folder.read_metrics(finished)[0]["test_accuracy"]


# --- 3 ------------------------------------------------------------------------------------------

def test_3_resume_never_ends_inside_an_epoch_and_refuses_recipe(data_dir, tmp_path, capsys):
    run_dir = tmp_path / "run"
    with pytest.raises(Interrupted, match="at the start of epoch 2"):
        cnnlab.train(data_dir=data_dir, out=run_dir, progress=False, log=SignalAt("epoch 1/2"), **TINY)
    # Resume, and stop again after the first step of epoch 2: a checkpoint inside epoch 2.
    with pytest.raises(Interrupted, match="checkpoint saved at epoch 2, step 1/20"):
        cnnlab.train(resume=run_dir, data_dir=data_dir, progress=False, log=SignalAt("training simple_cnn"))
    config, metrics = (run_dir / folder.CONFIG).read_text(), folder.read_metrics(run_dir)
    code, _, err = run_main(capsys, "train", "--resume", run_dir, "--epochs", "1")
    assert_usage_error(code, err, f"{run_dir} stopped inside epoch 2 (step 1); --epochs 1 would end before that "
                                  f"epoch does: pass --epochs 2 or more")
    assert not (run_dir / folder.WEIGHTS).exists()  # no mid-epoch weights under epoch 1's accuracy
    assert (run_dir / folder.CONFIG).read_text() == config and folder.read_metrics(run_dir) == metrics
    code, _, err = run_main(capsys, "train", "--resume", run_dir, "--recipe", "fast")
    assert_usage_error(code, err, "--resume continues with the run's saved settings; drop --recipe")


# --- 7 ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--lr", "inf"], "argument --lr: must be a finite number, got inf"),
    (["--weight-decay", "inf"], "argument --weight-decay: must be a finite number, got inf"),
    (["--weight-decay", "nan"], "argument --weight-decay: must be a finite number, got nan"),
    (["--seed", str(2 ** 64)], f"argument --seed: must be in [0, {2 ** 63 - 1}], got {2 ** 64}"),
])
def test_7_non_finite_settings_are_refused(args, message, tmp_path, capsys):
    code, _, err = run_main(capsys, "train", *args, "--out", tmp_path / "never")
    assert_usage_error(code, err, message)
    assert not (tmp_path / "never").exists()


def test_7_divergence_stops_at_its_step_and_nan_never_reaches_a_file_or_an_answer(finished, data_dir, tmp_path,
                                                                                  capsys):
    run_dir = tmp_path / "diverged"
    # Batch 10 in fp32: a NaN by step 4 on every CPU (batch 50 reached only a finite 9e20 in fp32,
    # where a CPU without bf16 trains, and NaN at step 6 in bf16).
    code, _, err = run_main(capsys, "train", "--out", run_dir, "--optimizer", "sgd", "--lr", "100",
                            *cli_flags({**TINY, "epochs": 1, "batch_size": 10, "precision": "fp32"}), *DATA)
    assert_usage_error(code, err, "training diverged: the training loss became ")
    assert err.split("became ")[1].split()[0] in ("nan", "inf")
    step = int(err.split(", step ")[1].split("/")[0])
    assert 1 <= step <= 20 and "lower --lr (it is 100)" in err
    assert f"{run_dir} holds its settings but no checkpoint yet" in err
    # Nothing NaN was written: no weights, no checkpoint, and the history (a picture of training)
    # is strict JSON (a non-finite loss is recorded as null).
    assert sorted(p.name for p in run_dir.iterdir()) == sorted([folder.CONFIG, folder.HISTORY])
    for line in (run_dir / folder.HISTORY).read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} in history.jsonl"))

    # Non-finite weights are refused on load; huge finite ones (infinite outputs) never give "nan%".
    digit = tmp_path / "digit.png"
    Image.fromarray(data.load("mnist", "test", data_dir).images[0].numpy()).save(digit)
    for name, scale in (("nan", float("nan")), ("huge", 1e30)):
        broken = copy_of(finished, tmp_path, name)
        save_file({k: v * scale if v.is_floating_point() else v for k, v in weights_of(finished).items()},
                  str(broken / folder.WEIGHTS))
        if name == "nan":  # not a silent 10%
            code, out, err = run_main(capsys, "evaluate", broken, "--json", *DATA)
            assert out == ""
            assert_usage_error(code, err, "holds NaN or infinite weights (")
        code, out, err = run_main(capsys, "predict", broken, digit, "--json")
        assert out == "" and "nan%" not in err
        assert_usage_error(code, err, "NaN or infinite weights" if name == "nan" else "gives NaN or infinite outputs")

    # JSON output is JSON: an overflow is one line, never Infinity or NaN on stdout.
    code, out, err = run_main(capsys, "conv", "1e308 1e308; 1e308 1e308", "1e308", "--json")
    assert out == ""
    assert_usage_error(code, err, "the output overflows")
    with pytest.raises(CnnlabError, match="holds an infinite or NaN number, which JSON cannot carry"):
        print_json({"accuracy": float("nan")})  # every command's --json goes through here
    assert capsys.readouterr().out == ""


# --- 11 -----------------------------------------------------------------------------------------

def write_idx(path, array: np.ndarray, type_code: int) -> None:
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(n.to_bytes(4, "big") for n in array.shape)
    path.write_bytes(header + array.astype(array.dtype.newbyteorder(">")).tobytes())


def idx_dataset(root, size: int = 28, labels=np.uint8):
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 60), ("t10k", 20)):
        write_idx(raw / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, size, size), dtype=np.uint8), 0x08)
        y = (np.arange(n) % 10).astype(labels) + (0.7 if labels == np.float32 else 0)
        write_idx(raw / f"{split}-labels-idx1-ubyte", y.astype(labels), 0x08 if labels == np.uint8 else 0x0D)
    return root


def test_11_corrupt_inputs_are_one_line_and_write_nothing(finished, tmp_path, capsys):
    never = tmp_path / "never"
    cases = [
        (["train", "--data-dir", idx_dataset(tmp_path / "idx32", size=32)], "holds 32x32 images; cnnlab's networks "
                                                                           "take 28x28 MNIST-style images"),
        (["train", "--limit-train", "5", "--val-split", "0.1", *DATA], "the validation split of mnist is empty"),
    ]
    for args, message in cases:
        code, _, err = run_main(capsys, *args, "--out", never)
        assert_usage_error(code, err, message)
        assert not never.exists()

    for name, norm, said in (("std0", {"mean": 0.5, "std": 0}, "'std': 0"),
                             ("mean-text", {"mean": "dark", "std": 0.5}, "'mean': 'dark'")):
        run_dir = copy_of(finished, tmp_path, name)
        config = json.loads((run_dir / folder.CONFIG).read_text())
        (run_dir / folder.CONFIG).write_text(json.dumps({**config, "normalization": norm}))
        code, _, err = run_main(capsys, "evaluate", run_dir, *DATA)
        assert_usage_error(code, err, "'normalization' must hold a finite mean and a std greater than 0, got ")
        assert said in err

    # A checkpoint whose header, or whose checksummed state, is JSON nested 100,000 deep.
    nested = copy_of(finished, tmp_path, "nested")
    (nested / folder.WEIGHTS).unlink()
    deep = "[" * 100_000 + "]" * 100_000
    header = b'{"__metadata__": {"format": "%s"}, "x": %s}' % (checkpoint.FORMAT.encode(), deep.encode())
    (nested / checkpoint.CHECKPOINT).write_bytes(len(header).to_bytes(8, "little") + header)
    before = sorted(p.name for p in nested.iterdir())
    code, _, err = run_main(capsys, "train", "--resume", nested)
    assert_usage_error(code, err, "checkpoint.safetensors is truncated or corrupt")
    tensors = {"x": torch.zeros(1)}  # (SHA-256 is no signature: anyone can write a matching one)
    atomic_write(nested / checkpoint.CHECKPOINT, save_tensors(tensors, metadata={
        "format": checkpoint.FORMAT, "state": deep, "sha256": checkpoint._digest(tensors, deep)}))
    code, _, err = run_main(capsys, "train", "--resume", nested)
    assert_usage_error(code, err, "checkpoint.safetensors holds a state cnnlab did not write")
    assert sorted(p.name for p in nested.iterdir()) == before

    for args, message in ((["conv", "--padding", "100000"], "padding 100000 makes the padded input 200005x200005"),
                          (["kernels", "gaussian", "--size", "100001"], "--size must be at most 51, got 100001")):
        code, _, err = run_main(capsys, *args)
        assert_usage_error(code, err, message)


@pytest.fixture(scope="module")
def exported(finished, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "m.onnx"
    assert cnnlab.export(finished, "onnx", out=path)
    digit = path.parent / "digit.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(digit)
    return path, digit, json.loads(next(p.value for p in onnx.load(str(path)).metadata_props if p.key == "cnnlab"))


@pytest.mark.parametrize("change, message", [
    (lambda good: "{not json", "is not the JSON 'cnnlab export' writes"),
    (lambda good: "[" * 100_000 + "]" * 100_000, "is not the JSON 'cnnlab export' writes"),
    (lambda good: {**good, "classes": "0123456789"}, "is not the JSON 'cnnlab export' writes"),
    (lambda good: {**good, "normalization": {"mean": 0.5, "std": 0}}, "a std greater than 0, got {'mean': 0.5, 'st"),
    (lambda good: {**good, "normalization": {"mean": None, "std": 0.5}}, "a std greater than 0, got {'mean': None"),
    (lambda good: {**good, "classes": ["a", "b", "c"]}, "names 3 classes but the model has 10 outputs"),
], ids=["not-json", "nested", "classes-text", "std-0", "mean-none", "3-classes"])
def test_11_tampered_onnx_metadata_is_one_line(exported, change, message, tmp_path, capsys):
    path, digit, good = exported
    proto = onnx.load(str(path))
    meta = change(good)
    entry = next(p for p in proto.metadata_props if p.key == "cnnlab")
    entry.value = meta if isinstance(meta, str) else json.dumps(meta)
    onnx.save(proto, str(tmp_path / "tampered.onnx"))
    code, out, err = run_main(capsys, "predict", tmp_path / "tampered.onnx", digit, "--json")
    assert out == ""
    assert_usage_error(code, err, message)


# --- 12 -----------------------------------------------------------------------------------------

def test_12_an_ensemble_killed_before_its_members_first_checkpoints_resumes(data_dir, tmp_path):
    settings = {**TINY, "epochs": 1}
    straight = tmp_path / "straight"
    cnnlab.train_ensemble(cnnlab.config("lecture", **settings), 2, data_dir=data_dir, out=straight,
                          progress=False, log=None)
    # What kill -9 leaves: member-1 claimed but empty (its stale lock and a half-written config),
    # member-2 with its settings but no checkpoint yet, no ensemble config.json.
    killed = shutil.copytree(straight, tmp_path / "killed")
    (killed / folder.CONFIG).unlink()
    shutil.rmtree(killed / "member-1")
    (killed / "member-1").mkdir()
    (killed / "member-1" / LOCK).write_text('{"pid": 999999999}')
    (killed / "member-1" / ".config.json.k3_x9a0q.tmp").write_text('{"mod')
    (killed / ".ensemble-plan.json.8d_vvy2m.tmp").write_text('{"mod')
    for name in (folder.WEIGHTS, folder.METRICS, checkpoint.CHECKPOINT):
        (killed / "member-2" / name).unlink()
    cnnlab.train_ensemble(None, 2, resume=killed, data_dir=data_dir, progress=False, log=None)
    assert sorted(p.name for p in killed.iterdir()) == sorted(p.name for p in straight.iterdir())
    for member in ("member-1", "member-2"):
        assert same_tensors(weights_of(killed / member), weights_of(straight / member))
        assert sorted(p.name for p in (killed / member).iterdir()) == sorted(
            [folder.CONFIG, folder.METRICS, folder.HISTORY, checkpoint.CHECKPOINT, folder.WEIGHTS])


def test_12_torchrun_checkpoint_in_one_process_float_labels_and_orphaned_temporaries(finished, tmp_path, capsys):
    # A checkpoint written by 2 torchrun processes, resumed by one: refused, saying why.
    two = copy_of(finished, tmp_path, "two-processes")
    (two / folder.WEIGHTS).unlink()
    tensors, state = checkpoint.read(two / checkpoint.CHECKPOINT)
    checkpoint.write(two / checkpoint.CHECKPOINT, tensors, {**state, "world_size": 2})
    code, _, err = run_main(capsys, "train", "--resume", two)
    assert_usage_error(code, err, f"{two} was trained by 2 process(es) and this is 1")

    # Float labels (3.7 is not class 3) are refused, not truncated.
    code, _, err = run_main(capsys, "train", "--data-dir", idx_dataset(tmp_path / "float", labels=np.float32),
                            "--out", tmp_path / "never")
    assert_usage_error(code, err, "train-labels-idx1-ubyte holds float32 labels; labels must be whole class numbers")

    # What SIGKILL during atomic writes leaves is removed by the next process that claims the folder.
    orphans = copy_of(finished, tmp_path, "orphans")
    (orphans / folder.WEIGHTS).unlink()
    names = [".checkpoint.safetensors.ab_3xyz9.tmp", ".metrics.jsonl.00000000.tmp", ".model.safetensors.q1w2e3r4.tmp"]
    for name in names:
        (orphans / name).write_bytes(b"half")
    (orphans / "notes.tmp").write_text("mine")  # not cnnlab's: kept
    code, _, err = run_main(capsys, "train", "--resume", orphans, *DATA)
    assert code == 0, err
    assert sorted(p.name for p in orphans.iterdir()) == sorted(
        [folder.CONFIG, folder.METRICS, folder.HISTORY, checkpoint.CHECKPOINT, folder.WEIGHTS, "notes.tmp"])
