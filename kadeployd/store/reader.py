"""Read-only access for threads other than the StoreActor's (API, CLI tools, tests)."""

from __future__ import annotations

import logging
from pathlib import Path

from kadeployd.store.connection import open_reader
from kadeployd.store.queries import StoreQueries

logger = logging.getLogger(__name__)


class StoreReader(StoreQueries):
    """The read methods of :class:`~kadeployd.store.Store` over a read-only connection.

    It never writes (``mode=ro``, ``query_only``), never blocks the writer (WAL) and may be
    shared by several threads: calls are serialised on one connection. The database must
    exist: the StoreActor creates it when it starts.
    """

    def __init__(self, path: Path) -> None:
        super().__init__(Path(path), open_reader(Path(path)))
