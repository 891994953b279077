"""Convolution as a sliding window, written as the plain loop the lecture draws.

A kernel slides over the (zero-padded) input; at each position the overlapping values are
multiplied element-wise and summed into one output value. This is what every Conv2d layer does.
Like torch.nn.functional.conv2d (and every deep-learning library), `conv2d` does NOT flip the
kernel: mathematically it is a cross-correlation. `flip=True` flips the kernel by 180 degrees
first, which is convolution in the textbook sense. For a learned kernel the difference does not
matter: the network simply learns the flipped weights.

The loops are deliberately slow and readable; the tests check them against torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CnnlabError

# The lecture's example: a 5x5 input and a 2x2 kernel; the top-left output is
# 2x1 + 1x2 + 4x(-1) + 1x3 = 3 and the output is 4x4.
LECTURE_INPUT = "2 1 3 1 4; 4 1 0 1 3; 1 3 1 1 1; 2 6 1 1 1; 3 3 1 0 4"
LECTURE_KERNEL = "1 2; -1 3"


def _pair(value) -> tuple[int, int]:
    """3 -> (3, 3); (1, 2) -> (1, 2): stride, padding and dilation may differ per axis."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise CnnlabError(f"expected one number or a (height, width) pair, got {value}")
        return int(value[0]), int(value[1])
    return int(value), int(value)


