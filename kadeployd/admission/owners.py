"""Whose running deployments a forced request would act over.

``force`` lets a power command, a reboot or a set_pxe act on nodes that a running deployment
holds. Over one's own deployment that is a user's business; over another user's it powers off
or re-profiles nodes in the middle of their work, so it takes an administrator
(``daemon.almighty_users``), whatever rights the user has on the nodes (a right on one
partition used to be enough).

Pure: the holds (node -> deployment id, as the NodeSupervisor keeps them) and the owner of a
deployment (from the store) come in as arguments.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from kadeploy_core.errors import Problem

logger = logging.getLogger(__name__)

SOURCE = "request"


@dataclass(frozen=True, slots=True)
class ForeignHold:
    """A node held by a running deployment of another user."""

    node: str
    deployment_id: str
    owner: str


def foreign_holds(
    user: str,
    names: Sequence[str],
    held: Mapping[str, str],
    owner_of: Callable[[str], str],
) -> list[ForeignHold]:
    """Those of ``names`` held (``held``: node -> deployment id) by a deployment whose owner
    (``owner_of(deployment_id)``) is not ``user``, in the order of ``names``."""
    owners: dict[str, str] = {}
    found = []
    for node in names:
        deployment_id = held.get(node)
        if deployment_id is None:
            continue
        if deployment_id not in owners:
            owners[deployment_id] = owner_of(deployment_id)
        if owners[deployment_id] != user:
            found.append(ForeignHold(node, deployment_id, owners[deployment_id]))
    return found


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
