"""The explorer explains the network, in a real browser on real servers: units clicked in several
layers of two trained models show the model's own numbers, outlines sit where they should, the
sliding window steps through what `cnnlab conv --json` prints, and every view fits a phone."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import cnnlab
from conftest import run_cli, screenshot_run, serving, until
from test_serve_e2e import draw_seven

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's note about httpx2
    from fastapi.testclient import TestClient

LAPTOP, PHONE = {"width": 1280, "height": 800}, {"width": 390, "height": 844}
TINY = dict(epochs=1, limit_train=2000, limit_test=500, batch_size=16, lr=0.003, schedule="onecycle", seed=0)


@pytest.fixture(scope="module")
def lenet_run(data_dir, tmp_path_factory):
    return cnnlab.train(model="lenet5", data_dir=data_dir, out=tmp_path_factory.mktemp("runs") / "lenet5",
                        progress=False, log=None, **TINY)


@pytest.fixture(scope="module")
def servers(request, lenet_run, tmp_path_factory):
    logs, simple_dir = tmp_path_factory.mktemp("serve"), screenshot_run(request)
    with serving(simple_dir, logs / "simple.log") as simple, serving(lenet_run.run_dir, logs / "lenet.log") as lenet:
        yield {"simple_cnn": (simple, simple_dir), "lenet5": (lenet, lenet_run.run_dir)}


@pytest.fixture
def shots(tmp_path) -> Path:
    """CNNLAB_SCREENSHOT_DIR=docs/images keeps the screenshots the docs show; else a temporary folder."""
    folder = Path(os.environ.get("CNNLAB_SCREENSHOT_DIR") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def shown(page, role: str) -> float:
    """A number as the page prints it (four decimals), by its role in the arithmetic."""
    return float(page.locator(f"#math [data-role='{role}']").first.inner_text())


def table(locator) -> np.ndarray:
    return np.array([[float(t) for t in row.locator("td").all_inner_texts()] for row in locator.locator("tr").all()])


def open_network(page, url: str):
    page.goto(url + "/")
    page.wait_for_selector("#bars .bar")
    draw_seven(page)
    page.click("#nav a[href='#network']")
    until(page, "document.querySelector('#net-strip').dataset.ready")
    image = np.array(page.evaluate("window.cnnlab.image"), np.uint8)
    assert image.shape == (28, 28) and image.max() == 255
    return image


def click_unit(page, layer: int, channel: int, row: int, col: int) -> None:
    """Enlarge a map (click its thumbnail), then click one unit of the enlarged map, as a person does."""
    page.click(f".maps canvas[data-layer='{layer}'][data-channel='{channel}']")
    until(page, f"document.querySelector('#unit-card').dataset.layer === '{layer}'")
    page.locator("#zoom").scroll_into_view_if_needed()
    box = page.locator("#zoom").bounding_box()
    rows, cols = (int(page.locator("#zoom").get_attribute(a)) for a in ("data-rows", "data-cols"))
    page.mouse.click(box["x"] + (col + 0.5) * box["width"] / cols, box["y"] + (row + 0.5) * box["height"] / rows)
    until(page, f"document.querySelector('#unit-card').dataset.unit === '{channel},{row},{col}'")


def outline_cells(page, stage: str, canvas: str, side: int) -> tuple[float, float, float, float]:
    """Where an outline is drawn, in cells of the map under it: (top, left, bottom, right)."""
    c, o = page.locator(canvas).bounding_box(), page.locator(f"{stage} .outline").bounding_box()
    cell = c["width"] / side
    return ((o["y"] - c["y"]) / cell, (o["x"] - c["x"]) / cell, (o["y"] + o["height"] - c["y"]) / cell - 1,
            (o["x"] + o["width"] - c["x"]) / cell - 1)


# The units each model's test clicks: (layer index in the page, channel, row, column).
# Each conv unit sits at the border, so its window reaches into the zero padding; rf is its receptive
# field on the input worked out by hand (top, left, bottom, right), cut by the image's border:
# simple_cnn features.3 (0, 13): rows -1..1, columns 12..14 of the 14x14 pool output, so rows -3..4
# and columns 23..30 of the image; lenet5 features.0 (0, 27): a 5x5 window at rows -2..2, columns 25..29.
UNITS = {"simple_cnn": {"conv": (4, 5, 0, 13), "rf": (0, 23, 4, 27), "pool": (3, 2, 6, 7), "logit": 10, "softmax": 11},
         "lenet5": {"conv": (1, 3, 0, 27), "rf": (0, 25, 2, 27), "pool": (6, 9, 2, 1), "logit": 12, "softmax": 13}}


@pytest.mark.parametrize("name", ["simple_cnn", "lenet5"])
def test_units_show_the_forward_pass(servers, browser, name):
    url, run_dir = servers[name]
    trained = cnnlab.load(run_dir)
    model = trained.model.eval()
    page = browser.new_page(viewport=LAPTOP)
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    image = open_network(page, url)
    x = trained.preprocess(torch.from_numpy(image)[None])
    layers = [*model.features, *model.classifier]
    with torch.no_grad():  # every layer's output, by running the model's own modules one after the other
        outs = [x]
        for m in layers:
            outs.append(m(outs[-1]))
    # One column per layer (the input, each module, softmax), one thumbnail per channel.
    assert page.locator("#net-strip .layer").count() == len(layers) + 2
    for i, out in enumerate(outs[1:], 1):
        if out.dim() == 4:
            assert page.locator(f".maps canvas[data-layer='{i}']").count() == out.shape[1]
    _check_conv(page, layers, outs, UNITS[name]["conv"], UNITS[name]["rf"])
    _check_pool(page, outs, UNITS[name]["pool"])
    _check_logit_and_softmax(page, layers, outs, UNITS[name]["logit"], UNITS[name]["softmax"])
    page.close()
    assert not errors, errors


def _check_conv(page, layers, outs, unit, rf):
    layer, c, y, x = unit
    conv = layers[layer - 1]
    click_unit(page, layer, c, y, x)
    want = float(outs[layer][0, c, y, x])
    assert abs(shown(page, "value") - want) < 1e-4 and abs(shown(page, "result") - want) < 1e-4
    bias = float(conv.bias.detach()[c])
    assert abs(shown(page, "bias") - bias) < 1e-4
    assert abs(shown(page, "sum") - (want - bias)) < 1e-4
    after = float(outs[layer + 1][0, c, y, x])  # the activation right after the convolution
    assert abs(float(page.locator("#math [data-role='then-value']").inner_text()) - after) < 1e-4
    # Each shown channel: the window (zero padding included), the kernel and their products.
    p = conv.padding[0]
    padded = F.pad(outs[layer - 1][0], (p, p, p, p))
    k = conv.kernel_size[0]
    for trio in page.locator("#math .trio").all():
        ch = int(trio.get_attribute("data-channel"))
        window = padded[ch, y * conv.stride[0]:y * conv.stride[0] + k, x * conv.stride[1]:x * conv.stride[1] + k]
        kernel = conv.weight[c, ch].detach()
        assert np.abs(table(trio.locator("[data-role='window']")) - window.numpy()).max() < 1e-4
        assert np.abs(table(trio.locator("[data-role='kernel']")) - kernel.numpy()).max() < 1e-4
        assert np.abs(table(trio.locator("[data-role='products']")) - (window * kernel).numpy()).max() < 1e-4
        assert abs(float(trio.locator("[data-role='channel-sum']").inner_text()) - float((window * kernel).sum())) < 1e-4
    # The receptive field is outlined on the input where it is.
    drawn = outline_cells(page, "#input-stage", "#rf-input", 28)
    assert np.allclose(drawn, rf, atol=0.05), (drawn, rf)
    # The unit itself is marked on the enlarged map.
    side = outs[layer].shape[-1]
    assert np.allclose(outline_cells(page, "#zoom-stage", "#zoom", side), (y, x, y, x), atol=0.05)


def _check_pool(page, outs, unit):
    layer, c, y, x = unit
    click_unit(page, layer, c, y, x)
    want = float(outs[layer][0, c, y, x])
    assert abs(shown(page, "value") - want) < 1e-4 and abs(shown(page, "result") - want) < 1e-4
    window = outs[layer - 1][0, c, 2 * y:2 * y + 2, 2 * x:2 * x + 2].numpy()
    assert np.abs(table(page.locator("#math [data-role='window']")) - window).max() < 1e-4
    # The window is outlined on the previous layer's map: 2x2 at (2y, 2x).
    side = outs[layer - 1].shape[-1]
    assert np.allclose(outline_cells(page, "#prev-stage", "#rf-prev", side), (2 * y, 2 * x, 2 * y + 1, 2 * x + 1),
                       atol=0.05)


def _check_logit_and_softmax(page, layers, outs, logit, softmax):
    top = int(outs[-1][0].argmax())
    page.click(f".classes button[data-layer='{logit}'][data-unit='{top}']")
    until(page, f"document.querySelector('#unit-card').dataset.unit === '{top}' && "
                f"document.querySelector('#unit-card').dataset.layer === '{logit}'")
    linear = layers[logit - 1]
    inputs = outs[logit - 1][0]
    products = inputs * linear.weight[top].detach()
    assert abs(shown(page, "value") - float(outs[logit][0, top])) < 1e-4
    assert abs(shown(page, "result") - float(outs[logit][0, top])) < 1e-4
    assert abs(shown(page, "sum") - float(products.sum())) < 1e-4
    rows = page.locator("#math [data-role='contributions'] tr").all()[1:]
    order = torch.argsort(products.abs(), descending=True)
    for row, j in zip(rows, order):
        cells = row.locator("td").all_inner_texts()
        assert cells[0].startswith(f"#{int(j)}")
        assert abs(float(cells[1]) - float(inputs[j])) < 1e-4 and abs(float(cells[3]) - float(products[j])) < 1e-4
    page.click(f".classes button[data-layer='{softmax}'][data-unit='{top}']")
    until(page, f"document.querySelector('#unit-card').dataset.layer === '{softmax}'")
    z = outs[-1][0].double()
    assert abs(shown(page, "sum") - float(z.exp().sum())) / float(z.exp().sum()) < 1e-4
    assert abs(shown(page, "exp") - float(z[top].exp())) / float(z[top].exp()) < 1e-4
    assert abs(shown(page, "result") - float(z.softmax(0)[top])) < 1e-4


def _grid(page, selector: str) -> list[list[str]]:
    return [row.locator("td").all_inner_texts() for row in page.locator(f"{selector} tr").all()]


def test_sliding_window_is_cnnlab_conv_json(servers, browser, shots):
    url, _ = servers["simple_cnn"]
    matrix, kernel = "2 1 3 1 4 0\n4 1 0 1 3 2\n1 3 1 1 1 0\n2 6 1 1 1 3\n3 3 1 0 4 1\n0 2 1 3 0 1", "1 2\n-1 3"
    r = run_cli("conv", matrix.replace("\n", ";"), kernel.replace("\n", ";"), "--stride", "2", "--padding", "1",
                "--dilation", "2", "--json")
    assert r.returncode == 0, r.stderr
    cli = json.loads(r.stdout)
    page = browser.new_page(viewport=LAPTOP)
    page.goto(url + "/#slide")
    until(page, "document.querySelector('#slide-view').dataset.ready")
    # Unchanged, it shows the lecture's example: 16 steps, the first 2x1 + 1x2 + 4x(-1) + 1x3 = 3.
    assert page.locator("#s-counter").inner_text() == "step 1 of 16"
    assert page.locator("#s-sum").inner_text() == "out[0][0] = 2×1 + 1×2 + 4×(-1) + 1×3 = 3"
    page.fill("#s-input", matrix)
    page.fill("#s-stride", "2")
    page.fill("#s-padding", "1")
    page.fill("#s-dilation", "2")
    formula = cli["output_size"]["formula"]["height"]
    assert formula == "floor((6 + 2*1 - 2*(2-1) - 1) / 2) + 1 = 3"
    until(page, f"document.querySelector('#s-formula').textContent.includes({json.dumps(formula)})")
    assert page.locator("#s-counter").inner_text() == f"step 1 of {len(cli['steps'])}"
    td = page.locator("#s-in tr").first.locator("td")
    cell_w = td.nth(1).bounding_box()["x"] - td.nth(0).bounding_box()["x"]
    cell_h = page.locator("#s-in tr").nth(1).bounding_box()["y"] - page.locator("#s-in tr").nth(0).bounding_box()["y"]
    for n, step in enumerate(cli["steps"]):
        assert page.locator("#s-counter").get_attribute("data-step") == str(n)
        assert [[float(v) for v in row] for row in _grid(page, "#s-window")] == step["window"]
        assert [[float(v) for v in row] for row in _grid(page, "#s-products")] == step["products"]
        assert float(page.locator("#s-sum").inner_text().rsplit("=", 1)[1]) == step["sum"]
        # The highlighted window is drawn over the taps this step reads (dilation 2: every other cell).
        origin = page.locator("#s-in td").first.bounding_box()
        boxes = [page.locator("#s-in td.win").nth(i).bounding_box() for i in range(4)]
        taps = sorted((round((b["y"] - origin["y"]) / cell_h), round((b["x"] - origin["x"]) / cell_w)) for b in boxes)
        assert taps == sorted((step["top"] + 2 * a, step["left"] + 2 * b) for a in (0, 1) for b in (0, 1))
        if n == 4:
            page.screenshot(path=str(shots / "slide.png"))
        page.click("#s-next")
    # After the last step it starts again; the output grid shows every value.
    assert page.locator("#s-counter").get_attribute("data-step") == "0"
    page.click("#s-back")
    assert [[float(v) for v in row] for row in _grid(page, "#s-out")] == cli["output"]
    page.click("#s-play")
    until(page, "document.querySelector('#s-counter').dataset.step !== String("
                f"{len(cli['steps']) - 1})", timeout=5000)
    page.click("#s-play")
    _pooling_steps(page)
    page.close()


def _pooling_steps(page):
    matrix = "1 1 2 4 0; 5 6 7 8 1; 3 2 1 0 2; 1 2 3 4 9; 0 5 1 2 3"
    r = run_cli("pool", matrix, "--size", "3", "--stride", "1", "--json")
    cli = json.loads(r.stdout)
    page.click("#op-pool")
    page.fill("#s-input", matrix)
    page.fill("#s-size", "3")
    page.fill("#s-stride", "1")
    # The pooling answer for these settings is drawn (the convolution before it also had 9 steps).
    until(page, f"document.querySelector('#s-formula').textContent.includes({json.dumps(cli['output_size']['formula']['height'])})")
    assert page.locator("#s-counter").inner_text().endswith(" of 9")
    if page.locator("#s-play").inner_text().strip() == "Pause":  # (a slow machine: still playing)
        page.click("#s-play")
    page.click("#s-reset")
    until(page, "document.querySelector('#s-counter').textContent === 'step 1 of 9'")
    for mode in ("max", "avg"):
        page.select_option("#s-mode", mode)
        for step in cli[mode]["steps"]:
            assert [[float(v) for v in row] for row in _grid(page, "#s-window")] == step["window"]
            assert abs(float(page.locator("#s-sum").inner_text().rsplit("=", 1)[1]) - step["value"]) < 1e-4
            page.click("#s-next")


def test_sliding_window_says_what_is_wrong(servers, browser):
    url, _ = servers["simple_cnn"]
    r = run_cli("conv", "1 2; 3", "1 0; 0 1")
    assert r.returncode == 2
    message = r.stderr.strip().removeprefix("cnnlab conv: error: ")
    page = browser.new_page(viewport=LAPTOP)
    page.goto(url + "/#slide")
    until(page, "document.querySelector('#slide-view').dataset.ready")
    status = page.locator("#s-status")
    # A matrix the server cannot read: the terminal's own line, in red, under the fields.
    page.fill("#s-input", "1 2; 3")
    until(page, "document.querySelector('#s-status').textContent !== ''")
    assert status.inner_text() == message
    assert status.evaluate("e => getComputedStyle(e).color") == "rgb(185, 28, 28)"
    assert status.bounding_box()["height"] > 10
    # No answer at all (the server stopped): the page says so instead of showing the old steps as new.
    page.route("**/api/conv", lambda route: route.abort())
    page.fill("#s-input", "1 2 3\n4 5 6\n7 8 9")
    until(page, "document.querySelector('#s-status').textContent.includes('cannot reach')")
    assert status.inner_text() == "cannot reach the server: is cnnlab serve still running?"
    page.unroute("**/api/conv")
    page.fill("#s-input", "1 2 3\n4 5 6\n7 8 8")
    until(page, "document.querySelector('#s-counter').textContent === 'step 1 of 4'")
    assert status.inner_text() == ""
    page.close()


def test_every_view_fits_a_phone(servers, browser, shots):
    url, _ = servers["simple_cnn"]
    context = browser.new_context(viewport=PHONE, has_touch=True, is_mobile=True)
    page = context.new_page()
    open_network(page, url)
    click_unit(page, 4, 5, 7, 3)
    for view in ("draw", "network", "slide", "kernels", "train", "runs"):
        page.click(f"#nav a[href='#{view}']")
        page.locator(f"#{view}-view").wait_for(state="visible", timeout=10_000)  # (the hash change is async)
        page.wait_for_timeout(100)
        # (A mobile browser widens its layout viewport to fit wide content: compare with the screen.)
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"], view
        for link in page.locator("#nav a").all():  # every tab can be reached without scrolling sideways
            box = link.bounding_box()
            assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], view
        if view in ("draw", "network", "slide"):
            if view == "slide":
                until(page, "document.querySelector('#slide-view').dataset.ready")
            page.screenshot(path=str(shots / f"{view}-phone.png"), full_page=True)
    # The layers scroll sideways inside their strip, not the page.
    page.click("#nav a[href='#network']")
    page.locator("#network-view").wait_for(state="visible", timeout=10_000)  # (the hash change is async)
    strip = "document.querySelector('#net-strip')"
    until(page, f"{strip}.clientWidth > 0", timeout=10_000)
    assert page.evaluate(f"{strip}.scrollWidth > {strip}.clientWidth")
    context.close()


def test_laptop_screenshots_and_no_outside_requests(servers, browser, shots):
    url, _ = servers["simple_cnn"]
    page = browser.new_page(viewport=LAPTOP)
    outside = []
    page.on("request", lambda r: None if r.url.startswith(url) or r.url.startswith("data:") else outside.append(r.url))
    open_network(page, url)
    page.screenshot(path=str(shots / "network.png"))
    click_unit(page, 4, 5, 7, 3)
    page.locator("#unit-card").scroll_into_view_if_needed()
    page.locator("#unit-card").screenshot(path=str(shots / "unit.png"))
    page.close()
    assert not outside, outside


def test_mlp_says_what_does_not_apply(data_dir, tmp_path):
    run = cnnlab.train(model="mlp", data_dir=data_dir, out=tmp_path / "mlp", progress=False, log=None,
                       **{**TINY, "limit_train": 1000})
    client = TestClient(cnnlab.create_app(run.run_dir))
    image = np.zeros((28, 28), int)
    image[5:23, 13:16] = 255
    body = client.post("/api/network", json={"image": image.tolist()}).json()
    assert "no convolution or pooling layers" in body["note"] and "receptive fields" in body["note"]
    assert [L["kind"] for L in body["layers"]] == ["input", "flatten", "linear", "activation", "linear",
                                                   "activation", "linear", "softmax"]
    u = client.post("/api/unit", json={"image": image.tolist(), "layer": 2, "unit": [3]}).json()
    assert "receptive_field" not in u and np.array(u["weight_image"]).shape == (28, 28)
    assert abs(u["result"] - u["value"]) < 1e-4
