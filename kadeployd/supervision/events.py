"""What a supervisor tells its listeners, and the errors it raises.

::

    KadeployError
    └── SupervisionError          a supervisor cannot do what was asked
        ├── SupervisorStartError  a child failed to start, so the supervisor did not start
        ├── UnknownChild          no child spec has that name
        └── ChildUnavailable      the child has no live incarnation (yet, or any more)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import pykka

from kadeploy_core.errors import KadeployError
from kadeployd.supervision.policy import ExitKind

logger = logging.getLogger(__name__)


class SupervisionError(KadeployError):
    """Base of the supervisor's errors."""


class SupervisorStartError(SupervisionError):
    """A child could not be started; the children started before it were stopped again."""


class UnknownChild(SupervisionError, LookupError):
    """No child spec of the supervisor has the name asked for."""


class ChildUnavailable(SupervisionError):
    """The child exists in the specs but has no live incarnation."""


@dataclass(frozen=True, slots=True)
class ChildExited:
    """A child ended without its supervisor asking; ``restarting`` says what happens next."""

    supervisor: str
    name: str
    urn: str
    kind: ExitKind
    detail: str
    restarting: bool


@dataclass(frozen=True, slots=True)
class ChildRestarted:
    """A new incarnation of ``name`` replaced the one with ``old_urn``."""

    supervisor: str
    name: str
    old_urn: str
    ref: pykka.ActorRef[Any]


@dataclass(frozen=True, slots=True)
class SupervisorExit:
    """How a supervisor ended: ``ok`` is False after a failed start, a crash of the supervisor,
    or an exceeded restart intensity; the daemon then exits non-zero."""

    supervisor: str
    ok: bool
    reason: str
    abandoned: tuple[str, ...] = ()
    """Children that did not stop within their shutdown_timeout (left running, logged)."""


SupervisionEvent = ChildExited | ChildRestarted | SupervisorExit
