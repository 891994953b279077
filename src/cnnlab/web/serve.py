"""A web explorer and JSON API for a trained run: draw a digit, watch the network classify it.

FastAPI serves the page in web/static (plain HTML, CSS and JavaScript: no build step, no CDN,
works offline) and a small JSON API:

  GET  /healthz        liveness: {"status": "ok"}
  GET  /api/model      what is loaded: model, classes, normalisation, layers, accuracy
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
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from .. import __version__
from ..engine.config import FOLDER
from ..engine.images import gray_image
from ..engine.models import count_parameters
from ..errors import CnnlabError
from ..lecture import conv, kernels
from ..runs.folder import read_metrics
from ..runs.predict import Classifier, ImageError, load_classifier, open_image, predict_images
from ..see.explain import trace
from ..see.gallery import downscale

STATIC_DIR = Path(__file__).with_name("static")
MAX_UPLOAD = 5 * 1024 * 1024           # bytes; larger requests get 413
# An upload may declare at most this many pixels (a 5 MB PNG can declare 64 megapixels and decode
# to 256 MB of RGBA); more is 413 before any pixel is decoded. A 16-megapixel photo is 4920x3264.
MAX_PIXELS = 16_000_000
# Uploads are decoded (and reduced, engine/images.py) on this many threads of their own; the rest
# wait their turn. With MAX_PIXELS that bounds what uploads take to about DECODE_SLOTS x 120 MB (16
# megapixels of RGBA plus its gray+alpha copy). Their own threads, not the request pool's 40: the C
# allocator keeps freed memory per thread, so 40 threads that each once decoded a big image would
# hold 40 times as much (measured: 1.4 GB peak for 8 uploads at once on the shared pool).
DECODE_SLOTS = 2
_DECODER = ThreadPoolExecutor(DECODE_SLOTS, thread_name_prefix="cnnlab-decode")
KERNEL_LIMIT = 1e6                      # largest |value| in a typed kernel: the output stays finite
PLAYGROUND_SIZE = 160                   # uploaded images are shrunk to this many pixels per side
LOG = logging.getLogger("uvicorn.error")  # uvicorn's own log: same format, honours --log-level
STATUS_FOR_KIND = {"not_image": 415, "too_large": 413, "empty": 400, "corrupt": 400, "blank": 400,
                   "unreadable": 400}


class RequestError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


# --- kernels for the playground ---------------------------------------------------------------

def named_kernels() -> dict[str, np.ndarray]:
    """Every hand-designed kernel of cnnlab.kernels (Gaussian at its default 5x5), by name."""
    return {name: kernels.get(name).astype(np.float32) for name in kernels.NAMED}


# A typed kernel may only hold numbers and separators: conv.parse_matrix would read a file whose
# name it is given, and a web request must never make the server open its own files.
_MATRIX_TEXT = re.compile(r"[0-9eE+\-.,;\s]+")


def number_rows(value, name: str, max_side: int) -> np.ndarray:
    """A JSON 2-D array of numbers (rows of equal length, 1 to max_side each way) -> float64.

    Checked value by value before numpy sees it: a string or a boolean is not a number, deeper
    nesting is not a 2-D array, and an integer too big for a float is out of range - all 422.
    """
    if (not isinstance(value, list) or not 0 < len(value) <= max_side
            or not all(isinstance(r, list) and 0 < len(r) <= max_side and len(r) == len(value[0]) for r in value)):
        raise RequestError(422, f"'{name}' must be a 2-D array of numbers (1 to {max_side} rows of equal length)")
    for row in value:
        for v in row:
            if type(v) not in (int, float):  # bool is a subclass of int: compare types exactly
                raise RequestError(422, f"'{name}' must hold only numbers; found {_json_kind(v)}")
    try:
        return np.array(value, dtype=np.float64)
    except OverflowError:
        raise RequestError(422, f"'{name}' holds an integer too large for a floating-point number") from None


def _json_kind(v) -> str:
    kinds = {bool: "true/false", str: "a string", list: "a nested array", dict: "an object", type(None): "null"}
    return kinds.get(type(v), type(v).__name__)


def parse_kernel(value) -> tuple[str, np.ndarray]:
    """A kernel name, or a square matrix with odd side (JSON list or text rows "a b c; d e f; ...")."""
    if isinstance(value, str) and value.strip().lower() in kernels.NAMED:
        name = value.strip().lower()
        return name, kernels.get(name).astype(np.float32)
    if isinstance(value, str):
        if not _MATRIX_TEXT.fullmatch(value.strip() or "x"):
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


# --- request bodies -----------------------------------------------------------------------------

async def read_body(request: Request) -> bytes:
    """The whole body, refused with 413 as soon as it passes MAX_UPLOAD (never buffered beyond)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_UPLOAD:
        raise RequestError(413, f"upload is {int(declared) / 2**20:.1f} MB, over the {MAX_UPLOAD / 2**20:.0f} MB "
                                f"limit; send a smaller image")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_UPLOAD:
                raise RequestError(413, f"upload is over the {MAX_UPLOAD / 2**20:.0f} MB limit; send a smaller image")
            chunks.append(chunk)
    except ClientDisconnect:  # the client went away: one log line, and nobody to answer
        client = f"{request.client.host}:{request.client.port}" if request.client else "a client"
        LOG.warning("%s disconnected during its upload to %s after %s bytes", client, request.url.path, f"{size:,}")
        raise RequestError(400, "the client disconnected during the upload") from None
    return b"".join(chunks)