def output_size(n: int, k: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> int:
    """Output length along one axis: floor((n + 2p - d(k-1) - 1) / s) + 1."""
    return (n + 2 * padding - dilation * (k - 1) - 1) // stride + 1


def size_formula(n: int, k: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> str:
    """The output-size formula with the numbers filled in, e.g. floor((5 + 2*0 - 1*(2-1) - 1) / 1) + 1 = 4."""
    return (f"floor(({n} + 2*{padding} - {dilation}*({k}-1) - 1) / {stride}) + 1 = "
            f"{output_size(n, k, stride, padding, dilation)}")


@dataclass
class Step:
    """One position of the sliding window."""
    row: int              # output position
    col: int
    top: int              # where the window starts in the padded input
    left: int
    window: np.ndarray    # the input values under the kernel
    products: np.ndarray  # window * kernel, element-wise
    total: float          # their sum: the output value


# The loop is the lesson, not a fast convolution: it is bounded so that a typo (--padding 100000
# asked for 320 GB) is one line, not a MemoryError. 2,000,000 multiply-adds take ~4 s here.
MAX_PADDED = 1_000_000  # values in the padded input (1000x1000)
MAX_WORK = 2_000_000    # output positions x kernel taps


def _check(x: np.ndarray, k: np.ndarray, stride, padding, dilation):
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    if min(sh, sw, dh, dw) < 1:
        raise CnnlabError(f"stride and dilation must be at least 1, got stride {stride}, dilation {dilation}")
    if min(ph, pw) < 0:
        raise CnnlabError(f"padding must be 0 or more, got {padding}")
    (h, w), (kh, kw) = x.shape[-2:], k.shape[-2:]
    if (h + 2 * ph) * (w + 2 * pw) > MAX_PADDED:
        raise CnnlabError(f"padding {padding} makes the padded input {h + 2 * ph}x{w + 2 * pw}; this step-by-step "
                          f"loop takes at most {MAX_PADDED:,} values (e.g. 1000x1000): use less padding or a smaller input")
    oh, ow = output_size(h, kh, sh, ph, dh), output_size(w, kw, sw, pw, dw)
    if oh * ow * kh * kw > MAX_WORK:
        raise CnnlabError(f"a {oh}x{ow} output of a {kh}x{kw} kernel is {oh * ow * kh * kw:,} multiply-adds; this "
                          f"step-by-step loop takes at most {MAX_WORK:,}: use a smaller input or kernel, or a larger stride")
    if oh < 1 or ow < 1:
        raise CnnlabError(f"the {kh}x{kw} kernel (dilation {dilation}) does not fit the {h}x{w} input "
                          f"with padding {padding}: the output would be {oh}x{ow}; use a smaller "
                          f"kernel or more padding")
    return (sh, sw), (ph, pw), (dh, dw), (oh, ow)


def zero_pad(x: np.ndarray, ph: int, pw: int) -> np.ndarray:
    """A border of ph rows and pw columns of zeros around a 2-D matrix."""
    padded = np.zeros((x.shape[0] + 2 * ph, x.shape[1] + 2 * pw), dtype=np.float64)
    padded[ph:ph + x.shape[0], pw:pw + x.shape[1]] = x
    return padded


def conv2d(x, kernel, stride=1, padding=0, dilation=1, flip: bool = False,
           steps: list | None = None) -> np.ndarray:
    """Slide a 2-D kernel over a 2-D input. Append each window's Step to `steps` when given."""
    x = np.asarray(x, dtype=np.float64)
    k = np.asarray(kernel, dtype=np.float64)
    if x.ndim != 2 or k.ndim != 2:
        raise CnnlabError(f"conv2d takes 2-D matrices, got input {list(x.shape)} and kernel {list(k.shape)}")
    if flip:
        k = k[::-1, ::-1]  # true convolution: the kernel turned by 180 degrees
    (sh, sw), (ph, pw), (dh, dw), (oh, ow) = _check(x, k, stride, padding, dilation)
    padded = zero_pad(x, ph, pw)
    kh, kw = k.shape
    out = np.zeros((oh, ow), dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is one error line below
        for i in range(oh):
            for j in range(ow):
                top, left = i * sh, j * sw
                total = 0.0
                for a in range(kh):
                    for b in range(kw):
                        total += padded[top + a * dh, left + b * dw] * k[a, b]
                out[i, j] = total
                if steps is not None:
                    window = padded[top:top + (kh - 1) * dh + 1:dh, left:left + (kw - 1) * dw + 1:dw].copy()
                    steps.append(Step(i, j, top, left, window, window * k, total))
    if not np.isfinite(out).all():
        raise CnnlabError("the output overflows (beyond 1.8e308, the largest float64): use smaller input or "
                          "kernel values")
    return out


@dataclass
class LayerStep:
    """One position of one filter sliding over every input channel at once."""
    kernel: int           # which filter (output channel)
    row: int
    col: int
    top: int
    left: int
    channels: list        # a Step per input channel: its window, products and sum
    bias: float
    total: float          # the channel sums plus the bias: the output value


def conv2d_layer(x, weight, bias=None, stride=1, padding=0, dilation=1, flip: bool = False,
                 steps: list | None = None) -> np.ndarray:
    """What a Conv2d layer computes, with the same loop: x [C_in, H, W], weight [C_out, C_in, kh, kw].

    Output channel o is the sum over input channels c of conv2d(x[c], weight[o, c]), plus bias[o]:
    each filter looks at every input channel at once. Append each LayerStep to `steps` when given.
    """
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(weight, dtype=np.float64)
    if x.ndim != 3 or w.ndim != 4 or w.shape[1] != x.shape[0]:
        raise CnnlabError(f"conv2d_layer needs x [C_in, H, W] and weight [C_out, C_in, kh, kw] with "
                          f"matching C_in, got {list(x.shape)} and {list(w.shape)}")
    b = np.zeros(w.shape[0]) if bias is None else np.asarray(bias, dtype=np.float64).reshape(-1)
    if len(b) != w.shape[0]:
        raise CnnlabError(f"{len(b)} biases for {w.shape[0]} kernels; give one bias per kernel")
    _, _, _, (oh, ow) = _check(x, w, stride, padding, dilation)
    out = np.zeros((w.shape[0], oh, ow), dtype=np.float64)
    for o in range(w.shape[0]):
        per_channel = [[] for _ in range(x.shape[0])] if steps is not None else [None] * x.shape[0]
        for c in range(x.shape[0]):
            out[o] += conv2d(x[c], w[o, c], stride, padding, dilation, flip, per_channel[c])
        out[o] += b[o]
        if steps is not None:
            for n, first in enumerate(per_channel[0]):
                chans = [p[n] for p in per_channel]
                steps.append(LayerStep(o, first.row, first.col, first.top, first.left, chans, float(b[o]),
                                       float(out[o, first.row, first.col])))
    return out


def conv_json(x, kernels, bias=None, stride=1, padding=0, dilation=1, flip: bool = False) -> dict:
    """Everything `cnnlab conv --json` prints (the web page's sliding window shows the same).

    x [H, W] with one kernel [kh, kw] and no bias: the lecture's single-channel form. Otherwise
    x [C_in, H, W] and kernels [C_out, C_in, kh, kw]: one step per filter and position, with each
    input channel's window, products and sum.
    """
    x, k = np.asarray(x, dtype=np.float64), np.asarray(kernels, dtype=np.float64)
    if x.ndim == 2 and k.ndim == 2 and bias is None:
        steps: list = []
        out = conv2d(x, k, stride, padding, dilation, flip=flip, steps=steps)
        return {"input": x.tolist(), "kernel": k.tolist(), "kernel_used": (k[::-1, ::-1] if flip else k).tolist(),
                "flip": flip, "stride": stride, "padding": padding, "dilation": dilation,
                "output_size": _sizes(x, k, stride, padding, dilation, out), "output": out.tolist(),
                "steps": [{"row": s.row, "col": s.col, "top": s.top, "left": s.left, "window": s.window.tolist(),
                           "products": s.products.tolist(), "sum": s.total} for s in steps]}
    x = x if x.ndim == 3 else x[None]
    k = k if k.ndim == 4 else k.reshape((1,) * (4 - k.ndim) + k.shape)
    layer_steps: list = []
    out = conv2d_layer(x, k, bias, stride, padding, dilation, flip=flip, steps=layer_steps)
    return {"input": x.tolist(), "kernels": k.tolist(), "bias": None if bias is None else list(map(float, bias)),
            "flip": flip, "stride": stride, "padding": padding, "dilation": dilation,
            "output_size": _sizes(x, k, stride, padding, dilation, out), "output": out.tolist(),
            "steps": [{"kernel": s.kernel, "row": s.row, "col": s.col, "top": s.top, "left": s.left,
                       "channels": [{"window": c.window.tolist(), "products": c.products.tolist(), "sum": c.total}
                                    for c in s.channels], "bias": s.bias, "sum": s.total} for s in layer_steps]}


def _sizes(x, k, stride, padding, dilation, out) -> dict:
    (h, w), (kh, kw) = x.shape[-2:], k.shape[-2:]
    return {"height": out.shape[-2], "width": out.shape[-1],
            "formula": {"height": size_formula(h, kh, stride, padding, dilation),
                        "width": size_formula(w, kw, stride, padding, dilation)}}


# --- Matrices from the command line or a file ----------------------------------------------------

def parse_matrix(text: str, what: str = "matrix") -> np.ndarray:
    """'2 1 3; 4 1 0' (rows separated by ';' or newlines, numbers by spaces or commas) -> 2-D array.

    If `text` names an existing file, the matrix is read from it (same format, or a .npy file).
    """
    path = Path(text)
    looks_like_path = text.endswith((".txt", ".csv", ".npy", ".tsv")) or "/" in text
    if looks_like_path or path.is_file():
        if not path.is_file():
            raise CnnlabError(f"{what} file {text} does not exist; give a matrix like \"1 2; 3 4\" or an existing file")
        if path.suffix == ".npy":
            try:
                m = np.load(path, allow_pickle=False)
            except (ValueError, OSError) as e:
                raise CnnlabError(f"{what} file {text} is not a readable .npy array ({e})") from None
            if m.ndim != 2:
                raise CnnlabError(f"{what} file {text} holds a {m.ndim}-D array; a 2-D matrix is needed")
            return m.astype(np.float64)
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise CnnlabError(f"cannot read {what} file {path}: {e}") from None
        source = f"{what} file {path}"
    else:
        source = f"{what} '{text}'"
    rows = [r for r in (line.replace(",", " ").split() for line in text.replace(";", "\n").splitlines()) if r]
    if not rows:
        raise CnnlabError(f"{source} is empty; write rows separated by ';', e.g. \"1 2; 3 4\"")
    if len({len(r) for r in rows}) != 1:
        raise CnnlabError(f"{source} has rows of different lengths ({', '.join(str(len(r)) for r in rows)}); "
                          f"every row needs the same number of values")
    try:
        m = np.array([[float(v) for v in r] for r in rows], dtype=np.float64)
    except ValueError as e:
        bad = str(e).split(":")[-1].strip()
        raise CnnlabError(f"{source} contains {bad}, which is not a number") from None
    if not np.isfinite(m).all():
        raise CnnlabError(f"{source} contains inf or nan; use finite numbers")
    return m


def parse_channels(text: str, what: str = "input") -> np.ndarray:
    """Several channels of equal size: matrices separated by '|' ("1 2; 3 4 | 5 6; 7 8"), a text
    file holding that, or a .npy file with a 2-D or 3-D array -> [C, H, W]."""
    path = Path(text)
    if "|" not in text and (text.endswith((".txt", ".csv", ".npy", ".tsv")) or "/" in text or path.is_file()):
        if path.suffix == ".npy" and path.is_file():
            try:
                m = np.load(path, allow_pickle=False)
            except (ValueError, OSError) as e:
                raise CnnlabError(f"{what} file {text} is not a readable .npy array ({e})") from None
            if m.ndim not in (2, 3) or not np.issubdtype(m.dtype, np.number) or not np.isfinite(m).all():
                raise CnnlabError(f"{what} file {text} must hold a finite 2-D matrix or 3-D [C, H, W] array, "
                                  f"got {m.ndim}-D {m.dtype}")
            return (m if m.ndim == 3 else m[None]).astype(np.float64)
        if path.is_file() and path.suffix != ".npy":
            try:
                text = path.read_text()
            except (OSError, UnicodeDecodeError) as e:
                raise CnnlabError(f"cannot read {what} file {path}: {e}") from None
            what = f"{what} file {path}"
    parts = text.split("|")
    mats = [parse_matrix(p, what if len(parts) == 1 else f"{what} channel {i + 1}") for i, p in enumerate(parts)]
    if len({m.shape for m in mats}) != 1:
        raise CnnlabError(f"the channels of {what} have different sizes "
                          f"({', '.join('x'.join(map(str, m.shape)) for m in mats)}); every channel needs the same")
    return np.stack(mats)


def fmt(v: float) -> str:
    """3.0 -> '3', -1.0 -> '-1', 0.25 -> '0.25': integers print as integers."""
    v = float(v)
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return f"{v:.4g}"


def matrix_text(m: np.ndarray, indent: str = "  ") -> str:
    cells = [[fmt(v) for v in row] for row in np.atleast_2d(m)]
    width = max(len(c) for row in cells for c in row)
    return "\n".join(indent + " ".join(c.rjust(width) for c in row) for row in cells)


def step_text(step: Step, kernel: np.ndarray) -> str:
    """'2x1 + 1x2 + 4x(-1) + 1x3 = 3': the element-wise products and their sum."""
    terms = [f"{fmt(a)}x{fmt(b) if b >= 0 else '(' + fmt(b) + ')'}"
             for a, b in zip(step.window.ravel(), kernel.ravel())]
    return " + ".join(terms) + f" = {fmt(step.total)}"
