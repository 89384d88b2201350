"""Errors of the store.

::

    KadeployError
    └── StoreError                 the database cannot be opened, read or written
        ├── UnknownDeployment      no deployment has this id
        ├── UnknownNode            the deployment has no record for this node
        └── InvalidRecord          a write names a status, state or stream that does not exist

``sqlite3`` exceptions are translated into :class:`StoreError` at this package's boundary, with
the database path in the message, so callers catch one family.
"""

from __future__ import annotations

from kadeploy_core.errors import KadeployError


class StoreError(KadeployError):
    """The deployment database cannot be opened, read or written."""


class UnknownDeployment(StoreError):
    """No deployment has this id."""

    def __init__(self, deployment_id: str) -> None:
        self.deployment_id = deployment_id
        super().__init__(f"no deployment with id {deployment_id!r}")


class UnknownNode(StoreError):
    """The deployment exists but has no record for this node."""

    def __init__(self, deployment_id: str, node: str, hint: str = "") -> None:
        self.deployment_id = deployment_id
        self.node = node
        super().__init__(f"deployment {deployment_id} has no node {node!r}{hint}")


class InvalidRecord(StoreError):
    """A write carries a value the store cannot record (unknown status, state or stream)."""
