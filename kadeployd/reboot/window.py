"""The reboot window: which queued requests may start now (pure logic, no threads, no clock).

Kadeploy3's ``reboot_window`` bounds how many power commands run at once (a rack's power
supply, a BMC network) and ``reboot_window_sleep`` spaces them out:

* without a sleep, a freed slot is used at once (a sliding window): a slow command, up to its
  timeout, does not hold back the others;
* with a sleep, requests run in batches of at most ``size``: a batch starts only when the
  previous one has completely finished and the sleep after it is over. Requests arriving while
  a batch runs wait for the next batch, so batches never overlap.

The owner tells the window when commands finish and when the sleep ends; the window tells the
owner when to start the sleep (:meth:`finished` returns True) and what to start.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")


class RebootWindow(Generic[T]):
    """A FIFO of requests keyed by id, at most ``size`` running, batches spaced by ``sleep``."""

    def __init__(self, size: int, sleep: float) -> None:
        if size < 1:
            raise ValueError(f"the reboot window must be at least 1, got {size}")
        if sleep < 0:
            raise ValueError(f"the reboot window sleep must not be negative, got {sleep}")
        self.size = size
        self.sleep = sleep
        self._queued: OrderedDict[str, T] = OrderedDict()
        self._running: set[str] = set()
        self.sleeping = False
        """True between the end of a batch and :meth:`sleep_over`."""

    @property
    def queued(self) -> tuple[str, ...]:
        """Ids waiting for a slot, in the order they will start."""
        return tuple(self._queued)

    @property
    def running(self) -> frozenset[str]:
        """Ids started and not yet finished."""
        return frozenset(self._running)

    def __contains__(self, key: str) -> bool:
        return key in self._queued or key in self._running

    def submit(self, key: str, item: T) -> None:
        """Queue ``item``; ``key`` must not be queued or running already."""
        if key in self:
            raise KeyError(f"request {key!r} is already queued or running")
        self._queued[key] = item

    def remove_queued(self, key: str) -> T | None:
        """Take ``key`` out of the queue; None when it is not queued (running or unknown)."""
        return self._queued.pop(key, None)

    def take_startable(self) -> list[tuple[str, T]]:
        """The requests to start now, marked running; empty while sleeping or in a batch."""
        if self.sleeping or (self.sleep > 0 and self._running):
            return []
        started: list[tuple[str, T]] = []
        while self._queued and len(self._running) < self.size:
            key, item = self._queued.popitem(last=False)
            self._running.add(key)
            started.append((key, item))
        return started

    def finished(self, key: str) -> bool:
        """Record that ``key`` ended; True when this ended a batch and the sleep must start."""
        if key not in self._running:
            return False
        self._running.discard(key)
        if self.sleep > 0 and not self._running:
            self.sleeping = True
            return True
        return False

    def sleep_over(self) -> None:
        """The sleep after a batch has elapsed: the next batch may start."""
        self.sleeping = False

    def drain(self) -> list[tuple[str, T]]:
        """Empty the queue and return what was in it (when the service stops)."""
        items = list(self._queued.items())
        self._queued.clear()
        return items
