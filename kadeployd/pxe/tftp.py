"""The daemon's TFTP server: tftpy in a thread, read-only and confined to one root.

tftpy (0.8) serves any existing file below its root by itself, following symlinks, and writes
uploads. To decide on every request ourselves, the tftpy server is given an *empty private
directory* as its root and a ``dyn_file_func``: nothing exists there, so tftpy hands every read
request to ``TftpService._open``, which checks the name (relative, no ``..``), resolves symlinks
and refuses anything that lands outside the real root or is not a regular file. Uploads go to
``upload_open``, which refuses them all (tftpy then answers "access violation").

A refused request is answered "file not found", like a missing file: the client learns nothing
about the host's files. Refusals are logged at WARNING, served files at DEBUG, and the last
served files are kept in memory (``served()``).

Stopping: tftpy's ``stop(now=True)`` only sets a flag that its select loop reads after its
next wake-up (up to ``timeout`` seconds later). ``stop`` also sets the graceful flag, which makes
the loop discard datagrams on its main socket, and sends it one datagram, so the loop wakes,
discards it and exits at once; the join is bounded in any case.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import os
import shutil
import socket
import stat
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import tftpy

from kadeployd.pxe.errors import PxeError
from kadeployd.pxe.profiles import validate_tftp_path

logger = logging.getLogger(__name__)

# tftpy logs every packet at INFO and every routine event of PXE booting (a profile name that
# does not exist, a retransmission) at WARNING or ERROR. This module logs what matters itself,
# so tftpy is kept quiet unless an administrator sets its level explicitly.
_tftpy_logger = logging.getLogger("tftpy")
if _tftpy_logger.level == logging.NOTSET:
    _tftpy_logger.setLevel(logging.CRITICAL)

_WAKE_ADDRESS = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class ServedFile:
    """A file handed to a TFTP client (recorded when the transfer starts)."""

    name: str
    """The path as the client asked for it, relative to the TFTP root."""
    host: str
    """Client address."""
    port: int
    """Client UDP port."""


def _describe_bind_error(err: OSError, listen: str, port: int) -> str:
    where = f"TFTP server cannot listen on {listen}:{port} (daemon.tftp.listen/port)"
    if err.errno == errno.EADDRINUSE:
        return f"{where}: the port is already in use (another TFTP server?)"
    if err.errno == errno.EACCES:
        return f"{where}: permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
    if err.errno == errno.EADDRNOTAVAIL:
        return f"{where}: {listen} is not an address of this machine"
    return f"{where}: {err.strerror or err}"


def _check_listen(listen: str) -> str:
    """Return the IPv4 address to bind (``""`` means all addresses); PxeError otherwise."""
    if listen in ("", "0.0.0.0"):  # noqa: S104 - binding all addresses is the admin's choice
        return "0.0.0.0"  # noqa: S104
    try:
        return str(ipaddress.IPv4Address(listen))
    except ValueError:
        pass
    try:
        return socket.gethostbyname(listen)
    except OSError as err:
        raise PxeError(
            f"TFTP listen address {listen!r} (daemon.tftp.listen): not an IPv4 address and "
            f"cannot be resolved ({err.strerror or err})"
        ) from None


class TftpService:
    """A read-only TFTP server for ``root`` on ``listen:port``, run by tftpy in a daemon thread.

    ``port`` 0 picks a free port; ``.port`` tells which once started. ``on_crash`` is called
    (from the server thread) with a message if the server stops on its own after it started.
    """

    def __init__(
        self,
        root: Path,
        listen: str,
        port: int,
        *,
        timeout: float = 5.0,
        retries: int = 3,
        history: int = 256,
        start_timeout: float = 10.0,
        stop_timeout: float = 10.0,
        on_crash: Callable[[str], None] | None = None,
    ) -> None:
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise PxeError(f"TFTP port (daemon.tftp.port): expected 0 to 65535, got {port!r}")
        self.root = Path(root)
        self.listen = listen
        self._requested_port = port
        self._timeout = timeout
        self._retries = retries
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self._on_crash = on_crash
        self._served: deque[ServedFile] = deque(maxlen=history)
        self._lock = threading.Lock()
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._exited = threading.Event()
        self._error: BaseException | None = None
        self._stopping = False
        self._decoy_root: Path | None = None
        self._real_root = ""
        self._bind_address = ""
        self.restarts = 0
        """How many times the server loop was restarted after a request crashed it."""

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The UDP port the server is bound to (the chosen one if started with port 0); the
        same while its loop restarts after a malformed request (it listens on it again)."""
        server = self._server
        if server is None or self._exited.is_set() or not server.listenport:
            raise PxeError("the TFTP server is not running")
        return int(server.listenport)

    @property
    def running(self) -> bool:
        return self._server is not None and self._server.is_running.is_set()

    def start(self) -> None:
        """Start serving; returns once the socket is bound, raises PxeError if it cannot be."""
        if self._thread is not None:
            raise PxeError("this TFTP server was already started; make a new TftpService")
        if not self.root.is_dir():
            raise PxeError(f"TFTP root {self.root} (daemon.tftp.root) is not a directory")
        self._bind_address = _check_listen(self.listen)
        self._real_root = os.path.realpath(self.root)
        self._decoy_root = Path(tempfile.mkdtemp(prefix="kadeployd-tftp-empty-"))
        try:
            server = tftpy.TftpServer(
                str(self._decoy_root),
                dyn_file_func=self._open,
                upload_open=self._refuse_upload,
            )
        except tftpy.TftpException as err:
            self._remove_decoy()
            raise PxeError(f"cannot create the TFTP server: {err}") from None
        self._server = server
        self._thread = threading.Thread(
            target=self._run,
            args=(server,),
            name=f"tftp-{self.listen}:{self._requested_port}",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + self._start_timeout
        # tftpy sets is_running right after bind(); a bind error ends the thread instead.
        while not server.is_running.wait(0.02):
            if self._exited.is_set():
                self._thread.join(self._stop_timeout)
                self._remove_decoy()
                failure = self._error
                if isinstance(failure, OSError):
                    raise PxeError(
                        _describe_bind_error(failure, self.listen, self._requested_port)
                    ) from None
                raise PxeError(f"TFTP server failed to start: {failure!r}") from None
            if time.monotonic() > deadline:
                self.stop()
                raise PxeError(
                    f"TFTP server on {self.listen}:{self._requested_port} did not start "
                    f"within {self._start_timeout} s"
                )
        logger.info("TFTP server serving %s on %s:%d", self.root, self.listen, self.port)

    def _run(self, server: Any) -> None:
        """The server thread: tftpy's loop, restarted on the same port if a request crashes it.

        tftpy 0.8 lets some malformed datagrams (a non-ASCII file name, for one) escape its loop
        as exceptions; one such packet must not stop PXE booting for every node.
        """
        port = self._requested_port
        try:
            while True:
                try:
                    server.listen(
                        self._bind_address, port, timeout=self._timeout, retries=self._retries
                    )
                except Exception as err:  # the thread must report, not die silently
                    # tftpy leaves its sockets open when listen() raises (bind error or crash).
                    self._close_leftovers(server)
                    if self._stopping:
                        return
                    if not server.is_running.is_set():  # bind() failed
                        self._error = err
                        if self.restarts == 0:
                            return  # start() reports it
                        message = f"TFTP server cannot listen on {self.listen}:{port} again: {err}"
                        break
                    self.restarts += 1
                    port = server.listenport
                    logger.warning(
                        "TFTP server loop on %s:%d failed on a request (%r); restarting it",
                        self.listen,
                        port,
                        err,
                    )
                    server.is_running.clear()
                    continue
                if self._stopping:
                    return
                message = f"TFTP server on {self.listen}:{port} stopped unexpectedly"
                break
            logger.error(message)
            if self._on_crash is not None:
                self._on_crash(message)
        finally:
            server.is_running.clear()
            self._exited.set()

    @staticmethod
    def _close_leftovers(server: Any) -> None:
        """After tftpy's loop died of an exception, close what it left open."""
        for session in list(server.sessions.values()):
            with contextlib.suppress(Exception):
                session.end()
        server.sessions = {}
        if server.sock is not None:
            server.sock.close()

    def stop(self) -> None:
        """Stop serving and wait (bounded) for the thread; the port is free afterwards.

        Idempotent. Transfers in progress are dropped (clients retry, as PXE firmware does).
        """
        thread, server = self._thread, self._server
        if thread is None or server is None:
            return
        self._stopping = True
        if thread.is_alive():
            server.stop(now=True)
            server.stop(now=False)  # discard new datagrams, including the wake-up below
            self._wake(server)
            thread.join(self._stop_timeout)
            if thread.is_alive():
                raise PxeError(
                    f"TFTP server thread on {self.listen}:{server.listenport} did not stop "
                    f"within {self._stop_timeout} s"
                )
        self._remove_decoy()
        logger.info("TFTP server on %s stopped", self.listen)

    def _wake(self, server: Any) -> None:
        port = server.listenport
        if port is None:
            return
        address = _WAKE_ADDRESS if self._bind_address == "0.0.0.0" else self._bind_address  # noqa: S104
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.sendto(b"\x00", (address, port))
        except OSError as err:
            logger.debug("cannot wake the TFTP server loop (%s); it stops on its timeout", err)

    def _remove_decoy(self) -> None:
        if self._decoy_root is not None:
            shutil.rmtree(self._decoy_root, ignore_errors=True)
            self._decoy_root = None

    # -- requests (called in the server thread; must never raise) ------------------------

    def served(self) -> list[ServedFile]:
        """The files served most recently, oldest first."""
        with self._lock:
            return list(self._served)

    def _resolve(self, name: str) -> str:
        """Absolute path of ``name`` in the root, symlinks resolved; PxeError if outside."""
        validate_tftp_path(name, "requested file")
        resolved = os.path.realpath(os.path.join(self._real_root, name))
        if not resolved.startswith(self._real_root + os.sep):
            raise PxeError(f"requested file {name!r} resolves outside the TFTP root")
        return resolved

    def _open(self, name: str, raddress: str = "?", rport: int = 0, **_: Any) -> IO[bytes] | None:
        """tftpy's ``dyn_file_func``: an open file for ``name``, or None ("file not found")."""
        try:
            try:
                path = self._resolve(name)
            except PxeError as err:
                logger.warning("TFTP request from %s:%s refused: %s", raddress, rport, err)
                return None
            try:
                handle = open(  # noqa: SIM115 - tftpy closes it at the end of the transfer
                    path, "rb", opener=lambda p, flags: os.open(p, flags | os.O_NOFOLLOW)
                )
            except FileNotFoundError:
                logger.debug("TFTP %s:%s asked for %s: not found", raddress, rport, name)
                return None
            except IsADirectoryError:
                logger.warning(
                    "TFTP request from %s:%s refused: %s is a directory", raddress, rport, name
                )
                return None
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                handle.close()
                logger.warning(
                    "TFTP request from %s:%s refused: %s is not a regular file",
                    raddress,
                    rport,
                    name,
                )
                return None
        except Exception as err:  # an exception here would kill tftpy's loop
            logger.warning("TFTP request from %s:%s for %r failed: %s", raddress, rport, name, err)
            return None
        with self._lock:
            self._served.append(ServedFile(name=name, host=str(raddress), port=int(rport)))
        logger.debug("TFTP serving %s to %s:%s", name, raddress, rport)
        return handle

    def _refuse_upload(self, path: str, context: Any) -> None:
        """tftpy's ``upload_open``: every upload is refused (access violation)."""
        logger.warning(
            "TFTP upload from %s:%s refused (the server is read-only): %s",
            getattr(context, "host", "?"),
            getattr(context, "port", "?"),
            getattr(context, "file_to_transfer", path),
        )
