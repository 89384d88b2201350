"""Applying one write of a node or a deployment inside an open write transaction.

Both ways of writing go through :func:`apply_write`: a synchronous ``Store.record_state(...)``
(one transaction per call) and a batch of sent writes (one transaction, a savepoint per
write). Each returns :class:`Applied`: whether the database changed, and the events the
change produced, with the seqs the database gave its rows, to publish once committed.

Late reports are expected, not errors: once a node is final (aborted by ``min_nodes``, by a
cancel, or by a daemon restart), a state reported afterwards by a step that was still running
changes nothing (``changed=False``). Unknown deployments and nodes, and values the store cannot
record, raise :class:`~kadeployd.store.errors.StoreError` subclasses.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass

from kadeploy_core.suggest import did_you_mean
from kadeployd.events.types import (
    DeploymentEnded,
    Event,
    NodeLogged,
    NodeProgress,
    NodeStateChanged,
)
from kadeployd.store.errors import InvalidRecord, UnknownDeployment
from kadeployd.store.queries import _node_row, _status
from kadeployd.store.records import (
    ERROR_TAIL_CHARS,
    FINAL_NODE_STATES,
    SUCCESS_NODE_STATES,
    DeploymentStatus,
    LogStream,
)
from kadeployd.store.writes import (
    AppendLog,
    FinishDeployment,
    FinishNode,
    RecordProgress,
    RecordState,
    Write,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Applied:
    """What one write did."""

    changed: bool
    """False for a late or stray report that changed nothing."""
    events: tuple[Event, ...] = ()
    """To publish once the transaction is committed, in this order."""
    seq: int | None = None
    """The seq of the row a log write appended."""


NOTHING = Applied(changed=False)


class Lookups:
    """What the writes of one transaction check again and again, read once.

    A batch of 100,000 writes of one deployment would otherwise read the deployment's status
    and each node's record before every write. The memo lives for one transaction (the
    transaction holds the database's write lock, so nobody else changes these facts meanwhile)
    and is kept up to date by the writes that change them.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self._status: dict[str, DeploymentStatus] = {}
        self._final: dict[tuple[str, str], bool] = {}

    def status(self, deployment_id: str) -> DeploymentStatus:
        """The deployment's status; UnknownDeployment if there is none."""
        status = self._status.get(deployment_id)
        if status is None:
            status = self._status[deployment_id] = deployment_status(self.conn, deployment_id)
        return status

    def node_final(self, deployment_id: str, node: str) -> bool:
        """Whether the node is final; UnknownDeployment or UnknownNode if there is none."""
        final = self._final.get((deployment_id, node))
        if final is None:
            self.status(deployment_id)
            final = bool(_node_row(self.conn, deployment_id, node)["final"])
            self._final[(deployment_id, node)] = final
        return final

    def node_open(self, deployment_id: str, node: str) -> bool:
        """Whether the node may still change state: its deployment runs and it is not final."""
        running = self.status(deployment_id) == DeploymentStatus.RUNNING
        return not self.node_final(deployment_id, node) and running

    def finished_node(self, deployment_id: str, node: str) -> None:
        """The node was just made final."""
        self._final[(deployment_id, node)] = True

    def finished_deployment(self, deployment_id: str, status: DeploymentStatus) -> None:
        """The deployment just ended, and with it every node still working."""
        self._status[deployment_id] = status
        self._final = {key: final for key, final in self._final.items() if key[0] != deployment_id}


def apply_write(conn: sqlite3.Connection, write: Write, lookups: Lookups | None = None) -> Applied:
    """Apply ``write`` in the transaction open on ``conn`` (with the transaction's
    ``lookups``, if it has some)."""
    memo = lookups or Lookups(conn)
    match write:
        case RecordState():
            return record_state(memo, write)
        case FinishNode():
            return finish_node(memo, write)
        case AppendLog():
            return append_log(memo, write)
        case RecordProgress():
            return record_progress(conn, write)
        case FinishDeployment():
            return finish_deployment(memo, write)
    raise InvalidRecord(f"not a write the store knows: {write!r}")


