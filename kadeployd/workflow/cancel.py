"""A cancellation token shared by a node's actor and the worker running its microsteps.

The actor cancels (abort, variant timeout); the worker's blocking calls register what to do
then (close the SSH transport, kill a local command, withdraw a reboot request), so a worker
stuck in I/O is released at once instead of polling a flag.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable

logger = logging.getLogger(__name__)


class CancelToken:
    """Set once; callbacks registered before or after run exactly once when it is set."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []
        self.reason = ""

    def cancel(self, reason: str) -> None:
        """Set the token and run the registered callbacks (first reason wins)."""
        with self._lock:
            if self._event.is_set():
                return
            self.reason = reason
            self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            _call(callback)

    def on_cancel(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Run ``callback`` when cancelled (now, if already); returns a function to unregister."""
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(callback)
                return lambda: self._discard(callback)
        _call(callback)
        return lambda: None

    def is_set(self) -> bool:
        """Whether the token was cancelled."""
        return self._event.is_set()

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds; True if cancelled."""
        return self._event.wait(timeout)

    def _discard(self, callback: Callable[[], None]) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._callbacks.remove(callback)


def _call(callback: Callable[[], None]) -> None:
    try:
        callback()
    except Exception:
        logger.exception("cancel callback failed")
