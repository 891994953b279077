"""Pooling as a loop: the lesson, written out so each window can be shown.

Max pooling keeps the largest value of each window, average pooling their mean. Both shrink the
feature map and, the lecture claims, make the network care less about exactly where a feature
is; see/invariance.py measures that claim on trained networks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import CnnlabError
from .conv import _pair

# A 4x4 example: 2x2 max pooling with stride 2 gives [[6, 8], [3, 4]].
LECTURE_INPUT = "1 1 2 4; 5 6 7 8; 3 2 1 0; 1 2 3 4"
MODES = ("max", "avg")


@dataclass
class PoolStep:
    row: int
    col: int
    top: int
    left: int
    window: np.ndarray
    value: float


def pool2d(x, size=2, stride=None, mode: str = "max", steps: list | None = None) -> np.ndarray:
    """Slide a size x size window (default stride = size: no overlap) and keep its max or mean."""
    if mode not in MODES:
        raise CnnlabError(f"unknown pooling mode '{mode}'; choose max or avg")
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise CnnlabError(f"pool2d takes a 2-D matrix, got shape {list(x.shape)}")
    kh, kw = _pair(size)
    sh, sw = _pair(stride if stride is not None else size)
    if min(kh, kw, sh, sw) < 1:
        raise CnnlabError(f"pool size and stride must be at least 1, got size {size}, stride {stride}")
    h, w = x.shape
    if kh > h or kw > w:
        raise CnnlabError(f"a {kh}x{kw} pooling window does not fit the {h}x{w} input; use a smaller --size")
    oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    out = np.zeros((oh, ow), dtype=np.float64)
    for i in range(oh):
        for j in range(ow):
            top, left = i * sh, j * sw
            window = x[top:top + kh, left:left + kw]
            if mode == "max":
                value = window[0, 0]
                for a in range(kh):
                    for b in range(kw):
                        if window[a, b] > value:
                            value = window[a, b]
            else:
                value = 0.0
                for a in range(kh):
                    for b in range(kw):
                        value += window[a, b]
                value /= kh * kw
            out[i, j] = value
            if steps is not None:
                steps.append(PoolStep(i, j, top, left, window.copy(), float(value)))
    return out


def pool_json(x, size=2, stride=None, modes=MODES) -> dict:
    """Everything `cnnlab pool --json` prints (the web page's pooling animation shows the same)."""
    x = np.asarray(x, dtype=np.float64)
    stride = stride or size
    out = {"input": x.tolist(), "size": size, "stride": stride, "output_size": {}}
    for mode in modes:
        steps: list = []
        result = pool2d(x, size, stride, mode, steps)
        out[mode] = {"output": result.tolist(),
                     "steps": [{"row": s.row, "col": s.col, "top": s.top, "left": s.left,
                                "window": s.window.tolist(), "value": s.value} for s in steps]}
        out["output_size"] = {"height": result.shape[0], "width": result.shape[1], "formula": {
            axis: f"floor(({n} - {size}) / {stride}) + 1 = {m}"
            for axis, n, m in (("height", x.shape[0], result.shape[0]), ("width", x.shape[1], result.shape[1]))}}
    return out
