"""StoreActor: the daemon's only writer of the database, one thread, one connection.

SQLite connections belong to the thread that opened them, so the actor opens its connection in
``on_start`` (its own thread) and closes it in ``on_stop`` or ``on_failure`` (only one of them
runs). Everything it knows is in the file: a StoreActor restarted after a crash opens the same
file and carries on; it does *not* call :meth:`Store.mark_interrupted` (only the daemon's
start-up does), so deployments keep running across a store restart.

Every public method of :class:`~kadeployd.store.Store` is a message: through a proxy,
``store.record_state(...)`` returns a future. Use ``.get(timeout=...)`` to learn about errors
(:class:`StoreError` comes back to the caller and the actor lives on). A method called with
``.defer()`` that raises kills the actor (Pykka's rule for tells) and its supervisor restarts
it; the failed write is lost, the transaction rolled back.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import TracebackType

import pykka
from pykka.typing import ActorMemberMixin, proxy_field, proxy_method

from kadeployd.store.connection import open_writer
from kadeployd.store.store import Store
from kadeployd.supervision import SupervisedActor

logger = logging.getLogger(__name__)


class StoreActor(SupervisedActor, Store):
    """Holds the writer :class:`Store`; start with ``StoreActor.start(path=<db file>)``."""

    def __init__(self, path: Path) -> None:
        SupervisedActor.__init__(self)
        Store.__init__(self, Path(path), None)

    def on_start(self) -> None:
        self._attach(open_writer(self._path))
        logger.info("store actor started on %s", self._path)

    def on_stop(self) -> None:
        self.close()
        super().on_stop()

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # The failed call's transaction was rolled back by Store._writing before this runs.
        self.close()
        super().on_failure(exception_type, exception_value, traceback)


class StoreProxy(ActorMemberMixin, pykka.ActorProxy[StoreActor]):
    """Typed proxy of a StoreActor: ``cast(StoreProxy, ref.proxy())``."""

    path = proxy_field(StoreActor.path)
    create_deployment = proxy_method(StoreActor.create_deployment)
    add_nodes = proxy_method(StoreActor.add_nodes)
    record_state = proxy_method(StoreActor.record_state)
    finish_node = proxy_method(StoreActor.finish_node)
    record_progress = proxy_method(StoreActor.record_progress)
    append_log = proxy_method(StoreActor.append_log)
    append_logs = proxy_method(StoreActor.append_logs)
    finish_deployment = proxy_method(StoreActor.finish_deployment)
    mark_interrupted = proxy_method(StoreActor.mark_interrupted)
    deployment = proxy_method(StoreActor.deployment)
    deployments = proxy_method(StoreActor.deployments)
    running = proxy_method(StoreActor.running)
    nodes = proxy_method(StoreActor.nodes)
    node = proxy_method(StoreActor.node)
    history = proxy_method(StoreActor.history)
    log = proxy_method(StoreActor.log)
