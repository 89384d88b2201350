"""EventHub: typed events from the store to whoever follows a deployment, Mopidy-listener style.

::

    StoreActor --publish_all(events) after each commit--> EventHub
                                                            |  one bounded queue per subscriber
                                          Subscription <----+----> Subscription
                                          (SSE stream)             (SSE stream, test, ...)

The publisher is the StoreActor's thread; subscribers live in other threads (uvicorn's event
loop, anyio workers, tests). The hub is therefore thread-safe and its publishing never waits
for a subscriber: each :class:`Subscription` has its own bounded queue and lock, held only to
append. A subscriber that falls behind by more than its queue holds is not grown without bound
and does not slow the publisher: its queue is emptied and it is marked *lagging*; further
events are dropped until it takes its delivery, which says ``lagged=True``. It then re-reads
the database from the last ``seq`` it sent, which is exact because events are published only
after their rows are committed (anything dropped is already in the database) and the
subscription queues again from the moment the lag is taken, before the re-read starts.

A subscriber is told that something is pending either by blocking in :meth:`Subscription.wait`
(threads) or through its ``waker``, a callback the publisher calls (outside every lock) when
the subscription goes from nothing pending to something pending. A waker must not block: an
asyncio consumer passes ``lambda: loop.call_soon_threadsafe(ready.set)``.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from kadeployd.events.types import EVENT_TYPES, Event

logger = logging.getLogger(__name__)

DEFAULT_QUEUE_SIZE = 16_384
"""Events a subscriber may have pending before it is marked lagging. A batch of the store
publishes up to a few events per write, so this holds a few full batches."""

Waker = Callable[[], None]
"""Called by the publisher's thread when a subscription gets something to take; must not block."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """What a subscriber takes at once: the events queued for it, in publication order."""

    events: tuple[Event, ...]
    lagged: bool
    """Events were dropped since the previous take: re-read the database from the last seq
    you have (events that follow this delivery are queued again)."""
    closed: bool
    """The subscription is closed (by its owner or by :meth:`EventHub.close`): stop."""


