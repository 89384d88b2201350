"""The daemon's TFTP server under bad input and overload: real UDP sockets on loopback.

A step-by-step TFTP client written here (RRQ, then one ACK per DATA) lets a test act between
two blocks of a download in progress: send a malformed datagram, open a FIFO, flood. Ordering
comes from the protocol itself (the next block only comes after our ACK), never from sleeps.
"""

from __future__ import annotations

import logging
import os
import resource
import socket
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kadeploy_testbed.tftpfetch import fetch
from kadeployd.pxe import PxeFiles, TftpService
from kadeployd.pxe.log_throttle import LogThrottle, held_note
from kadeployd.pxe.tftp_loop import SessionLimits

LOCAL = "127.0.0.1"
OTHER_CLIENT = "127.0.0.2"
TIMEOUT = 5.0
BLOCK = 512


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "tftp"
    PxeFiles(path).prepare()
    return path


@pytest.fixture
def kernel(root: Path) -> bytes:
    data = os.urandom(40 * BLOCK + 100)
    (root / "kernel").write_bytes(data)
    return data


def start(root: Path, **kwargs: object) -> TftpService:
    service = TftpService(root, LOCAL, 0, **kwargs)  # type: ignore[arg-type]
    service.start()
    return service


@pytest.fixture
def service(root: Path) -> Iterator[TftpService]:
    svc = start(root)
    yield svc
    svc.stop()


def rrq(name: bytes) -> bytes:
    return b"\x00\x01" + name + b"\x00octet\x00"


def client(address: str = LOCAL) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, 0))
    sock.settimeout(TIMEOUT)
    return sock


def download(
    sock: socket.socket,
    port: int,
    name: str,
    between: Callable[[int, tuple[str, int]], None] | None = None,
) -> bytes:
    """Fetch ``name`` block by block; ``between(block, tid)`` runs after each block's ACK."""
    sock.sendto(rrq(name.encode()), (LOCAL, port))
    data = bytearray()
    expected = 1
    while True:
        packet, tid = sock.recvfrom(4 + BLOCK)
        opcode, number = struct.unpack("!HH", packet[:4])
        assert opcode == 3, f"expected DATA, got {packet!r}"
        sock.sendto(struct.pack("!HH", 4, number), tid)
        if number != expected:
            continue  # a retransmission: ACKed again
        data += packet[4:]
        if between is not None:
            between(number, tid)
        if len(packet) - 4 < BLOCK:
            return bytes(data)
        expected += 1


def error_of(packet: bytes) -> tuple[int, str]:
    opcode, code = struct.unpack("!HH", packet[:4])
    assert opcode == 5, f"expected an ERROR packet, got {packet!r}"
    return code, packet[4:].rstrip(b"\0").decode()


def test_a_download_completes_while_malformed_requests_arrive(
    service: TftpService, kernel: bytes
) -> None:
    answers: list[tuple[int, str]] = []
    with client() as sock, client() as bad:

        def meanwhile(block: int, tid: tuple[str, int]) -> None:
            if block != 3:
                return
            for datagram in [
                rrq(b"\xff\xfe"),  # non-ASCII name: tftpy's own loop let this escape
                b"\x00\x01a\x00octet\x00blksize\x00zz\x00",  # bad option value
                b"\x00\x09junk",  # unknown opcode
            ]:
                bad.sendto(datagram, (LOCAL, service.port))
                answers.append(error_of(bad.recvfrom(600)[0]))

        assert download(sock, service.port, "kernel", meanwhile) == kernel
    assert [code for code, _ in answers] == [4, 4, 4]  # "illegal TFTP operation", each
    assert service.malformed == 3
    assert service.running


def test_a_malformed_packet_ends_its_own_session_only(service: TftpService, kernel: bytes) -> None:
    with client() as sock, client() as victim:
        victim.sendto(rrq(b"kernel"), (LOCAL, service.port))
        first, victim_tid = victim.recvfrom(4 + BLOCK)
        assert first[:4] == b"\x00\x03\x00\x01"

        def meanwhile(block: int, tid: tuple[str, int]) -> None:
            if block == 2:
                victim.sendto(b"\x00\x04\xff\xff\xff\xff\xff", victim_tid)  # an oversized ACK
                victim.sendto(b"\x00\x01\xff\x00octet\x00", victim_tid)  # an RRQ on a TID
                assert error_of(victim.recvfrom(600)[0])[0] in (0, 4)

        assert download(sock, service.port, "kernel", meanwhile) == kernel
    assert service.running


