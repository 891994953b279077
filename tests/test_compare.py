"""cnnlab compare: the same training for every model, measured; the tables agree with the runs."""

import csv
import json

import pytest

from cnnlab import load
from cnnlab.engine import data
from cnnlab.engine.summary import summarize
from cnnlab.runs.inference import accuracy
from conftest import run_cli, run_main


def test_compare_two_models_on_a_small_subset(tmp_path, data_dir):
    out = tmp_path / "cmp"
    # A fresh process with one thread: fast and identical wherever the suite runs.
    r = run_cli("compare", "--models", "mlp,lenet5", "--epochs", "1", "--limit-train", "1500", "--limit-test", "500",
                "--batch-size", "32", "--threads", "1", "--out", out, "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    rows = {row["model"]: row for row in result["rows"]}
    assert list(rows) == ["mlp", "lenet5"]
    assert rows["mlp"]["parameters"] == 669_706 and rows["lenet5"]["parameters"] == 61_706
    assert rows["lenet5"]["macs"] == summarize("lenet5").macs == 416_520
    train_split = data.load("mnist", "train", data_dir).subset(1500)
    test_split = data.load("mnist", "test", data_dir).subset(500)
    for name, row in rows.items():
        assert row["train_seconds"] > 0
        # The saved run reproduces both reported accuracies.
        trained = load(row["run_dir"])
        assert accuracy(trained.model, train_split, 0.5, 0.5) == pytest.approx(row["train_accuracy"], abs=1e-6)
        assert accuracy(trained.model, test_split, 0.5, 0.5) == pytest.approx(row["test_accuracy"], abs=1e-6)
        assert row["gap"] == pytest.approx(row["train_accuracy"] - row["test_accuracy"])
        assert 0.6 < row["test_accuracy"] < 1.0
    # The same training recipe (seed, data, batches) for every model.
    recipes = [json.loads((out / m / "config.json").read_text())["recipe"] for m in rows]
    assert [{k: v for k, v in rec.items() if k != "model"} for rec in recipes][0] == \
        {k: v for k, v in recipes[1].items() if k != "model"}
    with open(out / "compare.csv") as f:
        table = list(csv.DictReader(f))
    assert [t["model"] for t in table] == ["mlp", "lenet5"]
    assert float(table[0]["test_accuracy"]) == pytest.approx(rows["mlp"]["test_accuracy"])
    md = (out / "compare.md").read_text()
    assert "| lenet5 | 61,706 | 416,520 |" in md


@pytest.mark.parametrize("args, message", [
    (["--models", "mlp,resnet"], "unknown model 'resnet'"),
    (["--models", "mlp,mlp"], "names a model twice"),
    (["--models", ","], "--models is empty"),
])
def test_compare_errors(capsys, tmp_path, args, message):
    code, _, err = run_main(capsys, "compare", *args, "--out", tmp_path / "x")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()  # nothing trained, nothing written
