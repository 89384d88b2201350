"""Deployment rights (Kadeploy3 ``karights``): (user, node or ``*``, partition or ``*``).

:class:`RightsReads` answers "which of these nodes may this user deploy on this partition";
:class:`RightsWrites` grants and revokes (the StoreActor only). Whether the *caller* may grant
(admins only) is the API's business.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass

from kadeployd.store.errors import InvalidRecord

logger = logging.getLogger(__name__)

ANY = "*"
"""Every node, or every partition."""


@dataclass(frozen=True, slots=True)
class Right:
    """``user`` may deploy ``node`` (or every node) on ``partition`` (or any partition)."""

    user: str
    node: str
    partition: str


class RightsReads:
    """Reads of the rights table; mixed into StoreQueries."""

    def _reading(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError  # provided by StoreQueries

    def rights(self, user: str | None = None, node: str | None = None) -> list[Right]:
        """Rights held, optionally by ``user`` and/or on ``node`` (``*`` rows included)."""
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT user, node, partition FROM rights "
                "WHERE (:user IS NULL OR user = :user) "
                "AND (:node IS NULL OR node = :node OR node = '*') "
                "ORDER BY user, node, partition",
                {"user": user, "node": node},
            )
            return [Right(r["user"], r["node"], r["partition"]) for r in rows]

    def nodes_without_right(
        self, user: str, nodes: Iterable[tuple[str, str]]
    ) -> list[tuple[str, str]]:
        """The ``(node, partition)`` pairs ``user`` holds no right for, in the order given."""
        held = self.rights(user=user)
        return [
            (node, partition)
            for node, partition in nodes
            if not any(r.node in (node, ANY) and r.partition in (partition, ANY) for r in held)
        ]


class RightsWrites:
    """Grants and revocations; mixed into Store (the StoreActor's messages)."""

    def _writing(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError  # provided by Store

    def grant_rights(self, user: str, nodes: Iterable[str], partitions: Iterable[str]) -> int:
        """Grant every (node, partition) pair to ``user``; returns how many were new."""
        pairs = [(n, p) for n in nodes for p in partitions]
        if not user or not all(n and p for n, p in pairs):
            raise InvalidRecord("a right needs a user, a node (or *) and a partition (or *)")
        added = 0
        with self._writing() as conn:
            for node, partition in pairs:
                cursor = conn.execute(
                    "INSERT OR IGNORE INTO rights (user, node, partition) VALUES (?, ?, ?)",
                    (user, node, partition),
                )
                added += cursor.rowcount
        logger.info("rights granted to %s: %d new of %d", user, added, len(pairs))
        return added

    def revoke_rights(
        self, user: str, node: str | None = None, partition: str | None = None
    ) -> int:
        """Remove ``user``'s rights matching ``node`` and ``partition`` (None: any); count."""
        with self._writing() as conn:
            cursor = conn.execute(
                "DELETE FROM rights WHERE user = :user "
                "AND (:node IS NULL OR node = :node) "
                "AND (:partition IS NULL OR partition = :partition)",
                {"user": user, "node": node, "partition": partition},
            )
            removed = cursor.rowcount
        logger.info("rights revoked from %s: %d", user, removed)
        return removed
