"""A web explorer and JSON API for a trained run: draw a digit, watch the network classify it.

FastAPI serves the page in web/static (plain HTML, CSS and JavaScript: no build step, no CDN,
works offline) and a small JSON API, documented at /api/docs (Swagger UI, also served locally):

  GET  /healthz        liveness: {"status": "ok"}
  GET  /api/model      what is loaded: model, classes, normalisation, preprocessing, layers, accuracy
  POST /api/predict    an image (multipart field "file", or a raw image/* body), or JSON
                       {"image": 28x28 array of 0-255, white on black} -> prediction, the 10
                       probabilities and the 28x28 image the model saw; ?features=1 adds the
                       first two conv layers' feature maps
  GET  /api/filters    the learned first-layer filters
  POST /api/kernel     a hand-designed or typed-in kernel applied to an image

Every request error is a JSON {"error": "..."} with a 4xx status (404 and 405 too), the server
keeps serving, and the client's keep-alive connection stays usable. Uploads are bounded three ways:
5 MB per body, 16 megapixels per image (refused from the header, before decoding), and two image
decodes at a time; a decoded image is reduced to about 1024 pixels per side before any float copy
exists (engine/images.py), so memory stays bounded however many clients upload at once.
The explorer's views are web/explain.py's routes: the network layer by layer, a unit's arithmetic, the sliding window.
The page's other views are the routes of web/training.py (train from the page), web/runs.py (the run
browser) and web/robustness.py (move the drawing, find the smallest change that flips it).
"""

from __future__ import annotations

import base64
import ipaddress
import socket
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from .. import __version__
from ..engine.config import FOLDER
from ..engine.data import DIGITS
from ..engine.images import gray_image
from ..engine.models import count_parameters
from ..errors import CnnlabError
from ..lecture import conv, kernels
from ..runs.folder import read_metrics
from ..runs.predict import Classifier, load_classifier, predict_images
from ..see.browse import is_run, latest_finished
from ..see.explain import trace
from ..see.gallery import downscale
from . import explain, robustness, runs, training
from .requests import (
    KERNEL_LIMIT,
    LOG,
    MATRIX_TEXT,
    MAX_UPLOAD,
    RequestError,
    array_image,
    decoded,
    number_rows,
    parse_upload,
    wants,
)

STATIC_DIR = Path(__file__).with_name("static")
PLAYGROUND_SIZE = 160                   # uploaded images are shrunk to this many pixels per side


# --- kernels for the playground ---------------------------------------------------------------

def named_kernels() -> dict[str, np.ndarray]:
    """Every hand-designed kernel of cnnlab.kernels (Gaussian at its default 5x5), by name."""
    return {name: kernels.get(name).astype(np.float32) for name in kernels.NAMED}


def parse_kernel(value) -> tuple[str, np.ndarray]:
    """A kernel name, or a square matrix with odd side (JSON list or text rows "a b c; d e f; ...")."""
    if isinstance(value, str) and value.strip().lower() in kernels.NAMED:
        name = value.strip().lower()
        return name, kernels.get(name).astype(np.float32)
    if isinstance(value, str):
        if not MATRIX_TEXT.fullmatch(value.strip() or "x"):
            raise RequestError(422, f"kernel '{value[:40]}' is neither a name ({', '.join(kernels.NAMED)}) nor "
                                    f"a matrix like '0 -1 0; -1 5 -1; 0 -1 0'")
        try:
            k = conv.parse_matrix(value.strip(), "kernel")
        except CnnlabError as e:
            raise RequestError(422, str(e)) from None
    else:
        k = number_rows(value, "kernel", 7)
    if k.ndim != 2 or k.shape[0] != k.shape[1] or k.shape[0] % 2 == 0 or not 1 <= k.shape[0] <= 7:
        raise RequestError(422, f"kernel has shape {list(k.shape)}; it must be square with an odd side "
                                f"from 1 to 7 (e.g. 3x3)")
    if not np.isfinite(k).all() or np.abs(k).max() > KERNEL_LIMIT:
        raise RequestError(422, f"kernel values must be finite numbers from {-KERNEL_LIMIT:g} to {KERNEL_LIMIT:g}")
    return "custom", k.astype(np.float32)


# --- inside the network -----------------------------------------------------------------------

def conv_layers(model: torch.nn.Module) -> list[tuple[str, torch.nn.Conv2d]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]


def feature_maps(clf: Classifier, image_u8: np.ndarray, layers: int = 2) -> list[dict]:
    """ReLU of the first `layers` conv layers' outputs for one 28x28 image, as compact uint8 grids."""
    if clf.trained is None:
        return []
    x = clf.trained.preprocess(torch.from_numpy(image_u8[None].copy()))
    with clf.lock:  # trace hooks into the shared model: one forward pass at a time
        _, outputs = trace(clf.trained.model, x)
    convs = [o for o in outputs if o.kind == "conv"][:layers]
    return [{"layer": f"conv{i + 1}", "module": o.name, **_encode(F.relu(o.output).numpy())}
            for i, o in enumerate(convs)]


