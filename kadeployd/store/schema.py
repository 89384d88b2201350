"""The database schema, as an ordered list of migrations applied when the writer opens.

``MIGRATIONS[i]`` takes the database from version ``i`` to ``i + 1``; the version reached is
recorded in ``schema_version``. A migration is never edited once released: a change to the
schema is a new script appended to the list. Each one runs in its own transaction, so a
failure leaves the database at the previous version.
"""

from __future__ import annotations

import logging
import sqlite3
import time

from kadeployd.store.errors import StoreError

logger = logging.getLogger(__name__)

_BOOTSTRAP = """
CREATE TABLE IF NOT EXISTS schema_version (
    version    INTEGER PRIMARY KEY,
    applied_at REAL NOT NULL
)
"""

_V1 = """
CREATE TABLE deployments (
    id                  TEXT PRIMARY KEY,          -- uuid4 hex
    user                TEXT NOT NULL,
    environment_name    TEXT NOT NULL,
    environment_version INTEGER,
    anonymous           INTEGER NOT NULL DEFAULT 0 CHECK (anonymous IN (0, 1)),
    environment         TEXT NOT NULL,             -- description, JSON
    options             TEXT NOT NULL,             -- JSON
    node_count          INTEGER NOT NULL DEFAULT 0,
    min_nodes           INTEGER CHECK (min_nodes IS NULL OR min_nodes >= 1),
    status              TEXT NOT NULL DEFAULT 'running'
                        CHECK (status IN ('running', 'succeeded', 'failed', 'aborted')),
    reason              TEXT NOT NULL DEFAULT '',
    created_at          REAL NOT NULL,
    finished_at         REAL
);
CREATE INDEX deployments_by_created ON deployments (created_at);
CREATE INDEX deployments_by_status ON deployments (status, created_at);
CREATE INDEX deployments_by_user ON deployments (user, created_at);

CREATE TABLE deployment_nodes (
    deployment_id   TEXT NOT NULL REFERENCES deployments (id) ON DELETE CASCADE,
    node            TEXT NOT NULL,
    position        INTEGER NOT NULL,              -- order in which the nodes were added
    state           TEXT NOT NULL,
    macrostep       TEXT,
    variant         TEXT,
    attempt         INTEGER NOT NULL DEFAULT 0,
    step_started_at REAL NOT NULL,
    started_at      REAL,
    finished_at     REAL,
    final           INTEGER NOT NULL DEFAULT 0 CHECK (final IN (0, 1)),
    error_step      TEXT,
    error_message   TEXT,
    PRIMARY KEY (deployment_id, node)
);
CREATE INDEX deployment_nodes_by_position ON deployment_nodes (deployment_id, position);
CREATE INDEX deployment_nodes_by_node ON deployment_nodes (node, step_started_at);
CREATE INDEX deployment_nodes_unfinished ON deployment_nodes (deployment_id) WHERE final = 0;

CREATE TABLE state_history (
    id            INTEGER PRIMARY KEY,
    deployment_id TEXT NOT NULL,
    node          TEXT NOT NULL,
    state         TEXT NOT NULL,
    macrostep     TEXT,
    variant       TEXT,
    attempt       INTEGER NOT NULL,
    message       TEXT NOT NULL DEFAULT '',
    at            REAL NOT NULL,
    FOREIGN KEY (deployment_id, node)
        REFERENCES deployment_nodes (deployment_id, node) ON DELETE CASCADE
);
CREATE INDEX state_history_by_node ON state_history (deployment_id, node, id);

CREATE TABLE node_logs (
    id            INTEGER PRIMARY KEY,
    deployment_id TEXT NOT NULL,
    node          TEXT NOT NULL,
    at            REAL NOT NULL,
    stream        TEXT NOT NULL CHECK (stream IN ('cmd', 'stdout', 'stderr', 'info')),
    text          TEXT NOT NULL,
    FOREIGN KEY (deployment_id, node)
        REFERENCES deployment_nodes (deployment_id, node) ON DELETE CASCADE
);
CREATE INDEX node_logs_by_node ON node_logs (deployment_id, node, id);

-- Used by later issues (environment catalogue, rights); the schema is fixed now.
CREATE TABLE environments (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL,
    version     INTEGER NOT NULL,
    owner       TEXT NOT NULL,
    visibility  TEXT NOT NULL CHECK (visibility IN ('private', 'shared', 'public')),
    description TEXT NOT NULL,                     -- JSON
    created_at  REAL NOT NULL,
    UNIQUE (name, version, owner)
);
CREATE INDEX environments_by_owner ON environments (owner, name);
CREATE INDEX environments_by_visibility ON environments (visibility, name);

CREATE TABLE rights (
    user      TEXT NOT NULL,
    node      TEXT NOT NULL,                       -- a node name or '*'
    partition TEXT NOT NULL,                       -- a partition or '*'
    PRIMARY KEY (user, node, partition)
);
CREATE INDEX rights_by_node ON rights (node);
"""

_V2 = """
-- Image transfer progress of a node (bytes sent or relayed of the image, and its size);
-- NULL until the node's first transfer reports.
ALTER TABLE deployment_nodes ADD COLUMN bytes_done INTEGER;
ALTER TABLE deployment_nodes ADD COLUMN bytes_total INTEGER;
"""

_V3 = """
-- Checksums of an environment's files (kaenv3 --update-*-checksum): JSON, file key ->
-- md5 hex digest (image.file, preinstall.archive, postinstalls[N].archive).
ALTER TABLE environments ADD COLUMN checksums TEXT NOT NULL DEFAULT '{}';
"""

MIGRATIONS: tuple[str, ...] = (_V1, _V2, _V3)
"""Every schema change, oldest first. Append only."""

SCHEMA_VERSION = len(MIGRATIONS)
"""The version this code reads and writes."""


def current_version(conn: sqlite3.Connection) -> int:
    """The schema version recorded in the database; 0 for an empty database."""
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).fetchone()
    if exists is None:
        return 0
    row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    return int(row[0]) if row is not None and row[0] is not None else 0


def migrate(conn: sqlite3.Connection, path: str) -> int:
    """Bring the database up to :data:`SCHEMA_VERSION`; return the version it was at.

    ``conn`` must be in autocommit mode (``isolation_level=None``): the transactions are the
    ones written here. ``path`` is only used in messages.
    """
    conn.execute(_BOOTSTRAP)
    found = current_version(conn)
    if found > SCHEMA_VERSION:
        raise StoreError(
            f"{path}: database schema version {found} is newer than this kadeployd knows "
            f"(version {SCHEMA_VERSION}); upgrade kadeployd or use another state_dir"
        )
    for version in range(found + 1, SCHEMA_VERSION + 1):
        logger.info("%s: applying schema migration %d", path, version)
        try:
            # executescript commits any open transaction first, then runs the script as is:
            # the BEGIN inside it opens the transaction that the COMMIT below closes.
            conn.executescript("BEGIN IMMEDIATE;\n" + MIGRATIONS[version - 1])
            conn.execute(
                "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                (version, time.time()),
            )
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise StoreError(f"{path}: schema migration {version} failed: {exc}") from exc
    return found
