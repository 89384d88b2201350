"""Starting and resetting testbeds for the workflow tests (shared by conftest and tests)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest

NODES = 4


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def start_testbed(directory: Path, first: int, **options: Any) -> Any:
    """Four testbed nodes numbered from ``first``, booting from 127.0.0.1:<free port>, where
    each test's daemon will listen."""
    if os.geteuid() != 0:
        pytest.skip("needs root (namespaces, mounts, loop devices, port 22)")
    from kadeploy_testbed.state import TestbedConfig  # noqa: PLC0415
    from kadeploy_testbed.testbed import up  # noqa: PLC0415

    config = TestbedConfig(
        nodes=NODES,
        first=first,
        tftp_host="127.0.0.1",
        tftp_port=_free_udp_port(),
        boot_delay=0.1,
        **options,
    )
    return up(directory, config, timeout=90)


def reset(testbed: Any) -> tuple[str, ...]:
    """Every node back in its prod env with no fault and no PXE profile; their names."""
    testbed.reset()
    for profile in (testbed.layout.tftp_root / "pxelinux.cfg").glob("01-*"):
        profile.unlink()
    return tuple(spec.name for spec in testbed.nodes)
