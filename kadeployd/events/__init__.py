"""Typed events of deployments, pushed by the store to subscribers through one hub.

* :mod:`~kadeployd.events.types`: the frozen event dataclasses (``NodeStateChanged``, ...).
* :class:`EventHub`: thread-safe publish/subscribe per deployment, a bounded queue per
  subscriber; a subscriber that lags is told so and re-reads the database.
"""

from kadeployd.events.hub import DEFAULT_QUEUE_SIZE, Delivery, EventHub, Subscription, Waker
from kadeployd.events.types import (
    EVENT_TYPES,
    DeploymentEnded,
    Event,
    NodeLogged,
    NodeProgress,
    NodeStateChanged,
)

__all__ = [
    "DEFAULT_QUEUE_SIZE",
    "EVENT_TYPES",
    "Delivery",
    "DeploymentEnded",
    "Event",
    "EventHub",
    "NodeLogged",
    "NodeProgress",
    "NodeStateChanged",
    "Subscription",
    "Waker",
]
