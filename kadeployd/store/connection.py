"""Opening the database: the writer's connection and read-only ones.

The writer (one per daemon, owned by the StoreActor's thread) creates the directory and the
file, switches the database to WAL and applies the migrations. Readers open the file with
``mode=ro``: in WAL mode they see the last committed state and never block the writer.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

from kadeployd.store.errors import StoreError
from kadeployd.store.schema import SCHEMA_VERSION, current_version, migrate

logger = logging.getLogger(__name__)

DB_FILENAME = "kadeployd.db"

BUSY_TIMEOUT = 10.0
"""Seconds a statement waits for a lock (a checkpoint, another process) before failing."""


def database_path(state_dir: Path) -> Path:
    """Where the daemon keeps its database: ``<state_dir>/kadeployd.db``."""
    return Path(state_dir) / DB_FILENAME


def open_writer(path: Path) -> sqlite3.Connection:
    """Open (creating it and its directory if needed) and migrate the database at ``path``.

    The connection is bound to the calling thread and in autocommit mode: every write
    transaction is an explicit ``BEGIN IMMEDIATE`` ... ``COMMIT``.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"{path}: cannot create the directory {path.parent}: {exc}") from exc
    try:
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None)
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: cannot open the database: {exc}") from exc
    try:
        conn.row_factory = sqlite3.Row
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"{path}: cannot switch the database to WAL mode (got {mode!r})")
        # NORMAL in WAL mode: a commit survives a crash of the daemon; only an OS crash or power
        # loss can lose the last transactions, never corrupt the database.
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        previous = migrate(conn, str(path))
    except sqlite3.Error as exc:
        conn.close()
        raise StoreError(f"{path}: cannot prepare the database: {exc}") from exc
    except BaseException:
        conn.close()
        raise
    logger.info("%s: opened (schema version %d, was %d)", path, SCHEMA_VERSION, previous)
    return conn


def open_reader(path: Path) -> sqlite3.Connection:
    """Open the database at ``path`` read-only; it must exist and have the current schema.

    The connection may be used from any thread (the caller serialises its use).
    """
    uri = Path(path).absolute().as_uri() + "?mode=ro"
    try:
        conn = sqlite3.connect(
            uri, uri=True, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
        )
    except sqlite3.Error as exc:
        raise StoreError(
            f"{path}: cannot open the database read-only ({exc}); the daemon creates it when "
            f"its store starts"
        ) from exc
    try:
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA query_only = ON")
        found = current_version(conn)
    except sqlite3.Error as exc:
        conn.close()
        raise StoreError(f"{path}: cannot read the database: {exc}") from exc
    if found != SCHEMA_VERSION:
        conn.close()
        raise StoreError(
            f"{path}: database schema version {found}, this kadeployd reads version "
            f"{SCHEMA_VERSION}" + ("; the daemon has not created it yet" if found == 0 else "")
        )
    return conn
