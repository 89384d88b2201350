"""Batching sent writes: the pending buffer, what one batch did, and the write counters.

The StoreActor keeps sent writes in a :class:`WriteBuffer` and writes them all in one
transaction (``Store.write_batch``). When to write is decided by the mailbox, not by a timer:
the first write put in an empty buffer makes the actor tell itself a flush message, and
since the mailbox is FIFO, every write queued before that message joins the batch. Under
light load a batch is one write, written at once; under heavy load batches grow by
themselves, up to :data:`MAX_BATCH` (then the buffer is written without waiting for the
flush message).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

from kadeployd.events.types import Event
from kadeployd.store.writes import Write

logger = logging.getLogger(__name__)

MAX_BATCH = 5_000
"""Writes in one transaction at most: bounds the time a batch holds the database and the
memory of the pending buffer."""


@dataclass(frozen=True, slots=True)
class BatchResult:
    """What one batch transaction did."""

    applied: int
    """Writes that changed the database."""
    ignored: int
    """Late or stray writes that changed nothing (a state after the node's final one)."""
    dropped: int
    """Writes refused (unknown deployment or node, invalid value): logged, rolled back to
    their savepoint, the rest of the batch kept."""
    events: tuple[Event, ...]
    """What the committed batch published, in commit order."""


@dataclass(slots=True)
class WriteStats:
    """Counters of one Store's writes since it was opened."""

    transactions: int = 0
    """Write transactions committed: batches and synchronous writes."""
    rows: int = 0
    """Writes of nodes and deployments that changed the database (a state, a log line, ...),
    batched or not."""
    batches: int = 0
    """Batch transactions committed."""
    largest_batch: int = 0
    ignored: int = 0
    dropped: int = 0
    lost: int = 0
    """Sent writes lost with a batch whose transaction failed as a whole (the disk)."""

    def as_dict(self) -> dict[str, int]:
        """The counters by name."""
        return asdict(self)

    def summary(self) -> str:
        """The line the StoreActor logs when it stops (a benchmark parses it)."""
        return f"store: wrote {self.rows} rows in {self.transactions} transactions"


class WriteBuffer:
    """The pending sent writes of a StoreActor; used by its thread only."""

    def __init__(self, limit: int = MAX_BATCH) -> None:
        if limit < 1:
            raise ValueError(f"a batch holds at least 1 write, not {limit}")
        self.limit = limit
        self._writes: list[Write] = []

    def add(self, write: Write) -> bool:
        """Buffer ``write``; True if the buffer was empty (the caller schedules a flush)."""
        self._writes.append(write)
        return len(self._writes) == 1

    @property
    def full(self) -> bool:
        """Whether the buffer reached its limit (write it now)."""
        return len(self._writes) >= self.limit

    def take(self) -> list[Write]:
        """Every pending write, oldest first; the buffer is empty afterwards."""
        writes, self._writes = self._writes, []
        return writes

    def __len__(self) -> int:
        return len(self._writes)
