"""The deployment database: SQLite in WAL mode at ``<state_dir>/kadeployd.db``.

::

    StoreActor (one thread)  --writes/reads-->  Store  --+
                                                         +--> kadeployd.db (WAL)
    StoreReader (any thread) --reads (mode=ro)-----------+

* :class:`Store`: the logic, usable without threads (tests, tools): ``Store.open(path)``.
* :class:`StoreActor`: the daemon's only writer; every Store method is a message, and the
  writes of nodes and deployments are *sent* (``submit(RecordState(...))``, see
  :mod:`~kadeployd.store.writes`), written in batched transactions, then published as events.
* :class:`StoreReader`: the same read methods for other threads (API), never blocking writes.
"""

from kadeployd.store.actor import StoreActor, StoreProxy
from kadeployd.store.batch import MAX_BATCH, BatchResult
from kadeployd.store.connection import DB_FILENAME, database_path
from kadeployd.store.errors import InvalidRecord, StoreError, UnknownDeployment, UnknownNode
from kadeployd.store.reader import StoreReader
from kadeployd.store.records import (
    ERROR_TAIL_CHARS,
    FINAL_NODE_STATES,
    PENDING,
    SUCCESS_NODE_STATES,
    DeploymentStatus,
    DeploymentView,
    HistoryEntry,
    LogLine,
    LogStream,
    NodeView,
)
from kadeployd.store.schema import MIGRATIONS, SCHEMA_VERSION
from kadeployd.store.store import INTERRUPTED, Store
from kadeployd.store.writes import (
    AppendLog,
    FinishDeployment,
    FinishNode,
    RecordProgress,
    RecordState,
    Write,
)

__all__ = [
    "DB_FILENAME",
    "ERROR_TAIL_CHARS",
    "FINAL_NODE_STATES",
    "INTERRUPTED",
    "MAX_BATCH",
    "MIGRATIONS",
    "PENDING",
    "SCHEMA_VERSION",
    "SUCCESS_NODE_STATES",
    "AppendLog",
    "BatchResult",
    "DeploymentStatus",
    "DeploymentView",
    "FinishDeployment",
    "FinishNode",
    "HistoryEntry",
    "InvalidRecord",
    "LogLine",
    "LogStream",
    "NodeView",
    "RecordProgress",
    "RecordState",
    "Store",
    "StoreActor",
    "StoreError",
    "StoreProxy",
    "StoreReader",
    "UnknownDeployment",
    "UnknownNode",
    "Write",
    "database_path",
]
