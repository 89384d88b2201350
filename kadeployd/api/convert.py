"""Store views -> API documents, and what other users may not see of them.

A deployment's custom steps (their commands may hold secrets), its nodes' error messages and
history messages (they quote commands and their stderr) are the owner's and administrators'
only: for anyone else (``full=False``) they are replaced by :data:`HIDDEN`. Every document of
a deployment, node record, history entry and event-stream event is built here, so the rule
is in one place; logs are refused outright to others (403) by their routes."""

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
from kadeployd.api.auth import Caller
from kadeployd.store.records import SUCCESS_NODE_STATES, DeploymentView, HistoryEntry, NodeView

logger = logging.getLogger(__name__)


HIDDEN = "(hidden: only the deployment's owner and administrators see this)"
"""What replaces a field another user may not read."""
PRIVATE_OPTIONS = frozenset({"custom_steps", "pxe"})
"""Options of a deployment only its owner and administrators see."""


def sees_details(caller: Caller, owner: str) -> bool:
    """Whether ``caller`` sees the commands, messages and errors of ``owner``'s deployment."""
    return caller.admin or caller.user == owner


def deployment_out(
    view: DeploymentView, nodes: Iterable[NodeView] | None = None, *, full: bool = True
) -> DeploymentOut:
    """A deployment; with ``nodes``, the count of nodes in each state; without ``full``, its
    private options hidden."""
    options = {
        key: value if full or key not in PRIVATE_OPTIONS else HIDDEN
        for key, value in view.options.items()
    }
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
        options=options,
        states=None if nodes is None else dict(Counter(n.state for n in nodes)),
    )


def node_state_out(view: NodeView, *, full: bool = True) -> NodeStateOut:
    """A node's record; without ``full``, its error message hidden."""
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
        error_message=_shown(view.error_message, full),
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


def history_out(entry: HistoryEntry, *, full: bool = True) -> HistoryOut:
    """A history entry; without ``full``, its message hidden."""
    return HistoryOut(
        seq=entry.seq,
        node=entry.node,
        state=entry.state,
        macrostep=entry.macrostep,
        variant=entry.variant,
        attempt=entry.attempt,
        message=_shown(entry.message, full) or "",
        at=entry.at,
    )


def _shown(text: str | None, full: bool) -> str | None:
    """``text``, or :data:`HIDDEN` in its place when it may not be seen (empty stays empty)."""
    return text if full or not text else HIDDEN
