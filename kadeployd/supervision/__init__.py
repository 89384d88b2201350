"""OTP-style supervision over Pykka: child specs, one-for-one restarts, intensity limit.

Pykka has no supervision (pykka issue #42); this is the small one the daemon needs::

    sup = Supervisor.start(
        [
            ChildSpec("config", lambda: ConfigActor.start(path=...), Restart.PERMANENT, 5.0),
            ChildSpec("store", lambda: StoreActor.start(...), Restart.PERMANENT, 10.0),
        ],
        max_restarts=3,
        period=5.0,
    )
    sup.proxy("store").record(...)       # always the current incarnation
    outcome = sup.wait(timeout=...)      # SupervisorExit; ok=False -> exit non-zero
    sup.stop()                           # reverse order, bounded waits

Children should derive from :class:`SupervisedActor` so that their crashes are seen at once.
"""

from kadeployd.supervision.events import (
    ChildExited,
    ChildRestarted,
    ChildUnavailable,
    SupervisionError,
    SupervisionEvent,
    SupervisorExit,
    SupervisorStartError,
    UnknownChild,
)
from kadeployd.supervision.links import SupervisedActor
from kadeployd.supervision.policy import ExitKind, RestartIntensity, should_restart
from kadeployd.supervision.spec import ChildSpec, Restart
from kadeployd.supervision.supervisor import Supervisor, SupervisorActor

__all__ = [
    "ChildExited",
    "ChildRestarted",
    "ChildSpec",
    "ChildUnavailable",
    "ExitKind",
    "Restart",
    "RestartIntensity",
    "SupervisedActor",
    "SupervisionError",
    "SupervisionEvent",
    "Supervisor",
    "SupervisorActor",
    "SupervisorExit",
    "SupervisorStartError",
    "UnknownChild",
    "should_restart",
]
