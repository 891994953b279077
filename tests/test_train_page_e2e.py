"""Train from the page and explore runs, in a real Chromium against `python -m cnnlab serve RUNS_DIR`:
start a small training, watch it live, leave and come back, stop it, resume it in a terminal, open
it in the run browser, click a confusion cell, slide through the filters' history, compare two
runs; and move the drawn digit and find the smallest change that flips it."""

from __future__ import annotations

import io
import os
import shutil
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from cnnlab.runs import folder
from conftest import run_cli, serving, until

LIVE = 180_000  # ms a browser wait may take on a busy machine (training starts a Python process)


@pytest.fixture(scope="module")
def root(quick_run, tmp_path_factory):
    root = tmp_path_factory.mktemp("served-runs")
    shutil.copytree(quick_run.run_dir, root / "quick")
    return root


@pytest.fixture(scope="module")
def server(root, tmp_path_factory):
    # A training started from the page stops and saves its checkpoint first: give it time.
    with serving(root, tmp_path_factory.mktemp("serve-runs") / "server.log", stop_timeout=90) as url:
        yield url


def shots_dir(tmp_path) -> Path:
    # CNNLAB_SCREENSHOT_DIR=docs/images keeps the screenshots (docs/seeing-inside.md shows them).
    shots = Path(os.environ.get("CNNLAB_SCREENSHOT_DIR") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    return shots


def screenshot(locator, path: Path) -> None:
    """A PNG of the element in 128 colours: a third of the size, the same picture for the docs."""
    image = Image.open(io.BytesIO(locator.screenshot())).convert("RGB")
    image.quantize(colors=128, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)


def painted(page, selector: str, rgb: tuple[int, int, int], tolerance: int = 40) -> int:
    """How many pixels of the canvas at `selector` are close to the colour rgb."""
    return page.evaluate("""([sel, rgb, tol]) => { const c = document.querySelector(sel);
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
        for (let i = 0; i < d.length; i += 4)
            if (Math.abs(d[i] - rgb[0]) + Math.abs(d[i + 1] - rgb[1]) + Math.abs(d[i + 2] - rgb[2]) < tol) n++;
        return n; }""", [selector, list(rgb), tolerance])


def canvas_pixels(page, selector: str) -> list[int]:
    return page.evaluate("""(sel) => { const c = document.querySelector(sel);
        return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data); }""", selector)


def last_step(run_dir: Path) -> int:
    return max([e["step"] for e in folder.read_history(run_dir)[0] if e["kind"] == "step"], default=0)


def start_training(page, server):
    page.goto(server + "/")
    page.click("#nav a[data-view='train-view']")  # the Train tab, as a user opens it
    until(page, "document.querySelector('#train-dataset').options.length > 0")
    # The clothes recipe brings its dataset; the next recipe puts the digits back.
    page.select_option("#train-recipe", "fashion")
    assert (page.input_value("#train-dataset"), page.input_value("#train-model")) == ("fashion-mnist", "wide5_cnn")
    page.select_option("#train-recipe", "lecture")
    assert page.input_value("#train-dataset") == "mnist"
    page.select_option("#train-model", "simple_cnn")
    # 12 epochs: long enough on a quiet machine that Stop comes before the end.
    for field, value in [("#train-epochs", "12"), ("#train-limit", "2000"), ("#train-limit-test", "500"),
                         ("#train-snapshots", "4")]:
        page.fill(field, value)
    page.click("#train-start")
    until(page, "Number(document.querySelector('#train-view').dataset.updates || 0) >= 3", timeout=LIVE)
    return page.get_attribute("#train-view", "data-run")


def test_train_stop_resume_and_explore_from_the_page(server, root, browser, tmp_path):
    shots, errors = shots_dir(tmp_path), []
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.on("pageerror", lambda e: errors.append(str(e)))
    run = start_training(page, server)
    run_dir = root / run
    # Live: the smoothed loss is drawn in blue, the first-layer filters as 16 pictures.
    assert painted(page, "#train-loss", (37, 99, 235)) > 50
    assert page.locator("#train-filters canvas").count() == 16

    # One training at a time; predictions are still answered while it trains.
    second = httpx.post(server + "/api/train", json={"epochs": 1})
    assert second.status_code == 409 and "already running" in second.json()["error"]
    stroke = np.zeros((28, 28), int)
    stroke[6:22, 13:15] = 255
    answer = httpx.post(server + "/api/predict", json={"image": stroke.tolist()}, timeout=60)
    assert answer.status_code == 200 and answer.json()["prediction"] == 1

    # The browser goes away; the training does not notice. A new page follows it from the start.
    seen = last_step(run_dir)
    page.close()
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server + "/")
    page.click("#nav a[data-view='train-view']")
    until(page, "Number(document.querySelector('#train-view').dataset.updates || 0) >= 3", timeout=LIVE)
    assert (page.input_value("#train-epochs"), page.input_value("#train-limit")) == ("12", "2000")  # what it runs with
    deadline = time.monotonic() + 120
    while last_step(run_dir) <= max(seen, 40) and time.monotonic() < deadline:  # (40 of 96 steps: a curve to show)
        time.sleep(0.1)
    assert last_step(run_dir) > seen
    until(page, "Number(document.querySelector('#train-filters').dataset.step) >= 24", timeout=LIVE)
    screenshot(page.locator("#train-view"), shots / "train.png")

    # Stop keeps a checkpoint that `cnnlab train --resume` finishes.
    page.click("#train-stop")
    until(page, "document.querySelector('#train-status').dataset.state === 'stopped'", timeout=LIVE)
    assert f"cnnlab train --resume {run_dir}" in page.inner_text("#train-status")
    assert (run_dir / "checkpoint.safetensors").is_file() and not (run_dir / folder.WEIGHTS).exists()
    resumed = run_cli("train", "--resume", run_dir)
    assert resumed.returncode == 0, resumed.stderr
    metrics = folder.read_metrics(run_dir)
    assert [m["epoch"] for m in metrics] == list(range(1, 13)) and (run_dir / folder.WEIGHTS).is_file()

    # The run browser: the run is finished, with its accuracy; open it.
    page.click("#train-open-run")
    until(page, f"document.querySelector('#runs-view').dataset.open === '{run}'", timeout=LIVE)
    row = page.locator(f"#runs-table tr[data-run='{run}']").inner_text()
    assert f"{100 * metrics[-1]['test_accuracy']:.2f}%" in row and "12/12" in row
    assert page.locator("#confusion button").count() == 100

    # A confusion cell opens its test images, each drawn with its Grad-CAM overlay.
    cm = np.array(httpx.get(f"{server}/api/runs/{run}/evaluation").json()["confusion_matrix"])
    off = cm - np.diag(np.diag(cm))
    t, p = np.unravel_index(off.argmax(), off.shape)
    page.click(f"#confusion button[data-true='{t}'][data-predicted='{p}']")
    until(page, f"document.querySelector('#cell').dataset.cell === '{t},{p}'", timeout=LIVE)
    figures = page.locator("#cell-images figure")
    assert figures.count() == min(cm[t, p], 24)
    assert f"{cm[t, p]} test image" in page.inner_text("#cell-title")
    box = figures.first.locator("canvas").nth(1).bounding_box()
    assert (round(box["width"]), round(box["height"])) == (64, 64)
    assert painted(page, "#cell-images figure canvas:nth-of-type(2)", (255, 200, 0), 150) > 0  # the heat is drawn

    # The filters' history: the slider goes back to the untrained filters and forward again.
    end = canvas_pixels(page, "#history-filters figure canvas")
    page.focus("#history-slider")
    page.keyboard.press("Home")
    assert page.get_attribute("#history-filters", "data-index") == "0"
    assert "before training" in page.inner_text("#history-label")
    assert canvas_pixels(page, "#history-filters figure canvas") != end
    page.keyboard.press("End")
    assert canvas_pixels(page, "#history-filters figure canvas") == end
    screenshot(page.locator("#runs-view"), shots / "runs.png")

    # Two runs side by side: the quick run and this one, on the 500 test images both saw.
    for name in ("quick", run):
        page.check(f"#runs-table tr[data-run='{name}'] input[type=checkbox]")
    page.click("#runs-compare")
    until(page, f"document.querySelector('#runs-view').dataset.compared === 'quick,{run}'", timeout=LIVE)
    compared = httpx.get(f"{server}/api/compare", params={"a": "quick", "b": run}).json()
    assert page.locator("#compare-classes .pc").count() == 10
    assert page.locator("#compare-classes .pc .track").count() == 20
    assert page.locator("#compare-ab figure").count() == min(12, compared["a_right_b_wrong"]["count"])
    assert f"{compared['a_right_b_wrong']['count']} image" in page.inner_text("#compare-ab-title")
    page.close()

    phone = browser.new_page(viewport={"width": 390, "height": 844})
    phone.goto(server + "/")
    phone.click("#nav a[data-view='runs-view']")
    phone.wait_for_selector(f"#runs-table tr[data-run='{run}']")
    phone.click(f"#runs-table tr[data-run='{run}'] button.link")
    until(phone, f"document.querySelector('#runs-view').dataset.open === '{run}'", timeout=LIVE)
    assert phone.evaluate("document.documentElement.scrollWidth") <= 390  # nothing wider than the phone
    phone.locator("#runs-view").screenshot(path=str(tmp_path / "runs-phone.png"))
    phone.close()
    assert not errors, errors


