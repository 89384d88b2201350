"""The one-for-one supervisor: an actor that starts, watches, restarts and stops its children.

Why an actor: every decision (a child exited, restart it, count the restart, give up, shut
down) is taken in one thread, in the order the events arrived, with no locks around the
children's bookkeeping; exit reports arrive as ordinary ``tell`` messages from the children's
own threads (see :mod:`kadeployd.supervision.links`), and a supervisor can itself be the child of
another supervisor. The only state other threads read (the current ref of each child, the
listeners, the final outcome) lives in :class:`_Shared`, behind a lock, so that looking a child up
never sends a message to the supervisor: a child that looks up a sibling while the supervisor
waits for that child to start or stop cannot deadlock it.

Crash detection, fastest first:

1. a :class:`~kadeployd.supervision.links.SupervisedActor` reports its own exit (``on_stop``,
   ``on_failure``) with one ``tell``: immediate, with the reason;
2. after each (re)start the supervisor asks the child a trivial question with
   ``start_timeout``: an exception in ``on_start`` (which runs no hook) shows up as
   ``ActorDeadError`` there, and a start that hangs as a timeout;
3. safety net, every ``check_interval`` seconds (a timer message, not a sleep): a child whose
   ``actor_stopped`` is set and that has sent no report at two consecutive checks is handled as
   an exit of kind UNKNOWN. It only matters for actors that are not SupervisedActors or break
   the hook contract; the two-check grace leaves time for a report already on its way.

The supervisor waits on a child only to start it and to stop it, each time bounded by the
child spec's timeouts; children never wait on the supervisor (ask down, tell up).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import pykka
from pykka.messages import ProxyGetAttr

from kadeploy_core.suggest import did_you_mean
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
from kadeployd.supervision.links import ExitReport, SupervisedActor, link, unlink
from kadeployd.supervision.policy import ExitKind, RestartIntensity, should_restart
from kadeployd.supervision.spec import ChildSpec

logger = logging.getLogger(__name__)

Listener = Callable[[SupervisionEvent], None]

_MARGIN = 5.0
"""Seconds added to the sum of the children's timeouts when waiting for a whole supervisor."""

_READY_PROBE = ProxyGetAttr(attr_path=("actor_urn",))
"""Answered by any Pykka actor once its on_start is done, without touching its on_receive."""


# --- messages the supervisor sends itself -------------------------------------------------


@dataclass(frozen=True, slots=True)
class _ChildReported:
    report: ExitReport


@dataclass(frozen=True, slots=True)
class _Check:
    pass


@dataclass(frozen=True, slots=True)
class _RetryRestart:
    name: str


class _StartFailed(Exception):
    """One attempt to start a child failed; the message says how."""


# --- state shared with other threads -------------------------------------------------------


class _Shared:
    """Current incarnation of every child, listeners and outcome; thread-safe."""

    def __init__(self, supervisor: str, names: Iterable[str]) -> None:
        self.supervisor = supervisor
        self._cond = threading.Condition()
        self._refs: dict[str, pykka.ActorRef[Any] | None] = dict.fromkeys(names)
        self._gone: dict[str, str] = {}
        self._listeners: list[Listener] = []
        self._outcome: SupervisorExit | None = None
        self.exited = threading.Event()

    def set_ref(self, name: str, ref: pykka.ActorRef[Any] | None) -> None:
        with self._cond:
            self._refs[name] = ref
            self._cond.notify_all()

    def retire(self, name: str, why: str) -> None:
        """``name`` will have no further incarnation; lookups fail at once with ``why``."""
        with self._cond:
            self._refs[name] = None
            self._gone[name] = why
            self._cond.notify_all()

    def retire_all(self, why: str) -> None:
        with self._cond:
            for name in self._refs:
                self._refs[name] = None
                self._gone.setdefault(name, why)
            self._cond.notify_all()

    def lookup(self, name: str, timeout: float) -> pykka.ActorRef[Any]:
        """The live incarnation of ``name``, waiting up to ``timeout`` s during a restart."""
        deadline = time.monotonic() + timeout
        with self._cond:
            if name not in self._refs:
                raise UnknownChild(
                    f"supervisor {self.supervisor!r} has no child {name!r}"
                    f"{did_you_mean(name, self._refs)}; children: {', '.join(self._refs)}"
                )
            while True:
                if name in self._gone:
                    raise ChildUnavailable(
                        f"child {name!r} of supervisor {self.supervisor!r} is not running: "
                        f"{self._gone[name]}"
                    )
                ref = self._refs[name]
                if ref is not None and ref.is_alive():
                    return ref
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ChildUnavailable(
                        f"child {name!r} of supervisor {self.supervisor!r} had no live "
                        f"incarnation within {timeout} s (it is being restarted)"
                    )
                # Woken by set_ref/retire; the timeout only bounds the wait.
                self._cond.wait(remaining)

    def add_listener(self, listener: Listener) -> None:
        with self._cond:
            self._listeners.append(listener)

    def emit(self, event: SupervisionEvent) -> None:
        with self._cond:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(event)
            except Exception:
                logger.exception("supervisor %s: listener %r failed", self.supervisor, listener)

    def finish(self, outcome: SupervisorExit) -> None:
        """Record the outcome (the first one wins), tell the listeners, then wake ``wait``."""
        with self._cond:
            if self._outcome is not None:
                return
            self._outcome = outcome
        self.emit(outcome)
        self.exited.set()

    @property
    def outcome(self) -> SupervisorExit | None:
        with self._cond:
            return self._outcome


