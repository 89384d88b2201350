"""At most one log line per client and interval for what a client can repeat at will.

A TFTP flood of malformed packets wrote one WARNING per packet: 42 MB of log in 30 s
(RELIABILITY.md, ``tftp-flood``), more than 4 GB an hour. The first line of a client is
written at once; the others in the same interval are counted and told in its next line.
"""

from __future__ import annotations

import time
from collections.abc import Callable

MAX_CLIENTS = 4096
"""Clients remembered at once: a flood from many addresses must not grow the memory."""


class LogThrottle:
    """Decides, per client key, whether a line is written now."""

    def __init__(self, interval: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._next: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def allow(self, key: str) -> int | None:
        """None: hold this line back (counted); else the number of lines held back for
        ``key`` since its last line, to tell in this one."""
        now = self._clock()
        if now < self._next.get(key, 0.0):
            self._held[key] = self._held.get(key, 0) + 1
            return None
        if key not in self._next and len(self._next) >= MAX_CLIENTS:
            self._forget_expired(now)
        self._next[key] = now + self.interval
        return self._held.pop(key, 0)

    def _forget_expired(self, now: float) -> None:
        expired = [key for key, until in self._next.items() if until <= now]
        for key in expired or list(self._next)[: MAX_CLIENTS // 2]:
            del self._next[key]
            self._held.pop(key, None)


def held_note(held: int) -> str:
    """The tail of a line after ``held`` lines were held back."""
    return f" ({held} more like it since the last line)" if held else ""
