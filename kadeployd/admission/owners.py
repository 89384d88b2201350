"""Whose running deployments a forced request would act over.

``force`` lets a deployment, a reboot operation, a power command, a reboot or a set_pxe act on
nodes that a running deployment holds. Over one's own deployment that is a user's business;
over another user's it takes or re-profiles nodes in the middle of their work, so it takes an
administrator (``daemon.almighty_users``), whatever rights the user has on the nodes (a right
on one partition used to be enough).

Decided by admission (:mod:`.decide`), in the NodeSupervisor's thread, from its own record of
which deployment (and whose) holds each node, in the message that takes the nodes: no request
can slip between the check and the taking.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from kadeploy_core.errors import Problem
from kadeployd.admission.holds import NodeHolds
from kadeployd.admission.refusal import AdmissionRefused, Refusal

logger = logging.getLogger(__name__)

SOURCE = "request"


@dataclass(frozen=True, slots=True)
class ForeignHold:
    """A node held by a running deployment of another user."""

    node: str
    deployment_id: str
    owner: str


def foreign_holds(user: str, names: Sequence[str], holds: NodeHolds) -> list[ForeignHold]:
    """Those of ``names`` held by a running deployment whose owner is not ``user``, in the
    order of ``names``."""
    return [
        ForeignHold(node, hold.deployment_id, hold.user)
        for node, hold in holds.holders(names).items()
        if hold.user != user
    ]


def check_force(user: str, names: Sequence[str], holds: NodeHolds, action: str) -> None:
    """FORCE_REFUSED if ``user`` (no administrator) would ``action`` with force nodes of
    another user's running deployment: the message names the first node, its deployment and
    its owner, with one problem per such node."""
    found = foreign_holds(user, names, holds)
    if not found:
        return
    message, problems = force_refusal(action, found)
    logger.warning("%s: %s", user, message)
    raise AdmissionRefused(Refusal.FORCE_REFUSED, message, problems)


def force_refusal(action: str, holds: Sequence[ForeignHold]) -> tuple[str, list[Problem]]:
    """The message and problems refusing ``action`` with force over ``holds`` (non-empty)."""
    problems = [
        Problem(
            SOURCE,
            f"{hold.node} is in deployment {hold.deployment_id} of {hold.owner}",
            "force",
        )
        for hold in holds
    ]
    first = holds[0]
    more = f" (and {len(holds) - 1} more nodes)" if len(holds) > 1 else ""
    message = (
        f"force may not {action} {first.node}: it is in the running deployment "
        f"{first.deployment_id} of {first.owner}{more}; only an administrator "
        f"(daemon.almighty_users) may act on another user's deployment"
    )
    return message, problems
