"""Training from the page: one `cnnlab train` at a time, started, followed live and stopped.

The server runs `python -m cnnlab train ... --out RUN --json` as a child process, so training is
exactly what the terminal does (the same engine, the same run folder, resumable with
`cnnlab train --resume RUN`), the server stays free to answer predictions, and a browser that goes
away cannot disturb it. Stop sends SIGINT: the engine finishes its step, writes its checkpoint and
exits with status 130. The page follows the run's history.jsonl (runs/folder.py's HISTORY) as
server-sent events.

  GET  /api/train          what may be trained here (models, recipes, datasets present) and the job
  POST /api/train          start: JSON {model, recipe, dataset, epochs, limit_train, limit_test,
                           snapshots}; 409 while another training runs, 403 where training is off
  POST /api/train/stop     stop the running training (its checkpoint is written)
  GET  /api/train/events   text/event-stream: "history" events (new lines of the run's history,
                           id = byte offset, so a reconnecting EventSource continues where it
                           was), "status" events when the job's state changes; ends with the job
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from ..engine import data
from ..engine.config import DATASET_NAMES, FOLDER, MODELS, RECIPES, SettingError, config
from ..errors import CnnlabError
from ..runs.folder import new_run_dir, read_history
from .requests import RequestError, read_json

# What the page may set; every other setting comes from the chosen recipe.
FIELDS = {"model": str, "recipe": str, "dataset": str, "epochs": int, "limit_train": int, "limit_test": int,
          "snapshots": int}
POLL_SECONDS = 0.2     # how often the event stream looks for new history lines
STOP_WAIT_SECONDS = 60  # on server shutdown: how long a stopped training may take to checkpoint


class Job:
    """One child `cnnlab train` process and what it said."""

    def __init__(self, run_dir: Path, command: list[str], settings: dict):
        self.run_dir, self.settings, self.started = run_dir, settings, time.time()
        self.log: deque[str] = deque(maxlen=40)
        self.stop_requested, self.ended = False, None
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True)  # the terminal's Ctrl-C goes to the server
        self.stdout: list[str] = []
        threading.Thread(target=self._read, args=(self.proc.stderr, self.log), daemon=True).start()
        threading.Thread(target=self._read, args=(self.proc.stdout, self.stdout), daemon=True).start()

    @staticmethod
    def _read(stream, into) -> None:
        for line in stream:
            if line.strip():
                into.append(line.rstrip())

    @property
    def running(self) -> bool:
        if self.ended is None and self.proc.poll() is not None:
            self.ended = time.time()
            if self.run_dir.is_dir() and not any(self.run_dir.iterdir()):
                self.run_dir.rmdir()  # it failed before it began (its message says why): no empty run
        return self.ended is None

    def state(self) -> str:
        if self.running:
            return "stopping" if self.stop_requested else "running"
        code = self.proc.returncode
        return "finished" if code == 0 else "stopped" if code == 128 + signal.SIGINT else "failed"

    def stop(self) -> None:
        if self.running and not self.stop_requested:
            self.stop_requested = True
            self.proc.send_signal(signal.SIGINT)

    def status(self) -> dict:
        state = self.state()
        result = None
        if state == "finished" and self.stdout:
            try:
                result = json.loads("\n".join(self.stdout))
            except json.JSONDecodeError:
                result = None
        message = next((line for line in reversed(self.log) if "error" in line or "stopped by" in line),
                       self.log[-1] if self.log else "")
        return {"state": state, "run": self.run_dir.name, "run_dir": str(self.run_dir), "settings": self.settings,
                "exit_code": None if self.running else self.proc.returncode,
                "seconds": round((self.ended or time.time()) - self.started, 1),
                "message": message.removeprefix("cnnlab train: ").removeprefix("error: "),
                "resume": f"cnnlab train --resume {self.run_dir}" if state == "stopped" else None,
                "test_accuracy": (result or {}).get("test_accuracy")}


class Trainer:
    """The server's one training slot."""

    def __init__(self, root: Path, allowed: bool, reason: str, data_dir=None):
        self.root, self.allowed, self.reason, self.data_dir = root, allowed, reason, data_dir
        self.job: Job | None = None
        self.lock = threading.Lock()

    def options(self) -> dict:
        return {"allowed": self.allowed, "reason": None if self.allowed else self.reason,
                "runs_dir": str(self.root),
                "models": {name: entry.description for name, entry in MODELS.items()},
                "recipes": RECIPES, "datasets": self.present_datasets(),
                "job": self.job.status() if self.job else None}

    def present_datasets(self) -> list[str]:
        """The named datasets whose files are here (the page never starts a download)."""
        root = data.data_dir(self.data_dir)
        present = []
        for name in DATASET_NAMES:
            try:
                data.ensure_files(data.dataset_info(name), root, download=False)
                present.append(name)
            except CnnlabError:
                pass
        return present

    def settings(self, body) -> dict:
        """The request's settings, checked as `cnnlab train` checks its flags; RequestError says what is wrong."""
        if not isinstance(body, dict):
            raise RequestError(422, 'send a JSON object such as {"model": "simple_cnn", "epochs": 1}')
        unknown = sorted(set(body) - set(FIELDS))
        if unknown:
            raise RequestError(422, f"unknown setting {', '.join(unknown)}; the page sets {', '.join(FIELDS)}")
        given = {k: v for k, v in body.items() if v is not None and v != ""}
        for k, v in given.items():
            if FIELDS[k] is int and (isinstance(v, bool) or not isinstance(v, int)):
                raise RequestError(422, f"{k} must be a whole number, got {json.dumps(v)}")
            if FIELDS[k] is str and not isinstance(v, str):
                raise RequestError(422, f"{k} must be a name, got {json.dumps(v)}")
        recipe = given.pop("recipe", "lecture")
        try:
            cfg = config(recipe, **given)
        except SettingError as e:
            raise RequestError(422, str(e)) from None
        if cfg.dataset.startswith(FOLDER) or cfg.dataset not in self.present_datasets():
            raise RequestError(422, f"dataset '{cfg.dataset}' is not on this machine ({data.data_dir(self.data_dir)}); "
                                    f"choose one of: {', '.join(self.present_datasets()) or 'none'}, or download "
                                    f"it first with 'cnnlab train --dataset {cfg.dataset}' in a terminal")
        return {"recipe": recipe, **given}

    def start(self, body) -> dict:
        if not self.allowed:
            raise RequestError(403, self.reason)
        settings = self.settings(body)
        with self.lock:
            if self.job and self.job.running:
                raise RequestError(409, f"a training is already running ({self.job.run_dir.name}); one at a time "
                                        f"per server: stop it or wait for it to finish")
            model = settings.get("model") or RECIPES[settings["recipe"]]["model"]
            # A fresh folder of its own; the lock is let go at once, for the training process to claim.
            claimed = new_run_dir(model, parent=self.root)
            run_dir = claimed.run_dir
            claimed.release()
            command = [sys.executable, "-m", "cnnlab", "train", "--out", str(run_dir), "--json"]
            for key, value in settings.items():
                command += [f"--{key.replace('_', '-')}", str(value)]
            if self.data_dir:
                command += ["--data-dir", str(self.data_dir)]
            self.job = Job(run_dir, command, settings)
        return self.job.status()

    def stop(self) -> dict:
        if not self.allowed:
            raise RequestError(403, self.reason)
        if not (self.job and self.job.running):
            raise RequestError(409, "no training is running")
        self.job.stop()
        return self.job.status()

    def shutdown(self) -> None:
        """The server is going down: a running training stops and writes its checkpoint."""
        job = self.job
        if job and job.running:
            job.stop()
            try:
                job.proc.wait(STOP_WAIT_SECONDS)
            except subprocess.TimeoutExpired:
                job.proc.kill()
            job.running  # noqa: B018 (notes the end)


