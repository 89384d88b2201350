"""The kadeploy-server process: pidfile, daemonizing, the main loop that owns the signals.

``start`` re-executes ``kadeploy-server start --foreground`` as a detached child (new session,
stdin from /dev/null, stdout and stderr appended to ``<state_dir>/kadeployd.log``) rather than
double-forking: the child is a fresh interpreter that inherits no thread, lock or open file of
the parent, and the daemon has exactly one code path, the one systemd runs (``--foreground``).
The parent returns once the API answers on the Unix socket, or prints what the child logged.

The pidfile is held with ``flock`` for the daemon's lifetime, so "is it running" never trusts
a stale pid: the lock dies with the process.

Signals (main thread): SIGTERM and SIGINT stop in order (API last, so event streams carry the
aborted deployments' end), SIGHUP reloads the configuration, SIGUSR1 logs every thread's stack.

The end is certain. When the supervision tree gives up (restart intensity exceeded, or the top
supervisor crashed), the main loop sees it within a second and stops the daemon in order with
exit status 1, so that the service manager starts a new one. Once a stop begins the process
has EXIT_DEADLINE seconds to end (SIGALRM, then status 1), and if non-daemon threads are still
running after the orderly stop, it ends at once with status 1 (:func:`exit_process`) instead
of waiting for them, without its pidfile, where ``kadeploy-server stop`` could not find it.
"""

from __future__ import annotations

import contextlib
import faulthandler
import fcntl
import logging
import math
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import httpx
import pykka.debug
from pydantic import ValidationError

from kadeploy_core.errors import ConfigError, KadeployError
from kadeploy_core.yamldoc import YamlLoadError, load_yaml_file
from kadeployd.api import ApiContext, ApiServer, ServerStatus, create_app
from kadeployd.config import Config, DaemonSettings, load_config
from kadeployd.daemon import Daemon
from kadeployd.privileges import (
    PRIVATE_DIR,
    PRIVATE_FILE,
    prepare_socket_dir,
    raise_open_files_limit,
    restrict_umask,
    secure_state_dir,
)

logger = logging.getLogger(__name__)

PIDFILE = "kadeployd.pid"
LOGFILE = "kadeployd.log"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 120.0
ABORT_TIMEOUT = 30.0
EXIT_DEADLINE = 110.0
"""Seconds from the start of the daemon's stop to the end of its process, whatever hangs: the
orderly stop's own bounds (deployments aborted, actors stopped in reverse order, the API)
fit in it, and it ends before ``kadeploy-server stop`` gives up (STOP_TIMEOUT) and before
systemd kills the unit (TimeoutStopSec=120 in conf/kadeployd.service)."""
STOPPING = "daemon stopping"
_LOG_FORMAT = "%(asctime)s %(levelname)s [%(threadName)s] %(name)s: %(message)s"


class AlreadyRunning(KadeployError):
    """Another daemon holds the pidfile."""


def pidfile_path(settings: DaemonSettings) -> Path:
    """``<state_dir>/kadeployd.pid``."""
    return settings.state_dir / PIDFILE


def logfile_path(settings: DaemonSettings) -> Path:
    """``<state_dir>/kadeployd.log``."""
    return settings.state_dir / LOGFILE


def daemon_settings(conf_dir: Path) -> DaemonSettings:
    """The ``daemon:`` section of deploy.conf alone: enough to find a running daemon even
    when the rest of the configuration was broken since it started. ConfigError if not."""
    try:
        return load_config(conf_dir).daemon
    except ConfigError as whole:
        source = conf_dir / "deploy.conf"
        try:
            doc = load_yaml_file(source)
        except YamlLoadError:
            raise whole from None
        section = doc.data.get("daemon", {}) if isinstance(doc.data, dict) else None
        try:
            return DaemonSettings.model_validate(section or {})
        except ValidationError:
            raise whole from None


class PidFile:
    """The daemon's pidfile, locked while it runs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        """Lock the pidfile and write our pid; AlreadyRunning if another process holds it."""
        self.path.parent.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, PRIVATE_FILE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            raise AlreadyRunning(
                f"kadeploy-server is already running (pid {pid}, pidfile {self.path})"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        """Remove and unlock the pidfile."""
        if self._fd is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            os.close(self._fd)
            self._fd = None


def running_pid(path: Path) -> int | None:
    """The pid of the daemon holding the pidfile ``path``, or None if none runs."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 32).decode(errors="replace").strip()
            if not text.isdigit() or int(text) <= 1:
                raise KadeployError(f"{path} is locked but holds no valid pid: {text!r}") from None
            return int(text)
        return None  # nobody holds it: a stale file
    finally:
        os.close(fd)


def health(socket_path: Path, timeout: float = 5.0) -> dict[str, Any] | None:
    """``GET /v1/health`` on the Unix socket; None if nothing answers."""
    transport = httpx.HTTPTransport(uds=str(socket_path))
    try:
        with httpx.Client(
            transport=transport, base_url="http://kadeployd", timeout=timeout
        ) as client:
            answer = client.get("/v1/health")
    except httpx.HTTPError:
        return None
    if answer.status_code != 200:
        return None
    body: dict[str, Any] = answer.json()
    return body


