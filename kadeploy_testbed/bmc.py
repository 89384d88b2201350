"""IPMI v2 (lanplus) BMCs for emulated nodes, built on pyghmi's BMC server.

A node's BMC answers Debian's ``ipmitool -I lanplus -H ADDRESS -p PORT -U USER -P PASSWORD
chassis power status|on|off|cycle|reset|soft`` and forwards each action to a ``PowerControl``
(the node runtime). ``start_bmc`` serves one BMC; ``BmcHandle.stop`` ends it.

Several BMCs in one process: supported, with care. pyghmi keeps its I/O state in module
globals (``pyghmi.ipmi.private.session``): one I/O thread selects on every socket, a class-level
table routes datagrams by server socket and by (client address, BMC port), and packets are only
handled by whoever calls ``Session.wait_for_rsp``. So this module:

- runs ONE pump thread per process that calls ``wait_for_rsp`` for all BMCs; it starts with the
  first BMC and ends (bounded join) when the last one stops. PowerControl methods therefore run
  in that thread, one at a time, for every node: they must be thread-safe and return promptly
  (start a boot, do not wait for it), or every BMC of the process stalls;
- creates pyghmi's general-purpose socket before the first BMC (``Session._assignsocket()``):
  pyghmi wakes its I/O thread by sending to its first socket, and when that first socket is a
  BMC bound to 127.0.3.x the wake-up goes to 127.0.0.1 and is lost, so the pump would block until
  traffic arrives instead of returning;
- on stop, removes the BMC's socket and sessions from pyghmi's tables, waits until the I/O thread
  has finished a ``select`` that no longer includes the socket, then closes it (closing a socket
  inside a running ``select`` would kill pyghmi's I/O thread with EBADF, and every BMC with it).

- retries a bind that fails with "address in use" for up to a second: a BMC restarted on its
  address can find its old socket still held by a child that another thread is forking;
- keeps every socket it has pyghmi create non-blocking for good (``_NonBlockingSocket``).
  pyghmi sends with ``setblocking(True); sendto`` from the thread answering (the pump) while
  its I/O thread drains each socket with ``setblocking(False); recvfrom`` until EAGAIN. The
  flag is the file's, shared by both threads: when a send lands between the I/O thread's
  ``setblocking(False)`` and its last ``recvfrom``, that ``recvfrom`` blocks until the next
  datagram for that one BMC, and meanwhile no BMC of the process is answered (every ipmitool
  fails with "Unable to establish IPMI v2 / RMCP+ session") - for minutes if nobody talks to
  that BMC. Reproduced with 16 BMCs and 10 concurrent ipmitool calls: stuck within ~200 calls.

Measured: 16 BMCs on 127.0.3.x sharing one port, 8 threads looping ``ipmitool ... power status``
on half of them while the other half were stopped and restarted 6,000 times: no failed call,
pyghmi's I/O thread alive, no socket leaked. The pyghmi socket created first (for wake-ups) is
bound to all addresses on a random UDP port, as pyghmi's IPMI client sockets are. A client
session that pyghmi keeps after ``ipmitool`` exits is dropped when its BMC stops; pyghmi never
expires sessions of a running BMC (a few hundred bytes per ipmitool call). Power actions are
logged at INFO. The IPMI completion code of a PowerControl that raises is 0xFF.
"""

from __future__ import annotations

import errno
import logging
import select
import socket
import threading
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

import pyghmi.ipmi.bmc as pyghmi_bmc
import pyghmi.ipmi.private.session as ipmisession

logger = logging.getLogger(__name__)

_PUMP_PERIOD = 0.5
"""Longest time the pump thread waits in pyghmi before it checks whether to stop."""
_COMPLETION_UNSPECIFIED = 0xFF
_BIND_GRACE = 1.0


_SEND_WAIT = 1.0
"""Longest time a send waits for room in a full socket buffer before the datagram is dropped."""


class _NonBlockingSocket(socket.socket):
    """A pyghmi socket that stays non-blocking whatever pyghmi asks (see the module docstring).

    A send that finds the buffer full waits for room (at most ``_SEND_WAIT``) instead of
    blocking the socket for every thread.
    """

    __slots__ = ()

    def setblocking(self, flag: bool) -> None:
        super().setblocking(False)

    def sendto(self, *args: Any) -> int:
        deadline = time.monotonic() + _SEND_WAIT
        while True:
            try:
                return super().sendto(*args)
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise
                select.select((), (self,), (), left)


