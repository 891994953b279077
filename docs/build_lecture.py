"""Rebuild docs/lecture.md: rerun every command of the walk, in order, in a fresh folder, and rewrite
its output blocks, its figures and the sentences that read numbers off them.

    python docs/build_lecture.py              # about 5-10 minutes on a shared 2-core CPU
    python docs/build_lecture.py --keep DIR   # run in DIR (kept) instead of a temporary folder

What the page is made of (docs/lecture.md):
- a fenced block whose first line is `$ cnnlab ...` is a command; everything after that line is
  replaced by what the command prints (stdout and stderr, as in a terminal). A comment on the
  line before the block may trim what is shown:
    <!-- output: from TEXT -->   start at the first line containing TEXT ("..." stands for the rest)
    <!-- output: skip REGEX -->  leave out the lines matching REGEX (each run of them becomes "...")
- <!-- run: python --> before a ```python block runs it; the plain block right after is its output;
- <!-- generated: NAME --> ... <!-- end generated --> is prose that PROSE[NAME] writes from the outputs,
  so a sentence that compares numbers is rewritten from the numbers of this build, never pasted;
- FIGURES are copied from the build folder into docs/images.

Commands run as `python -m cnnlab` from this checkout (src/ first on the path) with the datasets of
$CNNLAB_DATA_DIR, else this checkout's ./data (downloaded there on first use).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "lecture.md"
FENCE = re.compile(r"^```(\w*)\s*$")
OPTION = re.compile(r"^<!-- output: (from|skip) (.+) -->$")
RUN_PYTHON = "<!-- run: python -->"
GENERATED = re.compile(r"^<!-- generated: ([\w-]+) -->$")
END_GENERATED = "<!-- end generated -->"

# Files the walk writes (relative to its folder) -> where the page shows them.
FIGURES = {
    "gallery.jpg": "docs/images/gallery.jpg",
    "runs/lecture/simple_cnn/figures/filters.png": "docs/images/learned_filters.png",
    "invariance.png": "docs/images/invariance.png",
}


# --- reading the page --------------------------------------------------------------------------------

def parse(text: str) -> list[dict]:
    """The page as segments: text, command, python (code), python_output, generated (prose)."""
    lines, out, i = text.split("\n"), [], 0
    while i < len(lines):
        line = lines[i]
        gen = GENERATED.match(line)
        if gen:
            end = lines.index(END_GENERATED, i)
            out.append({"kind": "generated", "name": gen.group(1), "lines": lines[i + 1:end]})
            i = end + 1
            continue
        fence = FENCE.match(line)
        if not fence:
            out.append({"kind": "text", "line": line})
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        body = lines[i + 1:end]
        before = out[-1]["line"] if out and out[-1]["kind"] == "text" else ""
        if body and body[0].startswith("$ "):
            option = OPTION.match(before)
            out.append({"kind": "command", "command": body[0][2:], "lang": fence.group(1),
                        "option": option.groups() if option else None, "lines": body[1:]})
        elif fence.group(1) == "python" and before == RUN_PYTHON:
            out.append({"kind": "python", "code": "\n".join(body)})
        elif _after_python(out):
            out.append({"kind": "python_output", "lines": body})
        else:
            out.append({"kind": "block", "lang": fence.group(1), "lines": body})
        i = end + 1
    return out


def _after_python(segments: list[dict]) -> bool:
    """True when the last segment that is not a blank line is a python block to run."""
    rest = [s for s in segments if not (s["kind"] == "text" and not s["line"].strip())]
    return bool(rest) and rest[-1]["kind"] == "python"


def commands(segments: list[dict]) -> list[str]:
    """What the walk runs, in order: each command line, and each python block as 'python:' + code."""
    return [s["command"] if s["kind"] == "command" else "python:" + s["code"]
            for s in segments if s["kind"] in ("command", "python")]


# --- running the walk --------------------------------------------------------------------------------

def environment() -> dict:
    env = {**os.environ, "COLUMNS": "120", "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
    env.setdefault("CNNLAB_DATA_DIR", str(ROOT / "data"))
    return env


def run(step: str, folder: Path) -> str:
    """One command (or 'python:' + code) run in `folder`, its stdout and stderr as one text."""
    if step.startswith("python:"):
        argv, stdin = [sys.executable, "-"], step[len("python:"):]
    else:
        words = shlex.split(step)
        if words[0] != "cnnlab":
            raise SystemExit(f"build_lecture: only cnnlab commands run here, not: {step}")
        argv, stdin = [sys.executable, "-m", "cnnlab", *words[1:]], None
    proc = subprocess.run(argv, cwd=folder, env=environment(), input=stdin, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"build_lecture: '{step[:80]}' failed with exit status {proc.returncode}:\n{proc.stdout}")
    return proc.stdout.rstrip("\n")


def run_all(steps: list[str], folder: Path, log=print) -> dict[str, str]:
    outputs, start = {}, time.perf_counter()
    for n, step in enumerate(steps, 1):
        t = time.perf_counter()
        outputs[step] = run(step, folder)
        log(f"[{n}/{len(steps)}] {step.splitlines()[0][:90]} ({time.perf_counter() - t:.1f} s)")
    outputs["_seconds"] = f"{time.perf_counter() - start:.0f}"
    return outputs


# --- writing the page --------------------------------------------------------------------------------

def shown(output: str, option) -> list[str]:
    """The lines of an output the page shows, trimmed as its <!-- output: ... --> comment says."""
    lines = [line.rstrip() for line in output.split("\n")] if output else []
    if option is None:
        return lines
    how, arg = option
    if how == "from":
        first = next((i for i, line in enumerate(lines) if arg in line), None)
        if first is None:
            raise SystemExit(f"build_lecture: no output line contains '{arg}'")
        return (["..."] if first else []) + lines[first:]
    kept = []
    for line in lines:
        if not re.search(arg, line):
            kept.append(line)
        elif not kept or kept[-1] != "...":
            kept.append("...")
    return kept


def render(segments: list[dict], outputs: dict[str, str]) -> str:
    """The page again, each output block and generated paragraph replaced from `outputs`."""
    lines = []
    for s in segments:
        kind = s["kind"]
        if kind == "text":
            lines.append(s["line"])
        elif kind == "command":
            lines += [f"```{s['lang']}", f"$ {s['command']}", *shown(outputs[s["command"]], s["option"]), "```"]
        elif kind == "python":
            lines += ["```python", s["code"], "```"]
            last_python = outputs["python:" + s["code"]]
        elif kind == "python_output":
            lines += ["```", last_python, "```"]
        elif kind == "generated":
            prose = textwrap.fill(PROSE[s["name"]](outputs), 100, break_long_words=False, break_on_hyphens=False)
            lines += [f"<!-- generated: {s['name']} -->", prose, END_GENERATED]
        else:
            lines += [f"```{s['lang']}", *s["lines"], "```"]
    return "\n".join(lines)


def output_of(outputs: dict, start: str) -> str:
    """The output of the first command that starts with `start`."""
    return next(v for k, v in outputs.items() if k.startswith(start))


def table(text: str) -> list[list[str]]:
    """The body rows of the rich table(s) in a command's output, as lists of cell texts."""
    return [[c.strip() for c in line.strip().strip("│").split("│")] for line in text.split("\n")
            if line.strip().startswith("│")]


