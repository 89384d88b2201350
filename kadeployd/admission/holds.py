"""Which running deployment holds each node: the node supervisor's own record.

A deployment (or a reboot operation, which runs as one) takes its nodes when it is admitted
and gives each back when the node reaches a final state or the deployment ends. A forced
request takes nodes that another deployment holds: the latest taker holds them, as the
store's latest record of the node says, so the older deployment ending does not free a node
the newer one still works on.

Plain bookkeeping, used from the NodeSupervisor's one thread only.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Hold:
    """A running deployment's hold on nodes."""

    deployment_id: str
    user: str


class NodeHolds:
    """Node name -> the hold of the deployment working on it."""

    def __init__(self) -> None:
        self._by_node: dict[str, Hold] = {}

    def take(self, hold: Hold, nodes: Iterable[str]) -> None:
        """``hold``'s deployment now works on ``nodes`` (taking them from any other)."""
        for node in nodes:
            self._by_node[node] = hold

    def release(self, deployment_id: str, nodes: Iterable[str]) -> list[str]:
        """Give back those of ``nodes`` that ``deployment_id`` holds; the nodes freed."""
        freed = []
        for node in nodes:
            hold = self._by_node.get(node)
            if hold is not None and hold.deployment_id == deployment_id:
                del self._by_node[node]
                freed.append(node)
        return freed

    def holders(self, nodes: Iterable[str]) -> dict[str, Hold]:
        """The held ones of ``nodes``, in the order given, with their holds."""
        return {node: self._by_node[node] for node in nodes if node in self._by_node}

    def held(self) -> dict[str, str]:
        """Every held node -> the id of the deployment holding it."""
        return {node: hold.deployment_id for node, hold in self._by_node.items()}
