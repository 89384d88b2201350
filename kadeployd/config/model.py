"""The loaded configuration: frozen, typed, and ready for the daemon."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from kadeployd.config.schema import DaemonSettings, NodeSettings


@dataclass(frozen=True, slots=True)
class Node:
    """One node of the cluster with its effective settings (node > cluster > global)."""

    name: str
    cluster: str
    address: str
    mac: str
    bmc: str | None
    settings: NodeSettings

    def template_values(self) -> dict[str, str]:
        """Values of the placeholders power command templates may use."""
        ssh = self.settings.ssh
        values = dict(self.settings.vars)
        values.update(
            node=self.name,
            address=self.address,
            mac=self.mac,
            bmc=self.bmc or "",
            cluster=self.cluster,
            ssh_user=ssh.user,
            ssh_port=str(ssh.port),
            ssh_key=str(ssh.identity_file),
        )
        return values


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration directory, validated."""

    directory: Path
    daemon: DaemonSettings
    clusters: Mapping[str, tuple[str, ...]]
    """Cluster name -> its nodes' names, in nodes.conf order."""
    nodes: Mapping[str, Node]
    """Node name -> node, in nodes.conf order."""
    origins: Mapping[str, Mapping[str, str]]
    """Node name -> dotted key -> ``file:line`` of the value in force (absent: default)."""
