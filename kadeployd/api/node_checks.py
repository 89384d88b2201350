"""Checks of the nodes a request names, shared by the routes that act on nodes (deployments,
power and reboots, rights): each names a configured node, and none is held by a running
deployment."""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable

from kadeployd.api.context import ApiContext
from kadeployd.api.errors import ApiError
from kadeployd.errors import Problem
from kadeployd.suggest import did_you_mean

logger = logging.getLogger(__name__)


def unknown_node(name: str, index: int, known: Collection[str]) -> Problem:
    """The problem of ``nodes[index]`` naming no configured node, with a suggestion."""
    return Problem("request", f"unknown node {name}{did_you_mean(name, known)}", f"nodes[{index}]")


def require_known(known: Collection[str], names: list[str], wildcard: str | None = None) -> None:
    """422 ``unknown_node``, one problem per name (other than ``wildcard``) not in ``known``
    (the configured nodes)."""
    problems = [
        unknown_node(n, i, known) for i, n in enumerate(names) if n != wildcard and n not in known
    ]
    if problems:
        raise ApiError(422, "unknown_node", problems[0].message, problems)


def refuse_busy(context: ApiContext, names: Iterable[str], complaint: str) -> None:
    """409 ``node_busy`` if a running deployment holds any of ``names``: the message is their
    names then ``complaint``, with one problem per node saying who deploys it."""
    usage = context.reader.node_usage()
    busy = [usage[n] for n in names if n in usage and usage[n].busy]
    if busy:
        raise ApiError(
            409,
            "node_busy",
            f"{', '.join(u.node for u in busy)} {complaint}",
            [
                Problem(
                    "request",
                    f"{u.node} is being deployed by {u.user} (deployment {u.deployment_id}, "
                    f"state {u.state})",
                    "nodes",
                )
                for u in busy
            ],
        )
