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

import json
import logging
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from kadeploy_core.suggest import did_you_mean
from kadeployd.events.types import (
    DeploymentEnded,
    Event,
    NodeLogged,
    NodeProgress,
    NodeStateChanged,
)
from kadeployd.store.errors import InvalidRecord, UnknownDeployment, UnknownNode
from kadeployd.store.pending import NodeRecord, PendingRows
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
    """What the writes of one transaction check again and again, read once, and the rows
    they add, written in a few statements by :meth:`flush`.

    A batch of 100,000 writes of one deployment would otherwise read the deployment's status
    and each node's record before every write, and write one row per statement (see
    :mod:`kadeployd.store.pending` for why that matters). The memo lives for one transaction
    (the transaction holds the database's write lock, so nobody else changes these facts
    meanwhile) and is kept up to date by the writes that change them.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.pending = PendingRows(conn)
        self._status: dict[str, DeploymentStatus] = {}
        self._nodes: dict[tuple[str, str], NodeRecord] = {}

    def status(self, deployment_id: str) -> DeploymentStatus:
        """The deployment's status; UnknownDeployment if there is none."""
        status = self._status.get(deployment_id)
        if status is None:
            status = self._status[deployment_id] = deployment_status(self.conn, deployment_id)
        return status

    def load(self, writes: Iterable[Write]) -> None:
        """Read the records of the nodes ``writes`` touch, one query per deployment."""
        wanted: dict[str, set[str]] = {}
        for write in writes:
            if not isinstance(write, FinishDeployment) and (
                (write.deployment_id, write.node) not in self._nodes
            ):
                wanted.setdefault(write.deployment_id, set()).add(write.node)
        for deployment_id, nodes in wanted.items():
            row = self.conn.execute(_LOAD_NODES, (deployment_id, json.dumps(sorted(nodes))))
            self.remember_all(deployment_id, json.loads(row.fetchone()[0]))

    def node(self, deployment_id: str, node: str) -> NodeRecord:
        """The node's record; UnknownDeployment or UnknownNode if there is none."""
        record = self._nodes.get((deployment_id, node))
        if record is None:
            self.status(deployment_id)
            row = _node_row(self.conn, deployment_id, node)
            fields = ("node", "state", "final", "macrostep", "variant", "attempt")
            record = self._remember(deployment_id, [row[name] for name in fields])
        return record

    def node_open(self, deployment_id: str, node: str) -> NodeRecord | None:
        """The node's record if it may still change state (its deployment runs and it is not
        final), else None."""
        record = self.node(deployment_id, node)
        running = self.status(deployment_id) == DeploymentStatus.RUNNING
        return record if running and not record.final else None

    def finished_deployment(self, deployment_id: str, status: DeploymentStatus) -> None:
        """The deployment just ended, and with it every node still working."""
        self._status[deployment_id] = status

    def flush(self) -> None:
        """Write the collected rows (before the commit, or before a statement that reads
        them)."""
        self.pending.flush()

    def remember_all(self, deployment_id: str, rows: list[list[Any]]) -> list[NodeRecord]:
        """The records of ``rows`` (node, state, final, macrostep, variant, attempt), kept
        for the transaction; a record already kept wins (it may have unwritten changes)."""
        return [
            self._nodes.get((deployment_id, row[0])) or self._remember(deployment_id, row)
            for row in rows
        ]

    def _remember(self, deployment_id: str, row: Sequence[Any]) -> NodeRecord:
        node, state, final, macrostep, variant, attempt = row
        record = NodeRecord(
            deployment_id, node, state, bool(final), macrostep, variant, int(attempt)
        )
        self._nodes[(deployment_id, node)] = record
        return record


_LOAD_NODES = (
    "SELECT json_group_array(json_array(node, state, final, macrostep, variant, attempt)) "
    "FROM deployment_nodes WHERE deployment_id = ? AND node IN (SELECT value FROM json_each(?))"
)
"""One row whatever the node count: each row a query returns is one more GIL hand-over."""


def apply_write(conn: sqlite3.Connection, write: Write, lookups: Lookups | None = None) -> Applied:
    """Apply ``write`` in the transaction open on ``conn``: with the transaction's
    ``lookups``, whose collected rows the caller flushes; without, written at once."""
    memo = lookups or Lookups(conn)
    match write:
        case RecordState():
            applied = record_state(memo, write)
        case FinishNode():
            applied = finish_node(memo, write)
        case AppendLog():
            applied = append_log(memo, write)
        case RecordProgress():
            applied = record_progress(memo, write)
        case FinishDeployment():
            applied = finish_deployment(memo, write)
        case _:
            raise InvalidRecord(f"not a write the store knows: {write!r}")
    if lookups is None:
        memo.flush()
    return applied


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
    now = float(write.at)
    record = memo.node_open(write.deployment_id, write.node)
    if record is None:
        logger.debug("%s %s: late state %s ignored", write.deployment_id, write.node, state)
        return NOTHING
    record.state, record.macrostep, record.variant = state, write.macrostep, write.variant
    record.attempt, record.step_started_at = attempt, now
    if record.started_at is None:
        record.started_at = now
    memo.pending.changed(record)
    return Applied(True, (append_history(memo.pending, record, write.message, now),))