# ------------------------------------------------------------------ the daemon itself


def configure_logging(level: str) -> None:
    """Log to stderr (the log file when daemonized, the journal under systemd)."""
    logging.basicConfig(stream=sys.stderr, level=level.upper(), format=_LOG_FORMAT, force=True)


def serve_until_stopped(conf_dir: Path, config: Config, echo: Callable[[str], None]) -> NoReturn:
    """``start --foreground``: run the daemon in this process until it stops, then end the
    process with its exit status, certainly (see :func:`exit_process`): non-zero when the
    supervision tree gave up, so that the service manager starts a new one."""
    try:
        code = run_foreground(conf_dir, config, echo)
    except BaseException:  # whatever it is, the process must end and say it failed
        logger.exception("kadeploy-server failed")
        code = 1
    exit_process(code)


def exit_process(code: int) -> NoReturn:
    """End this process with ``code``.

    Python's own exit waits, forever, for every non-daemon thread: after the orderly stop,
    one still running (an actor that did not stop, a thread stuck in a call) would keep alive
    a daemon that already logged its stop and released its pidfile, where ``kadeploy-server
    stop`` cannot find it. So if any remains, it is logged and the process ends at once,
    with status 1 (the stop was not clean)."""
    left = sorted(
        thread.name
        for thread in threading.enumerate()
        if thread is not threading.main_thread() and not thread.daemon and thread.is_alive()
    )
    if left:
        logger.error(
            "threads still running after the stop (a bug): %s; exiting now", ", ".join(left)
        )
        _exit_now(1)
    logging.shutdown()
    sys.exit(code)


def _exit_now(code: int) -> NoReturn:
    """``os._exit`` after flushing what was logged and printed."""
    with contextlib.suppress(Exception):
        logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def _arm_exit_deadline(seconds: float) -> None:
    """From now on this process ends within ``seconds``, whatever hangs: SIGALRM then dumps
    every thread's stack to stderr and exits with status 1. A signal, not a watchdog thread:
    a daemon that is dying may be one that cannot start threads any more."""

    def expired(number: int, frame: FrameType | None) -> None:
        with contextlib.suppress(Exception):
            sys.stderr.write(f"kadeploy-server: still not stopped after {seconds:.0f} s\n")
            faulthandler.dump_traceback(all_threads=True)
        _exit_now(1)

    signal.signal(signal.SIGALRM, expired)
    signal.alarm(math.ceil(seconds))


def run_foreground(conf_dir: Path, config: Config, echo: Callable[[str], None]) -> int:
    """Run the daemon in this process until SIGTERM/SIGINT; the exit status."""
    configure_logging(config.daemon.log_level)
    restrict_umask()  # before anything is created: see kadeployd.privileges
    raise_open_files_limit()
    try:
        secure_state_dir(config.daemon.state_dir, config.daemon.unix_socket)
        prepare_socket_dir(config.daemon.state_dir, config.daemon.unix_socket)
    except OSError as exc:
        echo(f"kadeploy-server: cannot prepare the state dir {config.daemon.state_dir}: {exc}")
        return 1
    pidfile = PidFile(pidfile_path(config.daemon))
    try:
        pidfile.acquire()
    except AlreadyRunning as exc:
        echo(f"kadeploy-server: {exc}")
        return 1
    try:
        return _serve(conf_dir, echo)
    finally:
        pidfile.release()


def _serve(conf_dir: Path, echo: Callable[[str], None]) -> int:
    try:
        daemon = Daemon.start(conf_dir)
    except KadeployError as exc:
        echo(f"kadeploy-server: cannot start: {exc}")
        return 1
    status = ServerStatus()
    context = ApiContext(daemon, status)
    settings = daemon.config.daemon
    api = ApiServer(create_app(context), settings.unix_socket, settings.api.tcp_listen)
    try:
        api.start()
    except KadeployError as exc:
        echo(f"kadeploy-server: cannot start: {exc}")
        daemon.stop()
        context.close()
        return 1
    logger.info("kadeploy-server running (pid %d)", os.getpid())
    code = 0
    try:
        code = _main_loop(daemon, context, api)
    finally:
        _arm_exit_deadline(EXIT_DEADLINE)
        logger.info("stopping: running deployments are aborted")
        try:
            outcome = daemon.stop()
            if not outcome.ok:
                logger.error("supervision tree: %s", outcome.reason)
        except KadeployError as exc:
            logger.error("orderly stop failed: %s", exc)
            code = 1
        api.stop()
        context.close()
        logger.info("kadeploy-server stopped")
    return code


