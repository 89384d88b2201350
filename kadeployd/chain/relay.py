"""Chain relay: receive a stream from upstream, write it locally, forward it downstream.

This file is sent to a node as text over SSH and run there: ``python3 relay.py ARGS``, or (as
the daemon does, see ``kadeployd.chain.command``) fed on stdin to a ``python3 -c`` bootstrap.
It must stay ONE self-contained file, Python >= 3.9, standard library only: it imports
nothing from kadeployd (the daemon imports it, never the reverse).

Usage::

    python3 relay.py --writer JSON [--listen HOST:PORT] [--secret-env NAME]
                     [--stall-timeout S] [--idle-timeout S] [--ring-mib N] [--chunk-kib N]
                     [--progress-interval S] [--flush PATH] [--flush-mib N] [--no-splice]
                     [--digest sha256|none]

``--writer``             the command that consumes the stream on its stdin, as a JSON list
                         of strings, e.g. ``["sh", "-c", "zstd -dc | tar -x -C /mnt/dest"]``.
                         Its stdout goes to the relay's stderr; the stream is forwarded even
                         if the writer fails (its exit status is reported).
``--listen``             address to listen on, default ``0.0.0.0:0``; port 0 picks a free
                         port, printed in the ``listening`` event.
``--secret-env NAME``    read the secret from that environment variable; without it, the
                         secret is the first line of stdin (never on the command line:
                         /proc/PID/cmdline is world-readable). At least 16 bytes.
``--stall-timeout``      seconds without any progress nor sign of life from the successor
                         before it is declared dead and cut out (default 10).
``--idle-timeout``       seconds without anything from upstream after which the relay gives
                         up and exits 3, so it never lives forever (default 300).
``--ring-mib``           size of the ring buffer, which is also the receive buffer: the last
                         N MiB of the stream are kept to feed a new successor (default 64).
``--chunk-kib``          largest single receive (default 1024).
``--progress-interval``  seconds between ``progress`` events (default 1).
``--flush PATH``         start the writeback of PATH's filesystem (a directory: syncfs) or
                         of PATH itself (a block device: fsync) each time the writer got
                         another ``--flush-mib`` MiB (default 64), so that the disk writes
                         while the stream arrives rather than all at umount, after it.
``--no-splice``          receive with recv(2) and feed the writer with write(2) copies, as
                         where splice(2) or tee(2) is missing (see "Data path" below).
``--digest``             ``sha256`` (default): the SHA-256 of every byte received, reported
                         in the ack; ``none``: no digest (reported as ""), for a stream whose
                         writer checks it anyway (a gzip, xz or zstd image with checksums:
                         the decompressor fails on a corrupted byte at no extra cost).

The rest of the chain is NOT given on the command line: the upstream sends it in the
handshake (``rest``), so every relay of a chain can be started at once with port 0.

Wire protocol (one TCP connection per hop; integers big-endian)::

    relay    -> upstream: MAGIC (8 bytes) + nonce (16 bytes)
    upstream -> relay   : HMAC-SHA256(secret, MAGIC + nonce) (32) + len (4) + header JSON
                          {"size": N, "you": "host:port", "rest": ["host:port", ...]}
    relay    -> upstream: offset (8): the first byte of the stream the relay does not have
    upstream -> relay   : stream bytes [offset, size), then a half-close
    relay    -> upstream: messages, each type (1) + len (4) + JSON payload:
                          H heartbeat (empty payload), sent while the relay is healthy;
                          D {"node", "reason"}: a node downstream was cut out;
                          X {"reason"}: you were replaced by another upstream;
                          A {"results": [...], "dead": [...]}: the ack, sent once this relay
                          and everything after it hold the stream; then the relay closes.
                          results: one {"node", "bytes", "sha256", "writer_status",
                          "writer_error"} per live node from this one to the tail;
                          dead: every {"node", "reason"} cut out at or after this relay.

Failures: the successor is cut out when a send fails, when it closes before its ack, or when
it sends neither progress nor heartbeat for the stall timeout (a relay blocked on ITS
successor keeps sending heartbeats; one blocked on its own writer stops after 3/4 of the
stall timeout). The relay then connects to the next node of ``rest``, which answers the
offset it needs, and resends from the ring; a node needing bytes older than the ring is cut
out too, with a reason that says so. A writer that fails does not stop the forwarding.

Data path: each piece is whatever the upstream socket holds, at most ``--chunk-kib`` (and
1 MiB); the relay never waits to fill a buffer. By default (:class:`Splicer`) it splices the
piece from the socket into pipe A, tee(2)s A into pipe B, reads A into the ring, hashes the
piece (while the read has it in the CPU's cache), sends it to the successor from the ring,
then splices B into the writer's pipe. The ring (for resumption), the hash and the successor
need the bytes in user space, so the read from A is the one copy; the writer gets page
references instead of a write(2) copy. Without os.splice (Python < 3.10), tee(2) in the C
library or 1 MiB pipes, or if splicing the socket fails, the relay says so on stderr and
copies: recv(2) into the ring, write(2) into the writer's pipe (``--no-splice`` too).
The tail of a chain without a digest (``--digest none``, no successor in the header's
``rest``) needs neither the ring nor the bytes: it splices the socket straight into the
writer's pipe, no copy at all; if that fails (a writer that stops reading, a socket that
cannot be spliced) it goes on with the path above. A relay in the middle of a chain without a
digest needs the bytes for nobody but its successor: its ring is a queue of pipes
(:class:`PipeRing`), the piece goes from pipe A into them, tee(2)'d on the way into pipe B
for the writer and pipe C for the successor, which gets C by splice(2); no byte is copied
to user space (0.94 -> 0.56 CPU-s/GiB on loopback, where the relay also pays its successor's
TCP receive).

Costs, CPU seconds per GiB of stream (``bench/relay_cpu.py``, BENCHMARKS.md "Relay CPU per
GiB": AMD EPYC Zen 4, loopback, the writer's own CPU not counted)::

    SHA-256 (hashlib, i.e. OpenSSL with SHA-NI)              0.61
    socket -> ring + writer, copies: recv_into + write(2)    0.40 (1 MiB pieces), 0.52 (64 KiB)
    socket -> ring + writer, splice + tee + read + splice    0.22 (1 MiB pieces), 0.35 (64 KiB)
    send to the successor (on loopback, with its receive)    0.30 (1 MiB pieces), 0.64 (64 KiB)
    whole relay, CPU-bound: tail of a chain 1.18 before this data path, 0.99 with it; middle
    1.59 and 1.65 (run by run -0.04: no change within its spread). Paced at 1 Gbit/s in
    64 KiB sends: middle 2.90 -> 2.74, tail 1.88 -> 1.70 (a wake-up per piece).

The digest: SHA-256 over every byte received costs 0.61 CPU-s/GiB alone, twice the 0.3 the
issue asked of the whole relay, and no digest of the standard library is cheap enough (SHA-1
0.58, CRC-32 and Adler-32 0.32-0.41; MD5, BLAKE2 and SHA-512 1.4-2.2). It is spent only where
nothing else checks the stream: a gzip image (CRC-32), an xz image with a check, or a zstd image
with a content checksum (what the zstd tool writes by default) is checked byte for byte by the
node's decompressor at no extra cost, and a corrupted stream fails its writer; for those the
daemon starts the relays with ``--digest none`` and compares bytes and writer status only
(``kadeployd.environment.image.checks_itself``). Uncompressed images keep SHA-256 against the
source's. The per-round secret keeps strangers out of the chain either way.

A connection that does not present the right HMAC is closed at once; the relay keeps
serving. A newly authenticated upstream replaces the current one (its predecessor cut the
current one out); the relay answers it with its offset and carries on.

Reports are JSON lines on stdout::

    {"event": "listening", "port": P}
    {"event": "progress", "bytes": N}
    {"event": "dead", "node": "host:port", "reason": "..."}
    {"event": "done", "bytes": N, "sha256": HEX, "writer_status": S}
    {"event": "error", "reason": "..."}        (then exit status != 0)

Exit status: 0 done, 2 bad arguments or set-up failure, 3 idle timeout, 4 cut out by
upstream, 5 protocol or internal error.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import ctypes
import errno
import fcntl
import hashlib
import hmac
import json
import os
import queue
import select
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

MAGIC = b"KDCHAIN1"
NONCE_SIZE = 16
MAC_SIZE = 32
MAX_HEADER = 1 << 20
MAX_MESSAGE = 8 << 20
MIN_SECRET = 16
OFFSET = struct.Struct(">Q")
LENGTH = struct.Struct(">I")

HEARTBEAT = b"H"
DEAD = b"D"
SUPERSEDED = b"X"
ACK = b"A"

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_IDLE = 3
EXIT_CUT_OUT = 4
EXIT_PROTOCOL = 5

# F_SETPIPE_SZ appeared in the fcntl module in Python 3.10; its Linux values are stable.
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)
SPLICE_F_MOVE = getattr(os, "SPLICE_F_MOVE", 1)
SPLICE_F_NONBLOCK = getattr(os, "SPLICE_F_NONBLOCK", 2)
DRAIN_INTERVAL = 0.05
"""Seconds between two reads of the successor's messages while the stream flows."""
STAGING_PIPE = 1 << 20
"""Size of the splice path's pipes: /proc/sys/fs/pipe-max-size's default, so no privilege."""
UNSPLICEABLE = (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM)
"""splice(2) or tee(2) errors that mean "not here" rather than "this peer failed"."""
POLL_IN = select.POLLIN | select.POLLPRI
POLL_BAD = select.POLLERR | select.POLLHUP | select.POLLNVAL


