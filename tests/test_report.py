"""cnnlab report: one HTML file that a real browser shows completely without touching the network."""

from __future__ import annotations

import json
import re

import pytest

import cnnlab
from cnnlab.cli import main
from cnnlab.see import report


@pytest.fixture(scope="module")
def built(quick_run, data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "report.html"
    return out, report.build(quick_run.run_dir, out, limit=300, data_dir=data_dir)


def open_page(browser, path, width):
    page = browser.new_page(viewport={"width": width, "height": 900})
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    return page, [u for u in requests if not u.startswith(("data:", "file:"))]


@pytest.mark.parametrize("width", [390, 1280])  # a phone and a laptop
def test_report_shows_every_figure_and_makes_no_network_request(built, browser, width):
    path, r = built
    page, external = open_page(browser, path, width)
    try:
        assert external == []
        images = page.evaluate("[...document.images].map(i => [i.complete, i.naturalWidth, i.alt])")
        assert len(images) == len(r["figures"]) == 6
        assert all(complete and natural > 0 for complete, natural, _ in images), images
        assert [alt for *_, alt in images] == [f["title"] for f in r["figures"]]
        # Readable without sideways scrolling: nothing is wider than the screen, images fit it.
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        assert page.evaluate("Math.max(...[...document.images].map(i => i.getBoundingClientRect().width))") <= width
        text = page.inner_text("body")
        assert "Configuration" in text and "simple_cnn" in text and "recipe.lr" in text
        assert f"{r['accuracy']:.2%}" in text and "300" in text
    finally:
        page.close()


def test_report_file_is_self_contained(built, quick_run):
    path, r = built
    html = path.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", html)
    assert "<script" not in html and "@import" not in html and "url(" not in html
    assert html.count('src="data:image/png;base64,') == 6
    # The metrics table holds every epoch of metrics.jsonl.
    for e in quick_run.epochs:
        assert f"{e.mean_loss:.4g}" in html and f"{e.test_accuracy:.2%}" in html
    assert r["report"] == str(path) and r["bytes"] == len(html.encode())


def test_report_of_an_mlp_says_what_does_not_apply(data_dir, tmp_path, browser):
    run = cnnlab.train(model="mlp", epochs=1, limit_train=500, limit_test=100, data_dir=data_dir,
                       out=tmp_path / "mlp", progress=False, log=None)
    r = report.build(run.run_dir, tmp_path / "mlp.html", limit=100, mistakes=4, data_dir=data_dir)
    page, external = open_page(browser, tmp_path / "mlp.html", 390)
    text = page.inner_text("body")
    page.close()
    assert external == []
    assert "What does not apply to this model" in text
    assert {na["figure"] for na in r["not_applicable"]} == {"filters", "feature_maps", "gradcam"}
    assert "First-layer weights as images" in text


def test_report_cli_json_and_errors(quick_run, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert main(["report", str(quick_run.run_dir), "--out", str(out), "--limit", "500", "--json"]) == 0
    j = json.loads(capsys.readouterr().out)
    assert j["report"] == str(out) and j["test_images"] == 500 and len(j["figures"]) == 6
    assert out.read_text().startswith("<!doctype html>")

    assert main(["report", str(quick_run.run_dir), "--out", str(tmp_path / "no" / "r.html")]) == 2
    err = capsys.readouterr().err
    assert "folder" in err and "does not exist" in err and len(err.strip().splitlines()) == 1