def _main_loop(daemon: Daemon, context: ApiContext, api: ApiServer) -> int:
    signals: queue.SimpleQueue[int] = queue.SimpleQueue()

    def received(number: int, frame: FrameType | None) -> None:
        signals.put(number)

    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)
    for handled_signal in handled:
        signal.signal(handled_signal, received)
    try:
        while True:
            try:
                number = signals.get(timeout=1.0)
            except queue.Empty:
                outcome = daemon.wait(0)
                if outcome is not None:
                    logger.error("the supervision tree ended: %s", outcome.reason)
                    return 1
                if not api.alive():
                    logger.error("the API thread ended")
                    return 1
                continue
            if number == signal.SIGHUP:
                logger.info("SIGHUP: reloading the configuration")
                with contextlib.suppress(ConfigError):
                    context.reload()
            elif number == signal.SIGUSR1:
                pykka.debug.log_thread_tracebacks()
            else:
                logger.info("%s: stopping", signal.Signals(number).name)
                return 0
    finally:
        for handled_signal in handled:
            signal.signal(handled_signal, signal.SIG_DFL)


# ------------------------------------------------------------------ control commands


def start_background(
    conf_dir: Path,
    settings: DaemonSettings,
    echo: Callable[[str], None],
    timeout: float = START_TIMEOUT,
) -> int:
    """Start the daemon detached; return once its API answers. The exit status."""
    pidfile = pidfile_path(settings)
    pid = running_pid(pidfile)
    if pid is not None:
        echo(f"kadeploy-server is already running (pid {pid})")
        return 1
    log = logfile_path(settings)
    log.parent.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    offset = log.stat().st_size if log.exists() else 0
    argv = [sys.executable, "-m", "kadeployd.server_cli", "start", "--foreground"]
    argv += ["--conf", str(conf_dir.absolute())]
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    with open(os.open(log, flags, PRIVATE_FILE), "ab") as out:
        child = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            cwd="/",
        )
    socket_path = settings.unix_socket
    deadline = time.monotonic() + timeout
    while True:
        if child.poll() is not None:
            echo(f"kadeploy-server failed to start (exit status {child.returncode}):")
            echo(_tail(log, offset))
            return 1
        answer = health(socket_path, timeout=2.0)
        if answer is not None and answer.get("pid") == child.pid:
            echo(f"kadeploy-server started (pid {child.pid}), API on {socket_path}, log {log}")
            return 0
        if time.monotonic() > deadline:
            echo(f"kadeploy-server (pid {child.pid}) did not answer within {timeout} s; see {log}")
            return 1
        time.sleep(0.1)


def stop(
    settings: DaemonSettings, echo: Callable[[str], None], timeout: float = STOP_TIMEOUT
) -> int:
    """SIGTERM the daemon and wait for it to end. The exit status."""
    pidfile = pidfile_path(settings)
    pid = running_pid(pidfile)
    if pid is None:
        echo("kadeploy-server is not running")
        return 0
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        echo("kadeploy-server is not running")
        return 0
    deadline = time.monotonic() + timeout
    while running_pid(pidfile) is not None:
        if time.monotonic() > deadline:
            echo(
                f"kadeploy-server (pid {pid}) did not stop within {timeout} s; "
                f"see {logfile_path(settings)} (kill -KILL {pid} to force)"
            )
            return 1
        time.sleep(0.1)
    echo(f"kadeploy-server stopped (pid {pid})")
    return 0


def status(settings: DaemonSettings, echo: Callable[[str], None]) -> int:
    """Print whether the daemon runs: 0 running, 3 not running (LSB), 1 not answering."""
    pid = running_pid(pidfile_path(settings))
    if pid is None:
        echo("kadeploy-server is not running")
        return 3
    socket_path = settings.unix_socket
    info = health(socket_path)
    if info is None:
        echo(f"kadeploy-server is running (pid {pid}) but its API does not answer on {socket_path}")
        return 1
    echo(f"kadeploy-server is running (pid {info['pid']})")
    echo(f"  version:               {info['version']}")
    echo(f"  uptime:                {_duration(float(info['uptime']))}")
    echo(f"  deployments in flight: {info['deployments_in_flight']}")
    echo(f"  API:                   unix:{socket_path}")
    if info.get("last_reload_error"):
        echo(f"  last reload failed:    {info['last_reload_error']}")
    return 0


def reload(settings: DaemonSettings, echo: Callable[[str], None], timeout: float = 30.0) -> int:
    """SIGHUP the daemon and wait for it to say how the reload went."""
    pid = running_pid(pidfile_path(settings))
    socket_path = settings.unix_socket
    before = health(socket_path)
    if pid is None or before is None:
        echo("kadeploy-server is not running")
        return 1
    os.kill(pid, signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = health(socket_path)
        if now is not None and now["reloads"] > before["reloads"]:
            echo("kadeploy-server: configuration reloaded")
            return 0
        if now is not None and now["reload_failures"] > before["reload_failures"]:
            echo("kadeploy-server: reload refused, the old configuration stays:")
            echo(str(now["last_reload_error"]))
            return 1
        time.sleep(0.1)
    echo(f"kadeploy-server did not confirm the reload within {timeout} s")
    return 1


def _tail(log: Path, offset: int, limit: int = 8192) -> str:
    try:
        with open(log, "rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except OSError as exc:
        return f"(cannot read {log}: {exc})"
    return data[-limit:].decode(errors="replace").rstrip()


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d {hours}h {minutes}m"
    if hours:
        return f"{hours}h {minutes}m {secs}s"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"
