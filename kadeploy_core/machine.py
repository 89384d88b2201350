"""The per-node state machine: node states, the events that move them, and the one table.

A node's state changes only by feeding an event to :func:`next_state`, which looks the pair
up in :data:`TRANSITIONS`; a pair that is not there raises :class:`InvalidTransition` (a bug:
the plan or the driver asked for a move the machine does not have). The NodeActor is the only
driver; what runs in each state (the plans of macrosteps, variants and microsteps, and their
retries) is data in :mod:`kadeploy_core.plans` and :mod:`kadeploy_core.policy`.

::

    pending ──reboot_ordered──> rebooting ──deploy_env_reached──> deploy_env
       │                            │                                 │ partitioning_started
       │ deploy_env_reached         │ boot_ordered (kareboot)         v
       └──────────> deploy_env      v                            partitioning
                                 booting <─┐                          │ transfer_started
                                    │      │ boot_ordered             v
                                    │ done └──────── postinstall <─ transferring
                                    v                     postinstall_started
                                 deployed

    any state not final ──fail──> deploy_failed, ──abort──> aborted,
                        ──breakpoint──> breakpointed, ──decommission──> decommissioned
    pending ──incompatible──> incompatible
    working state ──step_failed / timed_out──> itself (the policy picks a retry, a fallback
                                                variant, or fail)

A retry or a fallback variant starts its macrostep again, so the entering events of a
macrostep are also accepted from the states of its own later microsteps (e.g. a retry of
BroadcastEnv goes from ``postinstall`` back to ``transferring``). Nothing leaves a final state.
"""

from __future__ import annotations

from enum import StrEnum

from kadeploy_core.errors import KadeployError


class NodeState(StrEnum):
    """Where a node is in its deployment, as users see it."""

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


class NodeEvent(StrEnum):
    """What happens to a node; the driver feeds these to :func:`next_state`."""

    REBOOT_ORDERED = "reboot_ordered"
    """The node's PXE profile points at the deploy env and it is being rebooted into it."""
    DEPLOY_ENV_REACHED = "deploy_env_reached"
    """The deploy env (or the prod env, for the prod variant) answers."""
    PARTITIONING_STARTED = "partitioning_started"
    TRANSFER_STARTED = "transfer_started"
    POSTINSTALL_STARTED = "postinstall_started"
    BOOT_ORDERED = "boot_ordered"
    """The node is being booted into the environment the job asked for."""
    DONE = "done"
    """The last microstep of the node's plan succeeded."""
    STEP_FAILED = "step_failed"
    """A microstep failed (expected failures: a command failed, the node did not answer)."""
    TIMED_OUT = "timed_out"
    """The running variant attempt exceeded its timeout."""
    FAIL = "fail"
    """No retry and no variant left (or the job could not be prepared)."""
    ABORT = "abort"
    BREAKPOINT = "breakpoint"
    INCOMPATIBLE = "incompatible"
    DECOMMISSION = "decommission"


S, E = NodeState, NodeEvent

FINAL_STATES = frozenset(
    {
        S.DEPLOYED,
        S.DEPLOY_FAILED,
        S.ABORTED,
        S.ALREADY_INSTALLED,
        S.INCOMPATIBLE,
        S.DECOMMISSIONED,
        S.BREAKPOINTED,
    }
)
WORKING_STATES = (
    S.REBOOTING,
    S.DEPLOY_ENV,
    S.PARTITIONING,
    S.TRANSFERRING,
    S.POSTINSTALL,
    S.BOOTING,
)

_PROGRESS: dict[NodeState, dict[NodeEvent, NodeState]] = {
    S.PENDING: {
        E.REBOOT_ORDERED: S.REBOOTING,
        E.DEPLOY_ENV_REACHED: S.DEPLOY_ENV,  # prod and dummy SetDeploymentEnv
        E.BOOT_ORDERED: S.BOOTING,  # kareboot recorded_env starts at BootNewEnv
        E.INCOMPATIBLE: S.INCOMPATIBLE,
    },
    S.REBOOTING: {
        E.REBOOT_ORDERED: S.REBOOTING,
        E.DEPLOY_ENV_REACHED: S.DEPLOY_ENV,
        E.BOOT_ORDERED: S.BOOTING,  # kareboot deploy_env waits for the deploy env in booting
    },
    S.DEPLOY_ENV: {
        E.REBOOT_ORDERED: S.REBOOTING,  # a retry of SetDeploymentEnv
        E.DEPLOY_ENV_REACHED: S.DEPLOY_ENV,
        E.PARTITIONING_STARTED: S.PARTITIONING,
        E.TRANSFER_STARTED: S.TRANSFERRING,  # after a dummy SetDeploymentEnv
    },
    S.PARTITIONING: {
        E.REBOOT_ORDERED: S.REBOOTING,
        E.DEPLOY_ENV_REACHED: S.DEPLOY_ENV,
        E.PARTITIONING_STARTED: S.PARTITIONING,
        E.TRANSFER_STARTED: S.TRANSFERRING,
    },
    S.TRANSFERRING: {
        E.TRANSFER_STARTED: S.TRANSFERRING,
        E.POSTINSTALL_STARTED: S.POSTINSTALL,
        E.BOOT_ORDERED: S.BOOTING,  # after a dummy BroadcastEnv
    },
    S.POSTINSTALL: {
        E.TRANSFER_STARTED: S.TRANSFERRING,  # a retry of BroadcastEnv
        E.POSTINSTALL_STARTED: S.POSTINSTALL,
        E.BOOT_ORDERED: S.BOOTING,
    },
    S.BOOTING: {
        E.BOOT_ORDERED: S.BOOTING,
        E.DONE: S.DEPLOYED,
    },
}


def _table() -> dict[tuple[NodeState, NodeEvent], NodeState]:
    rows = {
        (state, event): target
        for state, moves in _PROGRESS.items()
        for event, target in moves.items()
    }
    for state in WORKING_STATES:
        rows[(state, E.STEP_FAILED)] = state
        rows[(state, E.TIMED_OUT)] = state
    for state in (S.PENDING, *WORKING_STATES):
        rows[(state, E.FAIL)] = S.DEPLOY_FAILED
        rows[(state, E.ABORT)] = S.ABORTED
        rows[(state, E.BREAKPOINT)] = S.BREAKPOINTED
        rows[(state, E.DECOMMISSION)] = S.DECOMMISSIONED
    return rows


TRANSITIONS: dict[tuple[NodeState, NodeEvent], NodeState] = _table()
"""Every allowed ``(state, event) -> state`` row; nothing else is a transition."""


class InvalidTransition(KadeployError):
    """An event the table has no row for in the node's state: a bug in a plan or its driver."""


def next_state(state: NodeState, event: NodeEvent) -> NodeState:
    """The state ``event`` moves a node in ``state`` to; InvalidTransition if none."""
    target = TRANSITIONS.get((state, event))
    if target is None:
        allowed = sorted(e.value for (s, e) in TRANSITIONS if s == state)
        raise InvalidTransition(
            f"no transition from {state} on {event}; allowed: {', '.join(allowed) or 'none'}"
        )
    return target
