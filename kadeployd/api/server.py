"""Serving the API: uvicorn in its own thread, on the Unix socket and optionally on TCP.

The sockets are bound by :meth:`ApiServer.start` in the caller's thread, so a socket path
already served by another daemon or a TCP port taken fails the start at once with a clear
:class:`ApiStartError`; uvicorn then serves them from its thread (it installs no signal
handlers outside the main thread: signals stay with the process's main loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import ssl
import struct
import threading
import time
from pathlib import Path

import h11
import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from kadeploy_core.errors import KadeployError
from kadeployd.config.schema import ApiSettings

logger = logging.getLogger(__name__)

START_TIMEOUT = 15.0
GRACEFUL_TIMEOUT = 3
"""Seconds open requests (event streams) get to end when the server stops."""


class ApiStartError(KadeployError):
    """The API cannot listen where the configuration says."""


PEER_UID = "kadeployd.peer_uid"
"""Key of ``scope["state"]``: the uid of the process at the other end of a Unix socket
connection, as the kernel says (SO_PEERCRED); None on TCP."""
_UCRED = struct.Struct("3i")


class _GuardedProtocol(H11Protocol):
    """uvicorn's h11 protocol, plus:

    - each request knows who is at the other end of the Unix socket (:data:`PEER_UID`);
    - a connection must send a whole request head within ``timeout_keep_alive`` seconds of
      being opened or of its last answer, else it is closed. uvicorn alone times out only a
      connection that sends nothing at all after an answer: one that sends nothing from the
      start, or a header byte now and then, held a place of ``limit_concurrency`` for ever.
    """

    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.app_state = {**self.app_state, PEER_UID: _peer_uid(transport)}
        self._arm_head_timer()

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:  # a head arrived (or the connection ended)
            self._disarm_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        self._disarm_head_timer()
        self._head_timer = self.loop.call_later(self.timeout_keep_alive, self._head_overdue)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_overdue(self) -> None:
        self._head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            logger.debug("closing a connection that sent no whole request head in time")
            self.transport.close()


def _peer_uid(transport: asyncio.Transport) -> int | None:
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    try:
        _, uid, _ = _UCRED.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
        )
    except OSError:
        return None
    return int(uid)


class ApiServer:
    """uvicorn serving ``app`` on ``unix_socket`` (mode 666: tokens are the trust) and on
    ``tcp_listen`` (``HOST:PORT``) if given, over TLS when ``daemon.api.tls_certificate`` and
    ``tls_key`` are set. Limits (``daemon.api.*``) come from the configuration of the app's
    context; each socket has its own uvicorn server (plain HTTP on the Unix socket), all in
    one thread."""

    def __init__(self, app: FastAPI, unix_socket: Path, tcp_listen: str | None = None) -> None:
        self.app = app
        self.unix_socket = Path(unix_socket)
        self.tcp_listen = tcp_listen
        self._sockets: list[socket.socket] = []
        self._servers: list[uvicorn.Server] = []
        self._thread: threading.Thread | None = None
        self.tcp_address: tuple[str, int] | None = None
        self.scheme = "http"
        """Of the TCP listener: ``https`` with TLS."""

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Bind, serve in a thread, return once uvicorn accepts connections."""
        settings = _settings(self.app)
        tls = _tls_context(settings) if self.tcp_listen is not None else None
        if self.tcp_listen is not None and tls is None:
            warn_if_open(self.tcp_listen)
        unix = _bind_unix(self.unix_socket, settings.backlog)
        self._sockets.append(unix)
        self._servers.append(uvicorn.Server(_uvicorn_config(self.app, settings, None)))
        if self.tcp_listen is not None:
            try:
                tcp = _bind_tcp(self.tcp_listen, settings.backlog)
            except ApiStartError:
                self._close_sockets()
                raise
            self._sockets.append(tcp)
            self._servers.append(uvicorn.Server(_uvicorn_config(self.app, settings, tls)))
            self.tcp_address = tcp.getsockname()[:2]
            self.scheme = "https" if tls is not None else "http"
        self._thread = threading.Thread(target=self._run, name="api", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not all(server.started for server in self._servers):
            if not self._thread.is_alive():
                self._close_sockets()
                raise ApiStartError("the API server stopped while starting (see the log)")
            if time.monotonic() > deadline:
                self.stop()
                raise ApiStartError(f"the API server did not start within {timeout} s")
            self._thread.join(0.02)
        where = f"unix:{self.unix_socket}" + (
            f" and {self.scheme}://{self.tcp_listen}" if self.tcp_listen else ""
        )
        logger.info("API listening on %s", where)

    def _run(self) -> None:
        """Every server on one event loop; when one ends, the others are told to."""

        async def serve_all() -> None:
            async def serve(server: uvicorn.Server, sock: socket.socket) -> None:
                try:
                    await server.serve(sockets=[sock])
                finally:
                    for other in self._servers:
                        other.should_exit = True

            pairs = zip(self._servers, self._sockets, strict=True)
            await asyncio.gather(*(serve(server, sock) for server, sock in pairs))

        asyncio.run(serve_all())

    def alive(self) -> bool:
        """Whether the server thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = GRACEFUL_TIMEOUT + 5) -> None:
        """Stop serving (open streams get GRACEFUL_TIMEOUT s), remove the socket file."""
        for server in self._servers:
            server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.error("the API thread did not stop within %s s", timeout)
        self._close_sockets()
        with contextlib.suppress(FileNotFoundError):
            self.unix_socket.unlink()
        logger.info("API stopped")

    def _close_sockets(self) -> None:
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()


def _settings(app: FastAPI) -> ApiSettings:
    """``daemon.api`` of the configuration the app serves."""
    settings: ApiSettings = app.state.context.config.daemon.api
    return settings


def _uvicorn_config(
    app: FastAPI, settings: ApiSettings, tls: ssl.SSLContext | None
) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        log_config=None,
        lifespan="off",
        ws="none",
        http=_GuardedProtocol,
        timeout_graceful_shutdown=GRACEFUL_TIMEOUT,
        access_log=True,
        limit_concurrency=settings.limit_concurrency,
        backlog=settings.backlog,
        timeout_keep_alive=settings.timeout_keep_alive,
        h11_max_incomplete_event_size=settings.h11_max_incomplete_event_size,
        ssl_context_factory=None if tls is None else (lambda config, default: tls),
    )


def _tls_context(settings: ApiSettings) -> ssl.SSLContext | None:
    """The server's TLS context of ``tls_certificate`` and ``tls_key``; None without them.
    Unreadable or mismatched files fail the start here, with their names."""
    if settings.tls_certificate is None or settings.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    for name, path in (
        ("tls_certificate", settings.tls_certificate),
        ("tls_key", settings.tls_key),
    ):
        if not path.is_file():
            raise ApiStartError(f"daemon.api.{name}: {path} is not a readable file")
    try:
        context.load_cert_chain(settings.tls_certificate, settings.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ApiStartError(
            f"daemon.api.tls_certificate/tls_key: cannot load {settings.tls_certificate} with "
            f"{settings.tls_key} (expected a PEM certificate and its PEM private key): {exc}"
        ) from exc
    return context


def warn_if_open(listen: str) -> None:
    """Tokens cross the network in clear text over plain HTTP on a non-loopback address."""
    host = listen.rpartition(":")[0].strip("[]")
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        logger.warning(
            "daemon.api.tcp_listen %s is not a loopback address and TLS is off: tokens cross "
            "the network in clear; set daemon.api.tls_certificate and daemon.api.tls_key",
            listen,
        )


def _bind_unix(path: Path, backlog: int) -> socket.socket:
    if len(os.fsencode(path)) >= 108:
        raise ApiStartError(
            f"daemon.api.unix_socket: {path} is too long for a Unix socket (at most 107 bytes); "
            f"choose a shorter path"
        )
    if path.exists() or path.is_symlink():
        if _answers(path):
            raise ApiStartError(f"{path}: another process already serves this socket")
        path.unlink()  # left by a daemon that did not stop cleanly
    path.parent.mkdir(parents=True, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, 0o666)  # noqa: S103 - anyone may connect; every request needs a token
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise ApiStartError(f"{path}: cannot listen on this Unix socket: {exc}") from exc
    sock.setblocking(False)
    return sock


def _bind_tcp(listen: str, backlog: int) -> socket.socket:
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except (OSError, ValueError) as exc:
        raise ApiStartError(f"daemon.api.tcp_listen: cannot resolve {listen}: {exc}") from exc
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise ApiStartError(
            f"daemon.api.tcp_listen: cannot listen on {listen}: {exc.strerror or exc}"
        ) from exc
    sock.setblocking(False)
    return sock


def _answers(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True
