"""A testbed whose nodes PXE-boot from the daemon's own TFTP server, and a daemon per test.

The testbed (nodes 21-24, so it can live beside the session testbed of tests/testbed) is
started once per module with ``--tftp`` pointing at a free port; each test copies the
configuration ``up`` wrote, adjusts it, and starts a real Daemon on it, whose PxeActor binds
that port. Nothing here knows the daemon's internals: it deploys through ``Daemon.deploy`` and
checks the store and the nodes, exactly as a user would.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pykka
import pytest
import yaml

from kadeployd.daemon import Daemon

FIRST_NODE = 21
NODES = 4


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Four testbed nodes booting from 127.0.0.1:<free port>, where each test's daemon listens."""
    if os.geteuid() != 0:
        pytest.skip("needs root (namespaces, mounts, loop devices, port 22)")
    from kadeploy_testbed.state import TestbedConfig  # noqa: PLC0415
    from kadeploy_testbed.testbed import down, up  # noqa: PLC0415

    directory = tmp_path_factory.mktemp("deploybed")
    config = TestbedConfig(
        nodes=NODES,
        first=FIRST_NODE,
        tftp_host="127.0.0.1",
        tftp_port=_free_udp_port(),
        boot_delay=0.1,
    )
    testbed = up(directory, config, timeout=90)
    try:
        yield testbed
    finally:
        down(directory)


@pytest.fixture(scope="module")
def images(bed: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The make-image environment as tar+zstd and as a raw ext4 image (their descriptions)."""
    from kadeploy_testbed.image import make_image  # noqa: PLC0415

    folder = tmp_path_factory.mktemp("images")
    tar = make_image(folder / "debian-min", name="debian-min", kind="tar", compression="zstd")
    raw = make_image(folder / "debian-raw", name="debian-raw", kind="dd", compression="zstd")
    return {"tar": tar.description, "dd": raw.description}


@pytest.fixture(scope="module")
def user_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """alice's SSH key pair; the deployment installs the public half."""
    key = tmp_path_factory.mktemp("alice") / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


@pytest.fixture
def nodes(bed: Any) -> tuple[str, ...]:
    """The node names, every node back in its prod env with no fault."""
    bed.reset()
    profiles = bed.layout.tftp_root / "pxelinux.cfg"
    for profile in profiles.glob("01-*"):
        profile.unlink()
    return tuple(spec.name for spec in bed.nodes)


ConfEdit = Callable[[dict[str, Any], dict[str, Any]], None]
"""Edits (deploy.conf data, cluster file data) of the copied configuration."""


@pytest.fixture
def start_daemon(bed: Any, tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Start a daemon on a copy of the testbed's configuration, edited by the test."""
    started: list[Daemon] = []

    def start(edit: ConfEdit | None = None) -> Daemon:
        conf = tmp_path / "conf"
        shutil.copytree(bed.layout.conf_dir, conf)
        deploy = yaml.safe_load((conf / "deploy.conf").read_text())
        cluster_file = next((conf / "clusters").glob("*.conf"))
        cluster = yaml.safe_load(cluster_file.read_text()) or {}
        deploy["daemon"]["state_dir"] = str(tmp_path / "state")
        deploy["boot"]["check_interval"] = 0.3
        if edit is not None:
            edit(deploy, cluster)
        (conf / "deploy.conf").write_text(yaml.safe_dump(deploy))
        cluster_file.write_text(yaml.safe_dump(cluster))
        daemon = Daemon.start(conf)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.stop()
    pykka.ActorRegistry.stop_all(timeout=10)
