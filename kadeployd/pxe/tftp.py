"""The daemon's TFTP server: read-only, confined to one root, hardened against its clients.

The protocol (packets, states, options) is tftpy's; the server loop is ours
(``tftp_loop.TftpLoop``): sessions on one selector (no ``select()`` limit on socket numbers),
one malformed datagram ends its own session with a TFTP ERROR packet and nothing else, and
sessions are capped per client address and in total.

tftpy serves any existing file below its root by itself, following symlinks, and writes
uploads. To decide on every request ourselves, tftpy is given an *empty private directory* as
its root and a ``dyn_file_func``: nothing exists there, so tftpy hands every read request to
``TftpService._open``, which checks the name (relative, no ``..``), resolves symlinks and
refuses anything that lands outside the real root or is not a regular file. It opens with
``O_NOFOLLOW | O_NONBLOCK`` and checks the opened file with ``fstat``: a FIFO or a device in
the root is refused at once instead of blocking the loop in ``open`` or ``read``. Uploads go
to ``upload_open``, which refuses them all (tftpy then answers "access violation").

A refused request is answered "file not found", like a missing file: the client learns nothing
about the host's files. Refusals are logged at WARNING, served files at DEBUG, and the last
served files are kept in memory (``served()``).
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import shutil
import socket
import stat
import tempfile
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from kadeployd.pxe.errors import PxeError
from kadeployd.pxe.profiles import validate_tftp_path
from kadeployd.pxe.tftp_loop import DEFAULT_LIMITS, SessionLimits, TftpLoop

logger = logging.getLogger(__name__)

# tftpy logs every packet at INFO and every routine event of PXE booting (a profile name that
# does not exist, a retransmission) at WARNING or ERROR. This module logs what matters itself,
# so tftpy is kept quiet unless an administrator sets its level explicitly.
_tftpy_logger = logging.getLogger("tftpy")
if _tftpy_logger.level == logging.NOTSET:
    _tftpy_logger.setLevel(logging.CRITICAL)


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


class _NotRegular(Exception):
    """The path names something other than a regular file (its kind is the message)."""


_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFLNK: "a symlink",
}


def _open_regular(path: str) -> IO[bytes]:
    """Open ``path`` for reading if it is a regular file; _NotRegular otherwise.

    ``O_NONBLOCK`` makes ``open`` return at once on a FIFO (which would otherwise wait for a
    writer) or a device; ``O_NOFOLLOW`` refuses a symlink swapped in after ``realpath``; the
    opened file's own ``fstat`` decides, so nothing can change between the check and the read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except IsADirectoryError:
        raise _NotRegular("a directory") from None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise _NotRegular("a symlink") from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise _NotRegular(_KINDS.get(stat.S_IFMT(mode), "not a regular file"))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


class TftpService:
    """A read-only TFTP server for ``root`` on ``listen:port``, run by tftpy in a daemon thread.

    ``port`` 0 picks a free port; ``.port`` tells which once started. ``on_crash`` is called
    (from the server thread) with a message if the server stops on its own after it started.
    ``limits`` caps concurrent sessions (see ``SessionLimits``).
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
        limits: SessionLimits = DEFAULT_LIMITS,
    ) -> None:
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise PxeError(f"TFTP port (daemon.tftp.port): expected 0 to 65535, got {port!r}")
        self.root = Path(root)
        self.listen = listen
        self._requested_port = port
        self._timeout = timeout
        self._retries = retries
        self._limits = limits
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self._on_crash = on_crash
        self._served: deque[ServedFile] = deque(maxlen=history)
        self._lock = threading.Lock()
        self._loop: TftpLoop | None = None
        self._thread: threading.Thread | None = None
        self._exited = threading.Event()
        self._stopping = False
        self._decoy_root: Path | None = None
        self._real_root = ""
        self._bind_address = ""

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The UDP port the server is bound to (the chosen one if started with port 0)."""
        loop = self._loop
        if loop is None or self._exited.is_set():
            raise PxeError("the TFTP server is not running")
        return loop.port

    @property
    def running(self) -> bool:
        return self._loop is not None and not self._exited.is_set()

    @property
    def malformed(self) -> int:
        """Datagrams refused as malformed since the start (each ended its own session only)."""
        return self._loop.malformed if self._loop is not None else 0

    @property
    def refused_busy(self) -> int:
        """Requests answered "server busy" since the start (a session cap was reached)."""
        return self._loop.refused_busy if self._loop is not None else 0

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
            loop = TftpLoop(
                self._bind_address,
                self._requested_port,
                decoy_root=str(self._decoy_root),
                open_file=self._open,
                upload_open=self._refuse_upload,
                timeout=self._timeout,
                retries=self._retries,
                limits=self._limits,
            )
        except OSError as err:
            self._remove_decoy()
            raise PxeError(_describe_bind_error(err, self.listen, self._requested_port)) from None
        self._loop = loop
        self._thread = threading.Thread(
            target=self._run,
            args=(loop,),
            name=f"tftp-{self.listen}:{loop.port}",
            daemon=True,
        )
        self._thread.start()
        logger.info("TFTP server serving %s on %s:%d", self.root, self.listen, loop.port)

    def _run(self, loop: TftpLoop) -> None:
        """The server thread: the loop until ``stop()``; anything else ending it is reported."""
        message = f"TFTP server on {self.listen}:{loop.port} stopped unexpectedly"
        try:
            loop.run()
        except Exception as err:  # the thread must report, not die silently
            message = f"TFTP server on {self.listen}:{loop.port} failed: {err!r}"
        finally:
            self._exited.set()
        if self._stopping:
            return
        logger.error(message)
        if self._on_crash is not None:
            self._on_crash(message)

    def stop(self) -> None:
        """Stop serving and wait (bounded) for the thread; the port is free afterwards.

        Idempotent. Transfers in progress are dropped (clients retry, as PXE firmware does).
        """
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        self._stopping = True
        if thread.is_alive():
            loop.stop()
            thread.join(self._stop_timeout)
            if thread.is_alive():
                raise PxeError(
                    f"TFTP server thread on {self.listen}:{loop.port} did not stop "
                    f"within {self._stop_timeout} s"
                )
        self._remove_decoy()
        logger.info("TFTP server on %s stopped", self.listen)

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
                handle = _open_regular(path)
            except FileNotFoundError:
                logger.debug("TFTP %s:%s asked for %s: not found", raddress, rport, name)
                return None
            except _NotRegular as err:
                logger.warning(
                    "TFTP request from %s:%s refused: %s is %s", raddress, rport, name, err
                )
                return None
        except Exception as err:  # refused like a missing file, whatever went wrong
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