async def events(trainer: Trainer, request: Request, offset: int):
    """The job's history as server-sent events, until the job ends or the browser leaves."""
    job, last = trainer.job, None
    if job is None:
        yield _sse("status", {"state": "idle"})
        return
    shutting_down = getattr(request.app.state, "shutting_down", lambda: False)  # (set by serve())
    while not (shutting_down() or await request.is_disconnected()):
        running = job.running  # (read before the history, so its last lines are sent before the end)
        new, offset = read_history(job.run_dir, offset)
        if new:
            yield _sse("history", {"events": new}, offset)
        status = job.status()
        if status["state"] != last:
            last = status["state"]
            yield _sse("status", status)
        if not running:
            return
        await asyncio.sleep(POLL_SECONDS)


def _sse(event: str, payload: dict, event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n"


def add_routes(app: FastAPI, root: Path, allowed: bool, reason: str = "", data_dir=None) -> Trainer:
    trainer = Trainer(Path(root), allowed, reason, data_dir)
    app.state.trainer = trainer
    app.router.on_shutdown.append(trainer.shutdown)

    @app.get("/api/train")
    def train_options():
        return trainer.options()

    @app.post("/api/train")
    async def train_start(request: Request):
        return trainer.start(await read_json(request))

    @app.post("/api/train/stop")
    def train_stop():
        return trainer.stop()

    @app.get("/api/train/events")
    async def train_events(request: Request, offset: int = 0):
        start = request.headers.get("last-event-id", "")
        offset = int(start) if start.isdigit() else max(0, offset)
        return StreamingResponse(events(trainer, request, offset), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    return trainer
