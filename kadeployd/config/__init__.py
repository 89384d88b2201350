"""Layered configuration: deploy.conf (global) < clusters/<name>.conf < nodes.conf entries."""

from kadeployd.config.loader import load_config
from kadeployd.config.model import Config, Node
from kadeployd.config.schema import (
    BootSettings,
    DaemonSettings,
    DiskSettings,
    Macrosteps,
    NodeSettings,
    PowerSettings,
    SshSettings,
    Variant,
)
from kadeployd.config.templates import CommandTemplate
from kadeployd.config.timeouts import Timeout

__all__ = [
    "BootSettings",
    "CommandTemplate",
    "Config",
    "DaemonSettings",
    "DiskSettings",
    "Macrosteps",
    "Node",
    "NodeSettings",
    "PowerSettings",
    "SshSettings",
    "Timeout",
    "Variant",
    "load_config",
]
