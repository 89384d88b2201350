"""The writes that are *sent* to the store, not asked: one frozen dataclass per kind.

Each has the fields of the :class:`~kadeployd.store.Store` method of the same name
(``RecordState`` is ``record_state``, ...). They are built by whoever reports (node actors,
deployment managers) and handed to ``StoreActor.submit`` (or told, see
:func:`kadeployd.actors.directory.send`), which returns at once; the store writes them later
in batched transactions. ``at`` is stamped when the write is built, so a batch written a
little later still records when things happened.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from kadeployd.store.records import DeploymentStatus, LogStream

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RecordState:
    """A node entered a working state (see :meth:`Store.record_state`)."""

    deployment_id: str
    node: str
    state: str
    macrostep: str | None = None
    variant: str | None = None
    attempt: int = 0
    message: str = ""
    at: float = field(default_factory=time.time)


@dataclass(frozen=True, slots=True)
class FinishNode:
    """A node reached a final state (see :meth:`Store.finish_node`)."""

    deployment_id: str
    node: str
    state: str
    message: str = ""
    error_step: str | None = None
    at: float = field(default_factory=time.time)


@dataclass(frozen=True, slots=True)
class AppendLog:
    """A piece of a node's log (see :meth:`Store.append_log`)."""

    deployment_id: str
    node: str
    stream: LogStream | str
    text: str
    at: float = field(default_factory=time.time)


@dataclass(frozen=True, slots=True)
class RecordProgress:
    """How far a node's image transfer is (see :meth:`Store.record_progress`)."""

    deployment_id: str
    node: str
    bytes_done: int
    bytes_total: int


@dataclass(frozen=True, slots=True)
class FinishDeployment:
    """A deployment ended (see :meth:`Store.finish_deployment`)."""

    deployment_id: str
    status: DeploymentStatus | str
    reason: str = ""
    at: float = field(default_factory=time.time)


Write = RecordState | FinishNode | AppendLog | RecordProgress | FinishDeployment
"""Any write the store accepts without being asked."""


@dataclass(frozen=True, slots=True)
class Writes:
    """Several writes of one sender, told as one message: a node actor that records a state
    change and two log lines while handling one message sends them together."""

    writes: tuple[Write, ...]


WRITE_TYPES: tuple[type[Write], ...] = (
    RecordState,
    FinishNode,
    AppendLog,
    RecordProgress,
    FinishDeployment,
)
"""For ``isinstance`` checks and ``match``."""
