"""The writer: every change to the deployment database goes through :class:`Store`.

One transaction per call, so a reader never sees a node's current state without the history
entry that explains it. Late reports are expected, not errors: once a node is final (aborted by
``min_nodes``, by a cancel, or by a daemon restart), a state reported afterwards by a step that
was still running is ignored and the call returns ``False``.

The writes of nodes and deployments also come as messages (:mod:`kadeployd.store.writes`),
written many per transaction by :meth:`Store.write_batch`; both ways apply them with the same
code (:mod:`kadeployd.store.apply`). After each commit, the events it produced go to
:meth:`Store._after_commit`, which the StoreActor publishes.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Self

from kadeployd.events.types import Event
from kadeployd.store.apply import (
    Applied,
    Lookups,
    append_history,
    apply_write,
    deployment_status,
    finish_deployment_rows,
)
from kadeployd.store.batch import BatchResult, WriteStats
from kadeployd.store.catalogue import CatalogueWrites
from kadeployd.store.connection import open_writer
from kadeployd.store.errors import InvalidRecord, StoreError
from kadeployd.store.pending import NodeRecord, PendingRows, write_rows
from kadeployd.store.queries import StoreQueries, _node_names
from kadeployd.store.records import PENDING, DeploymentStatus, LogStream
from kadeployd.store.rights import RightsWrites
from kadeployd.store.writes import (
    AppendLog,
    FinishDeployment,
    FinishNode,
    RecordProgress,
    RecordState,
    Write,
)

logger = logging.getLogger(__name__)

INTERRUPTED = "daemon restarted"
"""Default reason given by :meth:`Store.mark_interrupted`."""


class Store(StoreQueries, CatalogueWrites, RightsWrites):
    """Reads and writes of the deployment database, over one connection bound to one thread.

    Use :meth:`open` (or :class:`~kadeployd.store.actor.StoreActor`, which owns one in its
    thread). Every ``at`` argument is a unix time and defaults to the time of the call.
    """

    def __init__(self, path: Path, conn: sqlite3.Connection | None) -> None:
        StoreQueries.__init__(self, path, conn)
        self._stats = WriteStats()

    @classmethod
    def open(cls, path: Path) -> Self:
        """Open the database file ``path``, creating it and its directory, migrating it."""
        return cls(Path(path), open_writer(Path(path)))

    # --- deployments -----------------------------------------------------------------------

    def create_deployment(
        self,
        *,
        user: str,
        environment_name: str,
        environment_version: int | None = None,
        environment: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        min_nodes: int | None = None,
        anonymous: bool = False,
        nodes: Iterable[str] = (),
        at: float | None = None,
    ) -> str:
        """Record a new running deployment (and its ``nodes``, if given); return its id.

        ``environment`` is the environment description (JSON-ready values) as deployed;
        ``anonymous`` says it came with the request instead of from the catalogue.
        ``min_nodes``: None means every node must be deployed.
        """
        if min_nodes is not None and (isinstance(min_nodes, bool) or min_nodes < 1):
            raise InvalidRecord(f"min_nodes must be an integer >= 1 or None, not {min_nodes!r}")
        env_json = _to_json("environment", environment or {})
        options_json = _to_json("options", options or {})
        deployment_id = uuid.uuid4().hex
        now = _now(at)
        with self._writing() as conn:
            conn.execute(
                "INSERT INTO deployments (id, user, environment_name, environment_version, "
                "anonymous, environment, options, min_nodes, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    deployment_id,
                    user,
                    environment_name,
                    environment_version,
                    int(anonymous),
                    env_json,
                    options_json,
                    min_nodes,
                    now,
                ),
            )
            events = _insert_nodes(conn, deployment_id, list(nodes), now)
        self._after_commit(events)
        logger.info("deployment %s created by %s", deployment_id, user)
        return deployment_id

    def add_nodes(self, deployment_id: str, names: Iterable[str], at: float | None = None) -> None:
        """Add node records in state ``pending`` to a running deployment."""
        names = list(names)
        now = _now(at)
        with self._writing() as conn:
            row = deployment_status(conn, deployment_id)
            if row != DeploymentStatus.RUNNING:
                raise InvalidRecord(
                    f"deployment {deployment_id} is {row}: nodes can only be added while it runs"
                )
            events = _insert_nodes(conn, deployment_id, names, now)
        self._after_commit(events)

    def finish_deployment(
        self,
        deployment_id: str,
        status: DeploymentStatus | str,
        reason: str = "",
        at: float | None = None,
    ) -> bool:
        """End a running deployment with ``status``; False if it had already ended (no change).

        Nodes not yet final become ``aborted`` with ``reason`` as their message, so a finished
        deployment never has unfinished nodes.
        """
        return self._apply(FinishDeployment(deployment_id, status, reason, _now(at))).changed

    def mark_interrupted(self, reason: str = INTERRUPTED, at: float | None = None) -> list[str]:
        """At daemon start: abort every deployment still ``running``; return their ids.

        Only the daemon's start-up calls this, never a restarted StoreActor: deployments
        keep running while the store restarts.
        """
        now = _now(at)
        events: list[Event] = []
        with self._writing() as conn:
            ids = [
                str(r[0])
                for r in conn.execute(
                    "SELECT id FROM deployments WHERE status = 'running' ORDER BY created_at"
                )
            ]
            memo = Lookups(conn)
            for deployment_id in ids:
                events.extend(
                    finish_deployment_rows(
                        memo, deployment_id, DeploymentStatus.ABORTED, reason, now
                    )
                )
            memo.flush()
        self._after_commit(events)
        for deployment_id in ids:
            logger.warning("deployment %s aborted: %s", deployment_id, reason)
        return ids

    # --- nodes -----------------------------------------------------------------------------

    def record_state(
        self,
        deployment_id: str,
        node: str,
        state: str,
        *,
        macrostep: str | None = None,
        variant: str | None = None,
        attempt: int = 0,
        message: str = "",
        at: float | None = None,
    ) -> bool:
        """Set a node's current state and append it to its history, in one transaction.

        Returns False (and changes nothing) if the node is already final or its deployment
        has ended: a late report from a step that was still running.
        """
        write = RecordState(
            deployment_id, node, state, macrostep, variant, attempt, message, _now(at)
        )
        return self._apply(write).changed

    def finish_node(
        self,
        deployment_id: str,
        node: str,
        state: str,
        message: str = "",
        *,
        error_step: str | None = None,
        at: float | None = None,
    ) -> bool:
        """Put a node in a final state; False (no change) if it was already final.

        For a failure, ``message`` should be the last error (stderr tail) and ``error_step``
        the step that failed; the record keeps the last
        :data:`~kadeployd.store.records.ERROR_TAIL_CHARS` characters.
        """
        write = FinishNode(deployment_id, node, state, message, error_step, _now(at))
        return self._apply(write).changed

    def record_progress(
        self, deployment_id: str, node: str, bytes_done: int, bytes_total: int
    ) -> bool:
        """Record how far the node's image transfer is; False (no change) once the node is
        final, its deployment ended, or the node is unknown: progress is advisory, a late or
        stray report is dropped, never an error (it comes as a fire-and-forget message)."""
        return self._apply(RecordProgress(deployment_id, node, bytes_done, bytes_total)).changed

    def append_log(
        self,
        deployment_id: str,
        node: str,
        stream: LogStream | str,
        text: str,
        at: float | None = None,
    ) -> int:
        """Append one piece of a node's log; return its ``seq``."""
        return self._apply(AppendLog(deployment_id, node, stream, text, _now(at))).seq or 0

    def append_logs(
        self,
        deployment_id: str,
        node: str,
        lines: Iterable[tuple[LogStream | str, str]],
        at: float | None = None,
    ) -> None:
        """Append several ``(stream, text)`` pieces of a node's log in one transaction."""
        now = _now(at)
        writes = [AppendLog(deployment_id, node, stream, text, now) for stream, text in lines]
        events: list[Event] = []
        with self._writing() as conn:
            memo = Lookups(conn)
            for write in writes:
                events.extend(apply_write(conn, write, memo).events)
            memo.flush()
        self._stats.rows += len(writes)
        self._after_commit(events)

    # --- batches ---------------------------------------------------------------------------

    def write_batch(self, writes: Sequence[Write]) -> BatchResult:
        """Apply ``writes`` in order in one transaction: a write that fails (unknown node,
        invalid value) is logged and rolled back alone, the others are kept. Late writes change
        nothing, as for the methods of the same names.

        Failing writes are bugs, so the batch is first written without a savepoint per write;
        only if one fails is the transaction rolled back and written again with a savepoint
        around each write.
        """
        try:
            applied, ignored, dropped, events = self._apply_batch(writes, savepoints=False)
        except _BadWrite:
            applied, ignored, dropped, events = self._apply_batch(writes, savepoints=True)
        stats = self._stats
        stats.batches += 1
        stats.largest_batch = max(stats.largest_batch, len(writes))
        stats.rows += applied
        stats.ignored += ignored
        stats.dropped += dropped
        self._after_commit(events)
        return BatchResult(applied, ignored, dropped, tuple(events))

    def _apply_batch(
        self, writes: Sequence[Write], *, savepoints: bool
    ) -> tuple[int, int, int, list[Event]]:
        applied = ignored = dropped = 0
        events: list[Event] = []
        with self._writing() as conn:
            lookups = Lookups(conn)
            if not savepoints:
                lookups.load(writes)
            for write in writes:
                if savepoints:
                    conn.execute("SAVEPOINT batch_write")
                try:
                    result = apply_write(conn, write, lookups)
                    if savepoints:
                        lookups.flush()
                except (StoreError, sqlite3.Error, TypeError, ValueError) as exc:
                    if not savepoints:
                        raise _BadWrite from exc
                    conn.execute("ROLLBACK TO batch_write")
                    conn.execute("RELEASE batch_write")
                    lookups = Lookups(conn)  # what the failed write changed is rolled back
                    dropped += 1
                    logger.warning("store: write dropped: %s: %r", exc, write)
                    continue
                if savepoints:
                    conn.execute("RELEASE batch_write")
                if result.changed:
                    applied += 1
                    events.extend(result.events)
                else:
                    ignored += 1
            try:
                lookups.flush()
            except sqlite3.Error as exc:
                raise _BadWrite from exc
        return applied, ignored, dropped, events

    def stats(self) -> dict[str, int]:
        """Counters of the writes since the store was opened (see
        :class:`~kadeployd.store.batch.WriteStats`)."""
        return self._stats.as_dict()

    # --- plumbing --------------------------------------------------------------------------

    def _attach(self, conn: sqlite3.Connection) -> None:
        """Use ``conn`` (opened by :func:`open_writer` in the calling thread)."""
        with self._lock:
            self._conn = conn

    def _writing(self) -> AbstractContextManager[sqlite3.Connection]:
        """One write transaction: committed if the block ends normally, else rolled back."""
        return self._counted_transaction()

    @contextmanager
    def _counted_transaction(self) -> Iterator[sqlite3.Connection]:
        with self._transaction("BEGIN IMMEDIATE", "write") as conn:
            yield conn
        self._stats.transactions += 1

    def _apply(self, write: Write) -> Applied:
        """One write in its own transaction (the synchronous methods)."""
        with self._writing() as conn:
            applied = apply_write(conn, write)
        if applied.changed:
            self._stats.rows += 1
        else:
            self._stats.ignored += 1
        self._after_commit(applied.events)
        return applied

    def _after_commit(self, events: Sequence[Event]) -> None:
        """Called with the events of each committed write transaction, in commit order.

        The plain Store has nobody to tell; the StoreActor publishes them on its hub.
        """


