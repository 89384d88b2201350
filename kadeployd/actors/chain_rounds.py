"""Which nodes go into which chain broadcast: the barrier of the ``chain`` variant.

A chain carries the image to every node at once, so nodes reaching BroadcastEnv wait for each
other: a round starts when every node still in play (not finished, not already served by a
round) has its relay listening, or when the first ready node has waited the gather window,
so that a node stuck rebooting does not hold the others (it joins a later round, as do nodes
that a round failed and that retry through the normal retry rules). A node that already
failed an attempt (a reboot that did not bring it back, a step that failed) is *late*: it is
not waited for at all, it joins a later round when it gets there. One round runs at a time;
each has a fresh secret, so a round never starts while a node that took the forming round's
secret is still starting its relay: that relay would hold the secret of a round that left
without it. Pure bookkeeping, driven by the DeploymentManager's thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from kadeployd.chain import ChainResult, Hop, new_secret

logger = logging.getLogger(__name__)

Reply = Callable[[str | None], None]


@dataclass
class ChainRounds:
    """Ready nodes, the running round, and the nodes already served."""

    order: Sequence[str]
    """Chain order: the deployment's node order."""
    secret: bytes = field(default_factory=new_secret)
    running_secret: bytes = b""
    served: set[str] = field(default_factory=set)
    late: set[str] = field(default_factory=set)
    """Nodes that failed an attempt: never waited for."""
    ready_since: dict[str, float] = field(default_factory=dict)
    """When each ready node reported its relay listening (to report its wait)."""
    setting_up: set[str] = field(default_factory=set)
    """Nodes that took the forming round's secret and are starting their relay."""
    _ready: dict[str, tuple[Hop, Reply]] = field(default_factory=dict)
    _running: dict[str, tuple[Hop, Reply]] = field(default_factory=dict)

    def secret_for(self, node: str) -> bytes:
        """The forming round's secret, for ``node``'s relay: the round waits for it now."""
        self.setting_up.add(node)
        return self.secret

    def ready(self, node: str, hop: Hop, reply: Reply) -> None:
        """``node``'s relay listens at ``hop`` (again, if a later step failed and it retries)."""
        self.setting_up.discard(node)
        self.served.discard(node)
        self._ready[node] = (hop, reply)
        self.ready_since[node] = time.monotonic()

    def leave(self, node: str) -> None:
        """``node`` no longer waits for a round."""
        self._ready.pop(node, None)
        self.setting_up.discard(node)

    def attempt_failed(self, node: str) -> None:
        """``node`` failed an attempt: the rounds no longer wait for it."""
        self.late.add(node)
        self.setting_up.discard(node)

    @property
    def running_nodes(self) -> list[str]:
        """The nodes of the running round, in chain order."""
        return list(self._running)

    @property
    def forming(self) -> bool:
        """Whether some node waits for a round."""
        return bool(self._ready)

    def start_if_complete(self, unfinished: Sequence[str], *, window_over: bool) -> list[Hop]:
        """The hops of a new round if every node in play is ready, or the gather window of
        the forming round is over (and no relay is starting with its secret); else []."""
        if self._running or not self._ready or self.setting_up:
            return []
        waiting = [
            n
            for n in unfinished
            if n not in self.served and n not in self._ready and n not in self.late
        ]
        if waiting and not window_over:
            return []
        self._running = {n: self._ready.pop(n) for n in self.order if n in self._ready}
        self.running_secret, self.secret = self.secret, new_secret()
        logger.info("chain round of %d nodes: %s", len(self._running), ", ".join(self._running))
        return [hop for hop, _ in self._running.values()]

    def finish(self, result: ChainResult | None, error: str | None) -> None:
        """Judge every node of the running round and give it its verdict."""
        running, self._running = self._running, {}
        failures = result.failures([hop.address for hop, _ in running.values()]) if result else {}
        for node, (hop, reply) in running.items():
            verdict = error if result is None else failures.get(hop.address)
            if verdict is None:
                self.served.add(node)
            reply(verdict)