def number(cell: str) -> float:
    return float(cell.replace(",", "").replace("%", "").replace("pts", "").replace("s", "").replace("+", ""))


def _than(a: float, b: float, more: str, less: str, same: str, tolerance: float) -> str:
    return same if abs(a - b) <= tolerance else (more if a > b else less)


# --- the sentences that read numbers off the outputs ---------------------------------------------------

def prose_build(outputs: dict) -> str:
    minutes = int(outputs["_seconds"]) / 60
    day = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    return (f"Every output on this page was printed by the command above it when `python docs/build_lecture.py` "
            f"last ran the walk from top to bottom in a fresh folder ({day}: {minutes:.1f} minutes in all, on a "
            f"2-core CPU shared with other work; times differ from machine to machine).")


def prose_filters(outputs: dict) -> str:
    out = output_of(outputs, "python:")
    found = re.findall(r"filter +\d+: closest (\S+) \(cosine ([+-][\d.]+)\)", out)
    oriented = sum(name != "laplacian" for name, _ in found)
    strong = sum(abs(float(c)) >= 0.5 for _, c in found)
    sims = sorted(abs(float(c)) for _, c in found)
    gap = float(re.search(r"max \|loop - Conv2d\| over .* values: (\S+)", out).group(1))
    return (f"Of the {len(found)} learned filters, {oriented} resemble an oriented edge detector (Sobel or "
            f"Prewitt, x or y) more than any other hand-designed kernel, and {len(found) - oriented} the "
            f"Laplacian; {strong} of them with |cosine| 0.5 or more (the |cosines| run from {sims[0]:.2f} to "
            f"{sims[-1]:.2f}). They were found from the data alone, starting from random numbers. And the layer "
            f"computes exactly the sliding-window loop of step 3: loop and Conv2d differ by at most {gap:.1e}, "
            f"the rounding of 64-bit floats.")