def test_move_the_drawing_and_find_the_smallest_change_that_flips_it(server, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server + "/")
    page.wait_for_selector("#bars .bar")
    box = page.locator("#pad").bounding_box()
    pts = [(70, 60), (210, 60), (190, 110), (160, 170), (130, 240)]  # a "7"
    page.mouse.move(box["x"] + pts[0][0], box["y"] + pts[0][1])
    page.mouse.down()
    for x, y in pts[1:]:
        page.mouse.move(box["x"] + x, box["y"] + y, steps=8)
    page.mouse.up()
    page.click("#nav a[data-view='robust-view']")  # the Robustness tab
    page.click("#robust-take")
    until(page, "document.querySelector('#robust-view').dataset.transform")
    assert page.inner_text("#robust-prediction") == "7"
    upright = np.array(canvas_pixels(page, "#robust-image")).reshape(28, 28, 4)[..., 0]
    assert (upright > 128).sum() > 20

    page.eval_on_selector("#robust-angle", "e => { e.value = 90; e.dispatchEvent(new Event('input')); }")
    until(page, "JSON.parse(document.querySelector('#robust-view').dataset.transform).angle === 90")
    turned = np.array(canvas_pixels(page, "#robust-image")).reshape(28, 28, 4)[..., 0]
    assert np.array_equal(turned, np.rot90(upright, -1))  # what is drawn is the drawing turned a quarter clockwise
    assert page.locator("#robust-maps canvas").count() == 16 and page.locator("#robust-bars .pbar").count() == 10

    page.click("#robust-fgsm")
    page.wait_for_selector("#robust-fgsm-result[data-epsilon]")
    epsilon = int(page.get_attribute("#robust-fgsm-result", "data-epsilon"))
    assert 1 <= epsilon <= 128
    before = page.inner_text("#fgsm-original-caption").split()[0]
    after = page.inner_text("#fgsm-adversarial-caption").split()[0]
    assert before == "7" and after != "7"
    assert f"ε = {epsilon} " in page.inner_text("#robust-fgsm-status")
    screenshot(page.locator("#robust-view"), shots_dir(tmp_path) / "robust.png")
    page.close()
    assert not errors, errors
