"""The real server (python -m cnnlab serve) on a free loopback port: a real browser and a load test."""

from __future__ import annotations

import base64
import io
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import screenshot_run, serving, until


@pytest.fixture(scope="module")
def server(request, tmp_path_factory):
    with serving(screenshot_run(request), tmp_path_factory.mktemp("serve") / "server.log") as url:
        yield url


def listening_addresses(port: int) -> list[str]:
    """Local addresses with a TCP socket listening on `port`, from the kernel's table (Linux)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A = LISTEN
                raw = bytes.fromhex(address)
                # /proc stores each 32-bit word in host (little-endian) order.
                words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                found.append(socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, words))
    return found


def test_binds_loopback_only_by_default(server):
    port = int(server.rsplit(":", 1)[1])
    assert listening_addresses(port) == ["127.0.0.1"]
    assert httpx.get(server + "/healthz").json()["status"] == "ok"


BARS = """() => [...document.querySelectorAll('#bars .bar')].map(b => {
    const t = b.querySelector('.track').getBoundingClientRect(), f = b.querySelector('.fill').getBoundingClientRect();
    return {p: +b.dataset.prob, track: t.width, fill: f.width, height: f.height, left: f.left - t.left}; })"""


def draw_seven(page) -> None:
    """A "7" (a top bar and a diagonal) with real mouse events; waits for the answer about it."""
    box = page.locator("#pad").bounding_box()
    pts = [(70, 60), (210, 60), (190, 110), (160, 170), (130, 240)]
    page.mouse.move(box["x"] + pts[0][0], box["y"] + pts[0][1])
    page.mouse.down()
    for x, y in pts[1:]:
        page.mouse.move(box["x"] + x, box["y"] + y, steps=8)
    page.mouse.up()
    # Live answers arrive while drawing; wait for the final one about the finished drawing.
    until(page, """() => { const v = document.querySelector('#pad').dataset.version;
        return v && document.querySelector('#prediction').dataset.final === v; }""")


def test_draw_in_real_browser(server, browser, tmp_path):
    # CNNLAB_SCREENSHOT_DIR=docs/images keeps the screenshot (README uses it); else a temporary folder.
    shots = Path(os.environ.get("CNNLAB_SCREENSHOT_DIR") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    requests_outside = []
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.on("request", lambda r: None if r.url.startswith(server) or r.url.startswith("data:")
            else requests_outside.append(r.url))
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server + "/")
    page.wait_for_selector("#bars .bar")
    assert page.locator("#bars .bar").count() == 10
    page.wait_for_selector("#filters canvas", state="attached")
    assert page.locator("#filters canvas").count() == 16

    draw_seven(page)
    prediction = page.locator("#prediction").inner_text().strip()
    probs = [float(v) for v in page.eval_on_selector_all("#bars .bar", "els => els.map(e => e.dataset.prob)")]
    shown = [float(t.rstrip("%")) for t in page.locator("#bars .bar .pct").all_inner_texts()]
    assert prediction == "7"
    assert abs(sum(probs) - 1) < 1e-3
    assert abs(sum(shown) - 100) < 1.0  # each bar rounded to 0.1%
    # What a person sees: each bar's drawn width is its probability of the track's (after the
    # 0.15 s transition), the top class's bar is most of its track, and bars are 16 pixels tall.
    until(page, f"() => ({BARS})().every(b => Math.abs(b.fill - b.p * b.track) < 1.5)", timeout=5000)
    bars = page.evaluate(BARS)
    top = bars[7]
    assert top["track"] > 150 and top["fill"] >= 0.5 * top["track"] and top["height"] == 16 and top["left"] == 0
    for b in bars:
        assert abs(b["fill"] - b["p"] * b["track"]) < 1.5, bars
    # The model's input: some white pixels on black, shown as a 28x28 canvas.
    seen = page.evaluate("""() => { const c = document.querySelector('#seen');
        const d = c.getContext('2d').getImageData(0, 0, 28, 28).data; let n = 0;
        for (let i = 0; i < d.length; i += 4) if (d[i] > 128) n++; return [c.width, n]; }""")
    assert seen[0] == 28 and 20 < seen[1] < 400
    page.screenshot(path=str(shots / "serve.png"))
    print(f"\nscreenshot: {shots / 'serve.png'}")

    # The Kernels view: the playground runs on the drawing (a Sobel edge map of it).
    page.click("#nav a[href='#kernels']")
    page.locator("#kernels-view").wait_for(state="visible", timeout=10_000)  # (the hash change is async)
    assert page.locator("#draw-view").is_hidden()
    page.select_option("#kernel", "sobel-x")
    until(page, "document.querySelector('#kernel-status').textContent.includes('sobel-x')")
    assert page.locator("#k-out").bounding_box()["width"] == 240

    page.click("#nav a[href='#draw']")
    page.click("#clear")
    assert page.locator("#prediction").inner_text().strip() == "–"
    assert all(b["fill"] == 0 for b in page.evaluate(BARS))
    page.close()
    assert not errors, errors
    assert not requests_outside, f"the page reached outside the server: {requests_outside}"


def test_upload_an_image(server, browser, tmp_path):
    """A file chosen with the Upload button is prepared as cnnlab predict prepares files."""
    path = tmp_path / "one.png"
    path.write_bytes(_digit_png(0))
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(server + "/")
    page.wait_for_selector("#bars .bar")
    page.set_input_files("#photo", str(path))
    until(page, "() => document.querySelector('#prediction').dataset.final")
    assert page.locator("#prediction").inner_text().strip() == "1"
    assert page.evaluate("window.cnnlab.image.length") == 28
    # Dropped on the pad, a file goes the same way (a real drop event carrying the file).
    page.click("#clear")
    page.evaluate("""(b64) => { const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const dt = new DataTransfer(); dt.items.add(new File([bytes], 'one.png', { type: 'image/png' }));
        document.querySelector('#pad').dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true,
                                                                          cancelable: true })); }""",
                  base64.b64encode(_digit_png(0)).decode())
    until(page, "() => document.querySelector('#prediction').dataset.final === "
                "document.querySelector('#pad').dataset.version")
    assert page.locator("#prediction").inner_text().strip() == "1"
    page.close()


def test_api_docs_render_with_no_network(server, browser, tmp_path):
    """/api/docs (Swagger UI) draws every operation from files the server itself serves."""
    outside = []

    def only_loopback(route):
        if route.request.url.startswith(server):
            route.continue_()
        else:  # what a machine with no network would do: the request fails
            outside.append(route.request.url)
            route.abort()

    for width, height in ((1280, 800), (390, 844)):
        page = browser.new_page(viewport={"width": width, "height": height})
        page.route("**/*", only_loopback)
        page.goto(server + "/api/docs")
        page.wait_for_selector(".opblock", timeout=20_000)
        paths = page.locator(".opblock .opblock-summary-path").all_inner_texts()
        shown = {p.strip().replace("\u200b", "") for p in paths}
        assert {"/api/filters", "/api/kernel", "/api/model", "/api/predict", "/api/network", "/healthz"} <= shown
        for box in (page.locator(".opblock").nth(i).bounding_box() for i in range(5)):
            assert box["width"] > 0.8 * min(width, 1280) - 100 and box["height"] >= 30  # drawn, full width
        page.screenshot(path=str(tmp_path / f"api-docs-{width}.png"), full_page=True)
        page.close()
    assert not outside, f"/api/docs reached outside the server: {outside}"


def test_draw_with_touch(server, browser):
    """A finger on a touch screen: real touch events (Chrome DevTools Protocol), same prediction flow."""
    context = browser.new_context(has_touch=True, is_mobile=True, viewport={"width": 400, "height": 900})
    page = context.new_page()
    page.goto(server + "/")
    page.wait_for_selector("#bars .bar")
    box = page.locator("#pad").bounding_box()
    cdp = context.new_cdp_session(page)
    # A vertical stroke: a "1".
    points = [(box["x"] + box["width"] / 2, box["y"] + box["height"] * (0.15 + 0.07 * i)) for i in range(11)]
    cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": points[0][0], "y": points[0][1]}]})
    for x, y in points[1:]:
        cdp.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [{"x": x, "y": y}]})
    cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    until(page, """() => { const v = document.querySelector('#pad').dataset.version;
        return v && document.querySelector('#prediction').dataset.final === v; }""")
    assert page.locator("#prediction").inner_text().strip() == "1"
    # The page did not scroll while drawing (touch-action: none on the pad).
    assert page.evaluate("window.scrollY") == 0
    context.close()


def _digit_png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    img = np.zeros((28, 28), np.uint8)
    img[6:22, 12 + rng.integers(-2, 3):16 + rng.integers(-2, 3)] = 255
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def test_200_requests_16_concurrent_each_get_their_answer(server):
    """200 requests (uploads and JSON arrays) 16 at a time: every one answered correctly. The
    2,000-request load test with throughput and latency is benchmarks/serve_load.py."""
    total, concurrency = 200, 16
    png = _digit_png(0)
    array = np.asarray(Image.open(io.BytesIO(png))).tolist()

    # Threads, not asyncio: the session's Playwright browser owns this thread's event loop.
    latencies, failures = [], []
    local = threading.local()

    def one(i):
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=server, timeout=30)
        t = time.perf_counter()
        try:
            if i % 2:
                r = local.client.post("/api/predict", files={"file": ("d.png", png, "image/png")})
            else:
                r = local.client.post("/api/predict", json={"image": array})
            ok = r.status_code == 200 and r.json()["prediction"] == 1
            if not ok:
                failures.append((r.status_code, r.text[:100]))
        except httpx.HTTPError as e:
            failures.append(repr(e))
        latencies.append(time.perf_counter() - t)

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(total)))
    assert len(latencies) == total
    assert failures == []
    assert httpx.get(server + "/healthz").status_code == 200