def prose_invariance(outputs: dict) -> str:
    rows = {(r[0], int(r[1])): r for r in table(output_of(outputs, "cnnlab pool --invariance"))}
    ch = {k: number(r[2]) for k, r in rows.items()}
    acc = {k: number(r[3]) for k, r in rows.items()}
    feat = {k: number(r[4]) for k, r in rows.items()}
    p, n = "simple_cnn", "no_pool_cnn"
    steadier = ch[p, 1] < ch[n, 1] and ch[p, 2] < ch[n, 2]
    text = (f"What this shows, and what it does not: with pooling, a 1-pixel shift changes {ch[p, 1]:.1f}% of "
            f"the predictions against {ch[n, 1]:.1f}% without it, and {ch[p, 2]:.1f}% against {ch[n, 2]:.1f}% at "
            f"2 pixels" + (": the pooled network's answers are steadier. " if steadier else
                           ": here pooling did not make the answers steadier. "))
    moves = _than(feat[p, 1], feat[n, 1], "more", "less", "about as much", 0.05)
    text += (f"But its last feature map moves {moves} in the pooled network as in the other ({feat[p, 1]:.2f} "
             f"against {feat[n, 1]:.2f} of its size at 1 pixel)")
    text += (": two 2x2 poolings do not make the features shift-invariant; the pooled network's classifier is "
             "simply less disturbed by the change. " if moves != "less" else
             ": pooling made the features themselves move less. ")
    text += (f"Both were trained alike (the same images, epochs and recipe), and unshifted they score "
             f"{acc[p, 0]:.1f}% and {acc[n, 0]:.1f}%"
             + (", so part of the gap under shifts is the pooled network's better accuracy. "
                if acc[p, 0] - acc[n, 0] >= 2 else ". "))
    worst = max(acc[p, 4], acc[n, 4])
    text += (f"At 3-4 pixels both fail often (at 4 pixels {acc[p, 4]:.1f}% and {acc[n, 4]:.1f}% accuracy): "
             f"invariance to larger shifts has to be learned (data augmentation) rather than built in."
             if worst < 70 else f"At 4 pixels they still score {acc[p, 4]:.1f}% and {acc[n, 4]:.1f}%.")
    return text


