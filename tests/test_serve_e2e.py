"""The real server (python -m cnnlab serve) on a free loopback port: a real browser and a load test."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import DATA_DIR, SRC


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(quick_run, tmp_path_factory):
    port = free_port()
    log = open(tmp_path_factory.mktemp("serve") / "server.log", "w+")
    env = {**os.environ, "CNNLAB_DATA_DIR": str(DATA_DIR),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-m", "cnnlab", "serve", str(quick_run.run_dir), "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            log.seek(0)
            pytest.fail(f"server did not start: {log.read()}")
        time.sleep(0.2)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.seek(0)
    print("\nserver log:\n" + log.read())


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


def test_draw_in_real_browser(server, browser, tmp_path):
    # CNNLAB_SCREENSHOT_DIR=docs/images keeps the screenshot (README uses it); else a temporary folder.
    shots = Path(os.environ.get("CNNLAB_SCREENSHOT_DIR") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    requests_outside = []
    page = browser.new_page(viewport={"width": 1200, "height": 1500})
    page.on("request", lambda r: None if r.url.startswith(server) or r.url.startswith("data:")
            else requests_outside.append(r.url))
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server + "/")
    page.wait_for_selector("#bars .bar")
    assert page.locator("#bars .bar").count() == 10
    page.wait_for_selector("#filters canvas")
    assert page.locator("#filters canvas").count() == 16

    # Draw a "7": a top bar and a diagonal, with real mouse events.
    box = page.locator("#pad").bounding_box()
    pts = [(70, 60), (210, 60), (190, 110), (160, 170), (130, 240)]
    page.mouse.move(box["x"] + pts[0][0], box["y"] + pts[0][1])
    page.mouse.down()
    for x, y in pts[1:]:
        page.mouse.move(box["x"] + x, box["y"] + y, steps=8)
    page.mouse.up()

    # Live answers arrive while drawing; wait for the ones about the finished drawing.
    page.wait_for_function("""() => { const v = document.querySelector('#pad').dataset.version;
        return v && document.querySelector('#prediction').dataset.version === v
            && document.querySelector('#fm1').dataset.version === v; }""")
    prediction = page.locator("#prediction").inner_text().strip()
    probs = [float(v) for v in page.eval_on_selector_all("#bars .bar", "els => els.map(e => e.dataset.prob)")]
    shown = [float(t.rstrip("%")) for t in page.locator("#bars .bar .pct").all_inner_texts()]
    assert prediction in [str(i) for i in range(10)]
    assert prediction == "7"
    assert abs(sum(probs) - 1) < 1e-3
    assert abs(sum(shown) - 100) < 1.0  # each bar rounded to 0.1%
    assert page.locator("#fm1 canvas").count() == 16 and page.locator("#fm2 canvas").count() == 32
    # The model's input: some white pixels on black, shown as a 28x28 canvas.
    seen = page.evaluate("""() => { const c = document.querySelector('#seen');
        const d = c.getContext('2d').getImageData(0, 0, 28, 28).data; let n = 0;
        for (let i = 0; i < d.length; i += 4) if (d[i] > 128) n++; return [c.width, n]; }""")
    assert seen[0] == 28 and 20 < seen[1] < 400
    # The playground has run on the drawing: a Sobel edge map of it.
    page.select_option("#kernel", "sobel-x")
    page.wait_for_function("document.querySelector('#kernel-status').textContent.includes('sobel-x')")
    page.screenshot(path=str(shots / "serve.png"), full_page=True)
    print(f"\nscreenshot: {shots / 'serve.png'}")

    page.click("#clear")
    assert page.locator("#prediction").inner_text().strip() == "–"
    page.close()
    assert not errors, errors
    assert not requests_outside, f"the page reached outside the server: {requests_outside}"


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
        assert sorted(p.strip().replace("\u200b", "") for p in paths) == \
            ["/api/filters", "/api/kernel", "/api/model", "/api/predict", "/healthz"]
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
    page.wait_for_function("""() => { const v = document.querySelector('#pad').dataset.version;
        return v && document.querySelector('#fm1').dataset.version === v; }""")
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
