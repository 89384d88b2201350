"""A bounded pool of worker threads for blocking work (SSH commands, file work).

Why not :class:`concurrent.futures.ThreadPoolExecutor`: its threads never exit, so a daemon
that once ran a big deployment would keep every worker forever, and its ``submit`` returns
futures nobody here waits on. This pool starts a worker only when work is queued and none is
idle, never more than ``size``, and a worker idle for ``idle_timeout`` seconds exits: between
deployments the daemon is back to its resting thread count. Submitting never blocks: work
beyond ``size`` queues in order (overload slows down, it does not fail).
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)

Work = Callable[[], None]


@dataclass(frozen=True, slots=True)
class PoolStats:
    """A snapshot of a pool, for status pages, benchmarks and tests."""

    name: str
    size: int
    threads: int
    busy: int
    queued: int


class PoolClosed(RuntimeError):
    """Work submitted to a pool that was shut down."""


class BoundedPool:
    """At most ``size`` threads running submitted work, in submission order."""

    def __init__(self, name: str, size: int, idle_timeout: float = 10.0) -> None:
        if size < 1:
            raise ValueError(f"pool {name}: size must be >= 1, not {size}")
        self.name = name
        self.size = size
        self._idle_timeout = idle_timeout
        self._queue: collections.deque[Work] = collections.deque()
        self._cond = threading.Condition()
        self._threads = 0
        self._idle = 0
        self._closed = False
        self._started = 0

    def submit(self, work: Work) -> None:
        """Queue ``work``; it runs in a worker thread as soon as one is free. Exceptions it
        raises are logged (work reports its own outcome, e.g. by telling an actor)."""
        with self._cond:
            if self._closed:
                raise PoolClosed(f"pool {self.name} is shut down")
            self._queue.append(work)
            if self._idle > len(self._queue) - 1:
                self._cond.notify()
            elif self._threads < self.size:
                self._threads += 1
                self._started += 1
                thread = threading.Thread(
                    target=self._worker, name=f"{self.name}-{self._started}", daemon=True
                )
                thread.start()

    def stats(self) -> PoolStats:
        """How busy the pool is now."""
        with self._cond:
            busy = self._threads - self._idle
            return PoolStats(self.name, self.size, self._threads, busy, len(self._queue))

    def shutdown(self, timeout: float = 10.0) -> bool:
        """Refuse new work, drop what is queued, let running work end; True if every worker
        left within ``timeout`` seconds."""
        with self._cond:
            self._closed = True
            dropped = len(self._queue)
            self._queue.clear()
            self._cond.notify_all()
            left = self._cond.wait_for(lambda: self._threads == 0, timeout)
        if dropped:
            logger.warning("pool %s shut down with %d queued works dropped", self.name, dropped)
        return left

    def _worker(self) -> None:
        while True:
            with self._cond:
                self._idle += 1
                got = self._cond.wait_for(lambda: self._queue or self._closed, self._idle_timeout)
                self._idle -= 1
                if not got or not self._queue:
                    self._threads -= 1
                    self._cond.notify_all()
                    return
                work = self._queue.popleft()
            try:
                work()
            except Exception:
                logger.exception("pool %s: unhandled error in submitted work", self.name)
