"""Child specifications: what a supervisor starts, and what it does when the child exits."""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pykka

logger = logging.getLogger(__name__)


class Restart(enum.StrEnum):
    """When a child that exited on its own is started again (OTP's ``restart`` values)."""

    PERMANENT = "permanent"
    """Always restarted, whether it crashed or stopped cleanly (ConfigActor, StoreActor...)."""
    TRANSIENT = "transient"
    """Restarted only after an abnormal exit (a crash, a failed start, an unexplained death)."""
    TEMPORARY = "temporary"
    """Never restarted (DeploymentManager, NodeActor): its exit is reported and it is forgotten."""


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """How to start one child and how to treat its exits.

    ``start`` must build a *new* actor every time it is called and return its ref: a restart
    calls it again, so the new incarnation rebuilds its state (from config and store in the
    daemon) instead of inheriting the crashed one's.
    """

    name: str
    start: Callable[[], pykka.ActorRef[Any]]
    restart: Restart = Restart.PERMANENT
    shutdown_timeout: float = 5.0
    """Seconds to wait for the child to stop before it is abandoned (logged, not waited for)."""
    start_timeout: float = 10.0
    """Seconds the child's ``on_start`` may take before the start counts as failed."""

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.name, str) or not self.name.strip():
            problems.append(f"name must be a non-empty string, got {self.name!r}")
        if not callable(self.start):
            problems.append(
                f"start must be a callable returning a pykka.ActorRef, got {self.start!r}"
            )
        if not isinstance(self.restart, Restart):
            valid = ", ".join(f"Restart.{r.name}" for r in Restart)
            problems.append(f"restart must be one of {valid}, got {self.restart!r}")
        for field in ("shutdown_timeout", "start_timeout"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                problems.append(f"{field} must be a number of seconds > 0, got {value!r}")
        if problems:
            raise ValueError(f"child spec {self.name!r}: " + "; ".join(problems))
