"""Restart decisions as pure logic: which exits restart a child, and the intensity limit.

Kept free of threads and actors so it can be tested with a fake clock.
"""

from __future__ import annotations

import enum
import logging
import time
from collections import deque
from collections.abc import Callable

from kadeployd.supervision.spec import Restart

logger = logging.getLogger(__name__)


class ExitKind(enum.StrEnum):
    """How a child's life ended, as far as its supervisor can tell."""

    NORMAL = "normal"
    """``on_stop`` ran: the actor was stopped (by itself or by someone else) without error."""
    FAILURE = "failure"
    """An exception ended it: in a tell-ed message (``on_failure`` ran) or a failed start."""
    UNKNOWN = "unknown"
    """It is dead but never said why (not a SupervisedActor, or a hook that did not call
    ``super()``); found by the supervisor's periodic check and treated as abnormal."""


def should_restart(restart: Restart, kind: ExitKind) -> bool:
    """OTP semantics: permanent always, transient on abnormal exits only, temporary never."""
    match restart:
        case Restart.PERMANENT:
            return True
        case Restart.TRANSIENT:
            return kind is not ExitKind.NORMAL
        case Restart.TEMPORARY:
            return False


class RestartIntensity:
    """Allows at most ``max_restarts`` restarts in any sliding window of ``period`` seconds.

    ``record()`` is called once per restart attempt (a failed restart attempt counts too, as in
    OTP) and answers whether the attempt is still within the limit.
    """

    def __init__(
        self,
        max_restarts: int,
        period: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(max_restarts, bool) or not isinstance(max_restarts, int) or max_restarts < 0:
            raise ValueError(f"max_restarts must be an integer >= 0, got {max_restarts!r}")
        if isinstance(period, bool) or not isinstance(period, int | float) or period <= 0:
            raise ValueError(f"period must be a number of seconds > 0, got {period!r}")
        self.max_restarts = max_restarts
        self.period = float(period)
        self._clock = clock
        self._stamps: deque[float] = deque()

    def record(self) -> bool:
        """Count one restart now; False when that makes more than ``max_restarts`` in the window."""
        now = self._clock()
        self._stamps.append(now)
        while self._stamps and self._stamps[0] <= now - self.period:
            self._stamps.popleft()
        return len(self._stamps) <= self.max_restarts

    @property
    def recent(self) -> int:
        """Restarts counted in the current window (as of the last ``record``)."""
        return len(self._stamps)
