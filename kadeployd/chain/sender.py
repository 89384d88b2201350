"""The server end of a chain: stream an image file into the first live relay.

:class:`ChainSender` runs in a worker thread of the daemon. It connects to the first hop,
authenticates with the broadcast's secret, sends the rest of the chain in the handshake,
streams the file with ``os.sendfile`` from the offset the hop asks, and waits for the hop's
acknowledgement, which arrives only once every node after it holds the stream. If the first
hop dies or stalls (no progress and no heartbeat for ``stall_timeout``), it is cut out and
the sender resumes on the next hop at the offset that hop asks (the file can seek, so any
offset is fine). :meth:`ChainSender.cancel` may be called from any thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import select
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kadeploy_core.errors import ImageError, KadeployError
from kadeployd.chain.relay import (
    ACK,
    DEAD,
    SUPERSEDED,
    MessageReader,
    PeerLost,
    client_handshake,
    connect,
)
from kadeployd.chain.report import ChainResult, HopResult

logger = logging.getLogger(__name__)

CHUNK = 4 << 20
HASH_BLOCK = 4 << 20


class ChainCancelled(KadeployError):
    """The broadcast was cancelled while the sender was running."""


def new_secret() -> bytes:
    """A fresh per-broadcast secret, printable so it can travel as one line of stdin."""
    return secrets.token_hex(32).encode()


@dataclass(frozen=True, slots=True)
class Hop:
    """A relay as the server and the other relays reach it."""

    host: str
    port: int

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class ChainEvent:
    """What the sender observed, passed to ``on_event`` from the sending thread.

    ``kind``: ``connected`` (now streaming into ``node`` from ``bytes``), ``progress``
    (``bytes`` sent so far), ``dead`` (``node`` cut out, by the server or a relay, with
    ``reason``), ``done`` (``bytes`` = size, every live node acknowledged).
    """

    kind: str
    node: str = ""
    bytes: int = 0
    reason: str = ""


class ChainSender:
    """One broadcast of ``image`` through ``hops`` (in chain order)."""

    def __init__(
        self,
        image: Path,
        hops: Sequence[Hop],
        secret: bytes,
        *,
        stall_timeout: float = 10.0,
        connect_timeout: float | None = None,
        on_event: Callable[[ChainEvent], None] | None = None,
        progress_interval: float = 1.0,
        source_sha256: str | None = None,
        checkpoint: Callable[[int], None] | None = None,
    ) -> None:
        """``source_sha256``: the image's SHA-256 if known, None to compute it while sending,
        "" for a round whose relays compute no digest (nothing is compared).
        ``checkpoint``, if given, is called in the sending thread after every piece with
        the offset reached; it may block, which pauses the stream (tests use it)."""
        if not hops:
            raise ValueError("a chain needs at least one hop")
        self.image = image
        self.hops = list(hops)
        self.secret = secret
        self.stall = stall_timeout
        self.connect_timeout = stall_timeout if connect_timeout is None else connect_timeout
        self.on_event = on_event
        self.progress_interval = progress_interval
        self.source_sha256 = source_sha256
        self.checkpoint = checkpoint
        self.dead: dict[str, str] = {}
        self._cancelled = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._last_progress = 0.0

    def cancel(self) -> None:
        """Stop the broadcast as soon as possible; ``run`` raises ChainCancelled."""
        self._cancelled.set()
        with contextlib.suppress(OSError):  # already closed: nothing left to wake
            os.write(self._wake_w, b"!")

    def run(self) -> ChainResult:
        """Stream the image; returns once the first live hop acknowledged (or all are dead)."""
        try:
            fd = os.open(self.image, os.O_RDONLY)
        except OSError as exc:
            raise ImageError(f"{self.image}: cannot read the image: {exc.strerror}") from exc
        digest: list[str] = []
        hasher = None
        if self.source_sha256 is None:
            hasher = threading.Thread(
                target=self._hash_source, args=(digest,), name="chain-source-hash", daemon=True
            )
            hasher.start()
        try:
            size = os.fstat(fd).st_size
            ack = self._broadcast(fd, size)
        finally:
            os.close(fd)
            if hasher is not None:
                self._join_hasher(hasher)
        results: dict[str, HopResult] = {}
        for entry in ack.get("results", []):
            result = HopResult.from_ack(entry)
            results[result.node] = result
        for entry in ack.get("dead", []):
            if isinstance(entry, dict):
                self._note_dead(str(entry.get("node")), str(entry.get("reason")))
        if self.source_sha256 is None and not digest:
            raise ImageError(f"{self.image}: cannot read the image to compute its SHA-256")
        sha = self.source_sha256 if self.source_sha256 is not None else digest[0]
        return ChainResult(size=size, sha256=sha, results=results, dead=dict(self.dead))

    def close(self) -> None:
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)

    # -- the hops ---------------------------------------------------------------------------

    def _broadcast(self, fd: int, size: int) -> dict[str, Any]:
        for index, hop in enumerate(self.hops):
            if hop.address in self.dead:
                continue
            rest = [h.address for h in self.hops[index + 1 :] if h.address not in self.dead]
            header = {"size": size, "you": hop.address, "rest": rest}
            sock: socket.socket | None = None
            try:
                sock = connect(hop.address, self.connect_timeout)
                offset = client_handshake(sock, self.secret, header, 2 * self.stall + 5)
                logger.info("chain: streaming into %s from byte %d", hop.address, offset)
                self._emit(ChainEvent("connected", node=hop.address, bytes=offset))
                ack = self._stream(sock, fd, offset, size)
            except PeerLost as exc:
                self._note_dead(hop.address, str(exc))
                continue
            finally:
                if sock is not None:
                    sock.close()
            self._emit(ChainEvent("done", bytes=size))
            return ack
        logger.warning("chain: every hop is dead")
        return {}

    def _stream(self, sock: socket.socket, fd: int, offset: int, size: int) -> dict[str, Any]:
        """Send [offset, size) then half-close; returns the hop's ack payload."""
        sock.setblocking(False)
        reader = MessageReader()
        state: dict[str, Any] = {"heard": time.monotonic(), "ack": None}
        while offset < size:
            try:
                sent = os.sendfile(sock.fileno(), fd, offset, min(CHUNK, size - offset))
            except (BlockingIOError, InterruptedError):
                self._wait(sock, reader, state, select.POLLOUT)
                continue
            except OSError as exc:
                raise PeerLost(f"send failed: {exc}") from exc
            if sent == 0:
                raise ImageError(f"{self.image}: the image shrank to {offset} bytes while sent")
            offset += sent
            state["heard"] = time.monotonic()
            self._progress(offset)
            if self.checkpoint is not None:
                self.checkpoint(offset)
            if self._cancelled.is_set():
                raise ChainCancelled("chain broadcast cancelled")
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            raise PeerLost(f"half-close failed: {exc}") from exc
        while state["ack"] is None:
            self._wait(sock, reader, state, 0)
        ack: dict[str, Any] = state["ack"]
        return ack

    def _wait(
        self, sock: socket.socket, reader: MessageReader, state: dict[str, Any], extra: int
    ) -> None:
        """One poll on the hop and the cancel pipe; PeerLost on error, close or stall."""
        silent_for = time.monotonic() - state["heard"]
        if silent_for > self.stall:
            raise PeerLost(f"stalled: no progress nor heartbeat for {silent_for:.1f} s")
        poller = select.poll()
        poller.register(sock, select.POLLIN | extra)
        poller.register(self._wake_r, select.POLLIN)
        timeout = min(self.stall - silent_for, self.stall / 4)
        for fd, mask in poller.poll(max(1, int(timeout * 1000))):
            if fd == self._wake_r:
                if self._cancelled.is_set():
                    raise ChainCancelled("chain broadcast cancelled")
            elif mask & select.POLLIN:
                self._read_messages(sock, reader, state)
            elif mask & (select.POLLERR | select.POLLHUP | select.POLLNVAL):
                raise PeerLost("connection error")

    def _read_messages(
        self, sock: socket.socket, reader: MessageReader, state: dict[str, Any]
    ) -> None:
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            raise PeerLost(f"connection lost: {exc}") from exc
        if not data:
            raise PeerLost("closed the connection before acknowledging the stream")
        state["heard"] = time.monotonic()
        for kind, payload in reader.feed(data):
            if kind == DEAD:
                self._note_dead(str(payload.get("node")), str(payload.get("reason")))
            elif kind == SUPERSEDED:
                raise PeerLost("the hop says it has another upstream")
            elif kind == ACK:
                if not isinstance(payload.get("results"), list):
                    raise PeerLost("protocol error: ack without results")
                state["ack"] = payload

    # -- helpers ----------------------------------------------------------------------------

    def _note_dead(self, node: str, reason: str) -> None:
        if node in self.dead:
            return
        self.dead[node] = reason
        logger.warning("chain: %s cut out: %s", node, reason)
        self._emit(ChainEvent("dead", node=node, reason=reason))

    def _progress(self, offset: int) -> None:
        now = time.monotonic()
        if now - self._last_progress >= self.progress_interval:
            self._last_progress = now
            self._emit(ChainEvent("progress", bytes=offset))

    def _emit(self, event: ChainEvent) -> None:
        if self.on_event is not None:
            self.on_event(event)

    def _hash_source(self, out: list[str]) -> None:
        sha = hashlib.sha256()
        try:
            with self.image.open("rb", buffering=0) as stream:
                while not self._cancelled.is_set():
                    block = stream.read(HASH_BLOCK)
                    if not block:
                        out.append(sha.hexdigest())
                        return
                    sha.update(block)
        except OSError as exc:
            logger.error("chain: cannot hash %s: %s", self.image, exc)

    def _join_hasher(self, hasher: threading.Thread) -> None:
        # The hash reads the file at disk speed: it needs no deadline beyond the file's size.
        hasher.join()


def send_chain(
    image: Path,
    hops: Sequence[Hop],
    secret: bytes,
    *,
    stall_timeout: float = 10.0,
    on_event: Callable[[ChainEvent], None] | None = None,
    source_sha256: str | None = None,
) -> ChainResult:
    """Blocking one-shot broadcast; use :class:`ChainSender` directly to be able to cancel."""
    sender = ChainSender(
        image,
        hops,
        secret,
        stall_timeout=stall_timeout,
        on_event=on_event,
        source_sha256=source_sha256,
    )
    try:
        return sender.run()
    finally:
        sender.close()
