"""cnnlab conv: the sliding-window loop equals torch's conv2d; the lecture's example by hand."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.signal import convolve2d

from cnnlab.lecture import conv
from conftest import SRC, run_cli, run_main

LECTURE_OUTPUT = [[3, 6, 8, 17], [14, 1, 4, 9], [23, 2, 5, 5], [20, 8, 2, 15]]


def torch_conv(x, k, **kw):
    return F.conv2d(torch.tensor(x)[None, None], torch.tensor(k)[None, None], **kw)[0, 0].numpy()


def test_lecture_example():
    x = conv.parse_matrix(conv.LECTURE_INPUT)
    k = conv.parse_matrix(conv.LECTURE_KERNEL)
    steps = []
    out = conv.conv2d(x, k, steps=steps)
    assert out.tolist() == LECTURE_OUTPUT
    assert out.tolist() == torch_conv(x, k).tolist()
    assert len(steps) == 16
    assert steps[0].products.tolist() == [[2, 2], [-4, 3]] and steps[0].total == 3
    assert conv.step_text(steps[0], k) == "2x1 + 1x2 + 4x(-1) + 1x3 = 3"
    assert conv.size_formula(5, 2) == "floor((5 + 2*0 - 1*(2-1) - 1) / 1) + 1 = 4"


small = st.floats(-10, 10, allow_nan=False, width=32)
pairs = lambda lo, hi: st.tuples(st.integers(lo, hi), st.integers(lo, hi))  # noqa: E731


@settings(max_examples=150, deadline=None)
@given(x=arrays(np.float64, st.tuples(st.integers(1, 9), st.integers(1, 9)), elements=small),
       k=arrays(np.float64, st.tuples(st.integers(1, 4), st.integers(1, 4)), elements=small),
       stride=pairs(1, 3), padding=pairs(0, 3), dilation=pairs(1, 3))
def test_loop_equals_torch_conv2d(x, k, stride, padding, dilation):
    sizes = [conv.output_size(n, m, s, p, d) for n, m, s, p, d in zip(x.shape, k.shape, stride, padding, dilation)]
    assume(min(sizes) >= 1)  # torch refuses these too; the CLI test checks our error message
    mine = conv.conv2d(x, k, stride, padding, dilation)
    ref = torch_conv(x, k, stride=stride, padding=padding, dilation=dilation)
    assert list(mine.shape) == sizes == list(ref.shape)
    np.testing.assert_allclose(mine, ref, rtol=1e-9, atol=1e-9)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), c_in=st.integers(1, 3), c_out=st.integers(1, 3), h=st.integers(3, 7), w=st.integers(3, 7),
       kh=st.integers(1, 3), kw=st.integers(1, 3), stride=st.integers(1, 2), padding=st.integers(0, 2),
       dilation=st.integers(1, 2))
def test_multichannel_layer_equals_torch(data, c_in, c_out, h, w, kh, kw, stride, padding, dilation):
    assume(min(conv.output_size(h, kh, stride, padding, dilation), conv.output_size(w, kw, stride, padding, dilation)) >= 1)
    x = data.draw(arrays(np.float64, (c_in, h, w), elements=small))
    weight = data.draw(arrays(np.float64, (c_out, c_in, kh, kw), elements=small))
    bias = data.draw(arrays(np.float64, (c_out,), elements=small))
    mine = conv.conv2d_layer(x, weight, bias, stride, padding, dilation)
    ref = F.conv2d(torch.tensor(x)[None], torch.tensor(weight), torch.tensor(bias), stride=stride,
                   padding=padding, dilation=dilation)[0].numpy()
    np.testing.assert_allclose(mine, ref, rtol=1e-9, atol=1e-9)


@settings(max_examples=50, deadline=None)
@given(x=arrays(np.float64, st.tuples(st.integers(4, 8), st.integers(4, 8)), elements=small),
       k=arrays(np.float64, st.tuples(st.integers(1, 4), st.integers(1, 4)), elements=small))
def test_flip_is_true_convolution(x, k):
    np.testing.assert_allclose(conv.conv2d(x, k, flip=True), convolve2d(x, k, mode="valid"), rtol=1e-9, atol=1e-9)


def test_parse_matrix_forms(tmp_path):
    assert conv.parse_matrix("1 2; 3 4").tolist() == [[1, 2], [3, 4]]
    assert conv.parse_matrix("1,2\n3,-4.5").tolist() == [[1, 2], [3, -4.5]]
    f = tmp_path / "k.txt"
    f.write_text("1 0 -1\n2 0 -2\n1 0 -1\n")
    assert conv.parse_matrix(str(f)).tolist() == [[1, 0, -1], [2, 0, -2], [1, 0, -1]]


def test_cli_lecture_example_step_by_step(capsys):
    r = run_cli("conv")  # once as a user runs it: a fresh process
    assert r.returncode == 0, r.stderr
    assert "2x1 + 1x2 + 4x(-1) + 1x3 = 3" in r.stdout
    assert "height: floor((5 + 2*0 - 1*(2-1) - 1) / 1) + 1 = 4" in r.stdout
    assert r.stdout.count("step ") == 16
    code, out, _ = run_main(capsys, "conv", "--json")
    data = json.loads(out)
    assert data["output"] == LECTURE_OUTPUT
    assert data["steps"][0]["sum"] == 3


def test_cli_options_file_and_named_kernel(capsys, tmp_path):
    f = tmp_path / "input.txt"
    f.write_text("1 2 3\n4 5 6\n7 8 9\n")
    data = json.loads(run_main(capsys, "conv", str(f), "sobel-x", "--padding", "1", "--json")[1])
    x = np.arange(1, 10, dtype=np.float64).reshape(3, 3)
    k = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float64)
    assert data["output"] == torch_conv(x, k, padding=1).tolist()
    data = json.loads(run_main(capsys, "conv", "--stride", "2", "--padding", "1", "--dilation", "2", "--flip",
                               "--json")[1])
    x, k = conv.parse_matrix(conv.LECTURE_INPUT), conv.parse_matrix(conv.LECTURE_KERNEL)
    assert data["output"] == torch_conv(x, k[::-1, ::-1].copy(), stride=2, padding=1, dilation=2).tolist()
    assert data["kernel_used"] == [[3, -1], [2, 1]]
    code, out, _ = run_main(capsys, "conv", "--flip", "--steps", "2")
    assert "cross-correlation" in out and "... 14 more steps" in out


@pytest.mark.parametrize("args, message", [
    (["1 2; 3"], "rows of different lengths"),
    (["1 2; 3 x"], "'x', which is not a number"),
    (["1 2; 3 4", "1 2 3; 4 5 6; 7 8 9"], "does not fit the 2x2 input"),
    (["missing.txt"], "does not exist"),
    (["1 2; 3 4", "nosuch"], "unknown kernel 'nosuch'"),
    (["--stride", "0"], "must be at least 1"),
])
def test_cli_errors(capsys, args, message):
    code, _, err = run_main(capsys, "conv", *args)
    assert code == 2, args
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_cli_several_channels_and_kernels_equal_torch(capsys, tmp_path):
    x = "1 2 0 1; 0 1 2 3; 2 0 1 1; 1 1 0 2 | 0 1 0 2; 1 0 1 1; 0 1 0 0; 3 1 2 1"
    k1, k2 = "1 0; 0 1 | 0 1; 1 0", "1 1; 1 1 | -1 -1; -1 -1"
    data = json.loads(run_main(capsys, "conv", x, k1, k2, "--bias", "0.5,-1", "--padding", "1", "--stride", "2",
                               "--json")[1])
    xt = torch.tensor(conv.parse_channels(x))[None]
    w = torch.stack([torch.tensor(conv.parse_channels(k)) for k in (k1, k2)])
    ref = F.conv2d(xt, w, torch.tensor([0.5, -1.0], dtype=torch.float64), stride=2, padding=1)[0]
    assert np.array(data["output"]).shape == (2, 3, 3)
    np.testing.assert_allclose(data["output"], ref.numpy(), atol=1e-12)
    assert len(data["steps"]) == 2 * 3 * 3
    s = data["steps"][4]  # kernel 0, the middle position: windows of both channels, their sums, the bias
    assert (s["kernel"], s["row"], s["col"]) == (0, 1, 1)
    assert s["channels"][0]["window"] == [[1, 2], [0, 1]] and s["channels"][1]["window"] == [[0, 1], [1, 0]]
    assert [c["sum"] for c in s["channels"]] == [2, 2] and s["bias"] == 0.5 and s["sum"] == 4.5
    # The text form shows each channel's products and the sum over channels.
    code, out, err = run_main(capsys, "conv", x, k1, k2, "--bias", "0.5,-1", "--steps", "1")
    assert code == 0, err
    assert "channel 1: 0x0 + 1x1 + 1x1 + 0x0 = 2" in out and "2 + 2 + bias 0.5 = 4.5" in out
    # A [C, H, W] .npy input works like the typed one.
    np.save(tmp_path / "x.npy", conv.parse_channels(x))
    again = json.loads(run_main(capsys, "conv", str(tmp_path / "x.npy"), k1, k2, "--bias", "0.5,-1", "--padding",
                                "1", "--stride", "2", "--json")[1])
    assert again["output"] == data["output"]


def test_cli_conv_does_not_load_torch():
    code = ("import sys; from cnnlab.cli import main; main(['conv', '1 2; 3 4 | 5 6; 7 8', '1 | 2']); "
            "assert 'torch' not in sys.modules")
    r = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(SRC)}, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    assert "1 + 10 = 11" in r.stdout  # out[0][0][0]: 1x1 from channel 0 plus 5x2 from channel 1


@pytest.mark.parametrize("args, message", [
    (["1 2; 3 4 | 5 6; 7 8", "1 0; 0 1"], "kernel 1 has 1 channel but the input has 2"),
    (["1 2; 3 4 | 5 6"], "different sizes"),
    (["1 2 3; 4 5 6; 7 8 9", "1 0; 0 1", "1 0 0; 0 1 0; 0 0 1"], "kernel 2 is 3x3 but kernel 1 is 2x2"),
    (["1 2; 3 4", "1", "--bias", "1,2"], "--bias has 2"),
    (["1 2; 3 4", "1", "--bias", "nan"], "--bias has 1 finite"),
    (["1 2; 3 4", "1", "--bias", "a"], "must be numbers"),
])
def test_cli_channel_errors(capsys, args, message):
    code, _, err = run_main(capsys, "conv", *args)
    assert code == 2, args
    assert message in err and len(err.strip().splitlines()) == 1, err
