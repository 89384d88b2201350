"""The events the store publishes once a write is committed, one frozen dataclass each.

Every event names its deployment (the hub routes on it). Events that describe a database row
carry the ``seq`` the database gave that row, so a subscriber can merge them with what it
read from the database and drop what it already has (``seq <= last seen``).

::

    NodeStateChanged   a node entered a state (a state_history row; ``seq`` = its id)
    NodeLogged         a piece of a node's log (a node_logs row; ``seq`` = its id)
    NodeProgress       a node's image transfer moved (no row of its own: no seq)
    DeploymentEnded    the deployment got its final status

Pure data: no I/O, no import of the store or of actors, so any layer can match on them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class NodeStateChanged:
    """A node entered ``state``; the fields of its history entry."""

    deployment_id: str
    seq: int
    """The history entry's id: increasing in commit order over the whole database."""
    node: str
    state: str
    macrostep: str | None
    variant: str | None
    attempt: int
    message: str
    at: float
    final: bool
    """The node will record no further state (deployed, deploy_failed, aborted, ...)."""


@dataclass(frozen=True, slots=True)
class NodeLogged:
    """A piece of a node's log."""

    deployment_id: str
    seq: int
    """The log line's id: increasing in commit order over the whole database."""
    node: str
    at: float
    stream: str
    """``cmd``, ``stdout``, ``stderr`` or ``info``."""
    text: str


@dataclass(frozen=True, slots=True)
class NodeProgress:
    """How far a node's image transfer is (bytes sent or relayed of ``bytes_total``)."""

    deployment_id: str
    node: str
    bytes_done: int
    bytes_total: int


@dataclass(frozen=True, slots=True)
class DeploymentEnded:
    """The deployment is over; every node state it recorded was published before this."""

    deployment_id: str
    status: str
    """``succeeded``, ``failed`` or ``aborted``."""
    reason: str
    at: float


Event = NodeStateChanged | NodeLogged | NodeProgress | DeploymentEnded
"""Anything the hub carries."""

EVENT_TYPES: frozenset[type[Event]] = frozenset(
    {NodeStateChanged, NodeLogged, NodeProgress, DeploymentEnded}
)
"""Every event type: the default of a subscription's ``kinds``."""
