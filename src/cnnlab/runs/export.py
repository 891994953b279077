"""Export a run for use outside cnnlab: ONNX (onnxruntime, any language) or TorchScript (C++/libtorch).

The exported graph takes the *normalised* float batch [N, 1, 28, 28] (N free) and returns logits
[N, classes]. What turns pixels into that batch - (x / 255 - mean) / std, white digit on black,
28x28 - travels in the file's metadata under the key "cnnlab" (JSON), together with the class
names, so a consumer needs nothing else. After writing, the file is loaded back and run on a
batch of real test images: its logits must match PyTorch's within 1e-4.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from ..engine import data as data_mod
from ..engine.config import EXPORT_FORMATS, EXPORT_TOLERANCE
from ..errors import CnnlabError
from ..files import check_output, write_output
from .folder import TrainedModel, load, run_files, test_split

OPSET = 17


def metadata(trained: TrainedModel) -> dict:
    return {
        "model": trained.name,
        "dataset": trained.config.get("dataset", "mnist"),
        "classes": list(trained.classes),
        "input": {"shape": ["batch", 1, data_mod.IMAGE_SIZE, data_mod.IMAGE_SIZE], "dtype": "float32",
                  "pixels": "uint8 0-255, white digit on black, MNIST-style (see 'cnnlab predict')"},
        "normalization": {"mean": trained.mean, "std": trained.std,
                          "formula": "x = (pixel / 255 - mean) / std"},
        "output": "logits [batch, classes]; softmax gives probabilities",
        "versions": trained.config.get("versions", {}),
    }


def _test_batch(trained: TrainedModel, n: int = 64) -> tuple[torch.Tensor, str]:
    """Real test images when the dataset is at hand, else seeded random pixels (said so)."""
    try:
        name, split = test_split(trained.config, limit=n, download=False)
        return split.images, f"{len(split)} {name} test images"
    except CnnlabError:
        g = torch.Generator().manual_seed(0)
        return torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=g), f"{n} random images"


def export(run_dir: str | os.PathLike, fmt: str = "onnx", out: str | os.PathLike | None = None,
           force: bool = False) -> dict:
    """Write the exported model and return {path, format, batch, max_abs_diff, ...}.

    An existing file at `out` is replaced only with force, and never when it is one of the run's own
    files (its weights, checkpoint, config or metrics).
    """
    if fmt not in EXPORT_FORMATS:
        raise CnnlabError(f"unknown format '{fmt}'; choose one of: {', '.join(EXPORT_FORMATS)}")
    trained = load(run_dir)
    path = Path(out) if out else Path(run_dir) / f"model{EXPORT_FORMATS[fmt]}"
    if path.is_dir():
        raise CnnlabError(f"--out {path} is a folder; give a file name such as {path / ('model' + EXPORT_FORMATS[fmt])}")
    check_output(path, force=force, inputs=run_files(run_dir))  # before the (slower) export itself
    model = trained.model.cpu().eval()
    meta = metadata(trained)
    images, described = _test_batch(trained)
    x = data_mod.normalize(images, trained.mean, trained.std)
    with torch.no_grad():
        expected = model(x).numpy()

    blob = _onnx_bytes(model, meta) if fmt == "onnx" else _torchscript_bytes(model, meta)
    got = _run_onnx(blob, x.numpy()) if fmt == "onnx" else _run_torchscript(blob, x)
    diff = float(np.abs(got - expected).max())
    if not diff <= EXPORT_TOLERANCE:
        raise CnnlabError(f"the exported {fmt} model disagrees with PyTorch by {diff:.2e} (over {EXPORT_TOLERANCE:g}) "
                          f"on {described}; nothing was written")
    # Written only after the parity check passed: a file at `path` is always a good export.
    write_output(path, blob, force=force, inputs=run_files(run_dir))
    return {"path": str(path), "format": fmt, "bytes": len(blob), "checked_on": described,
            "batch_sizes_checked": [len(x), 1], "max_abs_diff": diff, "tolerance": EXPORT_TOLERANCE,
            "metadata": meta}


def _onnx_bytes(model: torch.nn.Module, meta: dict) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript-based exporter is deprecated in favour of torch.export, which needs the
        # extra onnxscript package; the classic one handles these small CNNs exactly.
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 1, 28, 28),), buf, dynamo=False, opset_version=OPSET,
                          input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    proto = onnx.load_from_string(buf.getvalue())
    entries = {"cnnlab": json.dumps(meta), "classes": json.dumps(meta["classes"]),
               "mean": str(meta["normalization"]["mean"]), "std": str(meta["normalization"]["std"])}
    for key, value in entries.items():
        prop = proto.metadata_props.add()
        prop.key, prop.value = key, value
    proto.producer_name = "cnnlab"
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def _run_onnx(blob: bytes, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    full = session.run(None, {"image": x})[0]
    single = session.run(None, {"image": x[:1]})[0]  # the batch axis is really dynamic
    return _check_single(full, single)


def _check_single(full: np.ndarray, single: np.ndarray) -> np.ndarray:
    if single.shape[0] != 1 or float(np.abs(single - full[:1]).max()) > EXPORT_TOLERANCE:
        raise CnnlabError("the exported model gives different logits for a batch of 1; export failed")
    return full


def _torchscript_bytes(model: torch.nn.Module, meta: dict) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated but still what libtorch loads
        scripted = torch.jit.trace(model, torch.zeros(2, 1, 28, 28))
        torch.jit.save(scripted, buf, _extra_files={"cnnlab.json": json.dumps(meta)})
    return buf.getvalue()


def _run_torchscript(blob: bytes, x: torch.Tensor) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        extra = {"cnnlab.json": ""}
        loaded = torch.jit.load(io.BytesIO(blob), _extra_files=extra)
    if not extra["cnnlab.json"]:
        raise CnnlabError("the TorchScript file lost its metadata; export failed")
    with torch.no_grad():
        full = loaded(x).numpy()
        single = loaded(x[:1]).numpy()
    return _check_single(full, single)
