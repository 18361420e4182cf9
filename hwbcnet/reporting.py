"""Shared rich output: one console, tables, and plain-number formatting."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table

# Piped output (CI logs, files) gets a wide console instead of rich's 80-column default.
console = Console(width=None if sys.stdout.isatty() else 160)


def table(title: str, columns: list[str], rows: list[list], justify_numbers: bool = True) -> Table:
    """A rich table; columns whose values are all numbers are right-aligned."""
    out = Table(title=title, title_justify="left")
    for index, column in enumerate(columns):
        numeric = justify_numbers and bool(rows) and all(isinstance(row[index], (int, float)) for row in rows)
        out.add_column(column, justify="right" if numeric else "left")
    for row in rows:
        out.add_row(*[f"{v:.4g}" if isinstance(v, float) else str(v) for v in row])
    return out
