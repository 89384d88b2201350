"""Shared fixtures: a real TFTP server (tftpy) and the emulated testbed.

- ``tftp_server``: a tftpy server on 127.0.0.1 (free port) serving a fresh tmp root; its
  ``requests`` list says which files were asked for, by whom.
- ``testbed`` (session): ``KADEPLOY_TESTBED_NODES`` nodes (default 4) started through the same
  Python API as ``kadeploy-testbed up``, booting from ``testbed_tftp`` (which serves the
  testbed's own ``DIR/tftp``); torn down with the full ``down`` sweep.
- ``fresh_testbed``: the session testbed after a reset: every node back in its prod env, faults
  cleared, per-node PXE profiles removed, the default profile restored, TFTP log emptied.
- ``g5k_testbed`` (session): 4 nodes named as Grid'5000 names them,
  ``griffon-1.nancy.grid5000.fr`` .. ``griffon-4.nancy.grid5000.fr`` (nodes 81-84: their own
  addresses, namespaces and directory, so it lives beside ``testbed``), booting from
  127.0.0.1:<free port> where a test's daemon serves TFTP; ``g5k_image`` (session) the
  ``debian-min`` environment for it, and ``g5k`` a daemon with its API on it
  (tests/g5k_fixtures.py).

Tests needing root are marked ``@pytest.mark.root`` and skip (with the reason) otherwise.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import pytest
import tftpy

ROOT_REASON = "needs root (namespaces, mounts, loop devices, port 22)"
DEFAULT_PROFILE = "# kadeploy-testbed: boot the local disk (prod env)\nDEFAULT local\nLABEL local\n  LOCALBOOT 0\n"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason=ROOT_REASON)
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


@dataclass
class TftpServer:
    """A tftpy server in a thread; every download request is appended to ``requests``."""

    root: Path
    host: str = "127.0.0.1"
    port: int = 0
    requests: list[tuple[str, str]] = field(default_factory=list)
    """(file name as requested, client address)."""
    _server: Any = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _open(self, name: str, raddress: str = "", rport: int = 0) -> BinaryIO | None:
        with self._lock:
            self.requests.append((name, raddress))
        path = (self.root / name.lstrip("/")).resolve()
        if not path.is_relative_to(self.root.resolve()) or not path.is_file():
            return None
        return path.open("rb")

    def requested(self) -> list[str]:
        with self._lock:
            return [name for name, _ in self.requests]

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    def start(self, empty_root: Path) -> None:
        # tftpy serves files of its own root directly; an empty root sends every request
        # through dyn_file_func, which logs it and serves from ``self.root``.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((self.host, 0))
            self.port = probe.getsockname()[1]
        self._server = tftpy.TftpServer(str(empty_root), dyn_file_func=self._open)
        self._thread = threading.Thread(
            target=self._server.listen,
            kwargs={"listenip": self.host, "listenport": self.port, "timeout": 1},
            daemon=True,
        )
        self._thread.start()
        if not self._server.is_running.wait(10):
            raise RuntimeError("tftpy server did not start")

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(now=True)
        if self._thread is not None:
            self._thread.join(10)


def _start_tftp(root: Path, empty: Path) -> TftpServer:
    root.mkdir(parents=True, exist_ok=True)
    empty.mkdir(parents=True, exist_ok=True)
    server = TftpServer(root=root)
    server.start(empty)
    return server


@pytest.fixture
def tftp_server(tmp_path: Path) -> Iterator[TftpServer]:
    server = _start_tftp(tmp_path / "tftp", tmp_path / "tftp-empty")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def testbed_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("testbed")


@pytest.fixture(scope="session")
def testbed_tftp(
    testbed_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TftpServer]:
    server = _start_tftp(testbed_dir / "tftp", tmp_path_factory.mktemp("tftp-empty"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def testbed(testbed_dir: Path, testbed_tftp: TftpServer) -> Iterator[Any]:
    if os.geteuid() != 0:
        pytest.skip(ROOT_REASON)
    from kadeploy_testbed.state import TestbedConfig  # noqa: PLC0415
    from kadeploy_testbed.testbed import down, up  # noqa: PLC0415

    nodes = int(os.environ.get("KADEPLOY_TESTBED_NODES", "4"))
    config = TestbedConfig(
        nodes=nodes,
        tftp_host=testbed_tftp.host,
        tftp_port=testbed_tftp.port,
        boot_delay=0.1,
    )
    bed = up(testbed_dir, config, timeout=60)
    try:
        yield bed
    finally:
        down(testbed_dir)


def _reset_profiles(tftp_root: Path) -> None:
    profiles = tftp_root / "pxelinux.cfg"
    if profiles.is_dir():
        for path in profiles.iterdir():
            if path.name != "default":
                path.unlink()
    profiles.mkdir(parents=True, exist_ok=True)
    (profiles / "default").write_text(DEFAULT_PROFILE)
    kernels = tftp_root / "kernels"
    for path in kernels.iterdir() if kernels.is_dir() else []:
        if not path.name.startswith("deploy-"):
            path.unlink()


@pytest.fixture
def fresh_testbed(testbed: Any, testbed_tftp: TftpServer) -> Iterator[Any]:
    """The session testbed, every node in prod with no fault, PXE profiles reset."""
    _reset_profiles(testbed_tftp.root)
    testbed.reset()
    testbed_tftp.clear()
    yield testbed
    _reset_profiles(testbed_tftp.root)


@pytest.fixture(scope="session")
def g5k_testbed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Nodes griffon-[1-4].nancy.grid5000.fr (numbers 81-84), torn down after the session."""
    if os.geteuid() != 0:
        pytest.skip(ROOT_REASON)
    from g5k_fixtures import G5K_FIRST, G5K_FORMAT  # noqa: PLC0415

    from kadeploy_testbed.state import TestbedConfig  # noqa: PLC0415
    from kadeploy_testbed.testbed import down, up  # noqa: PLC0415

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        tftp_port = probe.getsockname()[1]
    directory = tmp_path_factory.mktemp("g5kbed")
    config = TestbedConfig(
        nodes=4,
        first=G5K_FIRST,
        name_format=G5K_FORMAT,
        tftp_host="127.0.0.1",
        tftp_port=tftp_port,
        boot_delay=0.1,
    )
    bed = up(directory, config, timeout=90)
    try:
        yield bed
    finally:
        down(directory)


@pytest.fixture(scope="session")
def g5k_image(g5k_testbed: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The description of the make-image environment ``debian-min`` (tar+zstd)."""
    from kadeploy_testbed.image import make_image  # noqa: PLC0415

    folder = tmp_path_factory.mktemp("g5kimage")
    return make_image(folder / "debian-min", name="debian-min", kind="tar").description


@pytest.fixture
def g5k(g5k_testbed: Any, g5k_image: Path, tmp_path: Path) -> Iterator[Any]:
    """A daemon and its API on ``g5k_testbed``, nodes reset (tests/g5k_fixtures.py)."""
    from g5k_fixtures import g5k_api  # noqa: PLC0415

    with g5k_api(g5k_testbed, tmp_path, g5k_image) as api:
        yield api