def _encode(maps: np.ndarray) -> dict:
    """[C, H, W] float >= 0 -> base64 uint8 scaled per map, with the scales (JSON stays small)."""
    scale = maps.reshape(len(maps), -1).max(axis=1)
    q = np.round(maps / np.maximum(scale, 1e-12)[:, None, None] * 255).astype(np.uint8)
    return {"channels": int(maps.shape[0]), "height": int(maps.shape[1]), "width": int(maps.shape[2]),
            "max": [round(float(s), 5) for s in scale], "data": base64.b64encode(q.tobytes()).decode()}


# --- the app --------------------------------------------------------------------------------------

def _public(name: str | None) -> str | None:
    """A run's source or folder dataset without the server's folders: its last part only."""
    if name and name.startswith(FOLDER):
        return FOLDER + Path(name[len(FOLDER):]).name
    return Path(name).name if name else name


def model_info(clf: Classifier) -> dict:
    """What /api/model tells any client; no server file path (a run or dataset is named by its
    folder's own name)."""
    info = {"source": _public(clf.source), "classes": clf.classes,
            "normalization": {"mean": clf.mean, "std": clf.std}, "input": [1, 28, 28],
            "max_upload_bytes": MAX_UPLOAD, "preprocessing": clf.preprocessing,
            "kernels": list(named_kernels()), "cnnlab": __version__}
    if clf.trained is not None:
        t = clf.trained
        metrics = read_metrics(t.run_dir) if t.run_dir else []
        info.update(model=t.name, dataset=_public(t.config.get("dataset")),
                    parameters=count_parameters(t.model),
                    # An ensemble has no training metrics; its evaluation sits in its config.
                    test_accuracy=(metrics[-1].get("test_accuracy") if metrics
                                   else (t.config.get("evaluation") or {}).get("test_accuracy")),
                    epochs=len(metrics),
                    conv_layers=[{"module": n, "in_channels": m.in_channels, "out_channels": m.out_channels,
                                  "kernel_size": list(m.kernel_size)} for n, m in conv_layers(t.model)])
    else:
        info.update(model=(clf.metadata or {}).get("model"), dataset=_public((clf.metadata or {}).get("dataset")),
                    conv_layers=[])
    return info


class CatchAll:
    """A bug while answering must not cost the client its connection: Starlette's last-resort
    handler re-raises after answering 500, and uvicorn then closes the keep-alive connection. This
    logs the traceback once, answers 500 JSON (without details) and returns normally."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracked(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception:
            LOG.exception("internal error answering %s %s", scope.get("method"), scope.get("path"))
            if not started:
                await JSONResponse({"error": "internal error; the server's log has the details"},
                                   status_code=500)(scope, receive, send)


def training_allowed(host: str, allow_training: bool = False) -> bool:
    """Training from the page uses this machine's CPU: on where only this machine can reach the
    server (a loopback address), elsewhere only when asked for."""
    if allow_training or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: other machines may reach it
        return False


def create_app(model: str | Path | Classifier, *, runs_dir: str | Path | None = None, allow_training: bool = True,
               why_not: str = "", data_dir=None, preprocess: str | None = None) -> FastAPI:
    """The explorer for a run folder, an exported .onnx file, or a folder of runs (the newest
    finished one is loaded; none yet: the page can train one). runs_dir is the run browser's folder
    and where page trainings go (default: the folder of runs, or the folder holding the run).
    Uploaded images are prepared as the model's dataset was made, or as `preprocess` says
    ("digit", "fashion", "plain")."""
    clf, root = _open(model, runs_dir, preprocess)
    info = model_info(clf)
    # /api/docs is Swagger UI from files shipped in the fastapi-offline package, not from a CDN:
    # like the rest of the page it works with no network.
    app = FastAPIOffline(title="cnnlab", version=__version__, docs_url="/api/docs", redoc_url=None,
                         static_url="/api/docs-assets")
    app.state.classifier, app.state.info = clf, info
    app.add_middleware(CatchAll)
    _add_pages(app, info)
    _add_model_routes(app, clf)
    _add_kernel_route(app)
    explain.add_routes(app, clf)
    training.add_routes(app, root, allow_training, why_not, data_dir)
    runs.add_routes(app, root, allow_training, why_not, data_dir, use_model=lambda path: _use_model(app, path))
    robustness.add_routes(app, feature_maps)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def _open(model, runs_dir, preprocess: str | None = None) -> tuple[Classifier, Path]:
    if isinstance(model, Classifier):
        return model, Path(runs_dir or "runs")
    path = Path(model)
    if path.is_dir() and not is_run(path):  # a folder of runs
        latest = latest_finished(path)
        clf = (load_classifier(latest, preprocess=preprocess) if latest
               else Classifier(f"no finished run in {path} yet", DIGITS, 0.5, 0.5, preprocess=preprocess))
        return clf, Path(runs_dir or path)
    return load_classifier(path, preprocess=preprocess), Path(runs_dir or path.parent)


def _use_model(app: FastAPI, path: Path) -> dict:
    """The explorer answers with the run at `path` from now on (the run browser's Explore)."""
    app.state.classifier.take(load_classifier(path))
    app.state.info.clear()
    app.state.info.update(model_info(app.state.classifier))
    return app.state.info


def _add_pages(app: FastAPI, info: dict) -> None:
    """Errors as JSON, the page, liveness and the model's description."""
    @app.exception_handler(RequestError)
    async def request_error(request, exc: RequestError):
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):  # 404, 405: the same {"error": ...} shape
        return JSONResponse({"error": f"{request.method} {request.url.path}: {exc.detail.lower()}"},
                            status_code=exc.status_code, headers=exc.headers)

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(STATIC_DIR / "index.html")

    @app.get("/healthz")
    def healthz():
        return {"status": "ok", "model": info.get("model")}

    @app.get("/api/model")
    def api_model():
        return info


