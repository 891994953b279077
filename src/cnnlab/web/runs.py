"""The run browser: the runs in a folder, how one learned, its mistakes, and two side by side.

  GET  /api/runs                      the runs (see.browse.summary), newest first; which one the
                                      explorer has loaded and which one is training
  GET  /api/runs/{name}/history       loss points, epochs, filter snapshots with their closest kernels
  GET  /api/runs/{name}/evaluation    accuracy, per-class accuracy and confusion matrix on its test images
  GET  /api/runs/{name}/cell?true=T&predicted=P[&limit=N]
                                      the test images of one confusion cell, with probabilities and Grad-CAM
  GET  /api/compare?a=A&b=B           two runs on the same test images
  POST /api/runs/{name}/explore       the explorer's model becomes this run's (where training is allowed)

A run's predictions are computed once and kept (the last few runs asked about).
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Callable

from fastapi import FastAPI

from ..errors import CnnlabError
from ..runs.folder import CONFIG, WEIGHTS
from ..see import browse
from .requests import RequestError

KEPT = 4          # evaluated runs kept in memory
MAX_CELL = 100    # images one confusion-cell request may ask for
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")


class Browser:
    def __init__(self, root: Path, data_dir, allowed: bool, reason: str, use_model: Callable[[Path], dict]):
        self.root, self.data_dir, self.allowed, self.reason = Path(root), data_dir, allowed, reason
        self.use_model = use_model
        self.kept: OrderedDict[tuple, browse.Evaluation] = OrderedDict()
        self.lock = threading.Lock()

    def path(self, name: str) -> Path:
        """The run folder `name` directly inside the root (never a path elsewhere), or 404."""
        path = self.root / name
        if not _NAME.fullmatch(name) or not (path / CONFIG).is_file():
            raise RequestError(404, f"no run '{name[:80]}' in {self.root}; GET /api/runs lists them")
        return path

    def evaluation(self, name: str) -> browse.Evaluation:
        path = self.path(name)
        weights = path / WEIGHTS if (path / WEIGHTS).is_file() else path / CONFIG
        if not browse.summary(path)["finished"]:
            raise RequestError(409, f"run {name} has no trained weights yet (it is training, or was stopped: "
                                    f"finish it with 'cnnlab train --resume {path}')")
        key = (name, weights.stat().st_mtime_ns)
        with self.lock:  # one evaluation at a time: each takes the CPU for a second or two
            if key not in self.kept:
                try:
                    self.kept[key] = browse.evaluate_run(path, self.data_dir)
                except CnnlabError as e:
                    raise RequestError(409, str(e)) from None
                while len(self.kept) > KEPT:
                    self.kept.popitem(last=False)
            self.kept.move_to_end(key)
            return self.kept[key]


def add_routes(app: FastAPI, root: Path, allowed: bool, reason: str = "", data_dir=None,
               use_model: Callable[[Path], dict] | None = None) -> Browser:
    browser = Browser(root, data_dir, allowed, reason, use_model)

    @app.get("/api/runs")
    def runs_list():
        trainer = getattr(app.state, "trainer", None)
        job = trainer.job if trainer else None
        return {"root": str(browser.root), "runs": browse.list_runs(browser.root),
                "loaded": app.state.classifier.source,
                "training": job.run_dir.name if job and job.running else None}

    @app.get("/api/runs/{name}/history")
    def run_history(name: str):
        return {"run": name, **browse.history(browser.path(name))}

    @app.get("/api/runs/{name}/evaluation")
    def run_evaluation(name: str):
        return {"run": name, **browser.evaluation(name).to_json()}

    @app.get("/api/runs/{name}/cell")
    def run_cell(name: str, true: int, predicted: int, limit: int = browse.CELL_IMAGES):
        if not 1 <= limit <= MAX_CELL:
            raise RequestError(422, f"limit must be 1 to {MAX_CELL}, got {limit}")
        try:
            return {"run": name, **browse.cell(browser.evaluation(name), true, predicted, limit)}
        except CnnlabError as e:
            raise RequestError(422, str(e)) from None

    @app.get("/api/compare")
    def runs_compare(a: str, b: str):
        if a == b:
            raise RequestError(422, "pick two different runs to compare")
        try:
            return {"a": a, "b": b, **browse.compare_runs(browser.evaluation(a), browser.evaluation(b))}
        except CnnlabError as e:
            raise RequestError(422, str(e)) from None

    @app.post("/api/runs/{name}/explore")
    def run_explore(name: str):
        if not browser.allowed:
            raise RequestError(403, browser.reason)
        path = browser.path(name)
        if not browse.summary(path)["finished"]:
            raise RequestError(409, f"run {name} has no trained weights yet; finish it first")
        try:
            return browser.use_model(path)
        except CnnlabError as e:
            raise RequestError(409, str(e)) from None

    return browser
