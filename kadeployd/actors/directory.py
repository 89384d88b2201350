"""Reaching the permanent actors across their restarts.

Deployments outlive incarnations of the permanent actors: when the StoreActor crashes and the
supervisor starts a new one, a node actor's next write must go to the new one. Callers
therefore never keep a proxy: they name the service, and :func:`call` looks up the current
incarnation, asks it with a timeout, and, if it died on the way, waits for its successor and
asks once more. Reports that need no answer are told: :func:`send` a message (the store's
writes: ``send(services, STORE, RecordState(...))``) or :func:`tell` a proxy call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

import pykka

from kadeploy_core.errors import KadeployError
from kadeployd.supervision import ChildUnavailable, UnknownChild

logger = logging.getLogger(__name__)

STORE = "store"
REBOOT = "reboot"
PXE = "pxe"
CONFIG = "config"
NODES = "nodes"


class ServiceUnavailable(KadeployError):
    """A permanent actor did not answer, even after a restart."""


class Directory(Protocol):
    """Finds the current incarnation of a permanent actor (the Supervisor is one)."""

    def child(self, name: str, timeout: float = 5.0) -> pykka.ActorRef[Any]:
        """The current ActorRef of ``name``, waiting while it restarts."""
        ...


def call(
    directory: Directory,
    name: str,
    method: Callable[[pykka.ActorProxy[Any]], pykka.Future[Any]],
    timeout: float = 10.0,
) -> Any:
    """``method(proxy).get(timeout)`` on the current incarnation, retried once after a restart."""
    for attempt in (1, 2):
        try:
            proxy = directory.child(name, timeout).proxy()
            return method(proxy).get(timeout=timeout)
        except pykka.ActorDeadError:
            logger.info("%s died during a call (attempt %d): asking its successor", name, attempt)
        except (ChildUnavailable, UnknownChild) as exc:
            raise ServiceUnavailable(f"{name} is not available: {exc}") from None
    raise ServiceUnavailable(f"{name} died twice during one call")


def tell(
    directory: Directory,
    name: str,
    method: Callable[[pykka.ActorProxy[Any]], object],
    wait: float = 5.0,
) -> None:
    """Fire-and-forget on the current incarnation; a dead one is looked up again once, waiting
    at most ``wait`` seconds for its restart."""
    for _attempt in (1, 2):
        try:
            method(directory.child(name, wait).proxy())
            return
        except pykka.ActorDeadError:
            continue
        except (ChildUnavailable, UnknownChild) as exc:
            logger.warning("cannot reach %s: %s", name, exc)
            return
    logger.warning("%s died twice while being told something", name)


def send(directory: Directory, name: str, message: object, wait: float = 5.0) -> None:
    """Tell ``message`` (a frozen message, e.g. a store write of
    :mod:`kadeployd.store.writes`) to the current incarnation of ``name``: no proxy is built
    and nothing waits for the actor, except while it restarts (at most ``wait`` seconds)."""
    for _attempt in (1, 2):
        try:
            directory.child(name, wait).tell(message)
            return
        except pykka.ActorDeadError:
            continue
        except (ChildUnavailable, UnknownChild) as exc:
            logger.warning("cannot reach %s: %s; %r dropped", name, exc, message)
            return
    logger.warning("%s died twice while being sent %r", name, message)
