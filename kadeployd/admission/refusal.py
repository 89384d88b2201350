"""The refusal admission answers: one domain error, with a kind and the problems found.

::

    KadeployError
    └── AdmissionRefused    kind: what was wrong; problems: which field, what, for each node

The kinds are the daemon's words for the refusals users already know (their values are the
API's error codes); mapping a kind to an HTTP status is the API's business
(kadeployd/api/errors.py), not admission's.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from enum import StrEnum

from kadeploy_core.errors import KadeployError, Problem

logger = logging.getLogger(__name__)


class Refusal(StrEnum):
    """Why a request may not have its nodes."""

    UNKNOWN_NODE = "unknown_node"
    """A name is not a configured node, or a deployment lists a node twice."""
    INVALID_BLOCK_DEVICE = "invalid_block_device"
    """``-b`` does not fit the partition naming of a node's disk."""
    INCOMPATIBLE_ENVIRONMENT = "incompatible_environment"
    """The environment does not run on a node's cluster."""
    INVALID_REQUEST = "deployment_refused"
    """No node at all, or a ``min_nodes`` the node list cannot reach."""
    NO_RIGHT = "no_right"
    """The user holds no right on a node (or on its deploy partition)."""
    NODE_BUSY = "node_busy"
    """A running deployment holds a node, and the request does not force."""
    FORCE_REFUSED = "force_refused"
    """The request forces over another user's running deployment, and its user is no
    administrator."""


class AdmissionRefused(KadeployError):
    """The node supervisor's admission refused a request; nothing was started."""

    def __init__(self, kind: Refusal, message: str, problems: Iterable[Problem] = ()) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.problems = tuple(problems)