# --- helpers running inside a write transaction ---------------------------------------------


class _BadWrite(Exception):
    """A write of a batch written without savepoints failed: write it again with them."""


def _now(at: float | None) -> float:
    return time.time() if at is None else float(at)


def _to_json(what: str, value: Mapping[str, Any]) -> str:
    try:
        return json.dumps(dict(value), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidRecord(f"{what} cannot be stored as JSON: {exc}") from exc


def _insert_nodes(
    conn: sqlite3.Connection, deployment_id: str, names: list[str], now: float
) -> list[Event]:
    """Add node records in state ``pending``; the events of their first history entries."""
    if not names:
        return []
    if not all(isinstance(n, str) and n for n in names):
        raise InvalidRecord(f"node names must be non-empty strings: {names!r}")
    twice: set[str] = set()
    seen = set(_node_names(conn, deployment_id))
    for name in names:
        if name in seen:
            twice.add(name)
        seen.add(name)
    if twice:
        raise InvalidRecord(
            f"deployment {deployment_id} would list twice: {', '.join(sorted(twice))}"
        )
    start = conn.execute(
        "SELECT coalesce(max(position), -1) + 1 FROM deployment_nodes WHERE deployment_id = ?",
        (deployment_id,),
    ).fetchone()[0]
    write_rows(
        conn,
        "INSERT INTO deployment_nodes (deployment_id, node, position, state, step_started_at) "
        "VALUES {rows}",
        5,
        [(deployment_id, name, start + i, PENDING, now) for i, name in enumerate(names)],
    )
    pending = PendingRows(conn)
    events: list[Event] = [
        append_history(
            pending, NodeRecord(deployment_id, name, PENDING, False, None, None, 0), "", now
        )
        for name in names
    ]
    pending.flush()
    conn.execute(
        "UPDATE deployments SET node_count = node_count + ? WHERE id = ?",
        (len(names), deployment_id),
    )
    return events
