"""Waiting in tests: poll a condition with a deadline, never a fixed sleep."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import pytest

T = TypeVar("T")

POLL_INTERVAL = 0.02
"""Seconds between two looks at the condition (the wait ends as soon as it holds)."""


def wait_until(probe: Callable[[], T], timeout: float, what: str = "") -> T:
    """Poll ``probe`` until it returns something truthy and return that; fail the test with
    ``what`` if ``timeout`` seconds pass first."""
    deadline = time.monotonic() + timeout
    while not (value := probe()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or probe}")
        time.sleep(POLL_INTERVAL)
    return value