class Subscription:
    """One subscriber's bounded queue of the events of one deployment; see the module doc."""

    def __init__(
        self,
        hub: EventHub,
        deployment_id: str,
        kinds: frozenset[type[Event]],
        maxsize: int,
        waker: Waker | None,
    ) -> None:
        if maxsize < 1:
            raise ValueError(f"a subscription's queue holds at least 1 event, not {maxsize}")
        self.deployment_id = deployment_id
        self.kinds = kinds
        self.maxsize = maxsize
        self._hub = hub
        self._waker = waker
        self._cond = threading.Condition()
        self._queue: deque[Event] = deque()
        self._lagging = False
        self._closed = False
        self.dropped = 0
        """Events dropped because the subscriber lagged (for the log and for tests)."""
        self.lags = 0
        """How many times the subscriber was marked lagging."""

    # --- the subscriber's side ------------------------------------------------------------

    def take(self) -> Delivery:
        """Everything pending, at once, without waiting; resets the lagging mark."""
        with self._cond:
            events = tuple(self._queue)
            self._queue.clear()
            lagged, self._lagging = self._lagging, False
            return Delivery(events, lagged, self._closed)

    def wait(self, timeout: float) -> bool:
        """Block the calling thread until something can be taken (events, a lag, the close) or
        ``timeout`` seconds pass; whether something can be taken."""
        with self._cond:
            return self._cond.wait_for(self._pending, timeout)

    @property
    def lagging(self) -> bool:
        """Whether events were dropped since the last :meth:`take`."""
        with self._cond:
            return self._lagging

    @property
    def closed(self) -> bool:
        """Whether the subscription ended."""
        with self._cond:
            return self._closed

    def close(self) -> None:
        """Stop receiving events; idempotent."""
        self._hub._remove(self)
        self._end()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- the publisher's side -------------------------------------------------------------

    def _offer(self, events: Iterable[Event]) -> None:
        """Queue the events of this subscription's kinds; never blocks beyond the append."""
        wanted = [event for event in events if type(event) in self.kinds]
        if not wanted:
            return
        with self._cond:
            if self._closed:
                return
            idle = not self._pending()
            if self._lagging:
                self.dropped += len(wanted)
                return
            if len(self._queue) + len(wanted) > self.maxsize:
                self.dropped += len(self._queue) + len(wanted)
                self.lags += 1
                self._queue.clear()  # the database has all of it; free the memory now
                self._lagging = True
                logger.info(
                    "subscriber of deployment %s lags (%d events pending): it re-reads",
                    self.deployment_id,
                    self.maxsize,
                )
            else:
                self._queue.extend(wanted)
            self._cond.notify_all()
        if idle:
            self._wake()

    def _resync(self) -> None:
        """Mark the subscriber lagging: it re-reads the database once (e.g. after writes that
        were committed without being published)."""
        with self._cond:
            if self._closed:
                return
            idle = not self._pending()
            self._queue.clear()
            self._lagging = True
            self._cond.notify_all()
        if idle:
            self._wake()

    def _end(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._queue.clear()
            self._cond.notify_all()
        self._wake()

    def _pending(self) -> bool:
        return bool(self._queue) or self._lagging or self._closed

    def _wake(self) -> None:
        if self._waker is None:
            return
        try:
            self._waker()
        except Exception:  # a subscriber's bug must not reach the publisher
            logger.exception("waker of a subscriber of deployment %s failed", self.deployment_id)


class EventHub:
    """Routes published events to the subscriptions of their deployment; thread-safe."""

    def __init__(self, queue_size: int = DEFAULT_QUEUE_SIZE) -> None:
        self.queue_size = queue_size
        self._lock = threading.Lock()
        self._subscriptions: dict[str, tuple[Subscription, ...]] = {}
        self._closed = False

    def subscribe(
        self,
        deployment_id: str,
        *,
        kinds: Collection[type[Event]] = EVENT_TYPES,
        maxsize: int | None = None,
        waker: Waker | None = None,
    ) -> Subscription:
        """Receive the events of ``deployment_id`` of the types ``kinds`` published from now on.

        ``maxsize`` (default: the hub's ``queue_size``) bounds the queue; ``waker`` see the
        module doc. After :meth:`close`, the subscription returned is already closed.
        """
        subscription = Subscription(
            self, deployment_id, frozenset(kinds), maxsize or self.queue_size, waker
        )
        with self._lock:
            if not self._closed:
                current = self._subscriptions.get(deployment_id, ())
                self._subscriptions[deployment_id] = (*current, subscription)
                return subscription
        subscription._end()
        return subscription

    def publish(self, event: Event) -> None:
        """Deliver one event to its deployment's subscribers."""
        self.publish_all((event,))

    def publish_all(self, events: Iterable[Event]) -> None:
        """Deliver ``events`` (in this order) to the subscribers of their deployments; one
        append and at most one wake per subscriber. Never waits for a subscriber."""
        with self._lock:
            if not self._subscriptions:
                return
            subscriptions = dict(self._subscriptions)
        grouped: dict[str, list[Event]] = {}
        for event in events:
            if event.deployment_id in subscriptions:
                grouped.setdefault(event.deployment_id, []).append(event)
        for deployment_id, batch in grouped.items():
            for subscription in subscriptions[deployment_id]:
                subscription._offer(batch)

    def resync(self, deployment_id: str | None = None) -> None:
        """Make the subscribers of ``deployment_id`` (default: all) re-read the database once:
        for changes committed without being published (a store restarted after a crash, the
        daemon's shutdown recording deployments aborted)."""
        with self._lock:
            if deployment_id is None:
                targets = [s for subs in self._subscriptions.values() for s in subs]
            else:
                targets = list(self._subscriptions.get(deployment_id, ()))
        for subscription in targets:
            subscription._resync()

    def subscribers(self, deployment_id: str) -> int:
        """How many subscriptions follow ``deployment_id``."""
        with self._lock:
            return len(self._subscriptions.get(deployment_id, ()))

    def close(self) -> None:
        """End every subscription (the API stops); later subscriptions start closed."""
        with self._lock:
            self._closed = True
            targets = [s for subs in self._subscriptions.values() for s in subs]
            self._subscriptions.clear()
        for subscription in targets:
            subscription._end()

    def _remove(self, subscription: Subscription) -> None:
        with self._lock:
            current = self._subscriptions.get(subscription.deployment_id, ())
            left = tuple(s for s in current if s is not subscription)
            if left:
                self._subscriptions[subscription.deployment_id] = left
            else:
                self._subscriptions.pop(subscription.deployment_id, None)
