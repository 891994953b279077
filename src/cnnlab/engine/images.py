"""Image files in, grayscale out: the one way cnnlab reads an image, for prediction (runs/predict.py),
the server (web/serve.py) and folder datasets (data.resize_gray).

open_image reads only regular files (a FIFO would hang, /dev/zero would never end), counts the
size limit while reading, refuses more pixels than allowed before decoding any, and decodes
big JPEGs at reduced size. gray_image converts every mode Pillow opens - 1, L, LA, P (with or
without transparency), PA, RGB, RGBA, CMYK, YCbCr, LAB, HSV, I;16, I, F - to 8-bit grayscale:
transparency is composited over the paper the picture implies, 16-bit and float values are
scaled to 0-255 (not clipped), and big images are box-averaged down before any float copy
exists, so memory stays a few bytes per pixel.
"""

from __future__ import annotations

import io
import os
import stat
import warnings

import numpy as np
from PIL import Image

from ..errors import CnnlabError

# Bigger than any phone photo (a 48-megapixel camera is 8000x6000); larger images are refused
# before their pixels are decoded, so a small "decompression bomb" cannot exhaust memory.
MAX_PIXELS = 64_000_000
MAX_FILE_BYTES = 256 * 2**20  # no image within MAX_PIXELS needs more; bigger files are not read
# Images are box-averaged (by a whole factor) to at most about this many pixels per side before
# anything else looks at them; JPEGs are decoded at 1/2, 1/4 or 1/8 scale down to it.
WORK_SIDE = 1024


class ImageError(CnnlabError):
    """One input image cannot be used. kind: unreadable, empty, not_image, corrupt, too_large, blank."""

    def __init__(self, message: str, kind: str = "corrupt"):
        super().__init__(message)
        self.kind = kind


# --- reading --------------------------------------------------------------------------------------

def _too_large(name: str, size: str) -> ImageError:
    return ImageError(f"{name} is {size}, over the {MAX_FILE_BYTES / 2**20:.0f} MB limit for one image; "
                      f"scale it down", "too_large")


def read_file(path: str | os.PathLike, name: str, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a regular file of at most `limit` bytes (counted while reading, so a file that
    grows meanwhile cannot pass); folders, devices, FIFOs and sockets are refused unread."""
    try:
        # O_NONBLOCK: opening a FIFO returns at once instead of waiting for a writer.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except IsADirectoryError:
        raise ImageError(f"{name} is a folder, not an image", "unreadable") from None
    except OSError as e:
        raise ImageError(f"cannot read {name}: {e.strerror or e}", "unreadable") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            raise ImageError(f"{name} is a folder, not an image", "unreadable")
        if not stat.S_ISREG(mode):
            what = "a FIFO" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) \
                else "not a regular file"
            raise ImageError(f"{name} is {what}; images are read only from regular files", "unreadable")
        if st.st_size > limit:
            raise _too_large(name, f"{st.st_size / 2**20:,.0f} MB")
        try:
            raw = f.read(limit + 1)
        except OSError as e:
            raise ImageError(f"cannot read {name}: {e.strerror or e}", "unreadable") from None
    if len(raw) > limit:
        raise ImageError(f"{name} grew past the {MAX_FILE_BYTES / 2**20:.0f} MB limit for one image while "
                         f"being read; copy a finished file and try again", "too_large")
    return raw


def open_image(source: str | os.PathLike | bytes, name: str | None = None,
               max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open and fully decode an image from a path or bytes, with one-line errors for bad files.

    More than max_pixels (declared in the header) is refused before any pixel is decoded.
    """
    if isinstance(source, (bytes, bytearray)):
        name = name or "upload"
        raw = bytes(source)
    else:
        name = name or str(source)
        raw = read_file(source, name)
    if not raw:
        raise ImageError(f"{name} is empty (0 bytes); it is not an image", "empty")
    with warnings.catch_warnings():
        # Pillow only warns between its own limit and twice it; treat every bomb as an error.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(raw))
            w, h = img.size
            if w * h > max_pixels:
                raise ImageError(f"{name} is {w}x{h} = {w * h / 1e6:.0f} megapixels, over the "
                                 f"{max_pixels / 1e6:.0f}-megapixel limit; scale it down", "too_large")
            if img.format == "JPEG":  # decode big photos at 1/2, 1/4 or 1/8 scale: far less work
                img.draft(img.mode, (WORK_SIDE, WORK_SIDE))
            img.load()
        except ImageError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageError(f"{name} declares more than {max_pixels / 1e6:.0f} megapixels (a possible "
                             f"decompression bomb); scale it down", "too_large") from None
        except Image.UnidentifiedImageError:
            raise ImageError(f"{name} is not an image Pillow can read (PNG, JPEG, BMP, GIF, TIFF, "
                             f"WebP, ...)", "not_image") from None
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise ImageError(f"{name} is truncated or corrupt ({' '.join(str(e).split())[:100]}); "
                             f"copy or save the file again") from None
    if img.width == 0 or img.height == 0:
        raise ImageError(f"{name} has no pixels ({img.width}x{img.height})", "empty")
    return img


# --- any mode -> 8-bit grayscale ---------------------------------------------------------------------

# EXIF orientation -> the transpose that makes the picture upright (as ImageOps.exif_transpose).
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
            5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}
_ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")


def gray_image(img: Image.Image, max_side: int | None = WORK_SIDE) -> Image.Image:
    """Any image -> mode "L", upright (EXIF), box-averaged to at most ~max_side pixels per side."""
    try:
        orientation = img.getexif().get(0x0112)
    except Exception:  # a damaged EXIF block only loses the rotation
        orientation = None
    factor = max(1, max(img.size) // max_side) if max_side else 1
    if img.mode.startswith("I") or img.mode == "F":
        gray = _scaled(img, factor)
    else:
        if img.mode in _ALPHA_MODES or "transparency" in img.info:
            gray = _on_paper(img)
        elif img.mode == "LAB":
            gray = img.getchannel("L")
        else:
            gray = img.convert("L")
        if factor > 1:
            gray = gray.reduce(factor)
    method = _UPRIGHT.get(orientation)
    return gray.transpose(method) if method is not None else gray


def _median(counts: np.ndarray) -> float | None:
    return float(np.searchsorted(np.cumsum(counts), counts.sum() / 2)) if counts.sum() else None


def _on_paper(img: Image.Image) -> Image.Image:
    """Transparent pixels become the paper the picture implies: the colour its transparent pixels
    carry (a white sheet made transparent stays white), unless that colour would hide the ink (a
    canvas cleared to transparent black under black strokes); then the shade that contrasts with
    the ink: white under dark strokes, black under light ones."""
    # Straight to gray+alpha where Pillow can (no RGBA copy of an RGBA image: 4 bytes a pixel).
    la = img.convert("LA") if img.mode in ("LA", "La", "RGBA") else img.convert("RGBA").convert("LA")
    gray, alpha = la.getchannel("L"), la.getchannel("A")

    def hist(keep) -> np.ndarray:  # the gray histogram of the pixels whose alpha passes `keep`
        return np.asarray(gray.histogram(alpha.point(lambda a: 255 if keep(a) else 0)), np.int64)

    ink = hist(lambda a: a >= 128)
    if not ink.sum():  # faint everywhere: whatever is drawn at all is the ink
        ink = hist(lambda a: a > 0)
    clear = _median(hist(lambda a: a == 0))
    if clear is not None and ink[np.abs(np.arange(256) - clear) >= 64].sum() >= max(1, 0.01 * ink.sum()):
        paper = clear
    elif ink.sum():
        paper = 255.0 if _median(ink) < 128 else 0.0
    else:
        paper = 255.0 if clear is None else clear
    out = Image.new("L", la.size, int(round(paper)))
    out.paste(gray, (0, 0), alpha)  # gray * alpha + paper * (1 - alpha)
    return out


def _scaled(img: Image.Image, factor: int) -> Image.Image:
    """16-bit, 32-bit integer and float images -> 0-255: 16-bit by its full range (x / 257), floats
    in [0, 1] times 255, values already in 0-255 as they are, anything else stretched min to max."""
    f = img.convert("F") if img.mode != "F" else img
    if factor > 1:
        f = f.reduce(factor)
    a = np.asarray(f, np.float32)
    finite = np.isfinite(a)
    if not finite.any():
        raise ImageError("the image has no finite pixel values", "corrupt")
    if not finite.all():
        a = np.where(finite, a, a[finite].min())
    lo, hi = float(a.min()), float(a.max())
    if img.mode.startswith("I;16"):
        a = a / 257.0
    elif img.mode == "F" and lo >= 0 and hi <= 1:
        a = a * 255.0
    elif lo >= 0 and hi <= 255:
        pass
    elif lo >= 0 and hi <= 65535:
        a = a / 257.0
    else:
        a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    return Image.fromarray(np.clip(np.round(a), 0, 255).astype(np.uint8), "L")
