"""One thread for every timer of the daemon: variant timeouts, poll intervals, gather windows.

A :class:`threading.Timer` is a thread per timer; with a timeout and a poll per node, that is
two idle threads per node. Here one thread sleeps until the earliest deadline of a heap. The
callbacks run in that thread and must be quick and never block: they tell an actor, which
does the work. A cancelled timer is dropped lazily when it reaches the top of the heap.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)


class TimerHandle:
    """A scheduled call; :meth:`cancel` makes sure it does not run (if it has not yet)."""

    __slots__ = ("_callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self._callback: Callable[[], None] | None = callback
        self.cancelled = False

    def cancel(self) -> None:
        """Do not run the call."""
        self.cancelled = True
        self._callback = None

    def _fire(self) -> None:
        callback, self._callback = self._callback, None
        if callback is not None and not self.cancelled:
            callback()


class Scheduler:
    """Runs callbacks after delays, all from one thread started on first use.

    Scheduling takes no lock that the timer thread holds while it sleeps: a new timer is
    appended to an inbox (a deque, safe to append to from any thread) and the thread is woken
    only when the new deadline comes before the one it sleeps until. Thousands of node actors
    arming their timeouts at once therefore do not queue on one lock.
    """

    def __init__(self, name: str = "timers") -> None:
        self._name = name
        self._heap: list[tuple[float, int, TimerHandle]] = []
        self._inbox: collections.deque[TimerHandle] = collections.deque()
        self._counter = itertools.count()
        self._wakeup = threading.Event()
        self._sleeping_until = float("inf")
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        """Run ``callback()`` in ``delay`` seconds (at once if ``delay`` <= 0)."""
        handle = TimerHandle(time.monotonic() + max(0.0, delay), callback)
        if self._stopped:
            handle.cancel()
            return handle
        self._inbox.append(handle)
        if self._thread is None:
            with self._start_lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                    self._thread.start()
        if handle.when < self._sleeping_until:
            self._wakeup.set()
        return handle

    def pending(self) -> int:
        """Timers scheduled and not yet due (cancelled ones included until they are dropped)."""
        return len(self._heap) + len(self._inbox)

    def stop(self, timeout: float = 5.0) -> None:
        """Drop every pending timer and end the thread."""
        self._stopped = True
        self._wakeup.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self._heap.clear()
        self._inbox.clear()

    def _run(self) -> None:
        heap = self._heap
        while not self._stopped:
            while self._inbox:
                handle = self._inbox.popleft()
                heapq.heappush(heap, (handle.when, next(self._counter), handle))
            while heap and heap[0][2].cancelled:
                heapq.heappop(heap)
            now = time.monotonic()
            if heap and heap[0][0] <= now:
                handle = heapq.heappop(heap)[2]
                try:
                    handle._fire()
                except Exception:
                    logger.exception("timer callback failed")
                continue
            # Publish the deadline before looking at the inbox once more: a timer appended
            # after that look sees the new deadline and sets the event.
            self._sleeping_until = heap[0][0] if heap else float("inf")
            self._wakeup.clear()
            if self._inbox:
                self._sleeping_until = float("-inf")
                continue
            self._wakeup.wait(None if not heap else max(0.0, heap[0][0] - now))
            self._sleeping_until = float("-inf")