def prose_compare(outputs: dict) -> str:
    rows = {r[0]: {"params": number(r[1]), "macs": number(r[2]), "time": number(r[3]), "train": number(r[4]),
                   "test": number(r[5]), "gap": number(r[6])} for r in table(output_of(outputs, "cnnlab compare"))}
    mlp, cnn, lenet, alex = rows["mlp"], rows["simple_cnn"], rows["lenet5"], rows["alexnet_mini"]
    most_params = max(rows, key=lambda m: rows[m]["params"])
    widest = max(rows, key=lambda m: rows[m]["gap"])
    best = max(rows, key=lambda m: rows[m]["test"])
    text = (f"What the table says for this budget (10,000 images, 2 epochs): {most_params} has the most parameters "
            f"({rows[most_params]['params'] / cnn['params']:.1f}x simple_cnn's)")
    text += (f" and the largest train-test gap ({rows[widest]['gap']:.2f} points): it memorises more and "
             f"generalises less. " if widest == most_params else
             f"; the largest train-test gap is {widest}'s ({rows[widest]['gap']:.2f} points, {most_params}: "
             f"{rows[most_params]['gap']:.2f}). ")
    text += (f"{best} is the most accurate ({rows[best]['test']:.2f}%)"
             + (f" with {mlp['params'] / rows[best]['params']:.1f}x fewer parameters than the MLP. "
                if rows[best]["params"] < mlp["params"] else ". "))
    lenet_word = _than(lenet["test"], mlp["test"], "beats", "falls short of", "matches", 0.5)
    text += (f"LeNet-5 {lenet_word} the MLP's test accuracy ({lenet['test']:.2f}% against {mlp['test']:.2f}%) with "
             f"{mlp['params'] / lenet['params']:.0f}x fewer parameters. ")
    better = alex["test"] > cnn["test"] + 0.5
    text += (f"alexnet_mini costs {alex['macs'] / cnn['macs']:.0f}x simple_cnn's multiply-accumulates and "
             f"{alex['time'] / cnn['time']:.1f}x its training time, and after 2 epochs it is "
             + (f"more accurate ({alex['test']:.2f}% against {cnn['test']:.2f}%)." if better else
                f"not more accurate ({alex['test']:.2f}% against {cnn['test']:.2f}%): a deeper network with "
                f"dropout needs more data and epochs than this budget gives (run the command with more "
                f"`--epochs` or without `--limit-train` to see how the gaps develop)."))
    return text


def prose_alexnet(outputs: dict) -> str:
    rows = [r for r in table(output_of(outputs, "cnnlab params alexnet")) if r[0] != "total"]
    conv = [r for r in rows if r[1].startswith("Conv2d")]
    fc = [r for r in rows if r[1].startswith("Linear")]
    total_p = sum(number(r[3]) for r in rows)
    total_m = sum(number(r[4]) for r in rows)
    conv_p, conv_m = sum(number(r[3]) for r in conv), sum(number(r[4]) for r in conv)
    fc_p = sum(number(r[3]) for r in fc)
    words = {3: "three", 5: "five"}
    return (f"AlexNet has {total_p / 1e6:.1f} million parameters. Its {words.get(len(conv), len(conv))} "
            f"convolutions hold only {conv_p / 1e6:.1f} million of them ({conv_p / total_p:.0%}) but do "
            f"{conv_m / total_m:.0%} of the {total_m / 1e6:.0f} million multiply-accumulates per image; its "
            f"{words.get(len(fc), len(fc))} fully connected layers hold the other "
            f"{fc_p / 1e6:.1f} million ({fc_p / total_p:.0%}) - step 2's lesson again: weights shared across "
            f"positions are cheap, a dense layer on a large input is not. alexnet_mini (step 7) keeps the "
            f"pattern - five convolutions, overlapping max pooling, dropout, three dense layers - at 28x28.")


PROSE = {"build": prose_build, "filters": prose_filters, "invariance": prose_invariance,
         "compare": prose_compare, "alexnet": prose_alexnet}


# --- the build -----------------------------------------------------------------------------------------

def build(folder: Path, page: Path = PAGE) -> None:
    segments = parse(page.read_text())
    outputs = run_all(commands(segments), folder, log=lambda s: print(s, file=sys.stderr, flush=True))
    text = render(segments, outputs)
    for source, target in FIGURES.items():
        shutil.copyfile(folder / source, ROOT / target)
    page.write_text(text)
    print(f"rewrote {page.relative_to(ROOT)} and {len(FIGURES)} figures in {int(outputs['_seconds']) / 60:.1f} "
          f"minutes", file=sys.stderr)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Rerun every command of docs/lecture.md and rewrite its outputs.")
    p.add_argument("--keep", metavar="DIR", default=None,
                   help="run the walk in DIR (created; must not exist) and keep it, instead of a temporary folder")
    args = p.parse_args(argv)
    if args.keep:
        folder = Path(args.keep)
        folder.mkdir(parents=True)
        build(folder)
    else:
        with tempfile.TemporaryDirectory(prefix="cnnlab-lecture-") as tmp:
            build(Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
