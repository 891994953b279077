"""The explorer's explaining routes: the whole network for one image, any unit's arithmetic, and
the sliding window of convolution and pooling.

  POST /api/network  {"image": 28x28 array 0-255} -> the prediction and every layer in forward
                     order (kind, shape, receptive field, the values packed as int8 with a scale)
  POST /api/unit     {"image", "layer": i, "unit": [c, y, x] or [i]} -> that unit's arithmetic
                     (see/network.py): window, kernel, products, sum, bias, activation...
  POST /api/conv     {"input", "kernel": matrix text, 2-D array or a kernel name, "stride",
                     "padding", "dilation", "flip"} -> exactly what `cnnlab conv --json` prints
  POST /api/pool     {"input", "size", "stride"} -> exactly what `cnnlab pool --json` prints

The page sends the 28x28 image /api/predict returned (drawn or uploaded, prepared as `cnnlab
predict` prepares files), so every view explains the image the model saw.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from fastapi import FastAPI, Request
from starlette.concurrency import run_in_threadpool

from ..errors import CnnlabError
from ..lecture import conv, kernels, pool
from ..runs.folder import ENSEMBLE
from ..runs.predict import Classifier
from ..see import network
from .requests import RequestError, array_image, read_body, typed_matrix

MAX_MATRIX = 16      # the sliding window animates matrices up to 16x16 ...
MAX_KERNEL = 7       # ... and kernels up to 7x7
MAX_SETTING = 5      # stride, padding and dilation up to 5
CACHE = 8            # traced images kept, so clicking units of one drawing traces it once


def add_routes(app: FastAPI, clf: Classifier) -> None:
    traced = _Traces(clf)

    @app.post("/api/network")
    async def api_network(request: Request):
        body = await _json(request)
        img = _image(body)

        def work():
            net = traced.get(img)
            probs = net.layers[-1].output
            top = int(probs.argmax())
            return {"model": clf.trained.name, "classes": clf.classes, "prediction": top, "label": clf.classes[top],
                    "probabilities": [round(float(p), 6) for p in probs], "image": img.tolist(),
                    "layers": network.layers(net), "note": _note(net)}
        return await run_in_threadpool(work)

    @app.post("/api/unit")
    async def api_unit(request: Request):
        body = await _json(request)
        img = _image(body)
        index, where = body.get("layer"), body.get("unit")
        if not isinstance(index, int) or not isinstance(where, list) or not all(isinstance(w, int) for w in where):
            raise RequestError(422, 'give "layer" (a number from /api/network) and "unit" ([channel, row, '
                                    'column] for a map, [index] for a vector)')

        def work():
            try:
                return network.unit(traced.get(img), index, where)
            except CnnlabError as e:
                raise RequestError(422, str(e)) from None
        return await run_in_threadpool(work)

    @app.post("/api/conv")
    async def api_conv(request: Request):
        body = await _json(request)
        x = typed_matrix(body.get("input", conv.LECTURE_INPUT), "input", MAX_MATRIX)
        k = _kernel(body.get("kernel", conv.LECTURE_KERNEL))
        stride, dilation = _setting(body, "stride", 1, 1), _setting(body, "dilation", 1, 1)
        padding = _setting(body, "padding", 0, 0)
        try:
            return conv.conv_json(x, k, None, stride, padding, dilation, bool(body.get("flip", False)))
        except CnnlabError as e:
            raise RequestError(422, str(e)) from None

    @app.post("/api/pool")
    async def api_pool(request: Request):
        body = await _json(request)
        x = typed_matrix(body.get("input", pool.LECTURE_INPUT), "input", MAX_MATRIX)
        size = _setting(body, "size", 2, 1)
        stride = _setting(body, "stride", size, 1)
        try:
            return pool.pool_json(x, size, stride)
        except CnnlabError as e:
            raise RequestError(422, str(e)) from None


class _Traces:
    """The last few images' traces. The model is shared by the server's threads: a trace (which
    hooks into it) holds the classifier's lock."""

    def __init__(self, clf: Classifier):
        self.clf = clf
        self.kept: OrderedDict[tuple, network.Network] = OrderedDict()

    def get(self, img: np.ndarray) -> network.Network:
        t = self.clf.trained
        if t is None:
            raise RequestError(409, f"{self.clf.source} is an exported ONNX graph: cnnlab can only look inside "
                                    f"a run folder; serve the run folder to see the layers")
        if t.name == ENSEMBLE:  # several networks averaged: their layers are not one chain
            raise RequestError(409, f"{self.clf.source} is an ensemble; serve one of its networks to look inside "
                                    f"it, such as {Path(self.clf.source) / t.config['members'][0]}")
        key = (id(t.model), img.tobytes())  # (the run browser can swap the served model)
        with self.clf.lock:
            if key not in self.kept:
                x = t.preprocess(torch.from_numpy(img[None].copy()))
                self.kept[key] = network.run(t.model, x, img, t.mean, t.std)
                if len(self.kept) > CACHE:
                    self.kept.popitem(last=False)
            self.kept.move_to_end(key)
            return self.kept[key]


def _note(net: network.Network) -> str | None:
    """What does not apply to a network without convolutions (an mlp)."""
    if any(layer.kind == "conv" for layer in net.layers):
        return None
    inputs = net.layers[0].output.numel()
    return (f"This network has no convolution or pooling layers: it flattens the image into {inputs} numbers at "
            f"once, so there are no feature maps, kernels or receptive fields. Each unit of its first linear "
            f"layer weighs all {inputs} pixels; click one to see its weights as an image.")


async def _json(request: Request) -> dict:
    try:
        body = json.loads(await read_body(request))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RequestError(400, "request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise RequestError(422, "JSON body must be an object")
    return body


def _image(body: dict) -> np.ndarray:
    if "image" not in body:
        raise RequestError(422, 'JSON body needs an "image" field: 28 rows of 28 numbers 0-255 (the image '
                                '/api/predict returns)')
    return np.round(array_image(body["image"])).astype(np.uint8)


def _kernel(value) -> np.ndarray:
    if isinstance(value, str) and value.strip().lower() in kernels.NAMED:
        return kernels.get(value.strip().lower())
    return typed_matrix(value, "kernel", MAX_KERNEL)


def _setting(body: dict, name: str, default: int, low: int) -> int:
    value = body.get(name, default)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= MAX_SETTING:
        raise RequestError(422, f"{name} must be a whole number from {low} to {MAX_SETTING}, got {value!r}")
    return value