def finish_node(memo: Lookups, write: FinishNode) -> Applied:
    """Put a node in a final state, unless it already is in one."""
    state, deployment_id, node = write.state, write.deployment_id, write.node
    if state not in FINAL_NODE_STATES:
        raise InvalidRecord(
            f"{state!r} is not a final node state; valid: "
            f"{', '.join(sorted(FINAL_NODE_STATES))}"
            f"{did_you_mean(state, FINAL_NODE_STATES)}"
        )
    record = memo.node(deployment_id, node)
    if record.final:
        logger.debug("%s %s: already final; %s ignored", deployment_id, node, state)
        return NOTHING
    event = finish_node_row(
        memo.pending,
        record,
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
    memo.node(write.deployment_id, write.node)  # the node exists
    at = float(write.at)
    seq = memo.pending.log(write.deployment_id, write.node, at, kind.value, write.text)
    event = NodeLogged(write.deployment_id, seq, write.node, at, kind.value, write.text)
    return Applied(True, (event,), seq)


def record_progress(memo: Lookups, write: RecordProgress) -> Applied:
    """Record how far a node's image transfer is; nothing once the node is final, its
    deployment ended, or for an unknown node (progress is advisory)."""
    done, total = int(write.bytes_done), int(write.bytes_total)
    if done < 0 or total < 0:
        raise InvalidRecord(
            f"progress must be byte counts >= 0, not {write.bytes_done!r}/{write.bytes_total!r}"
        )
    try:
        record = memo.node_open(write.deployment_id, write.node)
    except (UnknownDeployment, UnknownNode):
        return NOTHING
    if record is None:
        return NOTHING
    record.bytes_done, record.bytes_total = done, total
    memo.pending.changed(record)
    return Applied(True, (NodeProgress(write.deployment_id, write.node, done, total),))


def finish_deployment(memo: Lookups, write: FinishDeployment) -> Applied:
    """End a running deployment; nothing if it had already ended."""
    final = _status(write.status)
    if final is DeploymentStatus.RUNNING:
        raise InvalidRecord("finish_deployment needs a final status: succeeded, failed or aborted")
    deployment_id = write.deployment_id
    if memo.status(deployment_id) != DeploymentStatus.RUNNING:
        logger.debug("deployment %s already finished; %s ignored", deployment_id, final)
        return NOTHING
    events = finish_deployment_rows(memo, deployment_id, final, write.reason, float(write.at))
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
    pending: PendingRows, record: NodeRecord, message: str, now: float
) -> NodeStateChanged:
    """Append the node's current state to its history; the event that tells it, with its
    seq."""
    seq = pending.history(record, message, now)
    return NodeStateChanged(
        deployment_id=record.deployment_id,
        seq=seq,
        node=record.node,
        state=record.state,
        macrostep=record.macrostep,
        variant=record.variant,
        attempt=record.attempt,
        message=message,
        at=now,
        final=record.final,
    )


def finish_node_row(
    pending: PendingRows,
    record: NodeRecord,
    *,
    state: str,
    message: str,
    error_step: str | None,
    now: float,
) -> NodeStateChanged:
    """Make the node final and append its final state to its history."""
    record.state, record.final = state, True
    record.finished_at = record.step_started_at = now
    record.error_step = error_step
    record.error_message = None if state in SUCCESS_NODE_STATES else message[-ERROR_TAIL_CHARS:]
    pending.changed(record)
    return append_history(pending, record, message, now)


def finish_deployment_rows(
    memo: Lookups,
    deployment_id: str,
    status: DeploymentStatus,
    reason: str,
    now: float,
) -> tuple[Event, ...]:
    """Abort the nodes not yet final, then give the deployment its final status."""
    memo.flush()  # the nodes made final by this transaction are final in the table too
    row = memo.conn.execute(_LOAD_UNFINISHED, (deployment_id,)).fetchone()
    events: list[Event] = [
        # error_step: where the node was when it was stopped.
        finish_node_row(
            memo.pending,
            record,
            state="aborted",
            message=reason,
            error_step=record.state,
            now=now,
        )
        for record in memo.remember_all(deployment_id, json.loads(row[0]))
    ]
    memo.conn.execute(
        "UPDATE deployments SET status = ?, reason = ?, finished_at = ? WHERE id = ?",
        (status.value, reason, now, deployment_id),
    )
    memo.finished_deployment(deployment_id, status)
    events.append(DeploymentEnded(deployment_id, status.value, reason, now))
    return tuple(events)


_LOAD_UNFINISHED = (
    "SELECT json_group_array(json_array(node, state, final, macrostep, variant, attempt)) "
    "FROM (SELECT * FROM deployment_nodes WHERE deployment_id = ? AND final = 0 "
    "ORDER BY position)"
)
