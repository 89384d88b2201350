"""The firmware's TFTP client against a real tftpy server on loopback."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pytest
import tftpy

from kadeploy_testbed.tftpfetch import TftpTransferError, TftpUnreachable, fetch, fetch_profile

MAC = "52:54:00:12:34:56"
IP = "127.0.2.1"


@dataclass
class Server:
    root: Path
    port: int
    requests: list[str]


@pytest.fixture
def tftp_server(tmp_path: Path) -> Iterator[Server]:
    root = tmp_path / "tftproot"
    (root / "pxelinux.cfg").mkdir(parents=True)
    requests: list[str] = []

    def record(name: str, **_: Any) -> BinaryIO | None:
        # Called by tftpy only for files missing from the root: records the lookups.
        requests.append(name)
        return None

    server = tftpy.TftpServer(str(root), dyn_file_func=record)
    thread = threading.Thread(
        target=server.listen, kwargs={"listenip": "127.0.0.1", "listenport": 0, "timeout": 0.2}
    )
    thread.start()
    try:
        assert server.is_running.wait(timeout=10)
        yield Server(root=root, port=server.listenport, requests=requests)
    finally:
        server.stop(now=True)
        thread.join(timeout=10)
        assert not thread.is_alive()


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_fetch_downloads_a_multi_block_file(tftp_server: Server) -> None:
    data = os.urandom(100_000)
    (tftp_server.root / "kernels").mkdir()
    (tftp_server.root / "kernels/vmlinuz").write_bytes(data)
    assert fetch("127.0.0.1", tftp_server.port, "kernels/vmlinuz", timeout=5) == data


def test_fetch_empty_file(tftp_server: Server) -> None:
    (tftp_server.root / "empty").write_bytes(b"")
    assert fetch("localhost", tftp_server.port, "empty", timeout=5) == b""


def test_fetch_missing_file_returns_none(tftp_server: Server) -> None:
    assert fetch("127.0.0.1", tftp_server.port, "kernels/missing", timeout=5) is None
    assert tftp_server.requests == ["kernels/missing"]


def test_fetch_refused_by_the_server_is_a_transfer_error(tftp_server: Server) -> None:
    # tftpy refuses paths that leave its root with an "illegal operation" error.
    with pytest.raises(TftpTransferError, match="Received ERR"):
        fetch("127.0.0.1", tftp_server.port, "../../etc/passwd", timeout=5)


def test_fetch_without_server_is_unreachable() -> None:
    with pytest.raises(TftpUnreachable, match="no answer within 1 s"):
        fetch("127.0.0.1", free_udp_port(), "pxelinux.cfg/default", timeout=1)


def test_fetch_from_a_silent_server_times_out() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        with pytest.raises(TftpUnreachable, match=r"no answer within 0\.6 s"):
            fetch("127.0.0.1", port, "pxelinux.cfg/default", timeout=0.6)
        # The request was really sent (and retransmitted) to the port.
        silent.settimeout(5)
        request, _ = silent.recvfrom(2048)
        assert b"pxelinux.cfg/default" in request


def test_fetch_unresolvable_server() -> None:
    with pytest.raises(TftpUnreachable, match="cannot resolve"):
        fetch("no-such-host.invalid", 69, "x", timeout=1)


def test_profile_lookup_order(tftp_server: Server) -> None:
    assert fetch_profile("127.0.0.1", tftp_server.port, MAC, IP, timeout=5) is None
    assert tftp_server.requests == [
        "pxelinux.cfg/01-52-54-00-12-34-56",
        "pxelinux.cfg/7F000201",
        "pxelinux.cfg/7F00020",
        "pxelinux.cfg/7F0002",
        "pxelinux.cfg/7F000",
        "pxelinux.cfg/7F00",
        "pxelinux.cfg/7F0",
        "pxelinux.cfg/7F",
        "pxelinux.cfg/7",
        "pxelinux.cfg/default",
    ]


def test_profile_prefers_mac_then_longest_hex_then_default(tftp_server: Server) -> None:
    cfg = tftp_server.root / "pxelinux.cfg"
    (cfg / "default").write_text("LABEL d\n LOCALBOOT 0\n")
    assert fetch_profile("127.0.0.1", tftp_server.port, MAC, IP, 5) == (
        "pxelinux.cfg/default",
        "LABEL d\n LOCALBOOT 0\n",
    )
    (cfg / "7F").write_text("short")
    assert fetch_profile("127.0.0.1", tftp_server.port, MAC, IP, 5) == ("pxelinux.cfg/7F", "short")
    (cfg / "7F000201").write_text("hex")
    assert fetch_profile("127.0.0.1", tftp_server.port, MAC, IP, 5) == (
        "pxelinux.cfg/7F000201",
        "hex",
    )
    (cfg / "01-52-54-00-12-34-56").write_text("mac")
    assert fetch_profile("127.0.0.1", tftp_server.port, MAC, IP, 5) == (
        "pxelinux.cfg/01-52-54-00-12-34-56",
        "mac",
    )


def test_profile_lookup_without_server_is_unreachable() -> None:
    with pytest.raises(TftpUnreachable):
        fetch_profile("127.0.0.1", free_udp_port(), MAC, IP, timeout=1)
