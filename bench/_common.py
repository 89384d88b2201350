"""Helpers the benchmark scripts share: printing a table and writing it as markdown."""

from __future__ import annotations


def print_table(rows: list[list[str]]) -> None:
    """``rows`` (the first is the header) as right-aligned columns on stdout."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)))


def markdown_table(rows: list[list[str]]) -> list[str]:
    """``rows`` (the first is the header) as the lines of a markdown table."""
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    return lines
