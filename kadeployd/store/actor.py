"""StoreActor: the daemon's only writer of the database, one thread, one connection.

SQLite connections belong to the thread that opened them, so the actor opens its connection in
``on_start`` (its own thread) and closes it in ``on_stop`` or ``on_failure`` (only one of them
runs). Everything it knows is in the file: a StoreActor restarted after a crash opens the same
file and carries on; it does *not* call :meth:`Store.mark_interrupted` (only the daemon's
start-up does), so deployments keep running across a store restart.

Two ways in:

* **Sent writes** (what nodes and deployment managers report): ``submit(write)`` with one of
  the messages of :mod:`kadeployd.store.writes`, through a proxy, or the same message told to
  the actor's ref (:func:`kadeployd.actors.directory.send`). It returns at once and never
  raises. The actor buffers the writes and writes them many per transaction, a savepoint
  each (see :mod:`kadeployd.store.batch`): a bad write is logged and dropped alone, a slow
  disk only makes the batches bigger. Nothing that sends ever waits for the database.
* **Asks**: every other public method of :class:`~kadeployd.store.Store` is a message;
  ``store.create_deployment(...)`` returns a future, ``.get(timeout=...)`` gives its result or
  its :class:`StoreError` (the actor lives on). Before any ask touches the database, the
  pending sent writes are written, so a caller reads its own sent writes.

After each committed transaction, the events it produced (with the seqs the database gave
their rows) are published on the :class:`~kadeployd.events.EventHub` given at start. A
restarted StoreActor makes the hub's subscribers re-read the database once: writes buffered by
its predecessor may be lost, never half-written.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import pykka
from pykka.typing import ActorMemberMixin, proxy_field, proxy_method

from kadeployd.events.hub import EventHub
from kadeployd.events.types import Event
from kadeployd.store.batch import MAX_BATCH, WriteBuffer
from kadeployd.store.connection import open_writer
from kadeployd.store.errors import StoreError
from kadeployd.store.store import Store
from kadeployd.store.writes import (
    WRITE_TYPES,
    AppendLog,
    FinishDeployment,
    FinishNode,
    RecordProgress,
    RecordState,
    Write,
    Writes,
)
from kadeployd.supervision import SupervisedActor

logger = logging.getLogger(__name__)

SUMMARY = "store: wrote %d rows in %d transactions"
"""Logged once (INFO) when the actor ends; a benchmark parses it."""


@dataclass(frozen=True, slots=True)
class _Flush:
    """Write the pending buffer: told by the actor to itself with the first buffered write."""


class StoreActor(SupervisedActor, Store):
    """Holds the writer :class:`Store`; start with ``StoreActor.start(path=<db file>,
    hub=<EventHub>)``. ``batch_limit`` bounds the writes of one transaction."""

    def __init__(
        self, path: Path, hub: EventHub | None = None, batch_limit: int = MAX_BATCH
    ) -> None:
        SupervisedActor.__init__(self)
        Store.__init__(self, Path(path), None)
        self._hub = hub
        self._buffer = WriteBuffer(batch_limit)

    def on_start(self) -> None:
        self._attach(open_writer(self._path))
        logger.info("store actor started on %s", self._path)
        if self._hub is not None:
            self._hub.resync()  # a predecessor may have died with writes unpublished

    def submit(self, write: Write) -> None:
        """Buffer ``write`` for the next batch; returns at once and never raises (a write the
        store refuses is logged and dropped when its batch is written)."""
        if not isinstance(write, WRITE_TYPES):
            logger.error("store: not a write, dropped: %r", write)
            return
        if self._buffer.add(write):
            self.actor_ref.tell(_Flush())
        if self._buffer.full:
            self._flush()

    def stats(self) -> dict[str, int]:
        """The write counters (transactions, rows, batches, ...) and the writes pending."""
        return {**super().stats(), "pending": len(self._buffer)}

    def on_receive(self, message: Any) -> Any:
        """Sent writes told to the ref (like :meth:`submit`), and the actor's own flushes."""
        match message:
            case _Flush():
                self._flush()
            case RecordState() | FinishNode() | AppendLog() | RecordProgress() | FinishDeployment():
                self.submit(message)
            case Writes(writes):
                for write in writes:
                    self.submit(write)
            case _:
                return super().on_receive(message)
        return None

    def on_stop(self) -> None:
        self._flush()
        self._close_with_summary()
        super().on_stop()

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # The failed call's transaction was rolled back by Store._writing before this runs.
        try:
            self._flush()
        except Exception:  # the failure may be the database's own: keep the original one
            logger.exception("store: pending writes lost with the failed actor")
        self._close_with_summary()
        super().on_failure(exception_type, exception_value, traceback)

    # --- plumbing ---------------------------------------------------------------------------

    def _flush(self) -> None:
        """Write the pending buffer in one transaction; a batch that fails as a whole (the
        disk) is logged and lost, so that no sender ever sees the store fail."""
        writes = self._buffer.take()
        if not writes:
            return
        try:
            self.write_batch(writes)
        except StoreError as exc:
            self._stats.lost += len(writes)
            logger.error("store: a batch of %d writes is lost: %s", len(writes), exc)

    def _reading(self) -> AbstractContextManager[sqlite3.Connection]:
        self._flush()  # read-your-writes for whoever asks
        return super()._reading()

    def _writing(self) -> AbstractContextManager[sqlite3.Connection]:
        self._flush()  # sent writes keep their order before an asked write
        return super()._writing()

    def _after_commit(self, events: Sequence[Event]) -> None:
        if self._hub is not None and events:
            self._hub.publish_all(events)

    def _close_with_summary(self) -> None:
        self.close()
        logger.info(SUMMARY, self._stats.rows, self._stats.transactions)


class StoreProxy(ActorMemberMixin, pykka.ActorProxy[StoreActor]):
    """Typed proxy of a StoreActor: ``cast(StoreProxy, ref.proxy())``."""

    path = proxy_field(StoreActor.path)
    submit = proxy_method(StoreActor.submit)
    write_batch = proxy_method(StoreActor.write_batch)
    stats = proxy_method(StoreActor.stats)
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
