"""Node states as users see them, and the one table of allowed transitions.

The state names are Kadeploy3's and Mender's vocabulary (see DESIGN.md). A node's state moves
only through :func:`check_transition`; anything else is a bug (:class:`InvalidTransition`).
"""

from __future__ import annotations

from enum import StrEnum

from kadeployd.errors import KadeployError


class NodeState(StrEnum):
    """Where a node is in its deployment."""

    PENDING = "pending"
    """Waiting to start."""
    REBOOTING = "rebooting"
    """PXE switched and reboot requested; waiting for the node to come back."""
    DEPLOY_ENV = "deploy_env"
    """Running the deploy env (or the prod env, for the prod variant), reachable over SSH."""
    PARTITIONING = "partitioning"
    """Partitioning the disk and formatting the deploy partition."""
    TRANSFERRING = "transferring"
    """Receiving and writing the image."""
    POSTINSTALL = "postinstall"
    """Running postinstalls, copying SSH keys, checking kernel files, syncing."""
    BOOTING = "booting"
    """PXE switched to the deployed env and reboot requested; waiting for it."""
    DEPLOYED = "deployed"
    """Final: the deployed env answers."""
    DEPLOY_FAILED = "deploy_failed"
    """Final: every variant of a macrostep was exhausted."""
    ABORTED = "aborted"
    """Final: cancelled by a user, by shutdown, or because min nodes were reached."""
    ALREADY_INSTALLED = "already_installed"
    """Final: the node already ran this environment (reserved for a later issue)."""
    INCOMPATIBLE = "incompatible"
    """Final: the environment does not support the node's cluster."""
    DECOMMISSIONED = "decommissioned"
    """Final: the node was removed from the configuration during the deployment."""
    BREAKPOINTED = "breakpointed"
    """Final: stopped before the ``--breakpoint`` microstep, left as it was (a success)."""

    @property
    def final(self) -> bool:
        """Whether the node's deployment is over."""
        return self in FINAL_STATES


FINAL_STATES = frozenset(
    {
        NodeState.DEPLOYED,
        NodeState.DEPLOY_FAILED,
        NodeState.ABORTED,
        NodeState.ALREADY_INSTALLED,
        NodeState.INCOMPATIBLE,
        NodeState.DECOMMISSIONED,
        NodeState.BREAKPOINTED,
    }
)

_WORKING = (
    NodeState.REBOOTING,
    NodeState.DEPLOY_ENV,
    NodeState.PARTITIONING,
    NodeState.TRANSFERRING,
    NodeState.POSTINSTALL,
    NodeState.BOOTING,
)

TRANSITIONS: dict[NodeState, frozenset[NodeState]] = {
    NodeState.PENDING: frozenset({*_WORKING, NodeState.INCOMPATIBLE}),
    # A retry or a fallback variant may start any macrostep again, so every working state may
    # go to every working state; what the table forbids is leaving a final state, and reaching
    # DEPLOYED from anywhere but BOOTING.
    **{state: frozenset(_WORKING) for state in _WORKING},
}
TRANSITIONS[NodeState.BOOTING] = TRANSITIONS[NodeState.BOOTING] | {NodeState.DEPLOYED}
for _state in (NodeState.PENDING, *_WORKING):
    TRANSITIONS[_state] = TRANSITIONS[_state] | {
        NodeState.DEPLOY_FAILED,
        NodeState.ABORTED,
        NodeState.DECOMMISSIONED,
        NodeState.BREAKPOINTED,
    }
for _state in FINAL_STATES:
    TRANSITIONS[_state] = frozenset()


class InvalidTransition(KadeployError):
    """A node was asked to move between two states the table does not link: a bug."""


def check_transition(current: NodeState, wanted: NodeState) -> None:
    """Raise :class:`InvalidTransition` unless ``current -> wanted`` is in the table."""
    if current == wanted and not current.final:
        return
    if wanted not in TRANSITIONS[current]:
        raise InvalidTransition(f"node cannot go from {current} to {wanted}")
