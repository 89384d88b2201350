"""Running local commands (power and reboot commands): argument lists, bounded in time and output.

Every command runs from an argument list (never through a shell) in its own session, so its
process group is exactly the command and whatever it started. The group is signalled, never a
single pid:

* on timeout or :meth:`RunningCommand.cancel`: SIGTERM to the group, then SIGKILL after
  ``kill_grace`` seconds if the command is still there;
* when the command itself has exited: SIGKILL to the group, so nothing it left running in the
  background survives it (the exited, not yet reaped, leader keeps the group id reserved, so the
  signal cannot reach an unrelated group). A process that started a session of its own has left
  the group and is out of reach; if it holds the output pipes open, reading stops after
  ``_DRAIN_GRACE`` seconds.

Output is read while the command runs (no pipe can fill up and stall it) and only the last
``output_limit`` bytes of each stream are kept. A missing executable is a result with a clear
stderr, not an exception: callers get one shape of answer for every way a command can fail.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

DEFAULT_KILL_GRACE = 5.0
"""Seconds between SIGTERM and SIGKILL when a command is stopped."""
DEFAULT_OUTPUT_LIMIT = 256 * 1024
"""Bytes kept of each of stdout and stderr (the tail)."""
_DRAIN_GRACE = 1.0
"""Seconds to keep reading output after the command exited, for pipes still held elsewhere."""
_POLL_INTERVAL = 0.05
"""Exit check period when the kernel has no pidfd (the loop otherwise wakes on exit)."""
_READ_SIZE = 65536


@dataclass(frozen=True, slots=True)
class CommandResult:
    """How one command ended.

    ``returncode`` is None when the command never ran, negative when a signal killed it.
    """

    argv: tuple[str, ...]
    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool
    duration: float
    """Seconds from start to the end of output capture."""
    cancelled: bool = False

    @property
    def ok(self) -> bool:
        """True when the command ran to completion and exited with status 0."""
        return self.returncode == 0 and not self.timed_out and not self.cancelled

    def stderr_tail(self, lines: int = 20) -> str:
        """The last ``lines`` non-empty lines of stderr (what a log or an error report shows)."""
        kept = [line for line in self.stderr.splitlines() if line.strip()]
        return "\n".join(kept[-lines:]) if lines > 0 else ""

    def describe(self) -> str:
        """One line saying how the command ended, with the last line of stderr if any."""
        if self.timed_out:
            what = f"timed out after {self.duration:.1f} s and was killed"
        elif self.cancelled:
            what = "was cancelled"
        elif self.returncode is None:
            return self.stderr_tail(1) or "could not be started"
        elif self.returncode == 0:
            what = "succeeded"
        elif self.returncode < 0:
            what = f"was killed by signal {_signal_name(-self.returncode)}"
        else:
            what = f"exited with status {self.returncode}"
        last = self.stderr_tail(1)
        return f"{what}: {last}" if last and not self.ok else what


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


class _TailBuffer:
    """The last ``limit`` bytes written to it, and how many were dropped before them."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.dropped = 0

    def add(self, chunk: bytes) -> None:
        self.data += chunk
        excess = len(self.data) - self.limit
        if excess > 0:
            del self.data[:excess]
            self.dropped += excess

    def text(self) -> str:
        body = self.data.decode("utf-8", errors="replace")
        if self.dropped:
            return f"[kadeployd: first {self.dropped} bytes of output dropped]\n{body}"
        return body


