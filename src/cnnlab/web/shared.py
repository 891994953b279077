"""What the explorer's route modules share: errors as JSON, and images sent as JSON arrays."""

from __future__ import annotations

import json

import numpy as np
from fastapi import Request

MAX_JSON = 64 * 1024  # bytes of a JSON request that is not an image upload


class RequestError(Exception):
    """A request the server refuses: answered as JSON {"error": message} with this status."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


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


async def read_json(request: Request):
    """A small JSON body, refused while reading once it passes MAX_JSON (413)."""
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_JSON:
            raise RequestError(413, f"the request is over {MAX_JSON // 1024} KB; send a small JSON object")
    try:
        return json.loads(raw or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RequestError(400, "request body is not valid JSON") from None