def record_state(memo: Lookups, write: RecordState) -> Applied:
    """Set a node's current state and append it to its history."""
    state, attempt = write.state, write.attempt
    if not state or state in FINAL_NODE_STATES:
        raise InvalidRecord(
            f"record_state cannot record {state!r}; final states "
            f"({', '.join(sorted(FINAL_NODE_STATES))}) go through finish_node"
        )
    if isinstance(attempt, bool) or attempt < 0:
        raise InvalidRecord(f"attempt must be an integer >= 0, not {attempt!r}")
    deployment_id, node, now = write.deployment_id, write.node, float(write.at)
    if not memo.node_open(deployment_id, node):
        logger.debug("%s %s: late state %s ignored", deployment_id, node, state)
        return NOTHING
    conn = memo.conn
    conn.execute(
        "UPDATE deployment_nodes SET state = ?, macrostep = ?, variant = ?, "
        "attempt = ?, step_started_at = ?, started_at = coalesce(started_at, ?) "
        "WHERE deployment_id = ? AND node = ?",
        (state, write.macrostep, write.variant, attempt, now, now, deployment_id, node),
    )
    event = append_history(
        conn,
        deployment_id=deployment_id,
        node=node,
        state=state,
        macrostep=write.macrostep,
        variant=write.variant,
        attempt=attempt,
        message=write.message,
        now=now,
        final=False,
    )
    return Applied(True, (event,))


def finish_node(memo: Lookups, write: FinishNode) -> Applied:
    """Put a node in a final state, unless it already is in one."""
    state, deployment_id, node = write.state, write.deployment_id, write.node
    if state not in FINAL_NODE_STATES:
        raise InvalidRecord(
            f"{state!r} is not a final node state; valid: "
            f"{', '.join(sorted(FINAL_NODE_STATES))}"
            f"{did_you_mean(state, FINAL_NODE_STATES)}"
        )
    if memo.node_final(deployment_id, node):
        logger.debug("%s %s: already final; %s ignored", deployment_id, node, state)
        return NOTHING
    memo.finished_node(deployment_id, node)
    event = finish_node_row(
        memo.conn,
        deployment_id=deployment_id,
        node=node,
        state=state,
        message=write.message,
        error_step=write.error_step,
        now=float(write.at),
    )
    logger.info("%s %s: %s %s", deployment_id, node, state, write.message)
    return Applied(True, (event,))


def append_log(memo: Lookups, write: AppendLog) -> Applied:
    """Append one piece of a node's log."""
    kind = log_stream(write.stream)
    memo.node_final(write.deployment_id, write.node)  # the node exists
    at = float(write.at)
    cursor = memo.conn.execute(
        "INSERT INTO node_logs (deployment_id, node, at, stream, text) VALUES (?, ?, ?, ?, ?)",
        (write.deployment_id, write.node, at, kind.value, write.text),
    )
    seq = int(cursor.lastrowid or 0)
    event = NodeLogged(write.deployment_id, seq, write.node, at, kind.value, write.text)
    return Applied(True, (event,), seq)


def record_progress(conn: sqlite3.Connection, write: RecordProgress) -> Applied:
    """Record how far a node's image transfer is; nothing once the node is final, its
    deployment ended, or for an unknown node (progress is advisory)."""
    done, total = int(write.bytes_done), int(write.bytes_total)
    if done < 0 or total < 0:
        raise InvalidRecord(
            f"progress must be byte counts >= 0, not {write.bytes_done!r}/{write.bytes_total!r}"
        )
    deployment_id, node = write.deployment_id, write.node
    cursor = conn.execute(
        "UPDATE deployment_nodes SET bytes_done = ?, bytes_total = ? "
        "WHERE deployment_id = ? AND node = ? AND final = 0 AND EXISTS ("
        "SELECT 1 FROM deployments WHERE id = ? AND status = 'running')",
        (done, total, deployment_id, node, deployment_id),
    )
    if cursor.rowcount <= 0:
        return NOTHING
    return Applied(True, (NodeProgress(deployment_id, node, done, total),))


