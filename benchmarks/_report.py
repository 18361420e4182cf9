"""Shared by the benchmark scripts: each owns one `## section` of docs/benchmarks.md and rewrites only that section,
so the scripts can run in any order and re-running one refreshes its numbers without touching the others."""

from __future__ import annotations

import re
from pathlib import Path

from hwbcnet.fileio import atomic_write_bytes

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
RESULTS = ROOT / "benchmarks" / "results"
HEADER = ("# Benchmarks\n\nNumbers measured by the scripts in `benchmarks/`; each script rewrites its own section "
          "(`python benchmarks/<name>.py`, `--quick` for a smoke run that writes nothing here).\n")


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_section(title: str, body: str, doc: Path = DOC) -> None:
    """Replace (or append) the `## title` section of `doc` with `body`."""
    text = doc.read_text() if doc.exists() else HEADER
    section = f"## {title}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + section
    atomic_write_bytes(doc, text.encode())