def test_a_download_completes_with_over_1024_files_open(root: Path, kernel: bytes) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip(f"the hard open-files limit ({hard}) is too low for this test")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 4096), hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        assert max(held) >= 1024
        service = start(root)  # its sockets, and every session's, are numbered above 1024
        try:
            assert fetch(LOCAL, service.port, "kernel", TIMEOUT) == kernel
            with client() as sock:
                assert sock.fileno() >= 1024
                assert download(sock, service.port, "kernel") == kernel
        finally:
            service.stop()
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_fifo_is_refused_at_once_and_its_neighbour_served(
    root: Path, service: TftpService, kernel: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="kadeployd.pxe.tftp")
    os.mkfifo(root / "fifo")
    with client() as sock:
        sock.sendto(rrq(b"fifo"), (LOCAL, service.port))
        assert error_of(sock.recvfrom(600)[0])[0] == 1  # "file not found", like a missing file
    assert "fifo is a FIFO" in caplog.text
    assert fetch(LOCAL, service.port, "kernel", TIMEOUT) == kernel
    assert service.served()[-1].name == "kernel"


def test_a_device_is_refused(root: Path, service: TftpService) -> None:
    (root / "null").symlink_to("/dev/null")  # resolves outside the root: refused
    assert fetch(LOCAL, service.port, "null", TIMEOUT) is None


def test_a_flood_from_one_client_is_capped_and_another_client_is_served(
    root: Path, kernel: bytes
) -> None:
    limits = SessionLimits(total=24, per_client=8)
    service = start(root, limits=limits)
    flood = [client() for _ in range(40)]
    try:
        for sock in flood:
            sock.sendto(rrq(b"kernel"), (LOCAL, service.port))
        served = busy = 0
        for sock in flood:  # every request is answered: a first block, or "busy"
            packet = sock.recvfrom(4 + BLOCK)[0]
            if packet[:2] == b"\x00\x03":
                served += 1
            else:
                code, message = error_of(packet)
                assert (code, message) == (0, "server busy, retry later")
                busy += 1
        assert (served, busy) == (limits.per_client, 40 - limits.per_client)
        assert service.refused_busy == 40 - limits.per_client
        # The flooding client's sessions are still open; another client gets its file.
        with client(OTHER_CLIENT) as other:
            assert download(other, service.port, "kernel") == kernel
        assert service.served()[-1].host == OTHER_CLIENT
    finally:
        for sock in flood:
            sock.close()
        service.stop()


def test_the_total_cap_holds_over_many_clients(root: Path, kernel: bytes) -> None:
    limits = SessionLimits(total=6, per_client=4)
    service = start(root, limits=limits)
    socks = [client(f"127.0.0.{host}") for host in (3, 3, 3, 3, 4, 4, 4, 4)]
    try:
        for sock in socks:
            sock.sendto(rrq(b"kernel"), (LOCAL, service.port))
        first_blocks = sum(sock.recvfrom(4 + BLOCK)[0][:2] == b"\x00\x03" for sock in socks)
        assert first_blocks == limits.total
        assert service.refused_busy == len(socks) - limits.total
    finally:
        for sock in socks:
            sock.close()
        service.stop()


def test_a_flood_of_malformed_requests_writes_a_few_log_lines(
    service: TftpService, kernel: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """One line per client and interval, the others counted: a flood must not fill the log."""
    with caplog.at_level(logging.WARNING, logger="kadeployd.pxe.tftp_loop"), client() as bad:
        for _ in range(200):
            bad.sendto(rrq(b"\xff\xfe"), (LOCAL, service.port))
            error_of(bad.recvfrom(600)[0])  # each is still answered
        with client() as sock:
            assert download(sock, service.port, "kernel") == kernel
    assert service.malformed == 200
    lines = [r for r in caplog.records if "malformed" in r.getMessage()]
    assert 1 <= len(lines) <= 2


def test_the_log_throttle_counts_what_it_held_back() -> None:
    """Pure logic, with a fake clock (the real-socket test is above)."""
    now = [0.0]
    throttle = LogThrottle(interval=10.0, clock=lambda: now[0])
    assert throttle.allow("10.0.0.1") == 0
    assert [throttle.allow("10.0.0.1") for _ in range(5)] == [None] * 5
    assert throttle.allow("10.0.0.2") == 0  # another client has its own line
    now[0] = 10.0
    assert throttle.allow("10.0.0.1") == 5
    assert held_note(5) == " (5 more like it since the last line)"
