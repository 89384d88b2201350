"""What the store records and what its reads return: vocabularies and frozen views.

The views are built fresh for every read, so they can cross threads (actor replies, API) without
sharing anything with the database connection.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

logger = logging.getLogger(__name__)


class DeploymentStatus(StrEnum):
    """Where a deployment stands as a whole."""

    RUNNING = "running"
    """Nodes are still being worked on (or the daemon stopped before it could say otherwise)."""
    SUCCEEDED = "succeeded"
    """Every node, or at least ``min_nodes`` of them, is deployed."""
    FAILED = "failed"
    """Too many nodes failed to reach the goal."""
    ABORTED = "aborted"
    """Cancelled by a user, or interrupted by a daemon restart."""


class LogStream(StrEnum):
    """Which stream a node log line comes from."""

    CMD = "cmd"
    """A command the daemon ran for this node (remote or local)."""
    STDOUT = "stdout"
    STDERR = "stderr"
    INFO = "info"
    """A note of the daemon itself (retry, fallback to the next variant, ...)."""


PENDING = "pending"
"""State of a node record when it is added, before its workflow starts."""

FINAL_NODE_STATES: frozenset[str] = frozenset(
    {"deployed", "deploy_failed", "aborted", "already_installed", "incompatible", "decommissioned"}
    | {"breakpointed"}
)
"""The states a node ends in (:meth:`Store.finish_node`); no state is recorded after one."""

SUCCESS_NODE_STATES: frozenset[str] = frozenset({"deployed", "already_installed", "breakpointed"})
"""Final states that are not errors: their message is history, not ``error_message``."""

ERROR_TAIL_CHARS = 4096
"""``error_message`` keeps at most this many characters, the end of the message (stderr tail)."""


@dataclass(frozen=True, slots=True)
class DeploymentView:
    """One deployment as recorded."""

    id: str
    user: str
    environment_name: str
    environment_version: int | None
    anonymous: bool
    """True for an environment sent with the request (a description file), not registered."""
    environment: Mapping[str, Any]
    """The environment description as it was when the deployment was created."""
    options: Mapping[str, Any]
    node_count: int
    min_nodes: int | None
    """None: every node must be deployed for success."""
    status: DeploymentStatus
    reason: str
    created_at: float
    finished_at: float | None


@dataclass(frozen=True, slots=True)
class NodeView:
    """The current record of one node in one deployment."""

    deployment_id: str
    node: str
    state: str
    macrostep: str | None
    variant: str | None
    attempt: int
    step_started_at: float
    """When the node entered its current state (unix time)."""
    started_at: float | None
    """When the node left ``pending``; None if it never did."""
    finished_at: float | None
    final: bool
    error_step: str | None
    error_message: str | None
    elapsed: float | None
    """Seconds spent so far in the current state, at the time of the read; None once final."""
    bytes_done: int | None = None
    """Bytes of the image transferred by the node's latest transfer; None before any."""
    bytes_total: int | None = None
    """Size of the image being transferred; None before any transfer."""


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One state a node entered, in order of recording."""

    seq: int
    """Increasing over the whole database: order, and a cursor for 'what is new since'."""
    deployment_id: str
    node: str
    state: str
    macrostep: str | None
    variant: str | None
    attempt: int
    message: str
    at: float


@dataclass(frozen=True, slots=True)
class LogLine:
    """One piece of a node's log."""

    seq: int
    """Increasing over the whole database: order, and a cursor for paging (``after=``)."""
    deployment_id: str
    node: str
    at: float
    stream: LogStream
    text: str
