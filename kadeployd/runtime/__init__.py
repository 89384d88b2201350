"""What blocking work and waits run on: bounded worker pools and the one timer thread.

A node costs one actor; everything it waits for is a timer of :class:`Scheduler`, and every
blocking thing it does (an SSH command, file work) runs on a :class:`BoundedPool` whose size is
configuration (``daemon.workers``). Power commands are bounded by the RebootActor's window.

Node actors take turns too (:attr:`Workers.node_turns`): what a node does between two waits is
short Python work, and ten thousand node threads doing it at once only fight over the
interpreter lock, each hand-over costing more as they are many.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from kadeployd.runtime.pool import BoundedPool, PoolClosed, PoolStats
from kadeployd.runtime.timers import Scheduler, TimerHandle

DEFAULT_NODE_TURNS = 4


@dataclass(frozen=True, slots=True)
class Workers:
    """The daemon's shared pools and timer thread, handed to every deployment."""

    ssh: BoundedPool
    """SSH commands and probes to nodes."""
    files: BoundedPool
    """Local file work: reading images and boot files, writing PXE profiles."""
    timers: Scheduler
    node_turns: threading.BoundedSemaphore
    """Held by a node actor while it handles a message (``daemon.workers.node_turns``)."""

    @classmethod
    def create(cls, ssh: int, files: int, node_turns: int = DEFAULT_NODE_TURNS) -> Workers:
        """Pools of the given sizes and a timer thread (threads start on first use)."""
        return cls(
            BoundedPool("ssh", ssh),
            BoundedPool("files", files),
            Scheduler(),
            threading.BoundedSemaphore(node_turns),
        )

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the timers, then let running work end (bounded)."""
        self.timers.stop(timeout)
        self.ssh.shutdown(timeout)
        self.files.shutdown(timeout)


__all__ = ["BoundedPool", "PoolClosed", "PoolStats", "Scheduler", "TimerHandle", "Workers"]
