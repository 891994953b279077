"""The lecture's kernel gallery: photographs and digits through every hand-designed kernel.

One row per image, one column per kernel (lecture/kernels.py), drawn with matplotlib's
object-oriented API on the Agg canvas.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure as MplFigure
from PIL import Image, UnidentifiedImageError

from ..engine import data as data_mod
from ..errors import CnnlabError
from ..files import check_output, write_output
from ..lecture import kernels
from ..lecture.kernels import GALLERY_COLUMNS

MAX_SIDE = 256  # larger images are downscaled so the figure stays small and quick


# --- Images --------------------------------------------------------------------------------------

@dataclass
class Picture:
    name: str
    pixels: np.ndarray  # float64 [H, W] in [0, 1]


def to_gray(pixels: np.ndarray) -> np.ndarray:
    """uint8/bool/float [H, W] or [H, W, 3|4] -> float [H, W] in [0, 1] (ITU-R 601 luma, as PIL's 'L')."""
    a = np.asarray(pixels)
    if a.dtype == bool:
        a = a.astype(np.float64)
    elif np.issubdtype(a.dtype, np.integer):
        a = a.astype(np.float64) / 255.0
    a = a.astype(np.float64)
    if a.ndim == 3:
        a = a[..., :3] @ np.array([0.299, 0.587, 0.114])
    return np.clip(a, 0.0, 1.0)


def downscale(pixels: np.ndarray, max_side: int = MAX_SIDE) -> np.ndarray:
    h, w = pixels.shape
    if max(h, w) <= max_side:
        return pixels
    scale = max_side / max(h, w)
    img = Image.fromarray(pixels.astype(np.float32), mode="F")
    return np.asarray(img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.LANCZOS),
                      dtype=np.float64).clip(0, 1)


def load_image(path: str | Path) -> Picture:
    """Any image Pillow reads, as grayscale in [0, 1], downscaled to at most MAX_SIDE pixels."""
    path = Path(path)
    if not path.is_file():
        raise CnnlabError(f"{path}: no such file")
    try:
        with Image.open(path) as img:
            img.load()
            gray = np.asarray(img.convert("L"), dtype=np.float64) / 255.0
    except UnidentifiedImageError:
        raise CnnlabError(f"{path}: not an image Pillow can read (PNG, JPEG, BMP, GIF, TIFF, WebP...)") from None
    except (OSError, ValueError) as e:
        raise CnnlabError(f"{path}: the image is truncated or corrupt ({e})") from None
    return Picture(path.name, downscale(gray))


SKIMAGE_PHOTOS = ["camera", "coins", "astronaut"]


def sample_pictures(data_dir=None, digits: int = 2) -> tuple[list[Picture], list[str]]:
    """The first test digits of MNIST and, when scikit-image is installed, its bundled photographs.

    Returns (pictures, notes): a note says what could not be included and why.
    """
    pictures, notes = [], []
    try:
        test = data_mod.load("mnist", "test", data_dir, download=False)
        for i in range(digits):
            pictures.append(Picture(f"MNIST test #{i} (a {int(test.labels[i])})", test.images[i].numpy() / 255.0))
    except CnnlabError as e:
        notes.append(f"no MNIST digits: {str(e).split(';')[0]}")
    try:
        import skimage.data
    except ImportError:
        notes.append("no photographs: scikit-image is not installed (pip install scikit-image)")
    else:
        for name in SKIMAGE_PHOTOS:
            pictures.append(Picture(f"skimage {name}", downscale(to_gray(getattr(skimage.data, name)()))))
    return pictures, notes


# --- The gallery ---------------------------------------------------------------------------------

@dataclass
class Gallery:
    columns: list                                 # column titles, "Original" first
    rows: list = field(default_factory=list)      # Picture per row
    errors: list = field(default_factory=list)    # (path, message) for images that could not be read
    out: Path | None = None
    notes: list = field(default_factory=list)     # what the default rows lack and why


