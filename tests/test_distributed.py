"""torchrun with 2 CPU processes (gloo on loopback): same accuracy band as one process with the
same global batch, one voice (rank 0), and Ctrl-C then --resume under torchrun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import cnnlab
from cnnlab.engine import checkpoint
from cnnlab.runs import folder
from conftest import DATA_DIR, SRC, cli_flags

SETTINGS = dict(limit_train=2000, limit_test=1000, epochs=3, batch_size=32, seed=0, device="cpu")


def torchrun(*args) -> subprocess.Popen:
    env = {**os.environ, "CNNLAB_DATA_DIR": str(DATA_DIR), "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
    # Its own session, like a terminal's foreground job, so Ctrl-C can be sent to the group.
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "-m", "cnnlab", "train", *map(str, args)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def test_two_processes_land_in_the_single_process_band_and_resume_after_ctrl_c(tmp_path, data_dir):
    single = cnnlab.train(data_dir=data_dir, save=False, progress=False, log=None, threads=1, **SETTINGS)
    run_dir = tmp_path / "ddp"
    flags = cli_flags(SETTINGS)

    proc = torchrun("--out", run_dir, *flags)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("epoch 1/3"):
            os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
            break
    out, err = proc.communicate(timeout=180)
    out = "".join(seen) + out
    assert out.count("training simple_cnn") == 1 and "2 processes" in out  # rank 0 alone prints
    assert err.count("stopped by SIGINT; checkpoint saved at") == 1, err
    assert f"Resume with: cnnlab train --resume {run_dir}" in err
    _, state = checkpoint.read(run_dir / checkpoint.CHECKPOINT)
    assert state["world_size"] == 2 and state["epoch"] >= 1 and not (run_dir / folder.WEIGHTS).exists()

    proc = torchrun("--resume", run_dir, "--json")
    out, err = proc.communicate(timeout=180)
    # The start of stderr: a crashing rank's own message comes before torchrun's long report.
    assert proc.returncode == 0, err[:4000]
    result = json.loads(out)  # one JSON object: only rank 0 wrote to stdout
    assert [e["epoch"] for e in result["epochs"]] == [1, 2, 3]
    assert [r["epoch"] for r in folder.read_metrics(run_dir)] == [1, 2, 3]
    # Same global batch of 32 (16 per process): the same accuracy band as one process.
    assert single.test_accuracy >= 0.85 and result["test_accuracy"] >= 0.85
    assert abs(result["test_accuracy"] - single.test_accuracy) <= 0.03
    report = cnnlab.evaluate(run_dir, data_dir=data_dir, limit=1000)
    assert report["accuracy"] == result["test_accuracy"]
