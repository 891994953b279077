"""One self-contained HTML report of a run: configuration, metrics and every figure of visualize.

The file embeds its images as base64 data URIs and its style inline, and references nothing else -
no scripts, fonts, stylesheets or icons from anywhere - so it opens offline, can be mailed as one
attachment, and a browser showing it makes no network request at all. The layout is one column
that fits a phone; tables scroll sideways inside their own box instead of widening the page.
"""

from __future__ import annotations

import base64
from datetime import datetime
from html import escape
from pathlib import Path

from .. import __version__
from ..errors import CnnlabError
from ..files import check_output, write_output
from ..runs.folder import load, read_metrics, run_files
from . import visualize

STYLE = """
*{box-sizing:border-box}
body{margin:0;font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1b1f24;background:#f6f7f9}
main{max-width:1100px;margin:0 auto;padding:1rem}
header{background:#1f3a5f;color:#fff;padding:1.2rem 1rem}
header>div{max-width:1100px;margin:0 auto}
h1{margin:0 0 .3rem;font-size:1.5rem;overflow-wrap:anywhere}
h2{font-size:1.2rem;margin:0 0 .5rem}
section{background:#fff;border-radius:8px;padding:1rem;margin:1rem 0;box-shadow:0 1px 3px rgba(0,0,0,.08)}
.kpis{display:flex;flex-wrap:wrap;gap:.6rem;margin-top:.6rem}
.kpi{background:rgba(255,255,255,.12);border-radius:6px;padding:.3rem .7rem}
.kpi b{display:block;font-size:1.15rem}
nav{display:flex;flex-wrap:wrap;gap:.2rem .9rem}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-size:.9rem}
th,td{padding:.25rem .6rem;border-bottom:1px solid #e3e6ea;text-align:left;vertical-align:top}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td:not(.num){overflow-wrap:anywhere}
caption{text-align:left;color:#4a5561;font-size:.9rem;padding:.2rem 0}
figure{margin:0}
figure img{display:block;max-width:100%;height:auto;margin:.5rem auto;border:1px solid #eee}
figcaption{color:#4a5561;font-size:.95rem}
.na{color:#7a4b00;background:#fff6e5;border-left:4px solid #f0a500;padding:.5rem .8rem;margin:.4rem 0}
footer{color:#6b7580;font-size:.85rem;text-align:center;padding:1rem}
@media (max-width:600px){body{font-size:15px}main{padding:.5rem}section{padding:.7rem}h1{font-size:1.25rem}}
"""


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    out = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out += _flatten(v, key + ".")
        else:
            out.append((key, ", ".join(map(str, v)) if isinstance(v, list) else v))
    return out


def _cell(v) -> str:
    if isinstance(v, float):
        return f'<td class="num">{v:.4g}</td>'
    if isinstance(v, int) and not isinstance(v, bool):
        return f'<td class="num">{v:,}</td>'
    return f"<td>{escape(str(v))}</td>"


EPOCH_COLUMNS = {"mean_loss": "mean loss", "test_accuracy": "test accuracy", "val_accuracy": "validation accuracy",
                 "images_per_second": "images/s"}


def _epoch_value(key, value):
    if value is None:
        return "-"
    if key.endswith("accuracy") and isinstance(value, float):
        return f"{value:.2%}"
    if key == "images_per_second" and isinstance(value, (int, float)):
        return round(value)
    return value


