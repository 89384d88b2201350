"""The writer: every change to the deployment database goes through :class:`Store`.

One transaction per call, so a reader never sees a node's current state without the history
entry that explains it. Late reports are expected, not errors: once a node is final (aborted by
``min_nodes``, by a cancel, or by a daemon restart), a state reported afterwards by a step that
was still running is ignored and the call returns ``False``.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
import uuid
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Self

from kadeployd.store.catalogue import CatalogueWrites
from kadeployd.store.connection import open_writer
from kadeployd.store.errors import InvalidRecord, UnknownDeployment
from kadeployd.store.queries import (
    StoreQueries,
    _deployment_row,
    _node_names,
    _node_row,
    _status,
)
from kadeployd.store.records import (
    ERROR_TAIL_CHARS,
    FINAL_NODE_STATES,
    PENDING,
    SUCCESS_NODE_STATES,
    DeploymentStatus,
    LogStream,
)
from kadeployd.store.rights import RightsWrites
from kadeployd.suggest import did_you_mean

logger = logging.getLogger(__name__)

INTERRUPTED = "daemon restarted"
"""Default reason given by :meth:`Store.mark_interrupted`."""


class Store(StoreQueries, CatalogueWrites, RightsWrites):
    """Reads and writes of the deployment database, over one connection bound to one thread.

    Use :meth:`open` (or :class:`~kadeployd.store.actor.StoreActor`, which owns one in its
    thread). Every ``at`` argument is a unix time and defaults to the time of the call.
    """

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
            _insert_nodes(conn, deployment_id, list(nodes), now)
        logger.info("deployment %s created by %s", deployment_id, user)
        return deployment_id

    def add_nodes(self, deployment_id: str, names: Iterable[str], at: float | None = None) -> None:
        """Add node records in state ``pending`` to a running deployment."""
        names = list(names)
        now = _now(at)
        with self._writing() as conn:
            row = _deployment_status(conn, deployment_id)
            if row != DeploymentStatus.RUNNING:
                raise InvalidRecord(
                    f"deployment {deployment_id} is {row}: nodes can only be added while it runs"
                )
            _insert_nodes(conn, deployment_id, names, now)

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
        final = _status(status)
        if final is DeploymentStatus.RUNNING:
            raise InvalidRecord(
                "finish_deployment needs a final status: succeeded, failed or aborted"
            )
        now = _now(at)
        with self._writing() as conn:
            if _deployment_status(conn, deployment_id) != DeploymentStatus.RUNNING:
                logger.debug("deployment %s already finished; %s ignored", deployment_id, final)
                return False
            _finish_deployment(conn, deployment_id, final, reason, now)
        logger.info("deployment %s %s: %s", deployment_id, final, reason)
        return True

    def mark_interrupted(self, reason: str = INTERRUPTED, at: float | None = None) -> list[str]:
        """At daemon start: abort every deployment still ``running``; return their ids.

        Only the daemon's start-up calls this, never a restarted StoreActor: deployments
        keep running while the store restarts.
        """
        now = _now(at)
        with self._writing() as conn:
            ids = [
                str(r[0])
                for r in conn.execute(
                    "SELECT id FROM deployments WHERE status = 'running' ORDER BY created_at"
                )
            ]
            for deployment_id in ids:
                _finish_deployment(conn, deployment_id, DeploymentStatus.ABORTED, reason, now)
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
        if not state or state in FINAL_NODE_STATES:
            raise InvalidRecord(
                f"record_state cannot record {state!r}; final states "
                f"({', '.join(sorted(FINAL_NODE_STATES))}) go through finish_node"
            )
        if isinstance(attempt, bool) or attempt < 0:
            raise InvalidRecord(f"attempt must be an integer >= 0, not {attempt!r}")
        now = _now(at)
        with self._writing() as conn:
            if not _node_open(conn, deployment_id, node):
                logger.debug("%s %s: late state %s ignored", deployment_id, node, state)
                return False
            conn.execute(
                "UPDATE deployment_nodes SET state = ?, macrostep = ?, variant = ?, "
                "attempt = ?, step_started_at = ?, started_at = coalesce(started_at, ?) "
                "WHERE deployment_id = ? AND node = ?",
                (state, macrostep, variant, attempt, now, now, deployment_id, node),
            )
            _append_history(
                conn,
                deployment_id=deployment_id,
                node=node,
                state=state,
                macrostep=macrostep,
                variant=variant,
                attempt=attempt,
                message=message,
                now=now,
            )
        return True

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
        the step that failed; the record keeps the last :data:`ERROR_TAIL_CHARS` characters.
        """
        if state not in FINAL_NODE_STATES:
            raise InvalidRecord(
                f"{state!r} is not a final node state; valid: "
                f"{', '.join(sorted(FINAL_NODE_STATES))}"
                f"{did_you_mean(state, FINAL_NODE_STATES)}"
            )
        now = _now(at)
        with self._writing() as conn:
            row = _require_node(conn, deployment_id, node)
            if row["final"]:
                logger.debug("%s %s: already final; %s ignored", deployment_id, node, state)
                return False
            _finish_node(
                conn,
                deployment_id=deployment_id,
                node=node,
                state=state,
                message=message,
                error_step=error_step,
                now=now,
            )
        logger.info("%s %s: %s %s", deployment_id, node, state, message)
        return True

    def record_progress(
        self, deployment_id: str, node: str, bytes_done: int, bytes_total: int
    ) -> bool:
        """Record how far the node's image transfer is; False (no change) once the node is
        final, its deployment ended, or the node is unknown: progress is advisory, a late or
        stray report is dropped, never an error (it comes as a fire-and-forget message)."""
        done, total = int(bytes_done), int(bytes_total)
        if done < 0 or total < 0:
            raise InvalidRecord(
                f"progress must be byte counts >= 0, not {bytes_done!r}/{bytes_total!r}"
            )
        with self._writing() as conn:
            cursor = conn.execute(
                "UPDATE deployment_nodes SET bytes_done = ?, bytes_total = ? "
                "WHERE deployment_id = ? AND node = ? AND final = 0 AND EXISTS ("
                "SELECT 1 FROM deployments WHERE id = ? AND status = 'running')",
                (done, total, deployment_id, node, deployment_id),
            )
            return cursor.rowcount > 0

    def append_log(
        self,
        deployment_id: str,
        node: str,
        stream: LogStream | str,
        text: str,
        at: float | None = None,
    ) -> int:
        """Append one piece of a node's log; return its ``seq``."""
        kind = _stream(stream)
        now = _now(at)
        with self._writing() as conn:
            _require_node(conn, deployment_id, node)
            cursor = conn.execute(
                "INSERT INTO node_logs (deployment_id, node, at, stream, text) "
                "VALUES (?, ?, ?, ?, ?)",
                (deployment_id, node, now, kind.value, text),
            )
            return int(cursor.lastrowid or 0)

    def append_logs(
        self,
        deployment_id: str,
        node: str,
        lines: Iterable[tuple[LogStream | str, str]],
        at: float | None = None,
    ) -> None:
        """Append several ``(stream, text)`` pieces of a node's log in one transaction."""
        rows = [(_stream(stream), text) for stream, text in lines]
        now = _now(at)
        with self._writing() as conn:
            _require_node(conn, deployment_id, node)
            conn.executemany(
                "INSERT INTO node_logs (deployment_id, node, at, stream, text) "
                "VALUES (?, ?, ?, ?, ?)",
                [(deployment_id, node, now, kind.value, text) for kind, text in rows],
            )

    # --- plumbing --------------------------------------------------------------------------

    def _attach(self, conn: sqlite3.Connection) -> None:
        """Use ``conn`` (opened by :func:`open_writer` in the calling thread)."""
        with self._lock:
            self._conn = conn

    def _writing(self) -> AbstractContextManager[sqlite3.Connection]:
        """One write transaction: committed if the block ends normally, else rolled back."""
        return self._transaction("BEGIN IMMEDIATE", "write")