@dataclass(slots=True)
class _Child:
    spec: ChildSpec
    ref: pykka.ActorRef[Any] | None = None
    last_urn: str = ""
    stopping: bool = False
    gone: bool = False
    suspect: bool = False
    """Found dead without a report by the last periodic check."""


# --- the actor -----------------------------------------------------------------------------


class SupervisorActor(SupervisedActor):
    """One-for-one supervisor. Start it through :meth:`Supervisor.start`."""

    def __init__(
        self,
        *,
        name: str,
        specs: tuple[ChildSpec, ...],
        intensity: RestartIntensity,
        check_interval: float | None,
        shared: _Shared,
    ) -> None:
        super().__init__()
        self._name = name
        self._children = [_Child(spec) for spec in specs]
        self._by_name = {child.spec.name: child for child in self._children}
        self._by_urn: dict[str, _Child] = {}
        self._intensity = intensity
        self._check_interval = check_interval
        self._shared = shared
        self._closing = False
        self._timer: threading.Timer | None = None

    # pykka hooks

    def on_start(self) -> None:
        for child in self._children:
            try:
                self._start_child(child)
            except _StartFailed as err:
                reason = (
                    f"supervisor {self._name!r}: child {child.spec.name!r} failed to start: {err}"
                )
                logger.error("%s", reason)
                self._close(ok=False, reason=reason)
                raise SupervisorStartError(reason) from None
        logger.info("supervisor %s: started %d children", self._name, len(self._children))
        self._arm_timer()

    def on_receive(self, message: Any) -> Any:
        if self._closing:
            return None
        match message:
            case _ChildReported(report):
                self._on_report(report)
            case _Check():
                self._check()
                self._arm_timer()
            case _RetryRestart(name):
                child = self._by_name[name]
                if child.ref is None and not child.gone:
                    self._restart(child, "the previous restart attempt failed")
            case _:
                return super().on_receive(message)
        return None

    def on_stop(self) -> None:
        if not self._closing:
            self._close(ok=True, reason="stopped")
        super().on_stop()

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if not self._closing:
            self._close(ok=False, reason=f"supervisor crashed: {exception_value!r}")
        super().on_failure(exception_type, exception_value, traceback)

    # starting

    def _start_child(self, child: _Child) -> pykka.ActorRef[Any]:
        spec = child.spec
        try:
            ref = spec.start()
        except Exception as err:
            raise _StartFailed(f"start() raised {type(err).__name__}: {err}") from err
        if not isinstance(ref, pykka.ActorRef):
            raise _StartFailed(f"start() must return a pykka.ActorRef, it returned {ref!r}")
        link(ref, self._notify)
        try:
            ref.ask(_READY_PROBE, timeout=spec.start_timeout)
        except pykka.ActorDeadError:
            unlink(ref.actor_urn)
            raise _StartFailed("it died in on_start (its traceback is logged above)") from None
        except pykka.Timeout:
            if not ref.is_alive():
                unlink(ref.actor_urn)
                raise _StartFailed("it died in on_start (its traceback is logged above)") from None
            ref.stop(block=False)
            raise _StartFailed(f"on_start did not finish within {spec.start_timeout} s") from None
        child.ref = ref
        child.last_urn = ref.actor_urn
        child.suspect = False
        self._by_urn[ref.actor_urn] = child
        self._shared.set_ref(spec.name, ref)
        logger.info("supervisor %s: started %s as %s", self._name, spec.name, ref)
        return ref

    def _notify(self, report: ExitReport) -> None:
        """Runs in the dying child's thread: hand the report over to the supervisor's inbox."""
        try:
            self.actor_ref.tell(_ChildReported(report))
        except pykka.ActorDeadError:
            logger.debug("supervisor %s gone; exit of %s not handled", self._name, report.urn)

    # exits and restarts

    def _on_report(self, report: ExitReport) -> None:
        child = self._by_urn.get(report.urn)
        if child is None or child.stopping or child.ref is None:
            return  # an old incarnation, or a child we are stopping ourselves
        if child.ref.actor_urn != report.urn:
            return
        self._child_exited(child, report.kind, report.detail)

    def _child_exited(self, child: _Child, kind: ExitKind, detail: str) -> None:
        assert child.ref is not None
        name, urn = child.spec.name, child.ref.actor_urn
        self._by_urn.pop(urn, None)
        child.ref = None
        child.suspect = False
        restarting = should_restart(child.spec.restart, kind)
        level = logging.INFO if kind is ExitKind.NORMAL else logging.WARNING
        logger.log(
            level,
            "supervisor %s: %s child %s exited (%s: %s); %s",
            self._name,
            child.spec.restart,
            name,
            kind,
            detail,
            "restarting it" if restarting else "not restarting it",
        )
        if restarting:
            self._shared.set_ref(name, None)
        else:
            child.gone = True
            self._shared.retire(name, f"{child.spec.restart} child exited ({kind}: {detail})")
        self._shared.emit(ChildExited(self._name, name, urn, kind, detail, restarting))
        if restarting:
            self._restart(child, f"{kind}: {detail}")

    def _restart(self, child: _Child, why: str) -> None:
        name = child.spec.name
        if not self._intensity.record():
            self._give_up(
                f"supervisor {self._name!r}: restart intensity exceeded: more than "
                f"{self._intensity.max_restarts} restarts within {self._intensity.period} s "
                f"(last: child {name!r} after {why})"
            )
            return
        old_urn = child.last_urn
        try:
            ref = self._start_child(child)
        except _StartFailed as err:
            logger.error("supervisor %s: restarting %s failed: %s", self._name, name, err)
            # Try again through the inbox, so that stop requests and reports queued meanwhile
            # are handled first; each attempt counts towards the restart intensity.
            self.actor_ref.tell(_RetryRestart(name))
            return
        self._shared.emit(ChildRestarted(self._name, name, old_urn, ref))

    def _give_up(self, reason: str) -> None:
        logger.error("%s; stopping all children", reason)
        self._close(ok=False, reason=reason)
        self._stop_with_failure(reason)

    # safety net

    def _arm_timer(self) -> None:
        if self._check_interval is None or self._closing:
            return
        timer = threading.Timer(self._check_interval, self._tick)
        timer.name = f"supervisor-{self._name}-check"
        timer.daemon = True
        self._timer = timer
        timer.start()

    def _tick(self) -> None:
        """Runs in the timer's thread."""
        with contextlib.suppress(pykka.ActorDeadError):
            self.actor_ref.tell(_Check())

    def _check(self) -> None:
        for child in self._children:
            if self._closing:
                return
            ref = child.ref
            if ref is None or child.stopping or ref.is_alive():
                child.suspect = False
            elif not child.suspect:
                child.suspect = True
            else:
                unlink(ref.actor_urn)
                self._child_exited(
                    child, ExitKind.UNKNOWN, "found dead by the periodic check; it reported no exit"
                )

    # shutting down

    def _close(self, *, ok: bool, reason: str) -> None:
        """Stop every child in reverse start order and record the outcome (once)."""
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
        abandoned = self._stop_children()
        outcome = SupervisorExit(self._name, ok, reason, abandoned)
        self._shared.finish(outcome)
        logger.log(
            logging.INFO if ok else logging.ERROR, "supervisor %s exited: %s", self._name, reason
        )

    def _stop_children(self) -> tuple[str, ...]:
        abandoned: list[str] = []
        for child in reversed(self._children):
            ref = child.ref
            if ref is None:
                continue
            child.stopping = True
            self._shared.retire(child.spec.name, f"supervisor {self._name!r} stopped it")
            try:
                ref.stop(block=True, timeout=child.spec.shutdown_timeout)
            except pykka.Timeout:
                logger.error(
                    "supervisor %s: child %s did not stop within %s s; abandoning it (%s)",
                    self._name,
                    child.spec.name,
                    child.spec.shutdown_timeout,
                    ref,
                )
                abandoned.append(child.spec.name)
            else:
                logger.info("supervisor %s: stopped %s", self._name, child.spec.name)
            child.ref = None
        self._shared.retire_all(f"supervisor {self._name!r} exited")
        return tuple(abandoned)


