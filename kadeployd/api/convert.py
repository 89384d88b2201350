"""Store views -> API documents."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable

from kadeploy_core.schemas import (
    DeploymentOut,
    EnvironmentSummary,
    HistoryOut,
    NodeStateOut,
    ProgressOut,
    TransferOut,
)
from kadeployd.store.records import SUCCESS_NODE_STATES, DeploymentView, HistoryEntry, NodeView

logger = logging.getLogger(__name__)


def deployment_out(view: DeploymentView, nodes: Iterable[NodeView] | None = None) -> DeploymentOut:
    """A deployment; with ``nodes``, the count of nodes in each state."""
    return DeploymentOut(
        id=view.id,
        user=view.user,
        environment=EnvironmentSummary(
            name=view.environment_name,
            version=view.environment_version,
            anonymous=view.anonymous,
        ),
        node_count=view.node_count,
        min_nodes=view.min_nodes,
        status=view.status.value,
        reason=view.reason,
        created_at=view.created_at,
        finished_at=view.finished_at,
        options=dict(view.options),
        states=None if nodes is None else dict(Counter(n.state for n in nodes)),
    )


def node_state_out(view: NodeView) -> NodeStateOut:
    """A node's record."""
    return NodeStateOut(
        node=view.node,
        state=view.state,
        macrostep=view.macrostep,
        variant=view.variant,
        attempt=view.attempt,
        step_started_at=view.step_started_at,
        started_at=view.started_at,
        finished_at=view.finished_at,
        final=view.final,
        error_step=view.error_step,
        error_message=view.error_message,
        elapsed=view.elapsed,
        bytes_done=view.bytes_done,
        bytes_total=view.bytes_total,
    )


def progress_out(nodes: Iterable[NodeView]) -> ProgressOut | None:
    """The deployment's image transfer over its nodes (see :class:`ProgressOut` for which);
    None while no node has started one."""
    transfers = {
        n.node: TransferOut(bytes_done=n.bytes_done or 0, bytes_total=n.bytes_total)
        for n in nodes
        if n.bytes_total is not None and (not n.final or n.state in SUCCESS_NODE_STATES)
    }
    if not transfers:
        return None
    return ProgressOut(
        bytes_done=sum(t.bytes_done for t in transfers.values()),
        bytes_total=sum(t.bytes_total for t in transfers.values()),
        nodes=transfers,
    )


def history_out(entry: HistoryEntry) -> HistoryOut:
    """A history entry."""
    return HistoryOut(
        seq=entry.seq,
        node=entry.node,
        state=entry.state,
        macrostep=entry.macrostep,
        variant=entry.variant,
        attempt=entry.attempt,
        message=entry.message,
        at=entry.at,
    )
