"""Exit reports from actors to whoever watches them (the supervisor), OTP-link style.

Why hooks and not a watcher: Pykka sets an actor's ``actor_stopped`` event *before* it runs
``on_stop``/``on_failure``, and says nothing about why the actor ended. A supervisor needs the
reason (a transient child is restarted only after an abnormal exit) and wants it at once, so a
:class:`SupervisedActor` reports its own exit from those hooks, in its own thread, as one
``tell`` to its supervisor. The cases the hooks cannot see are covered elsewhere:

* an exception in ``on_start`` ends the actor with neither hook run: the supervisor finds it with
  the ready-check it makes after every (re)start (an ``ask`` with a timeout);
* an actor that is not a SupervisedActor, or overrides a hook without calling ``super()``, or
  whose ``on_stop`` raises first: the supervisor's periodic safety-net check finds it dead.

The link table is keyed by actor URN. A report that arrives before its link exists (the actor
died between ``start()`` and ``link()``) is kept in a small bounded table and delivered by
``link()``.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import pykka

from kadeployd.supervision.policy import ExitKind

logger = logging.getLogger(__name__)

_EARLY_LIMIT = 256


@dataclass(frozen=True, slots=True)
class ExitReport:
    """One actor's own account of how it ended."""

    urn: str
    kind: ExitKind
    detail: str


Notify = Callable[[ExitReport], None]

_lock = threading.Lock()
_links: dict[str, Notify] = {}
_early: OrderedDict[str, ExitReport] = OrderedDict()


def link(ref: pykka.ActorRef[Any], notify: Notify) -> None:
    """Call ``notify`` (once, from the dying actor's thread) when ``ref``'s actor reports its exit.

    ``notify`` must not block: it should only ``tell`` an actor.
    """
    with _lock:
        early = _early.pop(ref.actor_urn, None)
        if early is None:
            _links[ref.actor_urn] = notify
            return
    notify(early)


def unlink(urn: str) -> None:
    """Forget the link of ``urn`` (an actor that will never report, e.g. died in on_start)."""
    with _lock:
        _links.pop(urn, None)
        _early.pop(urn, None)


def report_exit(report: ExitReport) -> None:
    """Deliver ``report`` to the actor's link, or keep it for a ``link()`` still to come."""
    with _lock:
        notify = _links.pop(report.urn, None)
        if notify is None:
            _early[report.urn] = report
            while len(_early) > _EARLY_LIMIT:
                _early.popitem(last=False)
            return
    try:
        notify(report)
    except Exception:
        logger.exception("exit report of %s could not be delivered", report.urn)


class SupervisedActor(pykka.ThreadingActor):
    """Base class of actors run under a :class:`~kadeployd.supervision.Supervisor`.

    It reports its exit to its supervisor from ``on_stop`` (normal) and ``on_failure``
    (an exception in a tell-ed message). Subclasses that override either hook must call
    ``super()``; if they do not, the supervisor still notices the death with its periodic
    check, only later and without the reason. ``on_start`` needs no cooperation.
    """

    _exit_failure: str | None = None

    def _stop_with_failure(self, reason: str) -> None:
        """Stop this actor and report the exit as a failure (e.g. a supervisor giving up)."""
        self._exit_failure = reason
        self.stop()

    def on_stop(self) -> None:
        if self._exit_failure is None:
            report_exit(ExitReport(self.actor_urn, ExitKind.NORMAL, "stopped"))
        else:
            report_exit(ExitReport(self.actor_urn, ExitKind.FAILURE, self._exit_failure))

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        name = exception_type.__name__ if exception_type is not None else "exception"
        report_exit(ExitReport(self.actor_urn, ExitKind.FAILURE, f"{name}: {exception_value}"))
