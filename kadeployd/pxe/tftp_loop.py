"""The TFTP server loop: every session on one selector, tftpy as the packet layer.

tftpy 0.8's own ``TftpServer.listen`` is not fit for a root daemon serving a whole cluster:
it waits with ``select()``, which fails for any socket numbered 1024 or more (a daemon with a
thousand idle API connections, or a flood of TFTP requests, gets there), it lets one malformed
datagram escape the loop as an exception (dropping every transfer in progress), and it has no
bound on sessions. This loop keeps tftpy's packet factory, contexts and states (the protocol)
and owns the rest:

- ``selectors.DefaultSelector`` (epoll on Linux): no limit on socket numbers;
- one datagram's failure ends that session only, answered with a TFTP ERROR packet; the
  loop itself never sees an exception from a request;
- sessions are capped per client address and in total; a request beyond a cap is answered
  "server busy" (ERROR code 0) and costs no socket;
- a session's socket only accepts datagrams from its client's address and port (tftpy's own
  ``cycle`` logs a stranger's packet and then handles it anyway); others get "unknown TID";
- retransmissions and give-ups on silence follow tftpy's timeout and retries.

Stopping is immediate: ``stop()`` writes to a socketpair the selector watches.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import selectors
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

from tftpy.TftpContexts import TftpContextServer
from tftpy.TftpPacketFactory import TftpPacketFactory
from tftpy.TftpPacketTypes import TftpPacketERR, TftpPacketRRQ, TftpPacketWRQ
from tftpy.TftpShared import MAX_BLKSIZE, TftpErrors, TftpException, TftpTimeoutExpectACK

from kadeployd.pxe.log_throttle import LogThrottle, held_note

logger = logging.getLogger(__name__)

_MAIN = "main"
_WAKE = "wake"
_DRAIN = 64
"""Datagrams read from one socket per wake-up, so a flooded socket cannot starve the others."""

OpenFile = Callable[..., IO[bytes] | None]
Upload = Callable[[str, Any], Any]


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """Bounds on concurrent TFTP sessions (one session holds one UDP socket and maybe a file)."""

    total: int = 512
    """Sessions at once over every client."""
    per_client: int = 16
    """Sessions at once from one client address (PXE firmware uses one or two)."""


DEFAULT_LIMITS = SessionLimits()


def error_datagram(code: int, message: str) -> bytes:
    """A TFTP ERROR packet (RFC 1350) with ``message`` (ASCII, truncated)."""
    text = message.encode("ascii", "replace")[:200]
    return struct.pack("!HH", 5, code) + text + b"\0"


class TftpLoop:
    """One TFTP server socket and its sessions; ``run()`` serves until ``stop()``.

    ``open_file`` and ``upload_open`` are tftpy's ``dyn_file_func`` and ``upload_open``;
    ``decoy_root`` is an empty directory given to tftpy as its root, so that every read goes
    through ``open_file`` (tftpy would serve its root's files itself).
    """

    def __init__(
        self,
        bind_address: str,
        port: int,
        *,
        decoy_root: str,
        open_file: OpenFile,
        upload_open: Upload,
        timeout: float,
        retries: int,
        limits: SessionLimits,
    ) -> None:
        self._decoy_root = decoy_root
        self._open_file = open_file
        self._upload_open = upload_open
        self._timeout = timeout
        self._retries = retries
        self._limits = limits
        self._factory = TftpPacketFactory()
        self._log_throttle = LogThrottle()
        self._sessions: dict[tuple[str, int], TftpContextServer] = {}
        self._per_client: collections.Counter[str] = collections.Counter()
        self._stopping = False
        self.malformed = 0
        """Datagrams that could not be parsed or handled (each ended its session only)."""
        self.refused_busy = 0
        """Requests answered "server busy" because a session cap was reached."""
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self._sock.bind((bind_address, port))
        except OSError:
            self._sock.close()
            raise
        self._sock.setblocking(False)
        self.port: int = self._sock.getsockname()[1]
        self._wake_read, self._wake_write = socket.socketpair()
        self._wake_read.setblocking(False)
        self._wake_write.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._sock, selectors.EVENT_READ, _MAIN)
        self._selector.register(self._wake_read, selectors.EVENT_READ, _WAKE)

    @property
    def sessions(self) -> int:
        """Sessions in progress."""
        return len(self._sessions)

    def stop(self) -> None:
        """Make ``run()`` return at once (from any thread)."""
        self._stopping = True
        with contextlib.suppress(OSError):
            self._wake_write.send(b"\0")

    def run(self) -> None:
        """Serve until ``stop()``; every socket is closed when it returns."""
        try:
            while not self._stopping:
                for key, _ in self._selector.select(self._next_wait()):
                    if key.data == _MAIN:
                        self._receive_requests()
                    elif key.data == _WAKE:
                        with contextlib.suppress(OSError):
                            self._wake_read.recv(64)
                    else:
                        self._receive(key.data)
                self._check_timeouts()
        finally:
            self._close()

    # -- the main socket: new requests -------------------------------------------------------

    def _receive_requests(self) -> None:
        for _ in range(_DRAIN):
            try:
                buffer, address = self._sock.recvfrom(MAX_BLKSIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:  # e.g. ICMP errors reported on the socket
                logger.debug("TFTP main socket: %s", err)
                return
            if not self._stopping:
                self._new_session(buffer, (str(address[0]), int(address[1])))

    def _reply(self, sock: socket.socket, address: tuple[str, int], datagram: bytes) -> None:
        with contextlib.suppress(OSError):
            sock.sendto(datagram, address)

    def _new_session(self, buffer: bytes, client: tuple[str, int]) -> None:
        if client in self._sessions:
            return  # a retransmitted request: the session answers it by its own timeout
        try:
            packet = self._factory.parse(buffer)
        except Exception as err:  # any malformed datagram: refuse, carry on
            self.malformed += 1
            if (held := self._log_throttle.allow(client[0])) is not None:
                logger.warning(
                    "TFTP malformed request from %s:%d: %s%s",
                    *client,
                    _reason(err),
                    held_note(held),
                )
            if buffer[:2] != b"\x00\x05":  # never answer an error with an error
                self._reply(
                    self._sock, client, error_datagram(TftpErrors.IllegalTftpOp, "bad request")
                )
            return
        if not isinstance(packet, TftpPacketRRQ | TftpPacketWRQ):
            if not isinstance(packet, TftpPacketERR):
                self._reply(
                    self._sock,
                    client,
                    error_datagram(TftpErrors.UnknownTID, "no transfer in progress"),
                )
            return
        host = client[0]
        if (
            len(self._sessions) >= self._limits.total
            or self._per_client[host] >= self._limits.per_client
        ):
            self.refused_busy += 1
            logger.debug("TFTP request from %s:%d refused: session cap reached", *client)
            self._reply(
                self._sock,
                client,
                error_datagram(TftpErrors.NotDefined, "server busy, retry later"),
            )
            return
        try:
            context = TftpContextServer(
                host,
                client[1],
                self._timeout,
                self._decoy_root,
                dyn_file_func=self._open_file,
                upload_open=self._upload_open,
                retries=self._retries,
                flock=False,
            )
        except OSError as err:  # out of sockets or files: the client retries later
            if (held := self._log_throttle.allow(client[0])) is not None:
                note = held_note(held)
                logger.warning("TFTP request from %s:%d dropped: %s%s", *client, err, note)
            self._reply(self._sock, client, error_datagram(TftpErrors.NotDefined, "server busy"))
            return
        context.sock.setblocking(False)
        self._sessions[client] = context
        self._per_client[host] += 1
        self._selector.register(context.sock, selectors.EVENT_READ, client)
        now = time.time()
        context.metrics.start_time = now
        context.last_update = now
        self._step(client, context, lambda: context.state.handle(packet, host, client[1]))

    # -- session sockets ----------------------------------------------------------------------

    def _receive(self, client: tuple[str, int]) -> None:
        for _ in range(_DRAIN):
            context = self._sessions.get(client)
            if context is None:
                return
            try:
                buffer, address = context.sock.recvfrom(MAX_BLKSIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:
                self._end(client, f"socket error: {err}")
                return
            sender = (str(address[0]), int(address[1]))
            if sender != (context.address, context.tidport):
                # RFC 1350: a stranger's packet is answered and ignored; the transfer goes on.
                self._reply(
                    context.sock, sender, error_datagram(TftpErrors.UnknownTID, "unknown TID")
                )
                continue
            context.last_update = time.time()
            context.timeout_expectACK = False

            def handle(
                context: TftpContextServer = context,
                buffer: bytes = buffer,
                sender: tuple[str, int] = sender,
            ) -> Any:
                packet = self._factory.parse(buffer)
                state = context.state.handle(packet, *sender)
                context.retry_count = 0
                return state

            self._step(client, context, handle)

    def _step(
        self, client: tuple[str, int], context: TftpContextServer, handle: Callable[[], Any]
    ) -> None:
        """Advance ``context`` by one packet; any failure ends this session only."""
        try:
            context.state = handle()
        except TftpTimeoutExpectACK:
            context.timeout_expectACK = True
            return
        except OSError as err:  # sending failed (buffer full, network down): give up
            self._end(client, f"socket error: {err}")
            return
        except TftpException as err:
            # tftpy has answered most of its own refusals (not found, access violation).
            if not isinstance(context.last_pkt, TftpPacketERR):
                self._send_error(context, client, TftpErrors.NotDefined, str(err))
            self._end(client, str(err))
            return
        except Exception as err:  # a malformed packet must not reach the loop
            self.malformed += 1
            if (held := self._log_throttle.allow(client[0])) is not None:
                logger.warning(
                    "TFTP malformed packet from %s:%d: %s%s", *client, _reason(err), held_note(held)
                )
            self._send_error(context, client, TftpErrors.IllegalTftpOp, "malformed packet")
            self._end(client, "malformed packet")
            return
        if context.state is None:
            self._end(client, "transfer complete")

    def _send_error(
        self, context: TftpContextServer, client: tuple[str, int], code: int, message: str
    ) -> None:
        self._reply(
            context.sock,
            (context.address, context.tidport or client[1]),
            error_datagram(code, message),
        )

    # -- timeouts -----------------------------------------------------------------------------

    def _next_wait(self) -> float | None:
        if not self._sessions:
            return None
        now = time.time()
        wait = self._timeout
        for context in self._sessions.values():
            if context.timeout_expectACK:
                return 0.0
            wait = min(wait, context.last_update + self._timeout - now)
        return max(wait, 0.0)

    def _check_timeouts(self) -> None:
        now = time.time()
        for client, context in list(self._sessions.items()):
            if not context.timeout_expectACK and now - context.last_update <= self._timeout:
                continue
            context.timeout_expectACK = False
            context.retry_count += 1
            if context.retry_count >= context.retries or context.last_pkt is None:
                self._end(client, "no answer from the client")
                continue
            context.last_update = now
            try:
                context.state.resendLast()
            except Exception as err:  # too many duplicates, socket errors
                self._end(client, f"resend failed: {_reason(err)}")

    # -- ending -------------------------------------------------------------------------------

    def _end(self, client: tuple[str, int], why: str) -> None:
        context = self._sessions.pop(client, None)
        if context is None:
            return
        self._per_client[client[0]] -= 1
        if self._per_client[client[0]] <= 0:
            del self._per_client[client[0]]
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(context.sock)
        with contextlib.suppress(Exception):
            context.end()
        logger.debug("TFTP session %s:%d ended: %s", *client, why)

    def _close(self) -> None:
        for client in list(self._sessions):
            self._end(client, "server stopping")
        self._selector.close()
        for sock in (self._sock, self._wake_read, self._wake_write):
            sock.close()


def _reason(err: BaseException) -> str:
    text = str(err)
    return f"{type(err).__name__}: {text[:200]}" if text else type(err).__name__