def finish_deployment(memo: Lookups, write: FinishDeployment) -> Applied:
    """End a running deployment; nothing if it had already ended."""
    final = _status(write.status)
    if final is DeploymentStatus.RUNNING:
        raise InvalidRecord("finish_deployment needs a final status: succeeded, failed or aborted")
    deployment_id = write.deployment_id
    if memo.status(deployment_id) != DeploymentStatus.RUNNING:
        logger.debug("deployment %s already finished; %s ignored", deployment_id, final)
        return NOTHING
    memo.finished_deployment(deployment_id, final)
    events = finish_deployment_rows(memo.conn, deployment_id, final, write.reason, float(write.at))
    logger.info("deployment %s %s: %s", deployment_id, final, write.reason)
    return Applied(True, events)


# --- helpers, also used by the Store's other writes -------------------------------------------


def log_stream(value: LogStream | str) -> LogStream:
    """``value`` as a LogStream; InvalidRecord naming the valid ones."""
    try:
        return LogStream(value)
    except ValueError:
        names = [s.value for s in LogStream]
        raise InvalidRecord(
            f"unknown log stream {value!r}; valid: {', '.join(names)}"
            f"{did_you_mean(str(value), names)}"
        ) from None


def deployment_status(conn: sqlite3.Connection, deployment_id: str) -> DeploymentStatus:
    """The deployment's status; UnknownDeployment if there is none."""
    row = conn.execute("SELECT status FROM deployments WHERE id = ?", (deployment_id,)).fetchone()
    if row is None:
        raise UnknownDeployment(deployment_id)
    return DeploymentStatus(row[0])


def append_history(
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
    final: bool,
) -> NodeStateChanged:
    """Append a history entry; the event that tells it, with its seq."""
    cursor = conn.execute(
        "INSERT INTO state_history "
        "(deployment_id, node, state, macrostep, variant, attempt, message, at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (deployment_id, node, state, macrostep, variant, attempt, message, now),
    )
    return NodeStateChanged(
        deployment_id=deployment_id,
        seq=int(cursor.lastrowid or 0),
        node=node,
        state=state,
        macrostep=macrostep,
        variant=variant,
        attempt=attempt,
        message=message,
        at=now,
        final=final,
    )


def finish_node_row(
    conn: sqlite3.Connection,
    *,
    deployment_id: str,
    node: str,
    state: str,
    message: str,
    error_step: str | None,
    now: float,
) -> NodeStateChanged:
    """Make the node final and append its final state to its history."""
    error = None if state in SUCCESS_NODE_STATES else message[-ERROR_TAIL_CHARS:]
    row = conn.execute(
        "UPDATE deployment_nodes SET state = ?, final = 1, finished_at = ?, "
        "step_started_at = ?, error_step = ?, error_message = ? "
        "WHERE deployment_id = ? AND node = ? RETURNING macrostep, variant, attempt",
        (state, now, now, error_step, error, deployment_id, node),
    ).fetchone()
    return append_history(
        conn,
        deployment_id=deployment_id,
        node=node,
        state=state,
        macrostep=row["macrostep"],
        variant=row["variant"],
        attempt=row["attempt"],
        message=message,
        now=now,
        final=True,
    )


def finish_deployment_rows(
    conn: sqlite3.Connection,
    deployment_id: str,
    status: DeploymentStatus,
    reason: str,
    now: float,
) -> tuple[Event, ...]:
    """Abort the nodes not yet final, then give the deployment its final status."""
    unfinished = conn.execute(
        "SELECT node, state FROM deployment_nodes WHERE deployment_id = ? AND final = 0 "
        "ORDER BY position",
        (deployment_id,),
    ).fetchall()
    events: list[Event] = [
        # error_step: where the node was when it was stopped.
        finish_node_row(
            conn,
            deployment_id=deployment_id,
            node=row["node"],
            state="aborted",
            message=reason,
            error_step=row["state"],
            now=now,
        )
        for row in unfinished
    ]
    conn.execute(
        "UPDATE deployments SET status = ?, reason = ?, finished_at = ? WHERE id = ?",
        (status.value, reason, now, deployment_id),
    )
    events.append(DeploymentEnded(deployment_id, status.value, reason, now))
    return tuple(events)
