"""A testbed whose nodes PXE-boot from the daemon's own TFTP server, and a daemon per test.

The testbed (nodes 21-24, so it can live beside the session testbed of tests/testbed) is
started once per module with ``--tftp`` pointing at a free port; each test copies the
configuration ``up`` wrote, adjusts it, and starts a real Daemon on it, whose PxeActor binds
that port. Nothing here knows the daemon's internals: it deploys through ``Daemon.deploy`` and
checks the store and the nodes, exactly as a user would.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pykka
import pytest
import yaml
from workflow_helpers import ConfEdit, reset, start_testbed

from kadeployd.daemon import Daemon

FIRST_NODE = 21


@pytest.fixture(scope="session")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Nodes 21-24 on loopback addresses."""
    from kadeploy_testbed.testbed import down  # noqa: PLC0415

    directory = tmp_path_factory.mktemp("deploybed")
    testbed = start_testbed(directory, FIRST_NODE)
    try:
        yield testbed
    finally:
        down(directory)


@pytest.fixture(scope="session")
def images(bed: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The make-image environment as tar+zstd and as a raw ext4 image (their descriptions)."""
    from kadeploy_testbed.image import make_image  # noqa: PLC0415

    folder = tmp_path_factory.mktemp("images")
    tar = make_image(folder / "debian-min", name="debian-min", kind="tar", compression="zstd")
    raw = make_image(folder / "debian-raw", name="debian-raw", kind="dd", compression="zstd")
    return {"tar": tar.description, "dd": raw.description}


@pytest.fixture(scope="session")
def user_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """alice's SSH key pair; the deployment installs the public half."""
    key = tmp_path_factory.mktemp("alice") / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


@pytest.fixture
def nodes(bed: Any) -> tuple[str, ...]:
    """The node names of ``bed``, reset."""
    return reset(bed)


@pytest.fixture
def start_daemon(bed: Any, tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Start a daemon on a copy of a testbed's configuration (``bed`` unless another is
    given), edited by the test."""
    started: list[Daemon] = []

    def start(edit: ConfEdit | None = None, testbed: Any = None) -> Daemon:
        conf = tmp_path / "conf"
        shutil.copytree((testbed or bed).layout.conf_dir, conf)
        deploy = yaml.safe_load((conf / "deploy.conf").read_text())
        cluster_file = next((conf / "clusters").glob("*.conf"))
        cluster = yaml.safe_load(cluster_file.read_text()) or {}
        deploy["daemon"]["state_dir"] = str(tmp_path / "state")
        deploy["boot"]["check_interval"] = 0.3
        deploy["daemon"]["chain_gather_window"] = 5
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


@pytest.fixture(scope="session")
def padded_image(bed: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 48 MiB tar+zstd environment (incompressible padding): long enough to act mid-stream."""
    from kadeploy_testbed.image import make_image  # noqa: PLC0415

    folder = tmp_path_factory.mktemp("padded")
    return make_image(folder / "debian-big", name="debian-big", size_mb=48).description