def _no_constants(name: str):
    raise ValueError(f"{name} is not JSON")


def parse_json(body: bytes) -> dict:
    """A JSON object; anything else (invalid, NaN, too deep, integers past 4,300 digits) is 400/422."""
    try:
        payload = json.loads(body, parse_constant=_no_constants)
    except RecursionError:
        raise RequestError(400, "request JSON is nested too deeply") from None
    except (ValueError, UnicodeDecodeError):  # JSONDecodeError, NaN/Infinity, huge integers
        raise RequestError(400, "request body is not valid JSON (NaN, Infinity and integers over 4,300 "
                                "digits are refused too)") from None
    if not isinstance(payload, dict):
        raise RequestError(422, 'JSON body must be an object such as {"image": [[...28 numbers...], ...]}')
    return payload


async def parse_upload(request: Request) -> tuple[str, object, dict]:
    """(kind, payload, fields): ('image', bytes, form fields or query) or ('json', dict, dict)."""
    body = await read_body(request)
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        async def replay():
            return {"type": "http.request", "body": body, "more_body": False}
        try:
            form = await Request(request.scope, replay).form(max_part_size=MAX_UPLOAD)
        except Exception as e:  # malformed multipart
            raise RequestError(400, f"malformed multipart upload ({e}); send the image in a field named 'file'") from None
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise RequestError(400, "multipart upload has no file field named 'file'")
        return "image", await upload.read(), dict(form)
    if ctype == "application/json":
        payload = parse_json(body)
        return "json", payload, payload
    if ctype.startswith("image/") or ctype == "application/octet-stream":
        return "image", body, dict(request.query_params)
    raise RequestError(415, f"unsupported content type '{ctype or 'none'}'; send multipart/form-data with a "
                            f"'file' field, an image/* body, or application/json")


def array_image(value, size: int | None = 28, name: str = "image") -> np.ndarray:
    """A JSON 2-D array of 0-255 numbers -> float32; shape must be size x size when size is given."""
    a = number_rows(value, name, 1024)
    if size is not None and a.shape != (size, size):
        raise RequestError(422, f"'{name}' has shape {list(a.shape)}; expected [{size}, {size}] "
                                f"(28 rows of 28 numbers 0-255, white digit on black)")
    if not np.isfinite(a).all() or a.min() < 0 or a.max() > 255:
        raise RequestError(422, f"'{name}' values must be numbers from 0 to 255")
    return a.astype(np.float32)


def wants(value) -> bool:
    """A yes/no field (features=1, true, yes)."""
    return value is True or (isinstance(value, (str, int)) and str(value).lower() in ("1", "true", "yes"))


async def decoded(payload: bytes, use):
    """use(the uploaded image), on the decode threads: the decode and everything done with the
    full-size pixels is where an upload's memory goes."""
    def job():
        try:
            return use(open_image(payload, name="upload", max_pixels=MAX_PIXELS))
        except ImageError as e:
            raise _image_error(e) from None
    return await asyncio.wrap_future(_DECODER.submit(job))


def _image_error(e: ImageError) -> RequestError:
    return RequestError(STATUS_FOR_KIND.get(e.kind, 400), str(e))


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
            "max_upload_bytes": MAX_UPLOAD, "kernels": list(named_kernels()), "cnnlab": __version__}
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


def create_app(model: str | Path | Classifier) -> FastAPI:
    clf = model if isinstance(model, Classifier) else load_classifier(model)
    info = model_info(clf)
    app = FastAPI(title="cnnlab", version=__version__, docs_url="/api/docs", redoc_url=None)
    app.state.classifier = clf
    app.add_middleware(CatchAll)
    _add_pages(app, info)
    _add_model_routes(app, clf)
    _add_kernel_route(app)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def _add_pages(app: FastAPI, info: dict) -> None:
    """Errors as JSON, the page, liveness and the model's description."""
    @app.exception_handler(RequestError)
    async def request_error(request, exc: RequestError):
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):  # 404, 405: the same {"error": ...} shape
        return JSONResponse({"error": f"{request.method} {request.url.path}: {str(exc.detail).lower()}"},
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


def serve(model: str | Path, host: str = "127.0.0.1", port: int = 8000, log_level: str = "warning") -> None:
    app = create_app(model)
    # Check the address first: uvicorn would log a traceback-like error and exit on its own.
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as e:
        raise CnnlabError(f"cannot listen on {host}:{port} ({e.strerror or e}); choose another --port "
                          f"or stop the program using it") from None
    print(f"cnnlab serve: {info_line(app)} at http://{host}:{port}/  (Ctrl+C stops)", flush=True)
    # A longer keep-alive than uvicorn's 5 s: busy clients reuse connections instead of racing
    # the server closing them.
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_keep_alive=30)


def info_line(app: FastAPI) -> str:
    clf = app.state.classifier
    return f"{clf.source} ({len(clf.classes)} classes)"
