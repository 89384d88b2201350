"""``DIR/state.json``: the testbed's options and everything it created, for ``down``.

Written by ``up`` (options) and by the controller (its pid, each loop device and network
namespace *before* it is created), so that ``down`` can undo a testbed whose controller died.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from kadeploy_testbed.layout import (
    DEFAULT_DISK_MB,
    DEFAULT_NAME_FORMAT,
    Layout,
    NodeSpec,
    node_specs,
)
from kadeploy_testbed.node import BootSettings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TestbedConfig:
    """The options a testbed was brought up with."""

    __test__ = False

    nodes: int
    first: int = 1
    """Number of the first node (node-<first>, 127.0.2.<first>...)."""
    netns: bool = False
    rate: str | None = None
    tftp_host: str = "127.0.0.1"
    tftp_port: int = 69
    boot_delay: float = 1.0
    jitter: float = 0.0
    disk_mb: dict[int, int] = field(default_factory=lambda: dict(DEFAULT_DISK_MB))
    name_format: str = DEFAULT_NAME_FORMAT
    """How nodes are named (``{i}``: number, ``{n}``: position from 1), e.g.
    ``griffon-{n}.nancy.grid5000.fr``; checked by layout.name_format_problem."""

    def specs(self) -> list[NodeSpec]:
        """The testbed's nodes."""
        return node_specs(
            self.nodes, netns=self.netns, first=self.first, name_format=self.name_format
        )

    def boot_settings(self) -> BootSettings:
        return BootSettings(
            tftp_server=self.tftp_host,
            tftp_port=self.tftp_port,
            boot_delay=self.boot_delay,
            jitter=self.jitter,
            rate=self.rate if self.netns else None,
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["disk_mb"] = {str(k): v for k, v in self.disk_mb.items()}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TestbedConfig:
        values = dict(data)
        values["disk_mb"] = {int(k): int(v) for k, v in values.get("disk_mb", {}).items()}
        return cls(**values)


def load_state(layout: Layout) -> dict[str, Any]:
    """The recorded state, or an empty dict when there is none (or it is unreadable)."""
    try:
        data = json.loads(layout.state_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def update_state(layout: Layout, change: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    """Apply ``change`` to the state under an exclusive lock and write it back atomically."""
    layout.root.mkdir(parents=True, exist_ok=True)
    lock_path = layout.root / ".state.lock"
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = load_state(layout)
        change(state)
        tmp = layout.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2), encoding="utf-8")
        os.replace(tmp, layout.state_file)
    return state


def record(layout: Layout, key: str, value: str) -> None:
    """Append ``value`` to the list ``key`` of the state (loop devices, namespaces...)."""

    def change(state: dict[str, Any]) -> None:
        items = state.setdefault(key, [])
        if value not in items:
            items.append(value)

    update_state(layout, change)


def reset_state(layout: Layout, config: TestbedConfig) -> None:
    """Start a new state holding only ``config``."""

    def change(state: dict[str, Any]) -> None:
        state.clear()
        state["config"] = config.to_dict()

    update_state(layout, change)