def _keep_nonblocking(sock: socket.socket) -> None:
    if type(sock) is socket.socket:
        sock.__class__ = _NonBlockingSocket
    sock.setblocking(False)


class PowerControl(Protocol):
    """What a BMC drives: the node's power. Called from the BMC pump thread; must not block."""

    def is_on(self) -> bool: ...

    def power_on(self) -> None: ...

    def power_off(self) -> None: ...

    def power_cycle(self) -> None: ...

    def power_reset(self) -> None: ...


class BmcError(Exception):
    """A BMC cannot be started (bad address, port taken)."""


class TestbedBmc(pyghmi_bmc.Bmc):
    """A pyghmi BMC whose chassis commands go to a PowerControl.

    ``chassis power soft`` calls ``control.power_soft()`` when the control has one, else
    ``power_off()``.
    """

    __test__ = False  # not a pytest test class despite its name

    def __init__(
        self, name: str, authdata: dict[str, str], address: str, port: int, control: PowerControl
    ) -> None:
        super().__init__(authdata, port=port, address=address)
        _keep_nonblocking(self.serversocket)
        self.name = name
        self.address = address
        self.control = control

    def get_power_state(self) -> str:
        try:
            return "on" if self.control.is_on() else "off"
        except Exception:
            logger.exception("BMC %s: power status failed", self.name)
            raise

    def _act(self, action: str, call: Any) -> int:
        logger.info("BMC %s: chassis power %s", self.name, action)
        try:
            call()
        except Exception:
            logger.exception("BMC %s: chassis power %s failed", self.name, action)
            return _COMPLETION_UNSPECIFIED
        return 0

    def power_on(self) -> int:
        return self._act("on", self.control.power_on)

    def power_off(self) -> int:
        return self._act("off", self.control.power_off)

    def power_cycle(self) -> int:
        return self._act("cycle", self.control.power_cycle)

    def power_reset(self) -> int:
        return self._act("reset", self.control.power_reset)

    def power_shutdown(self) -> int:
        soft = getattr(self.control, "power_soft", None)
        return self._act("soft", soft if callable(soft) else self.control.power_off)

    def get_chassis_status(self, session: Any) -> None:
        # pyghmi raises (and prints a traceback) when get_power_state fails; answer 0xFF instead.
        try:
            state = self.get_power_state()
        except Exception:
            session.send_ipmi_response(code=_COMPLETION_UNSPECIFIED)
            return
        session.send_ipmi_response(data=[1 if state == "on" else 0, 0, 0])


@dataclass(eq=False)
class BmcHandle:
    """A running BMC; ``stop()`` closes its socket and, for the last BMC, ends the pump."""

    name: str
    address: str
    port: int
    _bmc: TestbedBmc

    def stop(self, timeout: float = 5.0) -> None:
        """Stop answering IPMI and release the address; idempotent; waits at most ``timeout``."""
        _stop(self._bmc, timeout)

    def __enter__(self) -> BmcHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


_lock = threading.Lock()
_running: set[TestbedBmc] = set()
_pump: tuple[threading.Thread, threading.Event] | None = None
"""The process's pump thread and the event that stops it (a new pair for each start)."""
_primed = False


def _prime_pyghmi() -> None:
    """Make pyghmi's first socket a general one, so that its I/O thread wake-ups arrive."""
    global _primed  # noqa: PLW0603 - pyghmi's own state is process-global too
    if not _primed:
        _keep_nonblocking(ipmisession.Session._assignsocket())
        _primed = True


def _pump_loop(stop: threading.Event) -> None:
    logger.debug("BMC pump thread started")
    while not stop.is_set():
        try:
            ipmisession.Session.wait_for_rsp(timeout=_PUMP_PERIOD)
        except Exception:
            logger.exception("BMC pump: pyghmi failed handling a request")
    logger.debug("BMC pump thread stopped")


def _close_failed_socket(tb: TracebackType | None) -> None:
    """Close the socket pyghmi created but could not bind (it would leak: ResourceWarning)."""
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_name == "_assignsocket":
            leaked = frame.f_locals.get("tmpsocket")
            if isinstance(leaked, socket.socket) and leaked not in ipmisession.iosockets:
                leaked.close()
        tb = tb.tb_next