# --- the handle callers hold ---------------------------------------------------------------


class Supervisor:
    """Handle on a running supervisor: child lookup, listeners, stop and outcome.

    Thread-safe; child lookups and listener registration never message the supervisor actor.
    """

    def __init__(
        self, ref: pykka.ActorRef[SupervisorActor], shared: _Shared, specs: tuple[ChildSpec, ...]
    ) -> None:
        self._ref = ref
        self._shared = shared
        self._specs = specs

    @classmethod
    def start(
        cls,
        specs: Iterable[ChildSpec],
        *,
        name: str = "supervisor",
        max_restarts: int = 3,
        period: float = 5.0,
        check_interval: float | None = 1.0,
        listeners: Iterable[Listener] = (),
    ) -> Supervisor:
        """Start the children in order, each ready before the next; raise if one cannot start.

        ``listeners`` are registered before any child starts, so they see every event. They are
        called in the supervisor's thread and must not block (``tell`` an actor, set an Event).
        """
        specs = tuple(specs)
        problems = [f"not a ChildSpec: {s!r}" for s in specs if not isinstance(s, ChildSpec)]
        names = [s.name for s in specs if isinstance(s, ChildSpec)]
        problems += [
            f"child name {n!r} used twice" for n in sorted({n for n in names if names.count(n) > 1})
        ]
        if check_interval is not None and check_interval <= 0:
            problems.append(f"check_interval must be > 0 seconds or None, got {check_interval!r}")
        if problems:
            raise ValueError(f"supervisor {name!r}: " + "; ".join(problems))
        intensity = RestartIntensity(max_restarts, period)
        shared = _Shared(name, names)
        for listener in listeners:
            shared.add_listener(listener)
        ref = SupervisorActor.start(
            name=name,
            specs=specs,
            intensity=intensity,
            check_interval=check_interval,
            shared=shared,
        )
        budget = sum(s.start_timeout for s in specs) + _MARGIN
        try:
            ref.ask(_READY_PROBE, timeout=budget)
        except pykka.ActorDeadError:
            outcome = shared.outcome
            reason = outcome.reason if outcome else f"supervisor {name!r} died while starting"
            raise SupervisorStartError(reason) from None
        except pykka.Timeout:
            ref.stop(block=False)
            raise SupervisorStartError(
                f"supervisor {name!r} did not finish starting its children within {budget} s"
            ) from None
        return cls(ref, shared, specs)

    @property
    def ref(self) -> pykka.ActorRef[SupervisorActor]:
        """The supervisor actor (to make this supervisor the child of another one)."""
        return self._ref

    @property
    def name(self) -> str:
        return self._shared.supervisor

    def child(self, name: str, timeout: float = 5.0) -> pykka.ActorRef[Any]:
        """The current incarnation of child ``name``; waits up to ``timeout`` s while it is
        being restarted. Raises UnknownChild, or ChildUnavailable (not restarted, or too slow).

        A ref can die right after it is returned: callers that keep it must expect
        ``ActorDeadError`` and look the child up again.
        """
        return self._shared.lookup(name, timeout)

    def proxy(self, name: str, timeout: float = 5.0) -> pykka.ActorProxy[Any]:
        """``child(name).proxy()``."""
        return self.child(name, timeout).proxy()

    def add_listener(self, listener: Listener) -> None:
        """Be told of ChildExited, ChildRestarted and SupervisorExit events (see ``start``)."""
        self._shared.add_listener(listener)

    def wait(self, timeout: float) -> SupervisorExit | None:
        """Wait for the supervisor to end; its outcome, or None if still running."""
        self._shared.exited.wait(timeout)
        return self._shared.outcome

    def request_stop(self) -> None:
        """Ask the supervisor to stop, without waiting: what an actor (e.g. the API) must use,
        since the supervisor stopping its children would wait on that very actor."""
        self._ref.stop(block=False)

    def stop(self, timeout: float | None = None) -> SupervisorExit:
        """Stop the children in reverse start order, each within its shutdown_timeout, then
        the supervisor. Returns the outcome (ok=False if it had already given up).

        Blocks: call it from the main thread, not from a child (see ``request_stop``)."""
        budget = (
            timeout
            if timeout is not None
            else sum(s.shutdown_timeout for s in self._specs) + _MARGIN
        )
        try:
            self._ref.stop(block=True, timeout=budget)
        except pykka.Timeout:
            raise SupervisionError(
                f"supervisor {self.name!r} did not stop within {budget} s"
            ) from None
        outcome = self._shared.outcome
        if outcome is None:  # only if the actor died without running its hooks
            outcome = SupervisorExit(self.name, False, "supervisor died without an outcome")
        return outcome
