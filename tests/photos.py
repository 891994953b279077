"""MNIST test digits restyled as photos and scans: what `cnnlab predict` must cope with.

Each digit becomes dark ink on light, unevenly lit paper (sometimes tinted), enlarged to a random
size, placed off centre on a larger sheet, with sensor noise, salt-and-pepper specks and JPEG
compression. Deterministic for a given seed.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def restyle(digit_u8: np.ndarray, rng: np.random.Generator) -> bytes:
    """One 28x28 MNIST digit (white on black) -> JPEG bytes of a 'photo' of it."""
    size = int(rng.integers(70, 180))                       # the digit's frame, in pixels
    sheet_h, sheet_w = int(size * rng.uniform(1.3, 2.0)), int(size * rng.uniform(1.3, 2.0))
    ink = np.asarray(Image.fromarray(digit_u8).resize((size, size), Image.BICUBIC), np.float32) / 255
    canvas = np.zeros((sheet_h, sheet_w), np.float32)
    top = int(rng.integers(0, sheet_h - size + 1))
    left = int(rng.integers(0, sheet_w - size + 1))
    canvas[top:top + size, left:left + size] = np.clip(ink, 0, 1)

    # Paper brightness falls off across the sheet (a lamp on one side); ink is dark grey, not black.
    yy, xx = np.mgrid[0:sheet_h, 0:sheet_w].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xx / sheet_w + np.sin(angle) * yy / sheet_h)
    paper = rng.uniform(190, 240) - rng.uniform(20, 60) * (ramp - ramp.min()) / max(np.ptp(ramp), 1e-6)
    ink_level = rng.uniform(20, 70)
    gray = paper * (1 - canvas) + ink_level * canvas
    gray += rng.normal(0, rng.uniform(3, 9), gray.shape)      # sensor noise
    specks = rng.random(gray.shape) < 0.002                   # dust on the scanner glass
    gray[specks] = rng.uniform(0, 80, specks.sum())
    gray = np.clip(gray, 0, 255)

    if rng.random() < 0.5:  # a colour photo: warm or cool paper tint
        tint = rng.uniform(0.85, 1.0, 3)
        rgb = np.clip(gray[..., None] * tint, 0, 255).astype(np.uint8)
        img = Image.fromarray(rgb, "RGB")
    else:
        img = Image.fromarray(gray.astype(np.uint8), "L")
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(rng.integers(50, 90)))
    return buf.getvalue()


def rgba_png(side: int, bar: int) -> bytes:
    """A side x side RGBA PNG, transparent except a black vertical bar `bar` pixels wide (a "1"):
    written row by row, so the caller never holds the decoded image (8000x8000 is 256 MB). Highly
    compressible, as an attacker's would be: 8000x8000 is about 300 KB."""
    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    clear = b"\0" + b"\xff\xff\xff\x00" * side
    left = (side - bar) // 2
    ink = b"\0" + b"\xff\xff\xff\x00" * left + b"\x00\x00\x00\xff" * bar + b"\xff\xff\xff\x00" * (side - left - bar)
    z, parts = zlib.compressobj(9), []
    for y in range(side):
        parts.append(z.compress(ink if side // 6 <= y < side - side // 6 else clear))
    parts.append(z.flush())
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 6, 0, 0, 0))
            + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))


LIGHTS = ("lamp", "diagonal", "vignette")


def lit_by_gradient(digit_u8: np.ndarray, light: str, drop: float = 120, size: int = 120) -> bytes:
    """One 28x28 MNIST digit (white on black) -> PNG bytes of dark ink on clean, noise-free paper
    lit by a smooth gradient: a lamp to one side, from a corner, or a lens's vignette, the paper
    `drop` grey levels darker at the far side or the corners than at its brightest."""
    h, w = 200, 240
    ink = np.zeros((h, w), np.float32)
    top, left = (h - size) // 2, (w - size) // 2
    ink[top:top + size, left:left + size] = np.asarray(
        Image.fromarray(digit_u8).resize((size, size), Image.BICUBIC), np.float32).clip(0, 255) / 255
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if light == "lamp":
        fall = xx / w
    elif light == "diagonal":
        fall = (xx / w + yy / h) / 2
    else:
        fall = ((xx - w / 2) ** 2 / w ** 2 + (yy - h / 2) ** 2 / h ** 2) * 2
    paper = 235 - drop * fall
    gray = paper * (1 - ink) + 40 * ink
    buf = io.BytesIO()
    Image.fromarray(np.clip(gray, 0, 255).round().astype(np.uint8), "L").save(buf, format="PNG")
    return buf.getvalue()
