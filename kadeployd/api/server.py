"""Serving the API: uvicorn in its own thread, on the Unix socket and optionally on TCP.

The sockets are bound by :meth:`ApiServer.start` in the caller's thread, so a socket path
already served by another daemon or a TCP port taken fails the start at once with a clear
:class:`ApiStartError`; uvicorn then serves them from its thread (it installs no signal
handlers outside the main thread: signals stay with the process's main loop).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from kadeploy_core.errors import KadeployError

logger = logging.getLogger(__name__)

START_TIMEOUT = 15.0
GRACEFUL_TIMEOUT = 3
"""Seconds open requests (event streams) get to end when the server stops."""


class ApiStartError(KadeployError):
    """The API cannot listen where the configuration says."""


class ApiServer:
    """uvicorn serving ``app`` on ``unix_socket`` (mode 666: tokens are the trust) and on
    ``tcp_listen`` (``HOST:PORT``) if given."""

    def __init__(self, app: FastAPI, unix_socket: Path, tcp_listen: str | None = None) -> None:
        self.app = app
        self.unix_socket = Path(unix_socket)
        self.tcp_listen = tcp_listen
        self._sockets: list[socket.socket] = []
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.tcp_address: tuple[str, int] | None = None

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Bind, serve in a thread, return once uvicorn accepts connections."""
        self._sockets.append(_bind_unix(self.unix_socket))
        if self.tcp_listen is not None:
            try:
                tcp = _bind_tcp(self.tcp_listen)
            except ApiStartError:
                self._close_sockets()
                raise
            self._sockets.append(tcp)
            self.tcp_address = tcp.getsockname()[:2]
        config = uvicorn.Config(
            self.app,
            log_config=None,
            lifespan="off",
            ws="none",
            http="h11",
            timeout_graceful_shutdown=GRACEFUL_TIMEOUT,
            access_log=True,
        )
        server = uvicorn.Server(config)
        self._server = server
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": self._sockets}, name="api", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive():
                self._close_sockets()
                raise ApiStartError("the API server stopped while starting (see the log)")
            if time.monotonic() > deadline:
                self.stop()
                raise ApiStartError(f"the API server did not start within {timeout} s")
            self._thread.join(0.02)
        where = f"unix:{self.unix_socket}" + (
            f" and http://{self.tcp_listen}" if self.tcp_listen else ""
        )
        logger.info("API listening on %s", where)

    def alive(self) -> bool:
        """Whether the server thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = GRACEFUL_TIMEOUT + 5) -> None:
        """Stop serving (open streams get GRACEFUL_TIMEOUT s), remove the socket file."""
        if self._server is not None:
            self._server.should_exit = True
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


def _bind_unix(path: Path) -> socket.socket:
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
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ApiStartError(f"{path}: cannot listen on this Unix socket: {exc}") from exc
    sock.setblocking(False)
    return sock


def _bind_tcp(listen: str) -> socket.socket:
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
        sock.listen(128)
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
