"""The relay's two intakes: splice(2) + tee(2), the default, and recv(2) + write(2) copies.

End to end, real relays launched the daemon's way (``relay_launch``, source and secret on
stdin) with a wrapper that runs before the bootstrap and takes splice or tee away, or makes
them fail, as a system without them would: the chain must deliver the same bytes and the relay
must say once, on stderr, that it copies. In-process, :class:`Splicer` must hand over exactly
the bytes it received, also when tee(2) duplicates only part of them or fails.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import select
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from chain_fixtures import PYTHON, WAIT, raw_writer, wait_until

from kadeployd.chain import (
    ChainSender,
    Hop,
    RelayEvent,
    new_secret,
    parse_report,
    relay_arguments,
    relay_launch,
    relay_stdin,
    send_chain,
)
from kadeployd.chain import relay as relay_module
from kadeployd.chain.relay import Splicer, Writer

MIB = 1 << 20

# Run by ``python -c WRAPPER -c BOOTSTRAP ARGS...``: sys.argv is ['-c', '-c', BOOTSTRAP, ARGS...].
# The wrapper applies its patch, then runs the daemon's bootstrap with the relay's own argv.
WRAPPER = """{patch}
import sys
boot = sys.argv[2]
sys.argv = ["-c", *sys.argv[3:]]
exec(boot)
"""

NO_OS_SPLICE = "import os\ndel os.splice\n"

SOCKET_SPLICE_EINVAL = """
import errno, os, stat
_splice = os.splice
def splice(src, dst, count, *args, **kwargs):
    if stat.S_ISSOCK(os.fstat(src).st_mode):
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
    return _splice(src, dst, count, *args, **kwargs)
os.splice = splice
"""

TEE_EINVAL = """
import ctypes, errno
_CDLL = ctypes.CDLL
def failing_tee(*args):
    ctypes.set_errno(errno.EINVAL)
    return -1
class Libc:
    def __init__(self, *args, **kwargs):
        self._lib = _CDLL(*args, **kwargs)
    def __getattr__(self, name):
        return failing_tee if name == "tee" else getattr(self._lib, name)
ctypes.CDLL = Libc
"""


class PatchedRelay:
    """A relay process started like the daemon's, after ``patch`` ran in its interpreter."""

    def __init__(
        self, workdir: Path, secret: bytes, patch: str = "", extra: tuple[str, ...] = ()
    ) -> None:
        workdir.mkdir(parents=True)
        self.output = workdir / "out"
        self.stderr_path = workdir / "stderr.txt"
        args = [*relay_arguments(raw_writer(self.output), listen="127.0.0.1:0"), *extra]
        python = (PYTHON, "-I", "-S", "-c", WRAPPER.format(patch=patch)) if patch else (PYTHON,)
        with self.stderr_path.open("wb") as stderr:
            self.proc = subprocess.Popen(
                relay_launch(args, python=python),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                start_new_session=True,
            )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(relay_stdin(secret))
        self.proc.stdin.close()
        first = parse_report(self.proc.stdout.readline())
        assert first.kind == "listening", self.stderr_path.read_text()
        self.hop = Hop("127.0.0.1", first.port)
        self.events: list[RelayEvent] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.append(parse_report(line))

    def pipes(self) -> int:
        """How many pipe ends the relay holds open right now."""
        fds = Path(f"/proc/{self.proc.pid}/fd")
        links = []
        for fd in fds.iterdir():
            with contextlib.suppress(OSError):  # an fd closed while listing
                links.append(os.readlink(fd))
        return sum(link.startswith("pipe:") for link in links)

    def finish(self) -> tuple[int, str]:
        """Exit status and stderr, once it exited."""
        status = self.proc.wait(WAIT)
        self._reader.join(WAIT)
        return status, self.stderr_path.read_text()

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(WAIT)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@pytest.fixture
def start(tmp_path: Path) -> Iterator[list[PatchedRelay]]:
    started: list[PatchedRelay] = []
    yield started
    for relay in started:
        relay.stop()


