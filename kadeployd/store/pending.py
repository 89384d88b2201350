"""The rows a write transaction collects, written in a few statements when it ends.

Why not one statement per row: CPython's sqlite3 lets go of the GIL around every statement it
runs. While thousands of NodeActors are runnable, each time the store's thread lets go it waits
up to a switch interval (5 ms) to get the GIL back, so a store writing one row per statement
falls from 19 us to over 1 ms per row (measured with 110,000 rows: alone 2.1 s; next to 4 busy
threads 1,240 us per row) and a 10,000-node deployment waits on its own records. Written here,
the rows of a whole batch take a handful of statements (multi-row ``VALUES`` in chunks of
powers of two, so that only a few statement texts exist), whatever the batch size.

Row ids (the ``seq`` of history entries and log lines) are given here, from the table's
largest id read once per transaction: the transaction holds the write lock, so they are the
ids SQLite would have given, and the events published after the commit carry them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

CHUNKS = (256, 64, 16, 4, 1)
"""Rows per statement: a batch of n rows takes n // 256 statements and at most 12 more."""

_HISTORY = (
    "INSERT INTO state_history "
    "(id, deployment_id, node, state, macrostep, variant, attempt, message, at) VALUES "
)
_LOGS = "INSERT INTO node_logs (id, deployment_id, node, at, stream, text) VALUES "
_NODES = (
    "WITH v (deployment_id, node, state, macrostep, variant, attempt, final, "
    "step_started_at, started_at, finished_at, error_step, error_message, "
    "bytes_done, bytes_total) AS (VALUES {rows}) "
    "UPDATE deployment_nodes AS d SET state = v.state, macrostep = v.macrostep, "
    "variant = v.variant, attempt = v.attempt, final = v.final, "
    "step_started_at = coalesce(v.step_started_at, d.step_started_at), "
    "started_at = coalesce(d.started_at, v.started_at), "
    "finished_at = coalesce(v.finished_at, d.finished_at), "
    "error_step = CASE WHEN v.finished_at IS NULL THEN d.error_step ELSE v.error_step END, "
    "error_message = CASE WHEN v.finished_at IS NULL THEN d.error_message "
    "ELSE v.error_message END, "
    "bytes_done = coalesce(v.bytes_done, d.bytes_done), "
    "bytes_total = coalesce(v.bytes_total, d.bytes_total) "
    "FROM v WHERE d.deployment_id = v.deployment_id AND d.node = v.node"
)


@dataclass(slots=True)
class NodeRecord:
    """A node's record as the transaction knows it: read once, then changed in memory and
    written back by :meth:`PendingRows.flush` if ``dirty``."""

    deployment_id: str
    node: str
    state: str
    final: bool
    macrostep: str | None
    variant: str | None
    attempt: int
    step_started_at: float | None = None
    """Set by a state change in this transaction (None: keep the stored one)."""
    started_at: float | None = None
    """The first working state's time, kept only if the record has none yet."""
    finished_at: float | None = None
    """Set when the node became final in this transaction (with the two error fields)."""
    error_step: str | None = None
    error_message: str | None = None
    bytes_done: int | None = None
    bytes_total: int | None = None
    dirty: bool = False

    def row(self) -> tuple[Any, ...]:
        """The values of the update statement's ``v`` row."""
        return (
            self.deployment_id,
            self.node,
            self.state,
            self.macrostep,
            self.variant,
            self.attempt,
            int(self.final),
            self.step_started_at,
            self.started_at,
            self.finished_at,
            self.error_step,
            self.error_message,
            self.bytes_done,
            self.bytes_total,
        )


class PendingRows:
    """History entries, log lines and node records of one transaction, not yet written."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self._history: list[tuple[Any, ...]] = []
        self._logs: list[tuple[Any, ...]] = []
        self._nodes: dict[tuple[str, str], NodeRecord] = {}
        self._next_history_id: int | None = None
        self._next_log_id: int | None = None

    def history(self, record: NodeRecord, message: str, at: float) -> int:
        """Add a history entry telling the node's current state; its id."""
        if self._next_history_id is None:
            self._next_history_id = _next_id(self.conn, "state_history")
        row_id = self._next_history_id
        self._next_history_id += 1
        self._history.append(
            (
                row_id,
                record.deployment_id,
                record.node,
                record.state,
                record.macrostep,
                record.variant,
                record.attempt,
                message,
                at,
            )
        )
        return row_id

    def log(self, deployment_id: str, node: str, at: float, stream: str, text: str) -> int:
        """Add a log line; its id."""
        if self._next_log_id is None:
            self._next_log_id = _next_id(self.conn, "node_logs")
        row_id = self._next_log_id
        self._next_log_id += 1
        self._logs.append((row_id, deployment_id, node, at, stream, text))
        return row_id

    def changed(self, record: NodeRecord) -> None:
        """``record`` was changed: write it back at the next flush."""
        record.dirty = True
        self._nodes[(record.deployment_id, record.node)] = record

    def flush(self) -> None:
        """Write what was collected (node records first: history and logs refer to them)."""
        if self._nodes:
            write_rows(self.conn, _NODES, 14, [r.row() for r in self._nodes.values()])
            for record in self._nodes.values():
                record.dirty = False
                record.step_started_at = record.started_at = record.finished_at = None
                record.bytes_done = record.bytes_total = None
            self._nodes.clear()
        if self._history:
            write_rows(self.conn, _HISTORY + "{rows}", 9, self._history)
            self._history.clear()
        if self._logs:
            write_rows(self.conn, _LOGS + "{rows}", 6, self._logs)
            self._logs.clear()

    def forget(self) -> None:
        """Drop what was collected (the transaction is rolled back); ids are read again."""
        self._history.clear()
        self._logs.clear()
        self._nodes.clear()
        self._next_history_id = self._next_log_id = None


def _next_id(conn: sqlite3.Connection, table: str) -> int:
    row = conn.execute(f"SELECT coalesce(max(id), 0) + 1 FROM {table}").fetchone()  # noqa: S608 - table is one of two constants
    return int(row[0])


def write_rows(
    conn: sqlite3.Connection, template: str, width: int, rows: Sequence[Sequence[Any]]
) -> None:
    """Execute ``template`` (its ``{rows}`` replaced by ``(?, ...), ...``) over ``rows``, in
    chunks of the sizes of CHUNKS."""
    start = 0
    for size in CHUNKS:
        statement = _statement(template, width, size)
        while len(rows) - start >= size:
            params = [value for row in rows[start : start + size] for value in row]
            conn.execute(statement, params)
            start += size


@cache
def _statement(template: str, width: int, size: int) -> str:
    row = "(" + ", ".join("?" * width) + ")"
    return template.format(rows=", ".join([row] * size))
