"""The read methods, shared by the writer (:class:`Store`) and :class:`StoreReader`.

Each read runs in its own read transaction, so everything it returns comes from one committed
state of the database, even while the writer commits in another thread.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from types import TracebackType
from typing import Self

from kadeploy_core.suggest import did_you_mean
from kadeployd.store.catalogue import CatalogueReads
from kadeployd.store.deploy_log import DeployLogReads
from kadeployd.store.errors import InvalidRecord, StoreError, UnknownDeployment, UnknownNode
from kadeployd.store.records import (
    DeploymentStatus,
    DeploymentView,
    HistoryEntry,
    LogLine,
    LogStream,
    NodeView,
)
from kadeployd.store.rights import RightsReads
from kadeployd.store.usage import UsageReads

logger = logging.getLogger(__name__)

DEFAULT_LIMIT = 100
"""Default number of deployments :meth:`StoreQueries.deployments` returns, newest first."""

# Optional filters are written as ``(:x IS NULL OR column = :x)`` so that every query is one
# constant string with bound parameters.
_SELECT_DEPLOYMENTS = """
SELECT * FROM deployments
WHERE (:status IS NULL OR status = :status) AND (:user IS NULL OR user = :user)
ORDER BY created_at DESC, rowid DESC
LIMIT :limit
"""
_SELECT_LOG = """
SELECT * FROM node_logs
WHERE deployment_id = :deployment_id AND id > :after AND (:node IS NULL OR node = :node)
ORDER BY id
LIMIT :limit
"""


class StoreQueries(CatalogueReads, RightsReads, UsageReads, DeployLogReads):
    """Read methods over one SQLite connection; subclasses decide how it is opened."""

    def __init__(self, path: Path, conn: sqlite3.Connection | None) -> None:
        self._path = Path(path)
        self._conn = conn
        # The writer's connection is only used by its own thread; a reader's may be shared by
        # several (API threads): the lock serialises them, which sqlite3 requires.
        self._lock = threading.Lock()

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    def close(self) -> None:
        """Close the connection; further calls raise :class:`StoreError`. Idempotent."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- reads ---------------------------------------------------------------------------

    def deployment(self, deployment_id: str) -> DeploymentView:
        """The deployment ``deployment_id``; :class:`UnknownDeployment` if there is none."""
        with self._reading() as conn:
            return _deployment_view(_deployment_row(conn, deployment_id))

    def deployments(
        self,
        status: DeploymentStatus | str | None = None,
        user: str | None = None,
        limit: int = DEFAULT_LIMIT,
    ) -> list[DeploymentView]:
        """The latest deployments first, optionally only those with ``status`` / of ``user``."""
        params = {
            "status": None if status is None else _status(status).value,
            "user": user,
            "limit": max(0, int(limit)),
        }
        with self._reading() as conn:
            rows = conn.execute(_SELECT_DEPLOYMENTS, params)
            return [_deployment_view(row) for row in rows]

    def running(self) -> list[str]:
        """Ids of the deployments still running, oldest first."""
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT id FROM deployments WHERE status = 'running' ORDER BY created_at, rowid"
            )
            return [str(row["id"]) for row in rows]

    def nodes(self, deployment_id: str, now: float | None = None) -> list[NodeView]:
        """The current record of every node of a deployment, in the order they were added.

        ``elapsed`` is computed against ``now`` (default: the time of the call).
        """
        at = time.time() if now is None else now
        with self._reading() as conn:
            _deployment_row(conn, deployment_id)
            rows = conn.execute(
                "SELECT * FROM deployment_nodes WHERE deployment_id = ? ORDER BY position",
                (deployment_id,),
            )
            return [_node_view(row, at) for row in rows]

    def node(self, deployment_id: str, node: str, now: float | None = None) -> NodeView:
        """The current record of one node of a deployment."""
        at = time.time() if now is None else now
        with self._reading() as conn:
            _deployment_row(conn, deployment_id)
            return _node_view(_node_row(conn, deployment_id, node), at)

    def history(self, deployment_id: str, node: str | None = None) -> list[HistoryEntry]:
        """Every state entered by the deployment's nodes (or by ``node``), in recording order."""
        with self._reading() as conn:
            _deployment_row(conn, deployment_id)
            if node is None:
                rows = conn.execute(
                    "SELECT * FROM state_history WHERE deployment_id = ? ORDER BY id",
                    (deployment_id,),
                ).fetchall()
            else:
                _node_row(conn, deployment_id, node)
                rows = conn.execute(
                    "SELECT * FROM state_history WHERE deployment_id = ? AND node = ? ORDER BY id",
                    (deployment_id, node),
                ).fetchall()
            return [_history_entry(row) for row in rows]

    def state_changes(
        self, deployment_id: str, after: int = 0, limit: int = 10_000
    ) -> list[HistoryEntry]:
        """History entries of a deployment with ``seq > after``, oldest first: what an event
        stream has not sent yet."""
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT * FROM state_history WHERE deployment_id = ? AND id > ? "
                "ORDER BY id LIMIT ?",
                (deployment_id, int(after), int(limit)),
            )
            return [_history_entry(row) for row in rows]

    def log(
        self,
        deployment_id: str,
        node: str | None = None,
        after: int = 0,
        limit: int | None = None,
    ) -> list[LogLine]:
        """The log of ``node`` (or of every node) in a deployment, in recording order.

        ``after``: only lines whose ``seq`` is greater (to page or follow a log).
        """
        params = {
            "deployment_id": deployment_id,
            "node": node,
            "after": int(after),
            "limit": -1 if limit is None else max(0, int(limit)),  # SQLite: -1 is no limit
        }
        with self._reading() as conn:
            _deployment_row(conn, deployment_id)
            if node is not None:
                _node_row(conn, deployment_id, node)
            return [
                LogLine(
                    seq=row["id"],
                    deployment_id=row["deployment_id"],
                    node=row["node"],
                    at=row["at"],
                    stream=LogStream(row["stream"]),
                    text=row["text"],
                )
                for row in conn.execute(_SELECT_LOG, params)
            ]

    # --- plumbing --------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"{self._path}: the store is closed")
        return self._conn

    def _reading(self) -> AbstractContextManager[sqlite3.Connection]:
        """One read transaction (a consistent snapshot); sqlite3 errors become StoreError."""
        return self._transaction("BEGIN", "read")

    @contextmanager
    def _transaction(self, begin: str, what: str) -> Iterator[sqlite3.Connection]:
        """One transaction opened by ``begin``: committed if the block ends normally, else
        rolled back; sqlite3 errors become StoreError saying which ``what`` (read, write) failed.
        """
        with self._lock:
            conn = self._connection()
            try:
                conn.execute(begin)
                try:
                    yield conn
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise StoreError(f"{self._path}: {what} failed: {exc}") from exc