def draw(out, images: list | None = None, extra: list[tuple[str, np.ndarray]] = (), size: int | None = None,
         sigma: float = 1.0, data_dir=None, force: bool = False, inputs=()) -> Gallery:
    """`cnnlab kernels --out`: the gallery of the given image files (the readable ones; the others
    are listed in .errors), or of the sample digits and photographs (sample_pictures). `out` is
    checked before any image is read; it replaces a file only with force, never one of `inputs`."""
    inputs = [*(images or []), *inputs]
    check_output(out, force=force, inputs=inputs)
    pictures, errors, notes = [], [], []
    if images:
        for path in images:
            try:
                pictures.append(load_image(path))
            except CnnlabError as e:
                errors.append((str(path), str(e)))
        if not pictures:
            raise CnnlabError("; ".join(message for _, message in errors) + "; nothing to draw")
    else:
        pictures, notes = sample_pictures(data_dir)
    g = gallery(pictures, out, extra=extra, size=size, sigma=sigma, errors=errors, force=force, inputs=inputs)
    g.notes = notes
    return g


def gallery(pictures: list[Picture], out, extra: list[tuple[str, np.ndarray]] = (),
            size: int | None = None, sigma: float = 1.0, errors=(), force: bool = False, inputs=()) -> Gallery:
    """Draw Original + the lecture's seven kernels (+ extra (title, kernel) columns) for each picture.

    Kernels whose weights sum to 0 (edge detectors) give signed maps: mid-gray is 0, white positive,
    black negative, scaled to the 99th percentile of |response| (printed under each panel) so one
    bright pixel does not wash out the rest. Other kernels keep brightness and are shown on 0..1.
    An existing `out` is replaced only with force, and never when it is one of the `inputs`.
    """
    out = Path(out)
    fmt = out.suffix.lower().lstrip(".")
    if fmt not in ("png", "jpg", "jpeg", "svg", "pdf"):
        raise CnnlabError(f"--out {out} must end in .png, .jpg, .svg or .pdf")
    check_output(out, force=force, inputs=inputs)
    if not pictures:
        raise CnnlabError("no images to draw; pass --image with at least one readable image")
    columns = [(title, kernels.get(name, size, sigma)) for title, name in GALLERY_COLUMNS]
    columns += [(title, np.asarray(k, dtype=np.float64)) for title, k in extra]
    columns = [(title, k, abs(k.sum()) < 1e-9) for title, k in columns]

    n_cols = len(columns) + 1
    fig = MplFigure(figsize=(1.25 * n_cols, 1.45 * len(pictures)))
    axes = fig.subplots(len(pictures), n_cols, squeeze=False)
    for r, pic in enumerate(pictures):
        axes[r, 0].imshow(pic.pixels, cmap="gray", vmin=0, vmax=1)
        axes[r, 0].set_ylabel(pic.name, fontsize=6)
        for c, (title, kernel, signed) in enumerate(columns, 1):
            response = kernels.apply(pic.pixels, kernel)
            if signed:
                m = float(np.percentile(np.abs(response), 99)) or 1e-9
                axes[r, c].imshow(response, cmap="gray", vmin=-m, vmax=m)
                axes[r, c].set_xlabel(f"gray 0, range ±{m:.2g}", fontsize=5)
            else:
                axes[r, c].imshow(response.clip(0, 1), cmap="gray", vmin=0, vmax=1)
        for c in range(n_cols):
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
    for c, title in enumerate(["Original"] + [t for t, _, _ in columns]):
        axes[0, c].set_title(title, fontsize=7)
    fig.tight_layout(pad=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="jpeg" if fmt == "jpg" else fmt, dpi=90)
    write_output(out, buf.getvalue(), force=force, inputs=inputs)
    return Gallery(["Original"] + [t for t, _, _ in columns], list(pictures), list(errors), out)
