"""What the explorer's routes share: reading a request body (an image upload or JSON), checking
a JSON image, and the RequestError every route raises for a bad request (a JSON {"error": ...}
with a 4xx status, answered by the handler create_app installs)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from fastapi import Request
from starlette.requests import ClientDisconnect

from ..engine.images import ImageError, open_image
from ..errors import CnnlabError
from ..lecture import conv

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
LOG = logging.getLogger("uvicorn.error")  # uvicorn's own log: same format, honours --log-level
STATUS_FOR_KIND = {"not_image": 415, "too_large": 413, "empty": 400, "corrupt": 400, "blank": 400,
                   "unreadable": 400}


class RequestError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


# A typed kernel may only hold numbers and separators: conv.parse_matrix would read a file whose
# name it is given, and a web request must never make the server open its own files.
MATRIX_TEXT = re.compile(r"[0-9eE+\-.,;\s]+")


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
            raise image_error(e) from None
    return await asyncio.wrap_future(_DECODER.submit(job))


def image_error(e: ImageError) -> RequestError:
    return RequestError(STATUS_FOR_KIND.get(e.kind, 400), str(e))


def typed_matrix(value, what: str, max_side: int) -> np.ndarray:
    """A matrix typed on the page ("1 2; 3 4") or sent as a JSON 2-D array, finite, at most
    max_side x max_side."""
    if isinstance(value, str):
        if not MATRIX_TEXT.fullmatch(value.strip() or "x"):
            raise RequestError(422, f"{what} '{value[:40]}' is not a matrix like '1 2; 3 4' (numbers, rows "
                                    f"separated by ';')")
        try:
            m = conv.parse_matrix(value.strip(), what)
        except CnnlabError as e:
            raise RequestError(422, str(e)) from None
    else:
        try:
            m = np.asarray(value, dtype=np.float64)
        except (ValueError, TypeError):
            raise RequestError(422, f"{what} must be a 2-D array of numbers (rows of equal length)") from None
    if m.ndim != 2 or min(m.shape) < 1 or max(m.shape) > max_side:
        raise RequestError(422, f"{what} has shape {list(m.shape)}; it must be a matrix of 1x1 to "
                                f"{max_side}x{max_side}")
    if not np.isfinite(m).all():
        raise RequestError(422, f"{what} values must be finite numbers")
    return m


MAX_JSON = 64 * 1024  # bytes of a JSON request that is not an image upload


async def read_json(request: Request):
    """A small JSON body (any JSON value), refused while reading once it passes MAX_JSON (413);
    NaN, Infinity, huge integers and deep nesting are refused as in parse_json."""
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_JSON:
            raise RequestError(413, f"the request is over {MAX_JSON // 1024} KB; send a small JSON object")
    try:
        return json.loads(raw or b"null", parse_constant=_no_constants)
    except RecursionError:
        raise RequestError(400, "request JSON is nested too deeply") from None
    except (ValueError, UnicodeDecodeError):
        raise RequestError(400, "request body is not valid JSON") from None