def _table(header: list[str], rows: list[list], caption: str | None = None) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    cap = f"<caption>{escape(caption)}</caption>" if caption else ""
    return f'<div class="scroll"><table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def to_html(v: visualize.Visuals, config: dict, metrics: list[dict], per_class: list | None = None) -> str:
    s = v.summary
    name = v.run_dir.name if v.run_dir else v.model
    kpis = [("model", v.model), ("dataset", v.dataset), ("parameters", f"{config.get('parameters', 0):,}"),
            ("test accuracy", f"{s['accuracy']:.2%}"), ("test images", f"{s['test_images']:,}"),
            ("misclassified", f"{s['misclassified']:,}")]
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        # An empty icon: without it a browser asks the server for /favicon.ico.
        '<link rel="icon" href="data:,">',
        f"<title>cnnlab report: {escape(name)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<header><div><h1>cnnlab report: {escape(name)}</h1>",
        '<div class="kpis">' + "".join(f'<div class="kpi">{escape(k)}<b>{escape(str(val))}</b></div>'
                                       for k, val in kpis) + "</div></div></header><main>",
        '<nav><a href="#config">Configuration</a><a href="#metrics">Metrics</a>'
        + "".join(f'<a href="#{f.name}">{escape(f.title)}</a>' for f in v.figures) + "</nav>",
    ]

    parts.append('<section id="config"><h2>Configuration</h2>'
                 + _table(["setting", "value"], [[k, str(val)] for k, val in _flatten(config)]) + "</section>")

    m = ['<section id="metrics"><h2>Metrics</h2>']
    if metrics:
        keys = list(dict.fromkeys(k for row in metrics for k in row))
        m.append(_table([EPOCH_COLUMNS.get(k, k) for k in keys],
                        [[_epoch_value(k, row.get(k, "")) for k in keys] for row in metrics],
                        "Per epoch (metrics.jsonl)"))
    else:
        m.append('<p class="na">The run has no metrics.jsonl, so there are no per-epoch numbers.</p>')
    m.append(f"<p>Test set: <b>{s['accuracy']:.2%}</b> accuracy on {s['test_images']:,} images "
             f"({s['misclassified']:,} misclassified).</p>")
    if per_class:
        m.append(_table(["class", "accuracy", "test images"],
                        [[c, f"{a:.2%}", n] for c, a, n in per_class], "Per class"))
    m.append("</section>")
    parts += m

    for f in v.figures:
        data = base64.b64encode(f.png).decode("ascii")
        extra = ""
        if f.name == "filters":
            extra = _table(["filter", "closest kernel", "|cosine|"],
                           [[d["filter"], d["match"] or "-", d["similarity"] if d["similarity"] is not None else "-"]
                            for d in f.data["matches"]])
        parts.append(f'<section id="{f.name}"><figure><h2>{escape(f.title)}</h2>'
                     f'<img src="data:image/png;base64,{data}" alt="{escape(f.title)}">'
                     f"<figcaption>{escape(f.caption)}</figcaption></figure>{extra}</section>")

    if v.not_applicable:
        parts.append('<section id="not-applicable"><h2>What does not apply to this model</h2>'
                     + "".join(f'<p class="na"><b>{escape(na["figure"])}</b>: {escape(na["reason"])}.</p>'
                               for na in v.not_applicable) + "</section>")

    parts.append(f"</main><footer>Written by cnnlab {escape(__version__)} on "
                 f"{datetime.now().isoformat(timespec='seconds')}. This page is one file and loads nothing "
                 f"from the network.</footer></body></html>")
    return "\n".join(parts)


def build(run_dir, out=None, force: bool = False, **render_options) -> dict:
    """Render every figure of a run and write one HTML file (default RUN_DIR/report.html).

    An existing `out` is replaced only with force, and never when it is one of the run's files or
    the --image.
    """
    run_dir = Path(run_dir)
    out = Path(out) if out else run_dir / "report.html"
    if out.is_dir():
        raise CnnlabError(f"--out {out} is a folder; pass a file name such as {out / 'report.html'}")
    image = render_options.get("image")
    inputs = [*run_files(run_dir), *([image] if image else [])]
    trained = load(run_dir)
    check_output(out, force=force, inputs=inputs)  # before anything is drawn
    v = visualize.render(trained, **render_options)
    cm = next(f for f in v.figures if f.name == "confusion").data["confusion_matrix"]
    per_class = list(zip(trained.classes, v.summary["per_class_accuracy"], map(sum, cm)))
    html = to_html(v, trained.config, read_metrics(run_dir), per_class)
    write_output(out, html, force=force, inputs=inputs)
    return {**v.to_json(), "report": str(out), "bytes": len(html.encode())}
