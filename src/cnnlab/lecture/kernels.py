"""Hand-designed kernels: the edge, blur and sharpen filters that came before learned ones.

Each kernel is a small matrix slid over an image (cross-correlation, as in cnnlab.conv and every
CNN layer). `apply` does it with torch for whole images; image borders repeat the edge pixel
(scipy.ndimage's mode="nearest"), so a flat image stays flat right up to its edge.
see/gallery.py draws the lecture's figure: one row per image, one column per kernel.
"""

from __future__ import annotations

import numpy as np

from ..errors import CnnlabError

NAMED = {
    "identity": [[0, 0, 0], [0, 1, 0], [0, 0, 0]],
    # Prewitt and Sobel estimate the horizontal (x) or vertical (y) intensity gradient; "x" kernels
    # light up vertical edges. Sobel weights the centre row/column twice: a little smoothing.
    "prewitt-x": [[-1, 0, 1], [-1, 0, 1], [-1, 0, 1]],
    "prewitt-y": [[-1, -1, -1], [0, 0, 0], [1, 1, 1]],
    "sobel-x": [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]],
    "sobel-y": [[-1, -2, -1], [0, 0, 0], [1, 2, 1]],
    # The second derivative: zero on flat areas and ramps, strong on both sides of an edge.
    "laplacian": [[0, 1, 0], [1, -4, 1], [0, 1, 0]],
    "gaussian": None,   # built by gaussian(size, sigma)
    "box-blur": None,   # built by box_blur(size)
    "sharpen": [[0, -1, 0], [-1, 5, -1], [0, -1, 0]],  # identity + (minus) Laplacian
    "emboss": [[-2, -1, 0], [-1, 1, 1], [0, 1, 2]],
}

# The lecture's figure: (column title, kernel name).
GALLERY_COLUMNS = [("Prewitt X", "prewitt-x"), ("Prewitt Y", "prewitt-y"), ("Sobel X", "sobel-x"),
                   ("Sobel Y", "sobel-y"), ("Laplacian", "laplacian"), ("Gaussian Blur", "gaussian"),
                   ("Sharpening", "sharpen")]


# The largest gaussian or box-blur: 51x51 covers a gaussian of sigma 8 (+-3 sigma), far wider than
# the gallery's images (at most 256 pixels a side) need; 100001 asked for 80 GB.
MAX_SIZE = 51


def _check_size(size: int) -> None:
    if size > MAX_SIZE:
        raise CnnlabError(f"--size must be at most {MAX_SIZE}, got {size}; a wider kernel blurs more than the "
                          f"gallery's images (at most 256 pixels a side) can show")


def gaussian(size: int = 5, sigma: float = 1.0) -> np.ndarray:
    """A size x size Gaussian, exp(-(x^2 + y^2) / (2 sigma^2)), normalised to sum to 1."""
    if size < 1 or size % 2 == 0:
        raise CnnlabError(f"--size for gaussian must be an odd whole number (3, 5, 7...), got {size}")
    _check_size(size)
    if not sigma > 0:
        raise CnnlabError(f"--sigma must be greater than 0, got {sigma}")
    r = np.arange(size) - size // 2
    g = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def box_blur(size: int = 3) -> np.ndarray:
    """The plain average of a size x size neighbourhood."""
    if size < 1:
        raise CnnlabError(f"--size must be at least 1, got {size}")
    _check_size(size)
    return np.full((size, size), 1.0 / (size * size))


def get(name: str, size: int | None = None, sigma: float = 1.0) -> np.ndarray:
    """A named kernel as a float64 matrix. size/sigma apply to gaussian (default 5) and box-blur (default 3)."""
    if name not in NAMED:
        raise CnnlabError(f"unknown kernel '{name}'; choose one of: {', '.join(NAMED)}, or write a matrix "
                          f"like \"0 1 0; 1 -4 1; 0 1 0\"")
    if name == "gaussian":
        return gaussian(size or 5, sigma)
    if name == "box-blur":
        return box_blur(size or 3)
    return np.array(NAMED[name], dtype=np.float64)


def apply(image, kernel) -> np.ndarray:
    """Slide `kernel` over a 2-D image: same-size output, borders extended with the edge pixel.

    The kernel's centre is at (kh // 2, kw // 2), as in scipy.ndimage.correlate, so even-sized
    kernels work too. Every window at once: a view of the padded image, no copy per window.
    """
    img = np.asarray(image, dtype=np.float64)
    k = np.asarray(kernel, dtype=np.float64)
    kh, kw = k.shape
    padded = np.pad(img, ((kh // 2, kh - 1 - kh // 2), (kw // 2, kw - 1 - kw // 2)), mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, (kh, kw))
    return np.einsum("ijkl,kl->ij", windows, k)
