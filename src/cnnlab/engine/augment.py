"""Batched data augmentation on tensors: random translation, affine warps, elastic distortion, and
mirroring with random erasing for images whose mirror image is the same class (clothes, not digits).

Every function takes a whole float batch [N, 1, H, W] in pixel units (0..255, background 0, before
normalisation) and returns a new batch of the same shape; labels are never touched, so image i
still belongs to label i. Random numbers come from the caller's torch.Generator, so a seeded run
repeats exactly. One grid_sample call warps the whole batch: there is no per-image Python.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .config import AUGMENTATIONS

# The strengths are the classic ones for 28x28 digits: shifts of up to 2 pixels, rotations of
# up to 10 degrees, +-10% scale (Simard et al. 2003 and most MNIST papers use this range; larger
# warps start turning 6 into 9 or 1 into 7). Elastic: a smooth random field in the spirit of
# Simard's (Gaussian-smoothed noise), kept to at most ~1.5 pixels because it adds to the affine warp.
MAX_SHIFT = 2
MAX_ROTATE_DEG = 10.0
SCALE = (0.9, 1.1)
MAX_SHEAR_DEG = 8.0
ELASTIC_PIXELS = 1.5  # largest displacement of the elastic field, in pixels
ELASTIC_GRID = 7      # the random field lives on a 7x7 grid, upsampled smoothly to 28x28

# Random erasing (Zhong et al. 2017; in Fashion-MNIST's benchmark table): with probability 0.5 a
# rectangle of 2-25% of the image, aspect ratio 0.3-3.3, is set to the background.
ERASE_P = 0.5
ERASE_AREA = (0.02, 0.25)
ERASE_RATIO = (0.3, 3.3)

KINDS = AUGMENTATIONS


def _uniform(n: int, low: float, high: float, gen: torch.Generator | None, device) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=device) * (high - low) + low


def translate(x: torch.Tensor, gen: torch.Generator | None = None, max_shift: int = MAX_SHIFT) -> torch.Tensor:
    """Shift each image by a whole number of pixels in [-max_shift, max_shift] on each axis.

    Exact (no interpolation): pad with background, then gather a shifted window per image.
    """
    n, c, h, w = x.shape
    m = max_shift
    padded = F.pad(x, (m, m, m, m))
    dy = torch.randint(-m, m + 1, (n,), generator=gen, device=x.device)
    dx = torch.randint(-m, m + 1, (n,), generator=gen, device=x.device)
    # Output pixel (r, c) of image i reads input pixel (r - dy_i, c - dx_i): content moves by (dy, dx).
    rows = (torch.arange(h, device=x.device) + m)[None, :] - dy[:, None]       # [N, H]
    cols = (torch.arange(w, device=x.device) + m)[None, :] - dx[:, None]       # [N, W]
    batch = torch.arange(n, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # [N, H, W, C]
    return out.permute(0, 3, 1, 2).contiguous()


def _affine_theta(n: int, gen, device) -> torch.Tensor:
    """[N, 2, 3] matrices for affine_grid: rotation, scale, shear and translation per image."""
    rot = _uniform(n, -MAX_ROTATE_DEG, MAX_ROTATE_DEG, gen, device) * (math.pi / 180)
    shear = _uniform(n, -MAX_SHEAR_DEG, MAX_SHEAR_DEG, gen, device) * (math.pi / 180)
    scale = _uniform(n, *SCALE, gen, device)
    # Translation in affine_grid's units: the image spans [-1, 1], so one pixel is 2/28.
    shift = _uniform(2 * n, -MAX_SHIFT, MAX_SHIFT, gen, device).view(n, 2) * (2.0 / 28)
    cos, sin, tan = torch.cos(rot), torch.sin(rot), torch.tan(shear)
    # theta maps output coordinates to input coordinates, so a scale s > 1 here *shrinks* the
    # digit; the range is symmetric so the distinction does not matter for augmentation.
    theta = torch.empty(n, 2, 3, device=device)
    theta[:, 0, 0] = scale * cos
    theta[:, 0, 1] = scale * (-sin + tan * cos)
    theta[:, 1, 0] = scale * sin
    theta[:, 1, 1] = scale * (cos + tan * sin)
    theta[:, :, 2] = shift
    return theta


def _elastic_field(n: int, h: int, w: int, gen, device) -> torch.Tensor:
    """A smooth random displacement field [N, H, W, 2] in affine_grid units.

    Uniform noise on a coarse grid, upsampled bicubically: the same smooth field a Gaussian blur of
    per-pixel noise gives (Simard's recipe), at a fraction of the cost.
    """
    coarse = torch.rand(n, 2, ELASTIC_GRID, ELASTIC_GRID, generator=gen, device=device) * 2 - 1
    field = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)
    return field.permute(0, 2, 3, 1) * (ELASTIC_PIXELS * 2.0 / max(h, w))


def affine(x: torch.Tensor, gen: torch.Generator | None = None, elastic: bool = False) -> torch.Tensor:
    """Random rotation, scale, shear and translation (plus an elastic field when elastic=True)."""
    n, c, h, w = x.shape
    theta = _affine_theta(n, gen, x.device)
    grid = F.affine_grid(theta, [n, c, h, w], align_corners=False)
    if elastic:
        grid = grid + _elastic_field(n, h, w, gen, x.device)
    # Bilinear resampling with zero (background) outside the image; clamp keeps the pixel range.
    return F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="zeros",
                         align_corners=False).clamp_(0, 255)


def elastic(x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
    return affine(x, gen, elastic=True)


def flip(x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
    """Mirror each image left to right with probability 0.5."""
    mirrored = torch.rand(len(x), generator=gen, device=x.device) < 0.5
    return torch.where(mirrored[:, None, None, None], x.flip(-1), x)


def erase(x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
    """Set a random rectangle of each chosen image (probability ERASE_P) to the background."""
    n, _, h, w = x.shape
    area = _uniform(n, *ERASE_AREA, gen, x.device) * (h * w)
    ratio = torch.exp(_uniform(n, math.log(ERASE_RATIO[0]), math.log(ERASE_RATIO[1]), gen, x.device))
    eh = (area * ratio).sqrt().round().clamp(1, h)
    ew = (area / ratio).sqrt().round().clamp(1, w)
    top = (torch.rand(n, generator=gen, device=x.device) * (h - eh + 1)).floor()
    left = (torch.rand(n, generator=gen, device=x.device) * (w - ew + 1)).floor()
    chosen = torch.rand(n, generator=gen, device=x.device) < ERASE_P
    r = torch.arange(h, device=x.device)[None, :]
    c = torch.arange(w, device=x.device)[None, :]
    in_rows = (r >= top[:, None]) & (r < (top + eh)[:, None])             # [N, H]
    in_cols = (c >= left[:, None]) & (c < (left + ew)[:, None])           # [N, W]
    hole = in_rows[:, :, None] & in_cols[:, None, :] & chosen[:, None, None]
    return x.masked_fill(hole[:, None], 0.0)


def mirror(x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
    """Translate, mirror and erase: the usual augmentation of Fashion-MNIST-like images."""
    return erase(flip(translate(x, gen), gen), gen)


def apply(x: torch.Tensor, kind: str, gen: torch.Generator | None = None) -> torch.Tensor:
    """Augment a float batch [N, 1, H, W] (0..255) with one of KINDS."""
    if kind == "none":
        return x
    if kind == "translate":
        return translate(x, gen)
    if kind == "affine":
        return affine(x, gen)
    if kind == "elastic":
        return elastic(x, gen)
    if kind == "mirror":
        return mirror(x, gen)
    raise ValueError(f"unknown augmentation '{kind}'; choose one of: {', '.join(KINDS)}")
