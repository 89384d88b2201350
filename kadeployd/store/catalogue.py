"""The environment catalogue (``kaenv``): registered environments, their versions and owners.

Two mixins over the ``environments`` table: :class:`CatalogueReads` (shared by the writer and
:class:`~kadeployd.store.StoreReader`) and :class:`CatalogueWrites` (the writer only, so every
change goes through the StoreActor). Who may *see* an environment is decided by the caller
(the API), not here: these methods select by name, owner and version only.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from kadeployd.store.errors import InvalidRecord, StoreError

logger = logging.getLogger(__name__)

VISIBILITIES = ("private", "shared", "public")


class UnknownEnvironment(StoreError):
    """No registered environment matches."""

    def __init__(self, owner: str, name: str, version: int | None) -> None:
        self.owner = owner
        self.name = name
        self.version = version
        which = f"version {version} of " if version is not None else ""
        super().__init__(f"no {which}environment {name!r} owned by {owner!r}")


class EnvironmentExists(StoreError):
    """An environment with this name, version and owner is already registered."""

    def __init__(self, owner: str, name: str, version: int) -> None:
        self.owner = owner
        self.name = name
        self.version = version
        super().__init__(
            f"environment {name!r} version {version} of {owner!r} is already registered; "
            f"give the description a higher version or delete that one first"
        )


@dataclass(frozen=True, slots=True)
class EnvironmentRecord:
    """One registered version of an environment."""

    id: int
    name: str
    version: int
    owner: str
    visibility: str
    description: Mapping[str, Any]
    """The validated description as JSON values (file paths absolute, on the server)."""
    created_at: float
    checksums: Mapping[str, str] = field(default_factory=dict)
    """md5 of its files by key (``image.file``...), as recorded at registration or by the
    latest checksum update (Kadeploy3's ``kaenv3 --update-image-checksum``)."""


_SELECT = """
SELECT * FROM environments
WHERE (:name IS NULL OR name = :name) AND (:owner IS NULL OR owner = :owner)
  AND (:version IS NULL OR version = :version)
  AND (:pattern IS NULL OR name LIKE :pattern ESCAPE '\\')
ORDER BY name, owner, version DESC
"""


class CatalogueReads:
    """Reads of the catalogue; mixed into StoreQueries."""

    def _reading(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError  # provided by StoreQueries

    def environments(
        self,
        name: str | None = None,
        owner: str | None = None,
        version: int | None = None,
        pattern: str | None = None,
    ) -> list[EnvironmentRecord]:
        """Registered environments matching the filters, by name, owner, newest version first.

        ``pattern`` is Kadeploy3's ``kaenv3 -l PATTERN``: a name where ``%`` stands for any
        text and ``_`` for one character (SQL LIKE, case-insensitive for ASCII letters)."""
        params = {"name": name, "owner": owner, "version": version, "pattern": pattern}
        with self._reading() as conn:
            return [_record(row) for row in conn.execute(_SELECT, params)]

    def environment(self, owner: str, name: str, version: int | None = None) -> EnvironmentRecord:
        """One version of an environment (the latest if ``version`` is None)."""
        found = self.environments(name=name, owner=owner, version=version)
        if not found:
            raise UnknownEnvironment(owner, name, version)
        return found[0]


class CatalogueWrites:
    """Changes to the catalogue; mixed into Store (the StoreActor's messages)."""

    def _writing(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError  # provided by Store

    def add_environment(
        self,
        *,
        name: str,
        version: int,
        owner: str,
        visibility: str,
        description: Mapping[str, Any],
        at: float | None = None,
        checksums: Mapping[str, str] | None = None,
    ) -> EnvironmentRecord:
        """Register a new version; :class:`EnvironmentExists` if it is already there."""
        if visibility not in VISIBILITIES:
            raise InvalidRecord(f"visibility must be one of {', '.join(VISIBILITIES)}")
        try:
            text = json.dumps(dict(description), sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidRecord(f"description cannot be stored as JSON: {exc}") from exc
        now = time.time() if at is None else float(at)
        with self._writing() as conn:
            if _exists(conn, owner, name, version):
                raise EnvironmentExists(owner, name, version)
            cursor = conn.execute(
                "INSERT INTO environments "
                "(name, version, owner, visibility, description, created_at, checksums) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (name, version, owner, visibility, text, now, json.dumps(dict(checksums or {}))),
            )
            row = conn.execute(
                "SELECT * FROM environments WHERE id = ?", (cursor.lastrowid,)
            ).fetchone()
        logger.info("environment %s version %d of %s registered", name, version, owner)
        return _record(row)

    def delete_environment(self, owner: str, name: str, version: int) -> bool:
        """Remove one version; False if it was not registered."""
        with self._writing() as conn:
            cursor = conn.execute(
                "DELETE FROM environments WHERE owner = ? AND name = ? AND version = ?",
                (owner, name, version),
            )
            deleted = cursor.rowcount > 0
        if deleted:
            logger.info("environment %s version %d of %s deleted", name, version, owner)
        return deleted

    def set_environment_visibility(
        self, owner: str, name: str, version: int, visibility: str
    ) -> bool:
        """Change who may see one version; False if it is not registered."""
        if visibility not in VISIBILITIES:
            raise InvalidRecord(f"visibility must be one of {', '.join(VISIBILITIES)}")
        with self._writing() as conn:
            cursor = conn.execute(
                "UPDATE environments SET visibility = ? "
                "WHERE owner = ? AND name = ? AND version = ?",
                (visibility, owner, name, version),
            )
            return cursor.rowcount > 0

    def change_environment(
        self,
        owner: str,
        name: str,
        version: int,
        *,
        toggle_destructive: bool = False,
        checksums: Mapping[str, str] | None = None,
    ) -> bool:
        """Flip the description's ``destructive`` tag and/or record new file checksums (merged
        over the recorded ones); False if the version is not registered."""
        with self._writing() as conn:
            row = conn.execute(
                "SELECT description, checksums FROM environments "
                "WHERE owner = ? AND name = ? AND version = ?",
                (owner, name, version),
            ).fetchone()
            if row is None:
                return False
            description = json.loads(row["description"])
            if toggle_destructive:
                description["destructive"] = not bool(description.get("destructive", False))
            recorded = json.loads(row["checksums"] or "{}")
            recorded.update(checksums or {})
            conn.execute(
                "UPDATE environments SET description = ?, checksums = ? "
                "WHERE owner = ? AND name = ? AND version = ?",
                (
                    json.dumps(description, sort_keys=True),
                    json.dumps(recorded, sort_keys=True),
                    owner,
                    name,
                    version,
                ),
            )
        return True


def _exists(conn: sqlite3.Connection, owner: str, name: str, version: int) -> bool:
    row = conn.execute(
        "SELECT 1 FROM environments WHERE owner = ? AND name = ? AND version = ?",
        (owner, name, version),
    ).fetchone()
    return row is not None


def _record(row: sqlite3.Row) -> EnvironmentRecord:
    return EnvironmentRecord(
        id=row["id"],
        name=row["name"],
        version=row["version"],
        owner=row["owner"],
        visibility=row["visibility"],
        description=json.loads(row["description"]),
        created_at=row["created_at"],
        checksums=json.loads(row["checksums"] or "{}"),
    )
