"""The documentation keeps its promises: every `cnnlab ...` example in README.md and docs/*.md is a
command that exists, with flags that exist; README.md stays short; every relative link leads to a
file (and heading) that exists.

Each example runs as a user would type it, with --help appended (nothing is trained or written):
`cnnlab train --recipe fast --help` fails if `train` or `--recipe` is gone, or if `fast` is no
longer one of its choices. Examples that name the same command with the same flags are run once, a few at a time.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import ROOT, run_cli

README = ROOT / "README.md"
README_LIMIT = 12_288  # bytes: a newcomer finds the quickstart and the tour; details live in docs/
SHELL_FENCES = {"", "bash", "console", "sh", "shell", "shell-session"}
OPERATORS = {"&&", "||", ";", "|"}


def doc_files() -> list[Path]:
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


# --- command examples --------------------------------------------------------------------------

FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*([\w+-]*)")


def code_blocks(path: Path):
    """(info string, [(line number, line), ...]) for each fenced code block of a Markdown file."""
    block, fence, info = None, None, ""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        m = FENCE.match(line)
        if block is None:
            if m:
                block, fence, info = [], m.group(1), m.group(2).lower()
        elif m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence) and not m.group(2):
            yield info, block
            block = None
        else:
            block.append((number, line))


def logical_lines(block):
    """Join lines that end with a backslash to the next; number each by its first line."""
    pending, start = "", None
    for number, line in block:
        if start is None:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        yield start, pending + line
        pending, start = "", None
    if start is not None:
        yield start, pending


def invocations(line: str) -> list[list[str]]:
    """The argument lists of `cnnlab ...`, `python -m cnnlab ...` and `torchrun ... -m cnnlab ...`
    in one shell command line (`cd /tmp && cnnlab train` included)."""
    if "cnnlab" not in line:
        return []
    tokens = shlex.split(line, comments=True)
    segments, current = [], []
    for token in tokens:
        if token in OPERATORS:
            segments.append(current)
            current = []
        else:
            current.append(token)
    segments.append(current)
    found = []
    for seg in segments:
        while seg and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", seg[0]):  # VAR=value cnnlab ...
            seg = seg[1:]
        if seg[:1] == ["cnnlab"]:
            args = seg[1:]
        else:
            at = next((i for i in range(len(seg) - 1) if seg[i:i + 2] == ["-m", "cnnlab"]), None)
            if at is None:
                continue
            args = seg[at + 2:]
        if args and args[0].endswith(":"):  # output such as "cnnlab predict: error: ..."
            continue
        found.append(args)
    return found


def flags(args: list[str]) -> list[str]:
    """The long options an example uses; `[--top-k K]` in a synopsis counts too."""
    out = []
    for arg in args:
        m = re.match(r"^\[?(--[A-Za-z0-9][\w-]*)", arg)
        if m and m.group(1) not in out:
            out.append(m.group(1))
    return out


@dataclass(frozen=True)
class Example:
    file: str
    line: int
    args: tuple[str, ...]

    @property
    def command(self) -> str:
        return self.args[0] if self.args and not self.args[0].startswith("-") else ""

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}: cnnlab {shlex.join(self.args)}"


def examples() -> list[Example]:
    """Every cnnlab command in the shell code blocks. In a block with `$ ` prompts only the prompted
    lines are commands (the rest is their output); otherwise every line is."""
    found = []
    for path in doc_files():
        for info, block in code_blocks(path):
            if info not in SHELL_FENCES:
                continue
            prompted = any(line.lstrip().startswith("$ ") for _, line in block)
            for number, line in logical_lines(block):
                text = line.strip()
                if prompted:
                    if not text.startswith("$ "):
                        continue
                    text = text[2:]
                for args in invocations(text):
                    found.append(Example(rel(path), number, tuple(args)))
    return found


def grouped() -> dict[tuple, list[Example]]:
    """Examples by (command, set of flags): each group is one --help run (about 2 s each)."""
    groups: dict[tuple, list[Example]] = {}
    for ex in examples():
        groups.setdefault((ex.command, frozenset(flags(list(ex.args)))), []).append(ex)
    return groups


GROUPS = grouped()


@pytest.fixture(scope="session")
def help_runs(request) -> dict[tuple, subprocess.CompletedProcess]:
    """`cnnlab ARGS --help` for the first example of every selected group, a few at a time (each
    run is mostly interpreter and torch start-up)."""
    keys = [item.callspec.params["key"] for item in request.session.items
            if getattr(item, "originalname", None) == "test_command_example_runs_with_help"]

    def run(key):
        return key, run_cli(*GROUPS[key][0].args, "--help", env={"COLUMNS": "200"}, timeout=300)

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        return dict(pool.map(run, keys))


def test_the_docs_have_command_examples():
    files = {ex.file for group in GROUPS.values() for ex in group}
    assert len(GROUPS) >= 10 and "README.md" in files, GROUPS


@pytest.mark.parametrize("key", list(GROUPS), ids=[f"{g[0].file}:{g[0].line}" for g in GROUPS.values()])
def test_command_example_runs_with_help(key, help_runs):
    group = GROUPS[key]
    example = group[0]
    where = "\n".join(ex.where for ex in group)
    r = help_runs[key]
    assert r.returncode == 0, f"{where}\n--help exited {r.returncode}:\n{r.stderr}"
    if example.command:
        assert f"usage: cnnlab {example.command}" in r.stdout, f"{where}\nnot that command's help:\n{r.stdout}"
    missing = [f for f in flags(list(example.args))
               if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", r.stdout)]
    assert not missing, f"{where}\nflags not in `cnnlab {example.command} --help`: {missing}\n{r.stdout}"


# --- size and links ---------------------------------------------------------------------------

def test_readme_is_short():
    size = README.stat().st_size
    assert size < README_LIMIT, f"README.md is {size:,} bytes; keep it under {README_LIMIT:,} (move details to docs/)"


def prose(path: Path) -> str:
    """The file without fenced code blocks and inline code, where a [x](y) is not a link."""
    code = {n for _, block in code_blocks(path) for n, _ in block}
    lines = path.read_text(encoding="utf-8").splitlines()
    kept = [line for n, line in enumerate(lines, 1) if n not in code and not FENCE.match(line)]
    return re.sub(r"(`+).*?\1", "", "\n".join(kept))


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, -1, -2 ... for repeats."""
    seen: dict[str, int] = {}
    out = set(re.findall(r"""<a\s+(?:name|id)=["']([^"']+)["']""", path.read_text(encoding="utf-8")))
    code = {n for _, block in code_blocks(path) for n, _ in block}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m or n in code:
            continue
        text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", m.group(1))
        slug = re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")
        out.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return out


LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)|^\s*\[[^\]]+\]:\s*(\S+)", re.M)


def relative_links(path: Path) -> list[str]:
    targets = [a or b for a, b in LINK.findall(prose(path))]
    return [t for t in targets if not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", t)]  # http:, mailto:


@pytest.mark.parametrize("path", doc_files(), ids=rel)
def test_relative_links_lead_somewhere(path):
    broken = []
    for target in relative_links(path):
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            broken.append(f"{target}: no file {dest}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {rel(dest)}")
    assert not broken, f"{rel(path)}: broken links:\n" + "\n".join(broken)