def _create_bmc(
    label: str, authdata: dict[str, str], address: str, port: int, control: PowerControl
) -> TestbedBmc:
    """Bind a new BMC; "address in use" is retried for up to ``_BIND_GRACE`` seconds.

    A port released a moment ago can still be held by a child process between its fork and its
    exec (any thread of this process may be starting ipmitool, ssh, mkfs...).
    """
    try:
        socket.getaddrinfo(address, port, 0, socket.SOCK_DGRAM)
    except OSError as err:
        raise BmcError(f"BMC address {address!r} is not valid: {err}") from None
    deadline = time.monotonic() + _BIND_GRACE
    while True:
        try:
            return TestbedBmc(label, authdata, address, port, control)
        except OSError as err:
            _close_failed_socket(err.__traceback__)
            if err.errno == errno.EADDRINUSE and time.monotonic() < deadline:
                time.sleep(0.02)
                continue
            raise BmcError(
                f"BMC cannot listen on {address} UDP port {port}: {err.strerror or err}"
            ) from None


def start_bmc(
    address: str,
    port: int,
    user: str,
    password: str,
    control: PowerControl,
    *,
    name: str | None = None,
) -> BmcHandle:
    """Serve an IPMI v2 BMC for one node on ``address:port`` (UDP) in this process.

    ``name`` labels log lines (default ``address:port``). Raises BmcError when the address
    cannot be bound.
    """
    global _pump  # noqa: PLW0603 - one pump per process, like pyghmi's I/O thread
    if not user or not password:
        raise BmcError("BMC user and password must not be empty")
    label = name or f"{address}:{port}"
    with _lock:
        _prime_pyghmi()
        bmc = _create_bmc(label, {user: password}, address, port, control)
        _running.add(bmc)
        if _pump is None:
            stop = threading.Event()
            thread = threading.Thread(target=_pump_loop, args=(stop,), name="bmc-pump", daemon=True)
            thread.start()
            _pump = (thread, stop)
    logger.info("BMC %s listening on %s UDP port %d", label, address, port)
    return BmcHandle(name=label, address=address, port=port, _bmc=bmc)


def _wake_io_thread() -> None:
    """Send one byte to pyghmi's first socket so that its I/O thread leaves ``select``."""
    if not ipmisession.iosockets:
        return
    first = ipmisession.iosockets[0]
    host, port = first.getsockname()[:2]
    if host in ("::", "0.0.0.0"):  # noqa: S104 - reading a bind address, not binding
        host = "::1" if first.family == socket.AF_INET6 else "127.0.0.1"
    with socket.socket(first.family, socket.SOCK_DGRAM) as waker:
        try:
            waker.sendto(b"\x01", (host, port))
        except OSError as err:
            logger.debug("cannot wake pyghmi's I/O thread: %s", err)


def _sync_with_io_thread(timeout: float) -> bool:
    """Return True once pyghmi's I/O thread has run a ``select`` that began after this call."""
    done = threading.Event()
    ipmisession.ioqueue.append((ipmisession._monotonic_time(), done, None))
    _wake_io_thread()
    return done.wait(timeout)


def _forget(bmc: TestbedBmc) -> None:
    """Remove the BMC's socket and sessions from pyghmi's process-global tables."""
    sock = bmc.serversocket
    if sock in ipmisession.iosockets:
        ipmisession.iosockets.remove(sock)
    handlers = ipmisession.Session.bmc_handlers
    handlers.pop(sock, None)
    for key in list(handlers):
        per_port = handlers.get(key)
        if not isinstance(per_port, dict):
            continue
        for port, session in list(per_port.items()):
            if getattr(session, "bmc", None) is bmc:
                del per_port[port]
        if not per_port:
            del handlers[key]


def _stop(bmc: TestbedBmc, timeout: float) -> None:
    global _pump  # noqa: PLW0603
    pump: threading.Thread | None = None
    with _lock:
        if bmc not in _running:
            return
        _running.discard(bmc)
        _forget(bmc)
        if not _sync_with_io_thread(timeout):
            logger.warning("BMC %s: pyghmi's I/O thread did not answer; closing anyway", bmc.name)
        bmc.serversocket.close()
        if not _running and _pump is not None:
            pump, stop = _pump
            stop.set()
            _pump = None
            _wake_io_thread()  # pyghmi then releases the pump's wait (usually) at once
    if pump is not None:
        pump.join(timeout)
        if pump.is_alive():
            logger.warning("BMC pump thread still running after %.1f s", timeout)
    logger.info("BMC %s stopped", bmc.name)
