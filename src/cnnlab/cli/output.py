"""Where the commands' tables and styled lines go: rich on stdout, wrapped to the width of a
terminal, but never wrapped or cut when stdout is a pipe or a file (grep and logs see whole lines)."""

from __future__ import annotations

from rich.console import Console

UNLIMITED = 1_000_000  # columns: rich needs a width; no line cnnlab prints comes near it


def console() -> Console:
    terminal = Console()
    return terminal if terminal.is_terminal else Console(width=UNLIMITED)