class RelayError(Exception):
    """The relay cannot go on; ``status`` is its exit status."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class PeerLost(Exception):
    """A connection to a peer failed, stalled or broke the protocol."""


class HandshakeTimeout(PeerLost):
    """The peer accepted the connection but did not answer in time (stopped, overloaded)."""


def mac_of(secret: bytes, nonce: bytes) -> bytes:
    """What a connecting peer must present: it proves the secret without revealing it."""
    return hmac.new(secret, MAGIC + nonce, hashlib.sha256).digest()


def encode_message(kind: bytes, payload: dict[str, Any] | None = None) -> bytes:
    """One upstream-bound message: type byte, length, JSON payload (empty for heartbeats)."""
    body = b"" if payload is None else json.dumps(payload, separators=(",", ":")).encode()
    return kind + LENGTH.pack(len(body)) + body


class MessageReader:
    """Splits the bytes of an upstream-bound channel into ``(type, payload)`` messages."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[bytes, dict[str, Any]]]:
        self._buffer += data
        messages = []
        while len(self._buffer) >= 5:
            kind = bytes(self._buffer[:1])
            (length,) = LENGTH.unpack_from(self._buffer, 1)
            if length > MAX_MESSAGE or kind not in (HEARTBEAT, DEAD, SUPERSEDED, ACK):
                raise PeerLost("protocol error: bad message from successor")
            if len(self._buffer) < 5 + length:
                break
            body = bytes(self._buffer[5 : 5 + length])
            del self._buffer[: 5 + length]
            try:
                payload = json.loads(body) if body else {}
            except ValueError as exc:
                raise PeerLost(f"protocol error: bad message payload: {exc}") from exc
            if not isinstance(payload, dict):
                raise PeerLost("protocol error: message payload is not an object")
            messages.append((kind, payload))
        return messages