# --- helpers running inside a write transaction ---------------------------------------------


def _now(at: float | None) -> float:
    return time.time() if at is None else float(at)


def _to_json(what: str, value: Mapping[str, Any]) -> str:
    try:
        return json.dumps(dict(value), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidRecord(f"{what} cannot be stored as JSON: {exc}") from exc


def _stream(value: LogStream | str) -> LogStream:
    try:
        return LogStream(value)
    except ValueError:
        names = [s.value for s in LogStream]
        raise InvalidRecord(
            f"unknown log stream {value!r}; valid: {', '.join(names)}"
            f"{did_you_mean(str(value), names)}"
        ) from None


def _deployment_status(conn: sqlite3.Connection, deployment_id: str) -> DeploymentStatus:
    row = conn.execute("SELECT status FROM deployments WHERE id = ?", (deployment_id,)).fetchone()
    if row is None:
        raise UnknownDeployment(deployment_id)
    return DeploymentStatus(row[0])


def _require_node(conn: sqlite3.Connection, deployment_id: str, node: str) -> sqlite3.Row:
    _deployment_row(conn, deployment_id)
    return _node_row(conn, deployment_id, node)


def _node_open(conn: sqlite3.Connection, deployment_id: str, node: str) -> bool:
    """Whether the node may still change state: its deployment runs and it is not final."""
    status = _deployment_status(conn, deployment_id)
    row = _node_row(conn, deployment_id, node)
    return status == DeploymentStatus.RUNNING and not row["final"]


def _insert_nodes(
    conn: sqlite3.Connection, deployment_id: str, names: list[str], now: float
) -> None:
    if not names:
        return
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
    conn.executemany(
        "INSERT INTO deployment_nodes (deployment_id, node, position, state, step_started_at) "
        "VALUES (?, ?, ?, ?, ?)",
        [(deployment_id, name, start + i, PENDING, now) for i, name in enumerate(names)],
    )
    conn.executemany(
        "INSERT INTO state_history (deployment_id, node, state, attempt, message, at) "
        "VALUES (?, ?, ?, 0, '', ?)",
        [(deployment_id, name, PENDING, now) for name in names],
    )
    conn.execute(
        "UPDATE deployments SET node_count = node_count + ? WHERE id = ?",
        (len(names), deployment_id),
    )


def _append_history(
    conn: sqlite3.Connection,
    *,
    deployment_id: str,
    node: str,
    state: str,
    macrostep: str | None,
    variant: str | None,
    attempt: int,
    message: str,
    now: float,
) -> None:
    conn.execute(
        "INSERT INTO state_history "
        "(deployment_id, node, state, macrostep, variant, attempt, message, at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (deployment_id, node, state, macrostep, variant, attempt, message, now),
    )


def _finish_node(
    conn: sqlite3.Connection,
    *,
    deployment_id: str,
    node: str,
    state: str,
    message: str,
    error_step: str | None,
    now: float,
) -> None:
    error = None if state in SUCCESS_NODE_STATES else message[-ERROR_TAIL_CHARS:]
    conn.execute(
        "UPDATE deployment_nodes SET state = ?, final = 1, finished_at = ?, "
        "step_started_at = ?, error_step = ?, error_message = ? "
        "WHERE deployment_id = ? AND node = ?",
        (state, now, now, error_step, error, deployment_id, node),
    )
    row = conn.execute(
        "SELECT macrostep, variant, attempt FROM deployment_nodes "
        "WHERE deployment_id = ? AND node = ?",
        (deployment_id, node),
    ).fetchone()
    _append_history(
        conn,
        deployment_id=deployment_id,
        node=node,
        state=state,
        macrostep=row["macrostep"],
        variant=row["variant"],
        attempt=row["attempt"],
        message=message,
        now=now,
    )


def _finish_deployment(
    conn: sqlite3.Connection,
    deployment_id: str,
    status: DeploymentStatus,
    reason: str,
    now: float,
) -> None:
    unfinished = conn.execute(
        "SELECT node, state FROM deployment_nodes WHERE deployment_id = ? AND final = 0 "
        "ORDER BY position",
        (deployment_id,),
    ).fetchall()
    for row in unfinished:
        # error_step: where the node was when it was stopped.
        _finish_node(
            conn,
            deployment_id=deployment_id,
            node=row["node"],
            state="aborted",
            message=reason,
            error_step=row["state"],
            now=now,
        )
    conn.execute(
        "UPDATE deployments SET status = ?, reason = ?, finished_at = ? WHERE id = ?",
        (status.value, reason, now, deployment_id),
    )