# --- row helpers, shared with the writer ----------------------------------------------------


def _status(value: DeploymentStatus | str) -> DeploymentStatus:
    try:
        return DeploymentStatus(value)
    except ValueError:
        valid = ", ".join(s.value for s in DeploymentStatus)
        raise InvalidRecord(
            f"unknown deployment status {value!r}; valid: {valid}"
            f"{did_you_mean(str(value), [s.value for s in DeploymentStatus])}"
        ) from None


def _deployment_row(conn: sqlite3.Connection, deployment_id: str) -> sqlite3.Row:
    row = conn.execute("SELECT * FROM deployments WHERE id = ?", (deployment_id,)).fetchone()
    if row is None:
        raise UnknownDeployment(deployment_id)
    return row


def _node_names(conn: sqlite3.Connection, deployment_id: str) -> list[str]:
    """The nodes of a deployment, in no particular order."""
    return [
        str(r[0])
        for r in conn.execute(
            "SELECT node FROM deployment_nodes WHERE deployment_id = ?", (deployment_id,)
        )
    ]


def _node_row(conn: sqlite3.Connection, deployment_id: str, node: str) -> sqlite3.Row:
    """The current record of ``node`` in a deployment; :class:`UnknownNode` (with a suggestion)
    if the deployment has no such node."""
    row = conn.execute(
        "SELECT * FROM deployment_nodes WHERE deployment_id = ? AND node = ?",
        (deployment_id, node),
    ).fetchone()
    if row is None:
        names = _node_names(conn, deployment_id)
        raise UnknownNode(deployment_id, node, did_you_mean(node, names))
    return row


def _deployment_view(row: sqlite3.Row) -> DeploymentView:
    return DeploymentView(
        id=row["id"],
        user=row["user"],
        environment_name=row["environment_name"],
        environment_version=row["environment_version"],
        anonymous=bool(row["anonymous"]),
        environment=json.loads(row["environment"]),
        options=json.loads(row["options"]),
        node_count=row["node_count"],
        min_nodes=row["min_nodes"],
        status=DeploymentStatus(row["status"]),
        reason=row["reason"],
        created_at=row["created_at"],
        finished_at=row["finished_at"],
    )


def _history_entry(row: sqlite3.Row) -> HistoryEntry:
    return HistoryEntry(
        seq=row["id"],
        deployment_id=row["deployment_id"],
        node=row["node"],
        state=row["state"],
        macrostep=row["macrostep"],
        variant=row["variant"],
        attempt=row["attempt"],
        message=row["message"],
        at=row["at"],
    )


def _node_view(row: sqlite3.Row, now: float) -> NodeView:
    final = bool(row["final"])
    return NodeView(
        deployment_id=row["deployment_id"],
        node=row["node"],
        state=row["state"],
        macrostep=row["macrostep"],
        variant=row["variant"],
        attempt=row["attempt"],
        step_started_at=row["step_started_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        final=final,
        error_step=row["error_step"],
        error_message=row["error_message"],
        elapsed=None if final else max(0.0, now - row["step_started_at"]),
        bytes_done=row["bytes_done"],
        bytes_total=row["bytes_total"],
    )