def split_address(text: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` to a (host, port) pair; ValueError if malformed."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"{text!r} is not HOST:PORT")
    return host.strip("[]"), int(port_text)


def recv_exact(sock: socket.socket, size: int, deadline: float) -> bytes:
    """Exactly ``size`` bytes from a blocking socket, or PeerLost by ``deadline``."""
    data = bytearray()
    while len(data) < size:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise HandshakeTimeout("timed out during handshake")
        sock.settimeout(remaining)
        try:
            piece = sock.recv(size - len(data))
        except TimeoutError as exc:
            raise HandshakeTimeout("timed out during handshake") from exc
        except OSError as exc:
            raise PeerLost(f"handshake failed: {exc}") from exc
        if not piece:
            raise PeerLost("connection closed during handshake")
        data += piece
    return bytes(data)


def client_handshake(
    sock: socket.socket, secret: bytes, header: dict[str, Any], timeout: float
) -> int:
    """Authenticate to a relay on a connected blocking socket; returns the offset it asks."""
    deadline = time.monotonic() + timeout
    greeting = recv_exact(sock, len(MAGIC) + NONCE_SIZE, deadline)
    if not greeting.startswith(MAGIC):
        raise PeerLost("not a chain relay (bad greeting)")
    body = json.dumps(header, separators=(",", ":")).encode()
    try:
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        sock.sendall(mac_of(secret, greeting[len(MAGIC) :]) + LENGTH.pack(len(body)) + body)
    except OSError as exc:
        raise PeerLost(f"handshake failed: {exc}") from exc
    try:
        (offset,) = OFFSET.unpack(recv_exact(sock, OFFSET.size, deadline))
    except HandshakeTimeout:
        raise
    except PeerLost as exc:
        raise PeerLost(f"refused by the relay (wrong secret?): {exc}") from exc
    if offset > header["size"]:
        raise PeerLost(f"relay asked for offset {offset} beyond the stream size")
    return offset


def connect(address: str, timeout: float) -> socket.socket:
    """A connected blocking TCP socket with Nagle off, or PeerLost."""
    try:
        host, port = split_address(address)
        sock = socket.create_connection((host, port), timeout=timeout)
    except (OSError, ValueError) as exc:
        raise PeerLost(f"cannot connect: {exc}") from exc
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class Reporter:
    """JSON lines on stdout, one write and flush per event, safe from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def emit(self, event: str, **fields: Any) -> None:
        line = json.dumps(dict(event=event, **fields), separators=(",", ":")) + "\n"
        with self._lock:
            try:
                sys.stdout.write(line)
                sys.stdout.flush()
            except (OSError, ValueError):
                pass  # nobody reads any more; the in-band ack still carries the results


class Upstream:
    """An authenticated connection from the predecessor, as handed over by the acceptor."""

    def __init__(self, sock: socket.socket, header: dict[str, Any]) -> None:
        self.sock = sock
        self.header = header
        self.lock = threading.Lock()

    def send_nowait(self, data: bytes) -> bool:
        """Best effort, never blocks (heartbeats, dead notices); False if it did not fit."""
        with self.lock:
            try:
                return self.sock.send(data, socket.MSG_DONTWAIT) == len(data)
            except OSError:
                return False

    def send_all(self, data: bytes, deadline: float) -> None:
        """Blocking-with-deadline send of the ack; PeerLost if it fails."""
        view = memoryview(data)
        with self.lock:
            while view:
                try:
                    sent = self.sock.send(view, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    sent = 0
                except OSError as exc:
                    raise PeerLost(f"upstream lost: {exc}") from exc
                view = view[sent:]
                if view:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise PeerLost("upstream does not read")
                    select.select([], [self.sock], [], min(remaining, 0.5))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class Acceptor(threading.Thread):
    """Accepts connections and authenticates each in its own short-lived thread.

    Authenticated upstreams go to ``ready`` and a byte is written to ``wake_w`` so the main
    thread's poll wakes up; anything else is closed at once.
    """

    MAX_PENDING = 16

    def __init__(self, listener: socket.socket, secret: bytes, timeout: float, wake_w: int) -> None:
        super().__init__(name="acceptor", daemon=True)
        self.listener = listener
        self.secret = secret
        self.timeout = timeout
        self.wake_w = wake_w
        self.ready: queue.Queue[Upstream] = queue.Queue()
        self.stopping = threading.Event()
        self._pending = threading.BoundedSemaphore(self.MAX_PENDING)

    def run(self) -> None:
        self.listener.settimeout(0.5)
        while not self.stopping.is_set():
            try:
                sock, _peer = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if not self._pending.acquire(blocking=False):
                sock.close()
                continue
            threading.Thread(target=self._authenticate, args=(sock,), daemon=True).start()

    def _authenticate(self, sock: socket.socket) -> None:
        try:
            deadline = time.monotonic() + self.timeout
            nonce = os.urandom(NONCE_SIZE)
            sock.settimeout(self.timeout)
            sock.sendall(MAGIC + nonce)
            presented = recv_exact(sock, MAC_SIZE, deadline)
            if not hmac.compare_digest(presented, mac_of(self.secret, nonce)):
                sock.close()
                return
            (length,) = LENGTH.unpack(recv_exact(sock, LENGTH.size, deadline))
            if length > MAX_HEADER:
                raise PeerLost("header too large")
            header = json.loads(recv_exact(sock, length, deadline))
            if not valid_header(header):
                raise PeerLost("bad header")
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            self.ready.put(Upstream(sock, header))
            os.write(self.wake_w, b"!")
        except (OSError, ValueError, PeerLost):
            sock.close()
        finally:
            self._pending.release()


def valid_header(header: Any) -> bool:
    return (
        isinstance(header, dict)
        and isinstance(header.get("size"), int)
        and header["size"] >= 0
        and isinstance(header.get("you"), str)
        and isinstance(header.get("rest"), list)
        and all(isinstance(item, str) for item in header["rest"])
    )


class Writer:
    """The local consumer of the stream (tar, dd...), fed through a blocking pipe."""

    def __init__(self, argv: list[str]) -> None:
        self.error = ""
        self.status: int | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.fd = -1
        try:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=sys.stderr.fileno(), close_fds=True
            )
        except OSError as exc:
            self.error = f"cannot start writer: {exc}"
            self.status = 127
            return
        assert self.proc.stdin is not None
        self.fd = self.proc.stdin.fileno()
        # A 1 MiB pipe takes a whole chunk per write; a smaller one only costs more calls.
        with contextlib.suppress(OSError):
            fcntl.fcntl(self.fd, F_SETPIPE_SZ, 1 << 20)

    @property
    def alive(self) -> bool:
        return self.fd >= 0

    def write(self, view: memoryview) -> None:
        while view and self.fd >= 0:
            try:
                written = os.write(self.fd, view)
            except OSError as exc:
                self.error = f"writer stopped reading: {exc}"
                self.close_pipe()
                return
            view = view[written:]

    def move(self, pipe_r: int, count: int) -> None:
        """Move ``count`` bytes waiting in the pipe ``pipe_r`` into the writer's pipe.

        splice(2) between two pipes passes page references: nothing is copied.
        """
        while count and self.fd >= 0:
            try:
                moved = os.splice(pipe_r, self.fd, count)
            except OSError as exc:
                self.error = f"writer stopped reading: {exc}"
                self.close_pipe()
                return
            if moved <= 0:
                raise RelayError(EXIT_PROTOCOL, "internal error: staging pipe ran dry")
            count -= moved

    def finish(self, timeout: float, wait: Callable[[float], None]) -> int | None:
        """Close its stdin and wait for it; None if it had to be killed.

        ``wait(seconds)`` is called between checks, so the relay keeps serving meanwhile.
        """
        self.close_pipe()
        if self.proc is None:
            return self.status
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                self.proc.kill()
                self.proc.wait()
                self.error = "writer did not exit in time; killed"
                return None
            wait(0.1)
        self.status = self.proc.returncode
        return self.status

    def close_pipe(self) -> None:
        if self.proc is not None and self.proc.stdin is not None and self.fd >= 0:
            self.fd = -1
            with contextlib.suppress(OSError):
                self.proc.stdin.close()


class Flusher:
    """Starts the target's writeback while the stream still arrives.

    A node's page cache can hold a whole image: left alone, the kernel writes it to disk only
    at umount, after the transfer, at the disk's speed. Flushing every ``every`` bytes that
    the writer was given makes the disk write while the network delivers. Best effort: umount
    flushes whatever is left, so a failure is logged once and ends the flushing.
    """

    def __init__(self, path: str, every: int, log: Callable[[str], None]) -> None:
        self.path = path
        self.every = every
        self.log = log
        self.fed = 0
        """Bytes handed to the writer so far (written by the relay's thread only)."""
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="flusher", daemon=True)

    def start(self) -> None:
        if self.path:
            self.thread.start()

    def stop(self) -> None:
        """Stop flushing; waits a little for the thread, whose last word may be a log."""
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join(5)

    def _run(self) -> None:
        # PATH is opened once the writer had enough to flush, not before: the writer may
        # mount it first.
        while self.fed < self.every and not self.stopping.wait(0.2):
            pass
        if self.fed < self.every:
            return
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError as exc:
            self.log(f"cannot open {self.path} to flush it: {exc}")
            return
        try:
            flush = os.fsync if stat.S_ISBLK(os.fstat(fd).st_mode) else syncfs
            flushed = 0
            while not self.stopping.is_set():
                if self.fed - flushed >= self.every:
                    flushed = self.fed
                    flush(fd)
                self.stopping.wait(0.2)
        except OSError as exc:
            self.log(f"flushing {self.path} failed, left to umount: {exc}")
        finally:
            os.close(fd)


_LIBC = ctypes.CDLL(None, use_errno=True)


def libc_tee() -> Callable[[int, int, int, int], int] | None:
    """tee(2) from the C library (the os module has splice but no tee), or None."""
    call = getattr(_LIBC, "tee", None)
    if call is None:
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_size_t, ctypes.c_uint]
    call.restype = ctypes.c_ssize_t
    return call


class Splicer:
    """The zero-copy intake: upstream socket -> ring, and -> writer without a copy.

    ``receive`` splices what the socket holds into pipe A (no copy to user space), tee(2)
    duplicates A's pages into pipe B (no copy), then reads A into the ring: the one copy, since
    the ring (for resumption), the hash and the forwarding need the bytes. The writer then gets
    B's pages by splice(2) (:meth:`Writer.move`), instead of a write(2) copy of the ring.
    Both pipes are empty between two calls. See "Data path" in the module docstring.
    """

    def __init__(self, tee: Callable[[int, int, int, int], int] | None = None) -> None:
        """OSError if splicing is not possible here (no os.splice, no tee, small pipes)."""
        if not hasattr(os, "splice"):
            raise OSError(errno.ENOSYS, "os.splice needs Python 3.10")
        self.tee = tee or libc_tee()
        if self.tee is None:
            raise OSError(errno.ENOSYS, "the C library has no tee()")
        self.fds: list[int] = []
        try:
            self.a_r, self.a_w = self._pipe()
            self.b_r, self.b_w = self._pipe()
        except OSError:
            self.close()
            raise
        self.size = STAGING_PIPE
        self.error = ""
        """Why tee(2) failed, if it did: the caller then stops using this splicer."""

    def _pipe(self) -> tuple[int, int]:
        read_end, write_end = os.pipe()
        self.fds += [read_end, write_end]
        fcntl.fcntl(write_end, F_SETPIPE_SZ, STAGING_PIPE)
        if fcntl.fcntl(write_end, F_GETPIPE_SZ) < STAGING_PIPE:
            raise OSError(errno.ENOMEM, "cannot size the staging pipe")
        return read_end, write_end

    def receive(self, sock: socket.socket, view: memoryview, tee: bool) -> tuple[int, int]:
        """Take what ``sock`` holds (at most ``len(view)`` bytes) into ``view``.

        Returns ``(received, queued)``: the first ``queued`` bytes of them also wait in pipe B
        for :meth:`Writer.move` (``tee`` False: none). BlockingIOError if nothing is there;
        OSError with an errno of UNSPLICEABLE if the socket cannot be spliced.
        """
        got, queued = self.stage(sock, len(view), tee)
        done = 0
        while done < got:
            # Pipe A holds exactly ``got`` bytes: this read never blocks.
            done += os.readv(self.a_r, [view[done:got]])
        return got, queued

    def stage(self, sock: socket.socket, count: int, tee: bool) -> tuple[int, int]:
        """Splice what ``sock`` holds (at most ``count`` bytes) into pipe A and, ``tee`` True,
        duplicate them into pipe B; they stay in A for the caller to take. Returns
        ``(received, queued in B)``; raises as :meth:`receive`."""
        flags = SPLICE_F_MOVE | SPLICE_F_NONBLOCK
        got = os.splice(sock.fileno(), self.a_w, min(count, self.size), flags=flags)
        if got == 0:
            return 0, 0
        return got, self._duplicate(got) if tee else 0

    def _duplicate(self, count: int) -> int:
        """tee(2) A into the empty pipe B; how many bytes now wait there."""
        assert self.tee is not None
        teed = self.tee(self.a_r, self.b_w, count, SPLICE_F_NONBLOCK)
        if teed < 0:
            code = ctypes.get_errno()
            self.error = f"tee failed: {os.strerror(code)}"
            return 0
        return teed

    def close(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds = []


class PipeRing:
    """The ring of a middle relay without digest: page references in pipes, no copy at all.

    The history is a queue of pipes, each at most :data:`STAGING_PIPE` large (the size any
    user may give a pipe, as the splicer's): the stream's last ``size`` bytes or a little
    more, as page references the socket gave. A piece staged in the splicer's pipe A is
    tee(2)'d into pipe C, the successor's share, then moved into the newest history pipe (and
    a new one when that is full); the oldest pipes are closed once the rest hold ``size``
    bytes. The successor gets C by splice(2). A new successor is caught up pipe by pipe: a tee
    of each history pipe into pipe S (the history keeps its bytes), then S by splice(2).
    """

    MAX_PIPES = 512
    """Most history pipes kept (two descriptors each), however small the socket's fragments."""

    def __init__(self, size: int, tee: Callable[[int, int, int, int], int]) -> None:
        self.tee = tee
        self.size = size
        self.fds: list[int] = []
        self.history: collections.deque[list[int]] = collections.deque()
        """[read end, write end, bytes held, 1 once full] of each history pipe, oldest first."""
        try:
            self.c_r, self.c_w = self._pipe()
            self.s_r, self.s_w = self._pipe()
            self.null = os.open(os.devnull, os.O_WRONLY)
            self.fds.append(self.null)
        except OSError:
            self.close()
            raise
        self.held = 0
        """Bytes in the history: the stream's last ``held`` bytes."""
        self.pending = 0
        """Bytes of the current piece waiting in C for the successor."""
        self.replaying = 0
        """Bytes waiting in S for a successor being caught up."""

    @staticmethod
    def _new_pipe() -> tuple[int, int]:
        read_end, write_end = os.pipe()
        try:
            fcntl.fcntl(write_end, F_SETPIPE_SZ, STAGING_PIPE)
            if fcntl.fcntl(write_end, F_GETPIPE_SZ) < STAGING_PIPE:
                raise OSError(errno.ENOMEM, "cannot size a ring pipe")
        except OSError:
            os.close(read_end)
            os.close(write_end)
            raise
        return read_end, write_end

    def _pipe(self) -> tuple[int, int]:
        read_end, write_end = self._new_pipe()
        self.fds += [read_end, write_end]
        return read_end, write_end

    def take(self, a_r: int, count: int) -> None:
        """Take the ``count`` bytes waiting in pipe A: a copy of their pages into C, then
        the pages themselves into the history."""
        self._tee_all(a_r, self.c_w, count)
        self.pending = count
        flags = SPLICE_F_MOVE | SPLICE_F_NONBLOCK
        while count:
            if not self.history or self.history[-1][3]:
                self._grow()
            newest = self.history[-1]
            try:
                moved = os.splice(a_r, newest[1], count, flags=flags)
            except BlockingIOError:
                moved = 0
            if moved == 0:  # full (of slots before bytes, if the socket gave small fragments)
                newest[3] = 1
                continue
            newest[2] += moved
            self.held += moved
            count -= moved
        while len(self.history) > 1 and self.held - self.history[0][2] >= self.size:
            self._drop_oldest()

    def _grow(self) -> None:
        if len(self.history) >= self.MAX_PIPES:
            self._drop_oldest()
        read_end, write_end = self._new_pipe()
        self.history.append([read_end, write_end, 0, 0])

    def _drop_oldest(self) -> None:
        read_end, write_end, held, _ = self.history.popleft()
        os.close(read_end)
        os.close(write_end)
        self.held -= held

    def replay(self, index: int, skip: int) -> int:
        """Put the bytes of history pipe ``index`` after its first ``skip`` into S (the
        history keeps them); how many wait there."""
        self.discard_replay()
        read_end, _, held, _ = self.history[index]
        self._tee_all(read_end, self.s_w, held)
        self._to_null(self.s_r, skip)
        self.replaying = held - skip
        return self.replaying

    def discard_pending(self) -> None:
        self._to_null(self.c_r, self.pending)
        self.pending = 0

    def discard_replay(self) -> None:
        self._to_null(self.s_r, self.replaying)
        self.replaying = 0

    def _tee_all(self, source: int, target: int, count: int) -> None:
        """tee(2) ``count`` bytes of ``source`` into the empty pipe ``target``, as large."""
        if not count:
            return
        teed = self.tee(source, target, count, SPLICE_F_NONBLOCK)
        if teed != count:
            reason = os.strerror(ctypes.get_errno()) if teed < 0 else f"{teed} of {count} bytes"
            raise RelayError(EXIT_PROTOCOL, f"internal error: tee in the ring: {reason}")

    def _to_null(self, source: int, count: int) -> None:
        while count > 0:
            moved = os.splice(source, self.null, count, flags=SPLICE_F_MOVE)
            if moved <= 0:
                raise RelayError(EXIT_PROTOCOL, "internal error: a ring pipe ran dry")
            count -= moved

    def close(self) -> None:
        while self.history:
            self._drop_oldest()
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds = []


def _writable(fd: int, timeout: float = 0.0) -> bool:
    """Whether the pipe ``fd`` has room (or its reader is gone: the write then fails)."""
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return bool(poller.poll(timeout * 1000))


def syncfs(fd: int) -> None:
    """syncfs(2) on the filesystem holding ``fd`` (os has no wrapper); sync(2) without it."""
    call = getattr(_LIBC, "syncfs", None)
    if call is None:
        os.sync()
    elif call(fd) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


class Downstream:
    """The connection to the current successor, with stall detection by silence."""

    def __init__(self, address: str, sock: socket.socket, offset: int) -> None:
        self.address = address
        self.sock = sock
        self.sent = offset
        self.reader = MessageReader()
        self.heard = time.monotonic()
        self.ack: dict[str, Any] | None = None
        self.closed_write = False
        self.drained = 0.0
        """When :meth:`Relay._forward` last read the successor's messages."""
        sock.setblocking(False)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class Relay:
    """The data path: ring buffer, writer, successor management, completion."""

    def __init__(self, args: argparse.Namespace, secret: bytes, writer_argv: list[str]) -> None:
        self.stall = args.stall_timeout
        self.idle = args.idle_timeout
        self.chunk = args.chunk_kib * 1024
        self.ring_size = max(args.ring_mib * (1 << 20), self.chunk)
        self.progress_interval = args.progress_interval
        self.secret = secret
        self.writer_argv = writer_argv
        self.report = Reporter()
        self.ring = bytearray(self.ring_size)
        self.view = memoryview(self.ring)
        self.received = 0
        self.size: int | None = None
        self.name = ""
        self.rest: list[str] = []
        self.dead: list[dict[str, str]] = []
        self.results: list[dict[str, Any]] = []
        self.sha = hashlib.sha256() if args.digest == "sha256" else None
        self.writer: Writer | None = None
        self.splice = not args.no_splice
        self.splicer: Splicer | None = None
        self.flusher = Flusher(args.flush, args.flush_mib << 20, self._log)
        self.up: Upstream | None = None
        self.down: Downstream | None = None
        self.busy_since: float | None = None  # set while blocked on the local writer
        self.direct = False
        """Tail without digest: the socket is spliced straight into the writer's pipe."""
        self.pipe_ring: PipeRing | None = None
        """Middle relay without digest: the ring and the successor get page references."""
        self.finished = threading.Event()
        self.last_upstream = time.monotonic()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        self.listener = self._listen(args.listen)
        self.acceptor = Acceptor(self.listener, secret, max(5.0, self.stall), self.wake_w)

    # -- set-up -----------------------------------------------------------------------------

    def _listen(self, address: str) -> socket.socket:
        try:
            host, port = split_address(address)
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            listener = socket.socket(family, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((host, port))
            listener.listen(16)
        except (OSError, ValueError) as exc:
            raise RelayError(EXIT_USAGE, f"cannot listen on {address}: {exc}") from exc
        return listener

    def run(self) -> None:
        self.report.emit("listening", port=self.listener.getsockname()[1])
        self.acceptor.start()
        threading.Thread(target=self._heartbeats, name="heartbeat", daemon=True).start()
        try:
            self._receive_stream()
            self._finish()
        finally:
            self.finished.set()
            self.flusher.stop()
            self.acceptor.stopping.set()
            self.listener.close()
            if self.down is not None:
                self.down.close()
            proc = self.writer.proc if self.writer is not None else None
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
            if self.splicer is not None:
                self.splicer.close()
            if self.pipe_ring is not None:
                self.pipe_ring.close()

    # -- upstream ---------------------------------------------------------------------------

    def _adopt_pending(self) -> None:
        """Take the newest authenticated upstream, answer its offset, drop the old one."""
        with contextlib.suppress(BlockingIOError):
            os.read(self.wake_r, 4096)
        while True:
            try:
                new = self.acceptor.ready.get_nowait()
            except queue.Empty:
                return
            first = self.size is None
            if first:
                self._start(new.header)
            elif new.header["size"] != self.size:
                new.close()  # another stream under the same secret: refuse it
                continue
            try:
                new.sock.sendall(OFFSET.pack(self.received))
            except OSError:
                new.close()
                continue
            old, self.up = self.up, new
            self.last_upstream = time.monotonic()
            if old is not None:
                old.send_nowait(
                    encode_message(SUPERSEDED, {"reason": "replaced by a new upstream"})
                )
                old.close()
            if first:
                self._relink()

    def _start(self, header: dict[str, Any]) -> None:
        """First authenticated upstream: learn the stream, start the writer and the chain."""
        self.size = header["size"]
        self.name = header["you"]
        self.rest = list(header["rest"])
        self.writer = Writer(self.writer_argv)
        if self.writer.error:
            self._log(self.writer.error)
        elif self.splice:
            try:
                self.splicer = Splicer()
            except OSError as exc:
                self._log(f"no splice ({exc.strerror or exc}): the writer gets copies")
        # The tail (no successor can ever come: the rest of the chain is empty) keeps no ring
        # and, without a digest, needs no byte in user space at all.
        self.direct = self.splicer is not None and not self.rest and self.sha is None
        if self.direct:
            self._log("tail without digest: the stream goes straight into the writer")
        elif self.splicer is not None and self.sha is None:
            self._start_pipe_ring(self.splicer)
        self.flusher.start()

    def _start_pipe_ring(self, splicer: Splicer) -> None:
        assert splicer.tee is not None
        try:
            self.pipe_ring = PipeRing(self.ring_size, splicer.tee)
            self._log("no digest: the ring and the successor get page references, no copy")
        except OSError as exc:
            self._log(f"the ring stays in memory: {exc.strerror or exc}")

    def _wait_upstream(self, poller: Any, timeout: float) -> None:
        """Poll the upstream socket and the wake pipe; raises on idle timeout."""
        events = poller.poll(timeout * 1000)
        if any(fd == self.wake_r for fd, _ in events):
            self._adopt_pending()
        if time.monotonic() - self.last_upstream > self.idle:
            raise RelayError(EXIT_IDLE, f"nothing from upstream for {self.idle:g} s")

    def _receive_stream(self) -> None:
        poller, polled = self._poller(), None
        drained = False  # the last receive emptied the socket: poll before the next one
        while self.size is None or self.received < self.size:
            up = self.up
            if up is None:
                self._wait_upstream(self._poller(), 1.0)
                continue
            if drained:
                if polled is not up:
                    poller, polled = self._poller(), up
                    poller.register(up.sock, POLL_IN)
                self._wait_upstream(poller, 1.0)
                drained = False
                continue
            assert self.size is not None
            start = self.received % self.ring_size
            want = min(self.chunk, self.ring_size - start, self.size - self.received)
            if self.splicer is not None:
                want = min(want, self.splicer.size)
            if self.direct:
                try:
                    drained = not self._take_direct(up, want)
                except OSError as exc:
                    self._log(f"upstream lost at byte {self.received}: {exc}")
                    up.close()
                    self.up = None
                continue
            try:
                got, queued = self._take(up.sock, self.view[start : start + want])
            except (BlockingIOError, InterruptedError):
                drained = True
                continue
            except OSError as exc:
                got = queued = 0
                self._log(f"upstream lost at byte {self.received}: {exc}")
            if got == 0:
                # Upstream died or was cut out before the end: wait for the one that replaces it.
                up.close()
                self.up = None
                continue
            drained = got < want
            piece = self.view[start : start + got] if self.pipe_ring is None else None
            self.received += got
            self.last_upstream = time.monotonic()
            # Hash first, while the piece is still in the CPU's cache (the copy into the ring
            # just brought it there); then the successor, then the writer.
            if self.sha is not None and piece is not None:
                self.sha.update(piece)
            self._forward()
            self._feed_writer(got, queued, piece)

    def _poller(self) -> Any:
        poller = select.poll()
        poller.register(self.wake_r, select.POLLIN)
        return poller

    def _take(self, sock: socket.socket, view: memoryview) -> tuple[int, int]:
        """Receive into ``view``; returns (bytes received, how many of them wait in the
        splicer's pipe for the writer)."""
        splicer = self.splicer
        writer = self.writer
        assert writer is not None
        if self.pipe_ring is not None:
            assert splicer is not None
            got, queued = splicer.stage(sock, len(view), tee=writer.alive)
            if writer.alive and queued != got:
                raise RelayError(EXIT_PROTOCOL, f"internal error: {splicer.error}")
            self.pipe_ring.take(splicer.a_r, got)
            return got, queued
        if splicer is not None and writer.alive:
            try:
                return splicer.receive(sock, view, tee=True)
            except OSError as exc:
                if exc.errno not in UNSPLICEABLE:
                    raise
                self._drop_splicer(f"splice failed: {exc.strerror or exc}")
        return sock.recv_into(view), 0

    def _take_direct(self, up: Upstream, want: int) -> bool:
        """Splice what the upstream socket holds into the writer's pipe, waiting for the
        writer if its pipe is full; False if the socket had nothing. A writer that stopped
        or a socket that cannot be spliced ends the direct path (the stream goes on with
        the ring, as for any relay)."""
        writer = self.writer
        assert writer is not None
        flags = SPLICE_F_MOVE | SPLICE_F_NONBLOCK
        try:
            got = os.splice(up.sock.fileno(), writer.fd, want, flags=flags)
        except (BlockingIOError, InterruptedError):
            if _writable(writer.fd):
                return False  # the socket is empty: poll it
            self.busy_since = time.monotonic()
            while not _writable(writer.fd, 0.5):
                pass  # the writer is slow: wait for it (the heartbeats say how long)
            self.busy_since = None
            return True
        except OSError as exc:
            if exc.errno == errno.EPIPE:
                writer.error = f"writer stopped reading: {exc}"
                writer.close_pipe()
                self._log(f"{writer.error}; still receiving the stream")
            elif exc.errno in UNSPLICEABLE:
                self._log(f"splice failed: {exc.strerror or exc}; receiving into the ring")
            else:
                raise
            self.direct = False
            return True
        if got == 0:
            raise OSError(errno.ECONNRESET, "closed before the end of the stream")
        self.received += got
        self.flusher.fed += got
        self.last_upstream = time.monotonic()
        return True

    def _feed_writer(self, count: int, queued: int, piece: memoryview | None) -> None:
        """Give the writer the ``count`` bytes just received: the first ``queued`` from the
        splicer's pipe, the rest as a copy of ``piece`` in the ring."""
        writer = self.writer
        assert writer is not None
        if not writer.alive:
            return
        self.busy_since = time.monotonic()
        if queued:
            assert self.splicer is not None
            writer.move(self.splicer.b_r, queued)
        if queued < count:
            assert piece is not None
            writer.write(piece[queued:])
        self.busy_since = None
        self.flusher.fed += count
        if not writer.alive:
            self._log(f"{writer.error}; still forwarding the stream")
        if self.splicer is not None and self.splicer.error:
            self._drop_splicer(self.splicer.error)

    def _drop_splicer(self, reason: str) -> None:
        """Go on with recv(2) and write(2) copies."""
        assert self.splicer is not None
        self._log(f"{reason}; the writer gets copies from now on")
        self.splicer.close()
        self.splicer = None

    # -- downstream -------------------------------------------------------------------------

    def _relink(self) -> None:
        """Connect to the first successor that answers and bring it up to ``received``."""
        while self.down is None and self.rest:
            address = self.rest.pop(0)
            try:
                sock = connect(address, self.stall)
                header = {"size": self.size, "you": address, "rest": list(self.rest)}
                offset = client_handshake(sock, self.secret, header, 2 * self.stall + 5)
            except PeerLost as exc:
                self._mark_dead(address, str(exc))
                continue
            held = self.ring_size if self.pipe_ring is None else self.pipe_ring.held
            oldest = max(0, self.received - held)
            if offset < oldest or offset > self.received:
                sock.close()
                self._mark_dead(
                    address,
                    f"needs byte {offset} but this relay holds only [{oldest}, {self.received})",
                )
                continue
            self.down = Downstream(address, sock, offset)
            if self.pipe_ring is None:
                self._forward()
                continue
            try:
                self._catch_up(self.down, self.pipe_ring, offset - oldest)
            except PeerLost as exc:
                self.down.close()
                self.down = None
                self._mark_dead(address, str(exc))

    def _mark_dead(self, address: str, reason: str) -> None:
        entry = {"node": address, "reason": reason}
        self.dead.append(entry)
        self.report.emit("dead", node=address, reason=reason)
        if self.up is not None:
            self.up.send_nowait(encode_message(DEAD, entry))

    def _lose_successor(self, reason: str) -> None:
        down = self.down
        assert down is not None
        down.close()
        self.down = None
        self._mark_dead(down.address, reason)
        self._relink()

    def _drain_now_and_then(self, down: Downstream) -> None:
        """Read the successor's messages if they waited long enough. They may wait a little
        (a send that blocks reads them at once): reading them before every piece cost a
        failed recv(2) per piece."""
        now = time.monotonic()
        if now - down.drained >= DRAIN_INTERVAL:
            down.drained = now
            self._drain(down)

    def _forward(self) -> None:
        """Send the successor everything it lacks up to ``received``, from the ring."""
        if self.pipe_ring is not None:
            self._forward_piped(self.pipe_ring)
            return
        while self.down is not None:
            down = self.down
            try:
                self._drain_now_and_then(down)
                while down.sent < self.received:
                    start = down.sent % self.ring_size
                    end = min(self.ring_size, start + (self.received - down.sent))
                    down.sent += self._send_some(down, self.view[start:end])
                return
            except PeerLost as exc:
                self._lose_successor(str(exc))

    def _forward_piped(self, ring: PipeRing) -> None:
        """Send the successor the piece waiting in C; a successor caught up from H since
        (it already has the piece) or none: C is emptied."""
        while True:
            down = self.down
            if down is None or down.sent != self.received - ring.pending:
                ring.discard_pending()
                return
            start = down.sent
            try:
                self._drain_now_and_then(down)
                self._splice_down(down, ring.c_r, ring.pending)
                ring.pending = 0
                return
            except PeerLost as exc:
                ring.pending -= down.sent - start
                ring.discard_pending()
                self._lose_successor(str(exc))

    def _catch_up(self, down: Downstream, ring: PipeRing, skip: int) -> None:
        """Send a new successor the stream from its offset to ``received``, out of the
        ring's history, pipe by pipe."""
        for index in range(len(ring.history)):
            held = ring.history[index][2]
            if skip >= held:
                skip -= held
                continue
            ring.replay(index, skip)
            skip = 0
            start = down.sent
            try:
                self._splice_down(down, ring.s_r, ring.replaying)
                ring.replaying = 0
            except PeerLost:
                ring.replaying -= down.sent - start
                ring.discard_replay()
                raise

    def _splice_down(self, down: Downstream, pipe_r: int, count: int) -> None:
        """Send the ``count`` bytes waiting in ``pipe_r`` to the successor, by splice(2)
        (page references, no copy); waits (reading messages) while it is blocked."""
        end = down.sent + count
        flags = SPLICE_F_MOVE | SPLICE_F_NONBLOCK
        while down.sent < end:
            try:
                moved = os.splice(pipe_r, down.sock.fileno(), end - down.sent, flags=flags)
            except (BlockingIOError, InterruptedError):
                self._wait_down(down, select.POLLOUT)
                continue
            except OSError as exc:
                raise PeerLost(f"send failed: {exc}") from exc
            if moved <= 0:
                raise RelayError(EXIT_PROTOCOL, "internal error: the successor's pipe ran dry")
            down.sent += moved
            down.heard = time.monotonic()

    def _send_some(self, down: Downstream, view: memoryview) -> int:
        """Send at least one byte of ``view``; waits (reading messages) while blocked."""
        while True:
            try:
                sent = down.sock.send(view)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                raise PeerLost(f"send failed: {exc}") from exc
            if sent:
                down.heard = time.monotonic()
                return sent
            self._wait_down(down, select.POLLOUT)

    def _wait_down(self, down: Downstream, extra: int) -> None:
        """One poll on the successor; raises PeerLost on error, close or stall."""
        silent_for = time.monotonic() - down.heard
        if silent_for > self.stall:
            raise PeerLost(f"stalled: no progress nor heartbeat for {silent_for:.1f} s")
        poller = select.poll()
        poller.register(down.sock, POLL_IN | extra)
        poller.register(self.wake_r, select.POLLIN)
        timeout = min(self.stall - silent_for, self.stall / 4)
        for fd, mask in poller.poll(max(1, int(timeout * 1000))):
            if fd == self.wake_r:
                # A new upstream must get its offset now, not after this wait: it would
                # take the silence for a stall.
                self._adopt_pending()
            elif mask & POLL_IN:
                self._drain(down)
            elif mask & POLL_BAD:
                raise PeerLost("connection error")

    def _drain(self, down: Downstream) -> None:
        """Read whatever the successor sent upstream-bound, without blocking."""
        while True:
            try:
                data = down.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                raise PeerLost(f"connection lost: {exc}") from exc
            if not data:
                if down.ack is not None:
                    return
                raise PeerLost("closed the connection before acknowledging the stream")
            down.heard = time.monotonic()
            for kind, payload in down.reader.feed(data):
                if kind == DEAD:
                    entry = {"node": str(payload.get("node")), "reason": str(payload.get("reason"))}
                    self.report.emit("dead", **entry)
                    if self.up is not None:
                        self.up.send_nowait(encode_message(DEAD, entry))
                elif kind == SUPERSEDED:
                    raise RelayError(EXIT_CUT_OUT, "cut out: the successor has a new upstream")
                elif kind == ACK:
                    down.ack = payload
                    return

    # -- completion -------------------------------------------------------------------------

    def _finish(self) -> None:
        assert self.writer is not None
        self._half_close_down()
        self.busy_since = None
        status = self.writer.finish(self.idle, self._serve_while_waiting)
        self.flusher.stop()
        if status is None:
            self._log(self.writer.error)
        ack = self._await_successor_ack()
        own = {
            "node": self.name,
            "bytes": self.received,
            "sha256": self._digest(),
            "writer_status": status,
            "writer_error": self.writer.error,
        }
        self.results = [own, *list(ack.get("results", []))]
        dead = self.dead + [d for d in ack.get("dead", []) if d not in self.dead]
        message = encode_message(ACK, {"results": self.results, "dead": dead})
        self._deliver_ack(message)
        self.report.emit("done", bytes=self.received, sha256=self._digest(), writer_status=status)

    def _digest(self) -> str:
        return self.sha.hexdigest() if self.sha is not None else ""

    def _half_close_down(self) -> None:
        while self.down is not None and not self.down.closed_write:
            try:
                self.down.sock.shutdown(socket.SHUT_WR)
                self.down.closed_write = True
            except OSError as exc:
                self._lose_successor(f"half-close failed: {exc}")

    def _await_successor_ack(self) -> dict[str, Any]:
        while self.down is not None:
            down = self.down
            try:
                while down.ack is None:
                    self._wait_down(down, 0)
                down.close()
                self.down = None
                return down.ack
            except PeerLost as exc:
                self._lose_successor(str(exc))
                self._half_close_down()
        return {}

    def _serve_while_waiting(self, seconds: float) -> None:
        """Wait up to ``seconds``, answering any new upstream meanwhile."""
        poller = select.poll()
        poller.register(self.wake_r, select.POLLIN)
        if poller.poll(seconds * 1000):
            self._adopt_pending()

    def _deliver_ack(self, message: bytes) -> None:
        """Give the ack to the current upstream, or to the one that replaces it."""
        self.last_upstream = time.monotonic()
        while True:
            up = self.up
            if up is not None:
                try:
                    up.send_all(message, time.monotonic() + self.idle)
                    up.sock.shutdown(socket.SHUT_WR)
                    self._wait_eof(up)
                    up.close()
                    return
                except (PeerLost, OSError) as exc:
                    self._log(f"could not deliver the ack upstream: {exc}")
                    up.close()
                    self.up = None
            poller = select.poll()
            poller.register(self.wake_r, select.POLLIN)
            self._wait_upstream(poller, 1.0)

    def _wait_eof(self, up: Upstream) -> None:
        """Wait for upstream to close after the ack, so closing here cannot reset it."""
        deadline = time.monotonic() + self.stall
        while time.monotonic() < deadline:
            select.select([up.sock], [], [], max(0.0, deadline - time.monotonic()))
            try:
                if not up.sock.recv(65536):
                    return
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                return

    # -- side threads -----------------------------------------------------------------------

    def _heartbeats(self) -> None:
        """Tell upstream this relay is alive; stop when blocked on the writer too long."""
        interval = min(self.stall / 4, self.progress_interval)
        last_progress = time.monotonic()
        reported = -1
        beat = encode_message(HEARTBEAT)
        while not self.finished.wait(interval):
            now = time.monotonic()
            busy = self.busy_since
            up = self.up
            if up is not None and (busy is None or now - busy < 0.75 * self.stall):
                up.send_nowait(beat)
            if now - last_progress >= self.progress_interval and self.received != reported:
                reported = self.received
                last_progress = now
                self.report.emit("progress", bytes=reported)

    def _log(self, text: str) -> None:
        sys.stderr.write(f"relay {self.name or '?'}: {text}\n")
        sys.stderr.flush()


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="relay.py", description="kadeployd chain relay")
    parser.add_argument("--writer", required=True, help="writer command as a JSON list")
    parser.add_argument("--listen", default="0.0.0.0:0", help="HOST:PORT, port 0 for any")
    parser.add_argument("--secret-env", default="", help="env variable holding the secret")
    parser.add_argument("--stall-timeout", type=float, default=10.0)
    parser.add_argument("--idle-timeout", type=float, default=300.0)
    parser.add_argument("--ring-mib", type=int, default=64)
    parser.add_argument("--chunk-kib", type=int, default=1024)
    parser.add_argument("--progress-interval", type=float, default=1.0)
    parser.add_argument("--flush", default="", help="directory or block device to flush")
    parser.add_argument("--flush-mib", type=int, default=64)
    parser.add_argument("--no-splice", action="store_true", help="copy, never splice(2)")
    parser.add_argument("--digest", choices=("sha256", "none"), default="sha256")
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> list[str]:
    """Validate the arguments; returns the writer argv or raises RelayError."""
    try:
        writer = json.loads(args.writer)
    except ValueError as exc:
        raise RelayError(EXIT_USAGE, f"--writer is not JSON: {exc}") from exc
    if (
        not isinstance(writer, list)
        or not writer
        or not all(isinstance(item, str) for item in writer)
    ):
        raise RelayError(
            EXIT_USAGE, '--writer must be a non-empty JSON list of strings, e.g. ["cat"]'
        )
    for name in ("stall_timeout", "idle_timeout", "progress_interval"):
        if getattr(args, name) <= 0:
            raise RelayError(EXIT_USAGE, f"--{name.replace('_', '-')} must be > 0")
    if args.ring_mib <= 0 or args.chunk_kib <= 0 or args.flush_mib <= 0:
        raise RelayError(EXIT_USAGE, "--ring-mib, --chunk-kib and --flush-mib must be > 0")
    return writer


def read_secret(env_name: str) -> bytes:
    if env_name:
        value = os.environ.get(env_name, "").encode()
        where = f"environment variable {env_name}"
    else:
        value = sys.stdin.buffer.readline().rstrip(b"\r\n")
        where = "the first line of stdin"
    if len(value) < MIN_SECRET:
        raise RelayError(EXIT_USAGE, f"secret from {where} is shorter than {MIN_SECRET} bytes")
    return value


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    reporter = Reporter()
    try:
        writer = check_args(args)
        relay = Relay(args, read_secret(args.secret_env), writer)
        relay.run()
    except RelayError as exc:
        reporter.emit("error", reason=exc.reason)
        sys.stderr.write(f"relay: {exc.reason}\n")
        sys.exit(exc.status)
    except Exception as exc:  # the one line the server sees instead of a traceback
        reporter.emit("error", reason=f"internal error: {type(exc).__name__}: {exc}")
        sys.stderr.write(f"relay: internal error: {type(exc).__name__}: {exc}\n")
        sys.exit(EXIT_PROTOCOL)
    sys.exit(EXIT_OK)


if __name__ == "__main__":
    main()
