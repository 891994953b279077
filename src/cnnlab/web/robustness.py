"""Robustness of the drawn digit: move, turn and scale it, and find the smallest pixel change that
flips the prediction (see/robustness.py).

  POST /api/robustness        JSON {"image": 28x28 array 0-255, "dx", "dy" (pixels), "angle"
                              (degrees, clockwise), "scale"} -> the transformed image, its
                              prediction and probabilities, and the first conv layers' feature maps
  POST /api/robustness/fgsm   JSON {"image": 28x28 array} -> the smallest fast-gradient-sign step
                              (in grey levels) that changes the prediction, the perturbed image
                              and the perturbation
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
from fastapi import FastAPI, Request
from starlette.concurrency import run_in_threadpool

from ..runs.predict import predict_images
from ..see.robustness import MAX_EPSILON, smallest_fgsm, transform
from .requests import RequestError, array_image, read_json

# Each slider's range: (low, high, the value that leaves the image as it is).
LIMITS = {"dx": (-14.0, 14.0, 0.0), "dy": (-14.0, 14.0, 0.0), "angle": (-180.0, 180.0, 0.0), "scale": (0.25, 4.0, 1.0)}


def _number(body: dict, name: str) -> float:
    low, high, default = LIMITS[name]
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high:
        raise RequestError(422, f"{name} must be a number from {low:g} to {high:g}, got {value!r}")
    return float(value)


def _image(body) -> np.ndarray:
    if not isinstance(body, dict) or "image" not in body:
        raise RequestError(422, 'send JSON {"image": 28 rows of 28 numbers 0-255, ...}')
    return np.round(array_image(body["image"])).astype(np.uint8)


def add_routes(app: FastAPI, feature_maps: Callable) -> None:
    """feature_maps(classifier, image) is the explorer's own (web/serve.py), so the maps look the same."""
    def classifier():
        clf = app.state.classifier
        if not clf.loaded:
            raise RequestError(409, "no model is loaded yet: train one in the Train tab or pick a run in Runs")
        return clf

    @app.post("/api/robustness")
    async def robustness(request: Request):
        body = await read_json(request)
        image = _image(body)
        dx, dy, angle, scale = (_number(body, k) for k in ("dx", "dy", "angle", "scale"))

        def work():
            clf = classifier()
            moved = transform(image, dx, dy, angle, scale)
            result = predict_images(clf, moved[None], top_k=len(clf.classes))[0]
            return {**result, "image": moved.tolist(), "features": feature_maps(clf, moved),
                    "transform": {"dx": dx, "dy": dy, "angle": angle, "scale": scale}}
        return await run_in_threadpool(work)

    @app.post("/api/robustness/fgsm")
    async def fgsm(request: Request):
        image = _image(await read_json(request))

        def work():
            clf = classifier()
            if clf.trained is None:
                raise RequestError(422, f"the gradient search needs a run folder's network; {clf.source} is an "
                                        f"exported file")
            with clf.lock:  # the gradient runs through the shared model
                result = smallest_fgsm(clf.trained, image, MAX_EPSILON)
            return {**result, "classes": clf.classes}
        return await run_in_threadpool(work)
