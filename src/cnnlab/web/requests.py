"""What the explorer's routes share: reading a request body (an image upload or JSON), checking
a JSON image, and the RequestError every route raises for a bad request (a JSON {"error": ...}
with a 4xx status, answered by the handler create_app installs)."""

from __future__ import annotations

import json
import re

import numpy as np
from fastapi import Request

from ..errors import CnnlabError
from ..lecture import conv
from ..runs.predict import ImageError

MAX_UPLOAD = 5 * 1024 * 1024           # bytes; larger requests get 413
STATUS_FOR_KIND = {"not_image": 415, "too_large": 413, "empty": 400, "corrupt": 400, "blank": 400,
                   "unreadable": 400}
# A typed matrix may only hold numbers and separators: conv.parse_matrix would read a file whose
# name it is given, and a web request must never make the server open its own files.
MATRIX_TEXT = re.compile(r"[0-9eE+\-.,;\s]+")


class RequestError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


async def read_body(request: Request) -> bytes:
    """The whole body, refused with 413 as soon as it passes MAX_UPLOAD (never buffered beyond)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_UPLOAD:
        raise RequestError(413, f"upload is {int(declared) / 2**20:.1f} MB, over the {MAX_UPLOAD / 2**20:.0f} MB "
                                f"limit; send a smaller image")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_UPLOAD:
            raise RequestError(413, f"upload is over the {MAX_UPLOAD / 2**20:.0f} MB limit; send a smaller image")
        chunks.append(chunk)
    return b"".join(chunks)


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
        try:
            payload = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RequestError(400, "request body is not valid JSON") from None
        if not isinstance(payload, dict):
            raise RequestError(422, 'JSON body must be an object such as {"image": [[...28 numbers...], ...]}')
        return "json", payload, payload
    if ctype.startswith("image/") or ctype == "application/octet-stream":
        return "image", body, dict(request.query_params)
    raise RequestError(415, f"unsupported content type '{ctype or 'none'}'; send multipart/form-data with a "
                            f"'file' field, an image/* body, or application/json")


def array_image(value, size: int | None = 28, name: str = "image") -> np.ndarray:
    """A JSON 2-D array of 0-255 numbers -> float32; shape must be size x size when size is given."""
    try:
        a = np.asarray(value, dtype=np.float64)
    except (ValueError, TypeError):
        raise RequestError(422, f"'{name}' must be a 2-D array of numbers (rows of equal length)") from None
    if size is not None and a.shape != (size, size):
        raise RequestError(422, f"'{name}' has shape {list(a.shape)}; expected [{size}, {size}] "
                                f"(28 rows of 28 numbers 0-255, white digit on black)")
    if a.ndim != 2 or min(a.shape) < 1 or max(a.shape) > 1024:
        raise RequestError(422, f"'{name}' has shape {list(a.shape)}; expected a 2-D array up to 1024x1024")
    if not np.isfinite(a).all() or a.min() < 0 or a.max() > 255:
        raise RequestError(422, f"'{name}' values must be numbers from 0 to 255")
    return a.astype(np.float32)


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