def _add_model_routes(app: FastAPI, clf: Classifier) -> None:
    """The learned filters, and predictions (with feature maps) for an uploaded or drawn image."""
    @app.get("/api/filters")
    def api_filters():
        if clf.trained is None or not conv_layers(clf.trained.model):
            return {"layer": None, "filters": [], "note": "this model has no convolution layers"}
        name, conv = conv_layers(clf.trained.model)[0]
        w = conv.weight.detach().cpu().numpy()
        return {"layer": name, "shape": list(w.shape), "filters": np.round(w, 5).tolist()}

    @app.post("/api/predict")
    async def api_predict(request: Request):
        kind, payload, fields = await parse_upload(request)
        want_features = wants(request.query_params.get("features", fields.get("features", "0")))
        upload = await decoded(payload, lambda pil: clf.prepare(pil, name="upload")) if kind == "image" else None

        def work():
            if not clf.loaded:
                raise RequestError(409, "no model is loaded yet: train one in the Train tab or pick a run in Runs")
            if kind == "json":
                if "image" not in payload:
                    raise RequestError(422, 'JSON body needs an "image" field: 28 rows of 28 numbers 0-255')
                img = np.round(array_image(payload["image"])).astype(np.uint8)
            else:
                img = upload
            result = predict_images(clf, img[None], top_k=len(clf.classes))[0]
            result["image"] = img.tolist()
            if want_features:
                result["features"] = feature_maps(clf, img)
            return result

        return await run_in_threadpool(work)


def _add_kernel_route(app: FastAPI) -> None:
    """The playground: a hand-designed or typed-in kernel applied to an image."""
    @app.post("/api/kernel")
    async def api_kernel(request: Request):
        kind, payload, fields = await parse_upload(request)
        upload = await decoded(payload, lambda pil: np.asarray(gray_image(pil), np.float64)) if kind == "image" else None

        def work():
            if kind == "json":
                if "image" not in payload:
                    raise RequestError(422, 'JSON body needs an "image" field (2-D array of 0-255) and a "kernel"')
                img = array_image(payload["image"], size=None)
            else:
                img = downscale(upload / 255.0, PLAYGROUND_SIZE) * 255.0
            name, k = parse_kernel(fields.get("kernel", "sobel-x"))
            out = kernels.apply(img / 255.0, k)
            return {"kernel_name": name, "kernel": k.tolist(), "input": np.round(img).astype(int).tolist(),
                    "output": np.round(out, 4).tolist(), "min": float(out.min()), "max": float(out.max())}

        return await run_in_threadpool(work)


def serve(model: str | Path, host: str = "127.0.0.1", port: int = 8000, log_level: str = "warning", *,
          allow_training: bool = False, runs_dir=None, data_dir=None, preprocess: str | None = None) -> None:
    """Serve the explorer. Training from the page (and changing its model) is on where only this
    machine can reach the server, elsewhere only with allow_training: it uses this machine's CPU."""
    allowed = training_allowed(host, allow_training)
    app = create_app(model, runs_dir=runs_dir, allow_training=allowed, data_dir=data_dir, preprocess=preprocess,
                     why_not=f"training from the page is off because the server listens on {host}, where other "
                             f"machines can reach it; restart it with --allow-training to allow it")
    # Check the address first: uvicorn would log a traceback-like error and exit on its own.
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as e:
        raise CnnlabError(f"cannot listen on {host}:{port} ({e.strerror or e}); choose another --port "
                          f"or stop the program using it") from None
    print(f"cnnlab serve: {info_line(app)} at http://{host}:{port}/; runs in {app.state.trainer.root}, training "
          f"from the page {'on' if allowed else 'off (--allow-training turns it on)'}  (Ctrl+C stops)", flush=True)
    # A longer keep-alive than uvicorn's 5 s: busy clients reuse connections instead of racing
    # the server closing them.
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_keep_alive=30))
    # On Ctrl-C uvicorn waits for open responses before shutting down (and stopping a training):
    # the event streams of pages following a training end as soon as it begins to.
    app.state.shutting_down = lambda: server.should_exit
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn raises the Ctrl-C again once it has shut down (as uvicorn.run, quietly)
        pass


def info_line(app: FastAPI) -> str:
    clf = app.state.classifier
    return f"{clf.source} ({len(clf.classes)} classes, {clf.preprocessing} preprocessing of uploads)"
