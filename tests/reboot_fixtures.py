"""Helpers shared by test_commands.py and test_reboot.py: waiting with a deadline, processes."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable
from pathlib import Path

import waiting

WAIT = 15.0
"""Upper bound for any wait in these tests; never reached when things work."""


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT, what: str = "") -> None:
    """Poll ``predicate`` until it is true (see :mod:`waiting`)."""
    waiting.wait_until(predicate, timeout, what)


def process_alive(pid: int) -> bool:
    """True when ``pid`` exists and is not a zombie (a killed orphan may wait to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X")


def read_pid(path: Path) -> int:
    """The pid a test command wrote into ``path`` (waits until it is there)."""
    wait_until(lambda: path.exists() and path.read_text().strip() != "", what=f"pid in {path}")
    return int(path.read_text().strip())


class PidReaper:
    """Pids a test started indirectly; killed at teardown if a test failed to end them."""

    def __init__(self) -> None:
        self.pids: list[int] = []

    def add(self, pid: int) -> int:
        self.pids.append(pid)
        return pid

    def kill_all(self) -> None:
        for pid in self.pids:
            if process_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
