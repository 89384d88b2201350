"""What one deployment asks for (the request) and the running job built from it (frozen)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kadeployd.environment import EnvironmentDescription

MOUNT_POINT = "/mnt/dest"
"""Where the deploy partition is mounted in the deploy env (Kadeploy3's path)."""


@dataclass(frozen=True, slots=True)
class DeploymentRequest:
    """A user's request, validated: environment, nodes, options."""

    user: str
    environment: EnvironmentDescription
    nodes: tuple[str, ...]
    authorized_keys: str = ""
    """The user's public keys (``-k``), appended to the deployed root's authorized_keys."""
    min_nodes: int | None = None
    deploy_partition: int | None = None
    """``-p``: overrides the node's configured deploy partition."""
    anonymous: bool = True
    """An environment sent with the request rather than taken from the catalogue."""

    def options(self) -> dict[str, Any]:
        """The options as recorded in the store."""
        return {"deploy_partition": self.deploy_partition, "keys": bool(self.authorized_keys)}


@dataclass(frozen=True, slots=True)
class BootFilesRef:
    """Kernel and initrd of the environment, published on the TFTP server."""

    kernel: str
    initrd: str | None


@dataclass(frozen=True, slots=True)
class DeploymentJob:
    """A request being carried out under its deployment id."""

    deployment_id: str
    request: DeploymentRequest
    boot_files: BootFilesRef | None = None
    """Set by the manager once the kernel is published; None boots the partition by chain."""

    @property
    def environment(self) -> EnvironmentDescription:
        """The environment being deployed."""
        return self.request.environment

    @property
    def nodes(self) -> tuple[str, ...]:
        """The target nodes, in deployment order."""
        return self.request.nodes

    @property
    def authorized_keys(self) -> str:
        """The user's public keys."""
        return self.request.authorized_keys

    @property
    def deploy_partition(self) -> int | None:
        """The requested deploy partition, if any."""
        return self.request.deploy_partition

    @property
    def image(self) -> Path:
        """The image file."""
        return self.environment.image.file

    @property
    def node_count(self) -> int:
        """``n`` in timeout expressions."""
        return len(self.request.nodes)
