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
from kadeployd.store.queries import _deployment_row, _node_row, _status
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


def apply_write(conn: sqlite3.Connection, write: Write) -> Applied:
    """Apply ``write`` in the transaction open on ``conn``."""
    match write:
        case RecordState():
            return record_state(conn, write)
        case FinishNode():
            return finish_node(conn, write)
        case AppendLog():
            return append_log(conn, write)
        case RecordProgress():
            return record_progress(conn, write)
        case FinishDeployment():
            return finish_deployment(conn, write)
    raise InvalidRecord(f"not a write the store knows: {write!r}")


def record_state(conn: sqlite3.Connection, write: RecordState) -> Applied:
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
    if not node_open(conn, deployment_id, node):
        logger.debug("%s %s: late state %s ignored", deployment_id, node, state)
        return NOTHING
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


def finish_node(conn: sqlite3.Connection, write: FinishNode) -> Applied:
    """Put a node in a final state, unless it already is in one."""
    state, deployment_id, node = write.state, write.deployment_id, write.node
    if state not in FINAL_NODE_STATES:
        raise InvalidRecord(
            f"{state!r} is not a final node state; valid: "
            f"{', '.join(sorted(FINAL_NODE_STATES))}"
            f"{did_you_mean(state, FINAL_NODE_STATES)}"
        )
    row = require_node(conn, deployment_id, node)
    if row["final"]:
        logger.debug("%s %s: already final; %s ignored", deployment_id, node, state)
        return NOTHING
    event = finish_node_row(
        conn,
        deployment_id=deployment_id,
        node=node,
        state=state,
        message=write.message,
        error_step=write.error_step,
        now=float(write.at),
    )
    logger.info("%s %s: %s %s", deployment_id, node, state, write.message)
    return Applied(True, (event,))


def append_log(conn: sqlite3.Connection, write: AppendLog) -> Applied:
    """Append one piece of a node's log."""
    kind = log_stream(write.stream)
    require_node(conn, write.deployment_id, write.node)
    at = float(write.at)
    cursor = conn.execute(
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


def finish_deployment(conn: sqlite3.Connection, write: FinishDeployment) -> Applied:
    """End a running deployment; nothing if it had already ended."""
    final = _status(write.status)
    if final is DeploymentStatus.RUNNING:
        raise InvalidRecord("finish_deployment needs a final status: succeeded, failed or aborted")
    deployment_id = write.deployment_id
    if deployment_status(conn, deployment_id) != DeploymentStatus.RUNNING:
        logger.debug("deployment %s already finished; %s ignored", deployment_id, final)
        return NOTHING
    events = finish_deployment_rows(conn, deployment_id, final, write.reason, float(write.at))
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


def require_node(conn: sqlite3.Connection, deployment_id: str, node: str) -> sqlite3.Row:
    """The node's record; UnknownDeployment or UnknownNode if there is none."""
    _deployment_row(conn, deployment_id)
    return _node_row(conn, deployment_id, node)


def node_open(conn: sqlite3.Connection, deployment_id: str, node: str) -> bool:
    """Whether the node may still change state: its deployment runs and it is not final."""
    status = deployment_status(conn, deployment_id)
    row = _node_row(conn, deployment_id, node)
    return status == DeploymentStatus.RUNNING and not row["final"]


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
