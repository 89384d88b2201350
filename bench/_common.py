"""Helpers the benchmark scripts share: printing a table, writing it as markdown, and
unwinding on SIGTERM."""

from __future__ import annotations

import signal


def unwind_on_signals() -> None:
    """SIGTERM and SIGINT unwind like Ctrl-C (KeyboardInterrupt), so that whatever a benchmark
    started (daemons, testbeds, temp dirs) is removed on the way out, also when it was started
    from a shell that ignores SIGINT in background jobs."""
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


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