class RunningCommand:
    """One command run: :meth:`run` in one thread, :meth:`cancel` from any other.

    ``run`` blocks until the command and its output are done and returns a CommandResult; it
    may be called once. ``cancel`` before ``run`` makes ``run`` return a cancelled result at
    once without starting anything.
    """

    def __init__(
        self,
        argv: Sequence[str],
        timeout: float,
        stdin: bytes | None = None,
        *,
        kill_grace: float = DEFAULT_KILL_GRACE,
        output_limit: int = DEFAULT_OUTPUT_LIMIT,
        shown: str | None = None,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self.argv = tuple(str(a) for a in argv)
        self.shown = shown if shown is not None else " ".join(self.argv)
        """The command line as logged: the caller masks any secret in it."""
        self.timeout = timeout
        self.kill_grace = kill_grace
        self.output_limit = output_limit
        self.stdin_data = stdin
        self._lock = threading.Lock()
        self._state = "new"  # new -> running -> done
        self._cancel = threading.Event()
        self._wake_w: int | None = None
        self.pid: int | None = None
        """Pid of the command (and id of its process group) once started."""
        self.started = threading.Event()
        """Set once the process exists (or it is known that it never will)."""

    def cancel(self) -> bool:
        """Ask the command to stop (SIGTERM, then SIGKILL); False when it had already ended."""
        with self._lock:
            if self._state == "done":
                return False
            self._cancel.set()
            if self._wake_w is not None:
                with contextlib.suppress(OSError):  # pipe full: a wake-up is already pending
                    os.write(self._wake_w, b"!")
        return True

    @property
    def cancel_requested(self) -> bool:
        """True once :meth:`cancel` was called."""
        return self._cancel.is_set()

    def run(self) -> CommandResult:
        """Start the command and wait for it; never raises for a command that fails to start."""
        with self._lock:
            if self._state != "new":
                raise RuntimeError("a RunningCommand runs only once")
            self._state = "running"
            if self._cancel.is_set():
                self._state = "done"
                self.started.set()
                return self._not_run("cancelled before it started", cancelled=True)
            wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            self._wake_w = wake_w
        try:
            return self._run(wake_r)
        finally:
            with self._lock:
                self._state = "done"
                self._wake_w = None
            os.close(wake_w)
            os.close(wake_r)
            self.started.set()

    def _not_run(self, why: str, cancelled: bool = False) -> CommandResult:
        return CommandResult(self.argv, None, "", why, False, 0.0, cancelled)

    def _run(self, wake_r: int) -> CommandResult:
        if not self.argv or not self.argv[0]:
            return self._not_run("empty command line")
        start = time.monotonic()
        try:
            proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL if self.stdin_data is None else subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                close_fds=True,
            )
        except FileNotFoundError:
            return self._not_run(f"command not found: {self.argv[0]}")
        except PermissionError:
            return self._not_run(f"command not executable (permission denied): {self.argv[0]}")
        except OSError as err:
            return self._not_run(f"cannot run {self.argv[0]}: {err.strerror or err}")
        self.pid = proc.pid
        self.started.set()
        logger.debug("started pid %d: %s", proc.pid, self.shown)
        try:
            return _Watch(self, proc, wake_r, start).run()
        finally:
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
            if proc.returncode is None:  # only after an unexpected error in _Watch
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class _Watch:
    """The loop that feeds stdin, reads output, enforces the timeout and sees the exit.

    One select loop in the caller's thread; it wakes on output, on the process's exit (pidfd,
    or a short poll where the kernel has none), on the cancel pipe and on its own deadlines.
    """

    def __init__(
        self, command: RunningCommand, proc: subprocess.Popen[bytes], wake_r: int, start: float
    ) -> None:
        self.command = command
        self.proc = proc
        self.wake_r = wake_r
        self.start = start
        self.deadline = start + command.timeout
        self.out = _TailBuffer(command.output_limit)
        self.err = _TailBuffer(command.output_limit)
        self.sel = selectors.DefaultSelector()
        self.pidfd: int | None = None
        self.pending = memoryview(command.stdin_data or b"")
        self.term_at: float | None = None
        self.killed = self.timed_out = self.cancelled = False
        self.drain_until: float | None = None

    def run(self) -> CommandResult:
        try:
            self._register()
            while not self._finished():
                for key, _events in self.sel.select(self._wait_time()):
                    self._handle(key)
        finally:
            self.sel.close()
            if self.pidfd is not None:
                os.close(self.pidfd)
        return CommandResult(
            argv=self.command.argv,
            returncode=self.proc.returncode,
            stdout=self.out.text(),
            stderr=self.err.text(),
            timed_out=self.timed_out,
            duration=time.monotonic() - self.start,
            cancelled=self.cancelled,
        )

    def _register(self) -> None:
        proc = self.proc
        assert proc.stdout is not None and proc.stderr is not None
        self.sel.register(proc.stdout, selectors.EVENT_READ, self.out)
        self.sel.register(proc.stderr, selectors.EVENT_READ, self.err)
        self.sel.register(self.wake_r, selectors.EVENT_READ, "wake")
        if proc.stdin is not None:
            if self.pending:
                os.set_blocking(proc.stdin.fileno(), False)
                self.sel.register(proc.stdin, selectors.EVENT_WRITE, "stdin")
            else:
                proc.stdin.close()
        try:
            self.pidfd = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):
            self.pidfd = None
        else:
            self.sel.register(self.pidfd, selectors.EVENT_READ, "exit")

    def _finished(self) -> bool:
        """Act on what is due now (signals, exit); True when the loop should end."""
        now = time.monotonic()
        pid = self.proc.pid
        if self.drain_until is None:
            if self.term_at is None and (self.command.cancel_requested or now >= self.deadline):
                self.cancelled = self.command.cancel_requested
                self.timed_out = not self.cancelled
                why = "cancelled" if self.cancelled else f"timed out after {self.command.timeout} s"
                logger.info("command %s; stopping pid %d and its group", why, pid)
                _signal_group(pid, signal.SIGTERM)
                self.term_at = now
            if (
                self.term_at is not None
                and not self.killed
                and now >= self.term_at + self.command.kill_grace
            ):
                logger.warning("pid %d ignored SIGTERM; sending SIGKILL to its group", pid)
                _signal_group(pid, signal.SIGKILL)
                self.killed = True
            if _has_exited(pid):
                # The leader exited but is not reaped yet, so its group id cannot have been
                # reused: whatever it left running in its group is ended with it.
                _signal_group(pid, signal.SIGKILL)
                self.proc.wait()
                self.drain_until = now + _DRAIN_GRACE
                if self.pidfd is not None:
                    self.sel.unregister(self.pidfd)
        if self.drain_until is None:
            return False
        readers = [k for k in self.sel.get_map().values() if isinstance(k.data, _TailBuffer)]
        if readers and now >= self.drain_until:
            logger.warning(
                "pid %d exited but a process outside its group holds its output open; "
                "the rest of the output is not read",
                pid,
            )
            return True
        return not readers

    def _wait_time(self) -> float:
        """How long select may block before the loop has something to do on its own."""
        now = time.monotonic()
        if self.drain_until is not None:
            return max(0.0, self.drain_until - now)
        if self.term_at is None:
            wait = max(0.0, self.deadline - now)
        elif not self.killed:
            wait = max(0.0, self.term_at + self.command.kill_grace - now)
        else:
            wait = 1.0  # only the exit is awaited now; the pidfd wakes select
        return wait if self.pidfd is not None else min(wait, _POLL_INTERVAL)

    def _handle(self, key: selectors.SelectorKey) -> None:
        if isinstance(key.data, _TailBuffer):
            chunk = os.read(key.fd, _READ_SIZE)
            if chunk:
                key.data.add(chunk)
            else:
                self.sel.unregister(key.fileobj)
        elif key.data == "stdin":
            self._feed(key.fileobj)
        elif key.data == "wake":
            while _drain_fd(self.wake_r):
                pass

    def _feed(self, pipe: Any) -> None:
        """Write what the pipe accepts; close it when all is written or the command refused it."""
        try:
            written = os.write(pipe.fileno(), self.pending[:_READ_SIZE])
        except BlockingIOError:
            return
        except OSError:  # EPIPE: the command stopped reading, which is its right
            written = len(self.pending)
        self.pending = self.pending[written:]
        if not self.pending:
            self.sel.unregister(pipe)
            pipe.close()


def _has_exited(pid: int) -> bool:
    """True once ``pid`` (our child) has exited; it stays unreaped (a zombie) until waited for."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None


def _drain_fd(fd: int) -> bool:
    try:
        return bool(os.read(fd, 4096))
    except BlockingIOError:
        return False


def run_command(
    argv: Sequence[str],
    timeout: float,
    stdin: bytes | None = None,
    *,
    kill_grace: float = DEFAULT_KILL_GRACE,
    output_limit: int = DEFAULT_OUTPUT_LIMIT,
) -> CommandResult:
    """Run ``argv`` (no shell) for at most ``timeout`` seconds and return how it ended.

    To be able to cancel it from another thread, use :class:`RunningCommand` instead.
    """
    return RunningCommand(
        argv, timeout, stdin, kill_grace=kill_grace, output_limit=output_limit
    ).run()