def image_of(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


COPIES = "the writer gets copies from now on"


@pytest.mark.parametrize(
    ("patch", "extra", "says"),
    [
        (NO_OS_SPLICE, (), "no splice (os.splice needs Python 3.10): the writer gets copies"),
        (SOCKET_SPLICE_EINVAL, (), f"splice failed: Invalid argument; {COPIES}"),
        (TEE_EINVAL, (), f"tee failed: Invalid argument; {COPIES}"),
        ("", ("--no-splice",), ""),
    ],
    ids=["python-without-os-splice", "socket-not-spliceable", "tee-fails", "no-splice-option"],
)
def test_a_relay_that_cannot_splice_copies_and_delivers_the_same_bytes(
    start: list[PatchedRelay], tmp_path: Path, patch: str, extra: tuple[str, ...], says: str
) -> None:
    data = image_of(tmp_path / "image.raw", 20 * MIB + 4321)
    secret = new_secret()
    # A copying relay between two splicing ones: the intakes mix in one chain.
    for name, (this_patch, this_extra) in zip(
        ("first", "copying", "last"), [("", ()), (patch, extra), ("", ())], strict=True
    ):
        start.append(PatchedRelay(tmp_path / name, secret, this_patch, this_extra))

    result = send_chain(tmp_path / "image.raw", [r.hop for r in start], secret)

    assert result.failures([r.hop.address for r in start]) == {}
    for relay in start:
        status, stderr = relay.finish()
        assert status == 0, stderr
        assert relay.output.read_bytes() == data
        if relay is start[1] and says:
            assert stderr.count(says) == 1, stderr
        else:
            assert "splice" not in stderr and "tee" not in stderr, stderr


def test_the_default_intake_splices_through_two_staging_pipes(
    start: list[PatchedRelay], tmp_path: Path
) -> None:
    # The only outside sign of the splice path: its two pipes (four ends) while streaming.
    size = 32 * MIB
    data = image_of(tmp_path / "image.raw", size)
    secret = new_secret()
    start.append(PatchedRelay(tmp_path / "splicing", secret))
    start.append(PatchedRelay(tmp_path / "copying", secret, extra=("--no-splice",)))
    reached = threading.Event()
    release = threading.Event()

    def pause(offset: int) -> None:
        if offset >= size // 2 and not reached.is_set():
            reached.set()
            assert release.wait(WAIT)

    sender = ChainSender(tmp_path / "image.raw", [r.hop for r in start], secret, checkpoint=pause)
    outcome: list[object] = []
    thread = threading.Thread(target=lambda: outcome.append(sender.run()), daemon=True)
    thread.start()
    try:
        assert reached.wait(WAIT)
        wait_until(start[1].output.exists, what="the stream reaching the tail")
        assert start[0].pipes() - start[1].pipes() == 4
    finally:
        release.set()
        thread.join(WAIT)
        sender.close()
    assert outcome, "the sender failed"
    for relay in start:
        assert relay.finish()[0] == 0
        assert relay.output.read_bytes() == data


# -- in-process: the Splicer itself ---------------------------------------------------------


class Feed:
    """A loopback TCP connection whose far end sends ``data`` then half-closes."""

    def __init__(self, data: bytes) -> None:
        with socket.create_server(("127.0.0.1", 0)) as listener:
            self.far = socket.create_connection(listener.getsockname())
            self.near, _ = listener.accept()
        self.near.setblocking(False)
        self.thread = threading.Thread(target=self._send, args=(data,), daemon=True)
        self.thread.start()

    def _send(self, data: bytes) -> None:
        self.far.sendall(data)
        self.far.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.thread.join(WAIT)
        self.far.close()
        self.near.close()


def pump(splicer: Splicer, feed: Feed, writer: Writer, ring: memoryview) -> list[int]:
    """Everything from ``feed`` through ``splicer`` into ``ring`` and ``writer``, the way the
    relay does; returns how many bytes each piece queued for the writer."""
    received = 0
    queued_per_piece: list[int] = []
    while True:
        select.select([feed.near], [], [], WAIT)
        try:
            got, queued = splicer.receive(feed.near, ring[received:], tee=True)
        except BlockingIOError:
            continue
        if got == 0:
            return queued_per_piece
        queued_per_piece.append(queued)
        if queued:
            writer.move(splicer.b_r, queued)
        writer.write(ring[received + queued : received + got])
        received += got


def pump_through(splicer: Splicer, data: bytes, out: Path) -> list[int]:
    """Stream ``data`` through ``splicer`` into a ring and a real writer storing ``out``; both
    must hold exactly ``data``. The bytes queued for the writer by each piece."""
    feed = Feed(data)
    writer = Writer(raw_writer(out))
    ring = memoryview(bytearray(len(data)))
    try:
        queued = pump(splicer, feed, writer, ring)
        assert writer.finish(WAIT, lambda seconds: None) == 0
    finally:
        feed.close()
        splicer.close()
    assert bytes(ring) == data
    assert out.read_bytes() == data
    return queued


@pytest.mark.parametrize("tee_limit", [None, 5000], ids=["whole-pieces", "short-tee"])
def test_splicer_gives_ring_and_writer_exactly_the_stream(
    tmp_path: Path, tee_limit: int | None
) -> None:
    data = os.urandom(6 * MIB + 123)
    real_tee = relay_module.libc_tee()
    assert real_tee is not None
    tee = None
    if tee_limit is not None:
        limit = tee_limit

        def tee(fd_in: int, fd_out: int, count: int, flags: int) -> int:
            return real_tee(fd_in, fd_out, min(count, limit), flags)

    splicer = Splicer(tee)
    queued = pump_through(splicer, data, tmp_path / "out")
    assert sum(queued) > 0
    if tee_limit is not None:
        assert max(queued) == tee_limit  # the rest of each piece went by write(2)
    assert splicer.error == ""


def test_a_failed_tee_still_receives_and_says_why(tmp_path: Path) -> None:
    def failing_tee(fd_in: int, fd_out: int, count: int, flags: int) -> int:
        ctypes.set_errno(errno.EINVAL)
        return -1

    splicer = Splicer(failing_tee)
    queued = pump_through(splicer, os.urandom(2 * MIB), tmp_path / "out")
    assert set(queued) == {0}
    assert splicer.error == "tee failed: Invalid argument"


def test_splicer_refuses_to_start_without_splice_or_tee(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pure logic of the constructor's guard; real relays started without os.splice or with a
    failing tee copy and deliver the same bytes in
    test_a_relay_that_cannot_splice_copies_and_delivers_the_same_bytes above."""
    monkeypatch.setattr(relay_module, "libc_tee", lambda: None)
    with pytest.raises(OSError, match="no tee"):
        Splicer()
    monkeypatch.delattr(os, "splice")
    with pytest.raises(OSError, match=r"Python 3\.10"):
        Splicer()
