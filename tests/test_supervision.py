"""Supervision: real Pykka actors, synchronised on events and futures with timeouts."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pykka
import pytest

from kadeployd.supervision import (
    ChildExited,
    ChildRestarted,
    ChildSpec,
    ChildUnavailable,
    ExitKind,
    Restart,
    RestartIntensity,
    SupervisedActor,
    SupervisionEvent,
    Supervisor,
    SupervisorExit,
    SupervisorStartError,
    UnknownChild,
    should_restart,
)

WAIT = 10.0  # upper bound for any wait; never reached when things work


@pytest.fixture(autouse=True)
def _stop_all_actors() -> Iterator[None]:
    yield
    pykka.ActorRegistry.stop_all(timeout=WAIT)
    assert pykka.ActorRegistry.get_all() == []


# --- test actors ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Crash:
    """Told to a Worker: raising in on_receive of a tell kills the actor (on_failure runs)."""


@dataclass(frozen=True, slots=True)
class Hold:
    """Told to a Worker: block the actor's thread until ``release`` is set."""

    entered: threading.Event
    release: threading.Event


class Journal:
    """What the actors did, in order, from every thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[str] = []

    def add(self, item: str) -> None:
        with self._lock:
            self._items.append(item)

    def items(self, prefix: str = "") -> list[str]:
        with self._lock:
            return [i for i in self._items if i.startswith(prefix)]


class Worker(SupervisedActor):
    def __init__(
        self,
        name: str,
        journal: Journal,
        fail_start: bool = False,
        start_gate: threading.Event | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.journal = journal
        self.fail_start = fail_start
        self.start_gate = start_gate
        self.count = 0

    def on_start(self) -> None:
        self.journal.add(f"start:{self.name}")
        if self.start_gate is not None:
            self.start_gate.wait(WAIT)
        if self.fail_start:
            raise RuntimeError(f"{self.name} cannot start")

    def on_stop(self) -> None:
        self.journal.add(f"stop:{self.name}")
        super().on_stop()

    def increment(self) -> int:
        self.count += 1
        return self.count

    def on_receive(self, message: Any) -> Any:
        match message:
            case Crash():
                raise RuntimeError(f"{self.name} crashed on purpose")
            case Hold(entered, release):
                entered.set()
                release.wait(WAIT)
                return None
            case _:
                return super().on_receive(message)


class PlainCrasher(pykka.ThreadingActor):
    """Not a SupervisedActor: its death is only found by the periodic check."""

    def on_receive(self, message: Any) -> Any:
        raise RuntimeError("plain actor crashed")


class Recorder:
    """A supervision listener that lets a test wait for an event."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.events: list[SupervisionEvent] = []

    def __call__(self, event: SupervisionEvent) -> None:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[SupervisionEvent], bool]) -> SupervisionEvent:
        deadline = time.monotonic() + WAIT
        with self._cond:
            seen = 0
            while True:
                for event in self.events[seen:]:
                    if predicate(event):
                        return event
                seen = len(self.events)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no matching event within {WAIT} s: {self.events}")
                self._cond.wait(remaining)

    def restarted(self, name: str, nth: int = 1) -> ChildRestarted:
        def match(e: SupervisionEvent) -> bool:
            found = [x for x in self.events if isinstance(x, ChildRestarted) and x.name == name]
            return isinstance(e, ChildRestarted) and e.name == name and len(found) >= nth

        event = self.wait_for(match)
        assert isinstance(event, ChildRestarted)
        return event

    def exited(self, name: str) -> ChildExited:
        event = self.wait_for(lambda e: isinstance(e, ChildExited) and e.name == name)
        assert isinstance(event, ChildExited)
        return event


def worker(
    name: str,
    journal: Journal,
    restart: Restart = Restart.PERMANENT,
    shutdown_timeout: float = WAIT,
    **kwargs: Any,
) -> ChildSpec:
    return ChildSpec(
        name,
        lambda: Worker.start(name=name, journal=journal, **kwargs),
        restart,
        shutdown_timeout,
    )


@pytest.fixture
def journal() -> Journal:
    return Journal()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


# --- pure logic ----------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_intensity_allows_max_restarts_within_period() -> None:
    clock = FakeClock()
    intensity = RestartIntensity(2, 10.0, clock)
    assert intensity.record()
    clock.now = 1.0
    assert intensity.record()
    clock.now = 2.0
    assert not intensity.record()


def test_intensity_forgets_restarts_older_than_period() -> None:
    clock = FakeClock()
    intensity = RestartIntensity(2, 10.0, clock)
    assert intensity.record()
    clock.now = 5.0
    assert intensity.record()
    clock.now = 10.5
    assert intensity.record()
    assert intensity.recent == 2


def test_intensity_zero_never_restarts() -> None:
    assert not RestartIntensity(0, 1.0, FakeClock()).record()


def test_should_restart_follows_otp() -> None:
    assert all(should_restart(Restart.PERMANENT, kind) for kind in ExitKind)
    assert not any(should_restart(Restart.TEMPORARY, kind) for kind in ExitKind)
    assert not should_restart(Restart.TRANSIENT, ExitKind.NORMAL)
    assert should_restart(Restart.TRANSIENT, ExitKind.FAILURE)
    assert should_restart(Restart.TRANSIENT, ExitKind.UNKNOWN)


def test_bad_child_spec_says_what_is_valid() -> None:
    with pytest.raises(ValueError, match=r"shutdown_timeout must be a number of seconds > 0"):
        ChildSpec("store", lambda: Worker.start(name="x", journal=Journal()), Restart.PERMANENT, 0)
    with pytest.raises(ValueError, match=r"restart must be one of Restart.PERMANENT"):
        ChildSpec("store", lambda: Worker.start(name="x", journal=Journal()), "always", 1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"RestartIntensity|max_restarts must be an integer"):
        RestartIntensity(-1, 1.0)


def test_duplicate_child_names_are_refused(journal: Journal) -> None:
    with pytest.raises(ValueError, match=r"child name 'a' used twice"):
        Supervisor.start([worker("a", journal), worker("a", journal)])
    assert journal.items() == []


# --- supervisor with real actors -----------------------------------------------------------


def test_children_start_in_order_and_stop_in_reverse(journal: Journal) -> None:
    sup = Supervisor.start([worker(n, journal) for n in ("a", "b", "c")])
    assert journal.items() == ["start:a", "start:b", "start:c"]
    outcome = sup.stop()
    assert outcome == SupervisorExit("supervisor", True, "stopped", ())
    assert journal.items("stop:") == ["stop:c", "stop:b", "stop:a"]
    assert sup.wait(0) == outcome
    with pytest.raises(ChildUnavailable, match="not running"):
        sup.child("a", timeout=0)


def test_unknown_child_name_suggests_the_right_one(journal: Journal) -> None:
    sup = Supervisor.start([worker("store", journal)])
    with pytest.raises(UnknownChild, match=r"no child 'stor'; did you mean 'store'\?"):
        sup.child("stor")
    sup.stop()


def test_permanent_child_crash_gives_new_actor_with_fresh_state(
    journal: Journal, recorder: Recorder
) -> None:
    sup = Supervisor.start([worker("a", journal), worker("b", journal)], listeners=[recorder])
    first = sup.child("a")
    proxy = first.proxy()
    for _ in range(3):
        proxy.increment().get(timeout=WAIT)
    assert proxy.count.get(timeout=WAIT) == 3

    first.tell(Crash())

    restarted = recorder.restarted("a")
    assert restarted.old_urn == first.actor_urn
    assert restarted.ref.actor_urn != first.actor_urn
    exited = recorder.exited("a")
    assert exited.kind is ExitKind.FAILURE
    assert "crashed on purpose" in exited.detail
    assert exited.restarting
    current = sup.child("a", timeout=WAIT)
    assert current.actor_urn == restarted.ref.actor_urn
    assert current.proxy().count.get(timeout=WAIT) == 0
    assert journal.items("start:a") == ["start:a", "start:a"]
    assert sup.stop().ok


def test_permanent_child_stopped_by_someone_else_is_restarted(
    journal: Journal, recorder: Recorder
) -> None:
    sup = Supervisor.start([worker("a", journal)], listeners=[recorder])
    first = sup.child("a")
    assert first.stop(timeout=WAIT)
    assert recorder.exited("a").kind is ExitKind.NORMAL
    assert recorder.restarted("a").old_urn == first.actor_urn
    sup.stop()


def test_temporary_child_crash_is_not_restarted(journal: Journal, recorder: Recorder) -> None:
    sup = Supervisor.start(
        [worker("a", journal), worker("t", journal, Restart.TEMPORARY)], listeners=[recorder]
    )
    sup.child("t").tell(Crash())

    exited = recorder.exited("t")
    assert exited.kind is ExitKind.FAILURE
    assert not exited.restarting
    with pytest.raises(ChildUnavailable, match="temporary child exited"):
        sup.child("t", timeout=0)
    assert not any(isinstance(e, ChildRestarted) for e in recorder.events)
    assert journal.items("start:t") == ["start:t"]
    assert sup.child("a").is_alive()
    outcome = sup.stop()
    assert outcome.ok
    assert journal.items("stop:") == ["stop:a"]


def test_transient_child_restarted_after_crash_only(journal: Journal, recorder: Recorder) -> None:
    sup = Supervisor.start([worker("tr", journal, Restart.TRANSIENT)], listeners=[recorder])
    first = sup.child("tr")
    first.tell(Crash())
    second = recorder.restarted("tr").ref
    assert second.actor_urn != first.actor_urn

    assert second.stop(timeout=WAIT)  # a normal exit, not asked by the supervisor

    recorder.wait_for(lambda e: isinstance(e, ChildExited) and e.urn == second.actor_urn)
    exits = [(e.kind, e.restarting) for e in recorder.events if isinstance(e, ChildExited)]
    assert exits == [(ExitKind.FAILURE, True), (ExitKind.NORMAL, False)]
    with pytest.raises(ChildUnavailable, match="transient child exited"):
        sup.child("tr", timeout=0)
    assert len([e for e in recorder.events if isinstance(e, ChildRestarted)]) == 1
    sup.stop()


def test_intensity_exceeded_stops_all_children_in_reverse_and_reports(
    journal: Journal, recorder: Recorder
) -> None:
    exits: list[SupervisorExit] = []
    sup = Supervisor.start(
        [worker(n, journal) for n in ("a", "b", "c")],
        max_restarts=2,
        period=3600.0,
        listeners=[recorder],
    )
    sup.add_listener(lambda e: exits.append(e) if isinstance(e, SupervisorExit) else None)

    sup.child("b").tell(Crash())
    recorder.restarted("b", nth=1)
    sup.child("b", timeout=WAIT).tell(Crash())
    recorder.restarted("b", nth=2)
    sup.child("b", timeout=WAIT).tell(Crash())

    outcome = sup.wait(timeout=WAIT)
    assert outcome is not None
    assert not outcome.ok
    assert "restart intensity exceeded: more than 2 restarts" in outcome.reason
    assert "'b'" in outcome.reason
    assert exits == [outcome]
    # b died by crashing (on_failure, no on_stop); the others were stopped, last started first.
    assert journal.items("stop:") == ["stop:c", "stop:a"]
    assert sup.ref.actor_stopped.wait(WAIT)
    assert pykka.ActorRegistry.get_all() == []
    assert sup.stop() == outcome  # stopping a supervisor that gave up returns its outcome


def test_crash_in_on_start_at_startup_stops_earlier_children(journal: Journal) -> None:
    specs = [worker("a", journal), worker("b", journal, fail_start=True), worker("c", journal)]
    with pytest.raises(
        SupervisorStartError, match=r"child 'b' failed to start: it died in on_start"
    ):
        Supervisor.start(specs)
    assert journal.items() == ["start:a", "start:b", "stop:a"]
    assert pykka.ActorRegistry.get_all() == []


def test_crash_in_on_start_during_restart_counts_towards_intensity(
    journal: Journal, recorder: Recorder
) -> None:
    starts = 0

    def start_then_fail() -> pykka.ActorRef[Any]:
        nonlocal starts
        starts += 1
        return Worker.start(name="flaky", journal=journal, fail_start=starts > 1)

    sup = Supervisor.start(
        [worker("a", journal), ChildSpec("flaky", start_then_fail, Restart.PERMANENT, WAIT)],
        max_restarts=3,
        period=3600.0,
        listeners=[recorder],
    )
    sup.child("flaky").tell(Crash())

    outcome = sup.wait(timeout=WAIT)
    assert outcome is not None
    assert not outcome.ok
    assert "restart intensity exceeded" in outcome.reason
    assert starts == 4  # the first start, then 3 failed restarts; the 4th restart is refused
    assert not any(isinstance(e, ChildRestarted) for e in recorder.events)
    assert journal.items("stop:") == ["stop:a"]


def test_child_whose_on_start_hangs_fails_the_start(journal: Journal) -> None:
    gate = threading.Event()
    spec = ChildSpec(
        "slow",
        lambda: Worker.start(name="slow", journal=journal, start_gate=gate),
        Restart.PERMANENT,
        WAIT,
        start_timeout=0.2,
    )
    try:
        with pytest.raises(SupervisorStartError, match=r"on_start did not finish within 0.2 s"):
            Supervisor.start([worker("a", journal), spec])
        assert journal.items("stop:") == ["stop:a"]
    finally:
        gate.set()


def test_child_refusing_to_stop_does_not_hang_shutdown(journal: Journal) -> None:
    sup = Supervisor.start(
        [
            worker("a", journal),
            worker("stuck", journal, shutdown_timeout=0.2),
            worker("c", journal),
        ]
    )
    stuck = sup.child("stuck")
    entered, release = threading.Event(), threading.Event()
    stuck.tell(Hold(entered, release))
    assert entered.wait(WAIT)
    try:
        outcome = sup.stop()
        assert outcome.ok
        assert outcome.abandoned == ("stuck",)
        assert journal.items("stop:") == ["stop:c", "stop:a"]
    finally:
        release.set()
    assert stuck.actor_stopped.wait(WAIT)
    assert journal.items("stop:") == ["stop:c", "stop:a", "stop:stuck"]


def test_plain_actor_death_is_found_by_the_periodic_check(recorder: Recorder) -> None:
    sup = Supervisor.start(
        [ChildSpec("plain", PlainCrasher.start, Restart.PERMANENT, WAIT)],
        check_interval=0.05,
        listeners=[recorder],
    )
    first = sup.child("plain")
    first.tell("anything")
    restarted = recorder.restarted("plain")
    assert restarted.old_urn == first.actor_urn
    assert recorder.exited("plain").kind is ExitKind.UNKNOWN
    assert sup.child("plain", timeout=WAIT).actor_urn == restarted.ref.actor_urn
    sup.stop()


def test_child_lookup_waits_for_the_restarted_incarnation(
    journal: Journal, recorder: Recorder
) -> None:
    gate = threading.Event()
    starts = 0

    def start() -> pykka.ActorRef[Any]:
        nonlocal starts
        starts += 1
        return Worker.start(name="a", journal=journal, start_gate=gate if starts > 1 else None)

    sup = Supervisor.start([ChildSpec("a", start, Restart.PERMANENT, WAIT)], listeners=[recorder])
    first = sup.child("a")
    first.tell(Crash())
    recorder.exited("a")  # the supervisor is now blocked in the restart, on the gate
    with pytest.raises(ChildUnavailable, match="being restarted"):
        sup.child("a", timeout=0)
    found: list[pykka.ActorRef[Any]] = []
    looker = threading.Thread(target=lambda: found.append(sup.child("a", timeout=WAIT)))
    looker.start()
    gate.set()
    looker.join(WAIT)
    assert found
    assert found[0].actor_urn == recorder.restarted("a").ref.actor_urn
    sup.stop()


def test_request_stop_does_not_wait(journal: Journal) -> None:
    sup = Supervisor.start([worker("a", journal), worker("b", journal)])
    sup.request_stop()
    outcome = sup.wait(timeout=WAIT)
    assert outcome is not None
    assert outcome.ok
    assert journal.items("stop:") == ["stop:b", "stop:a"]


def test_nested_supervisor_stops_in_tree_order_and_is_restarted_when_it_gives_up(
    journal: Journal, recorder: Recorder
) -> None:
    inner: list[Supervisor] = []

    def start_inner() -> pykka.ActorRef[Any]:
        sup = Supervisor.start(
            [worker("in1", journal), worker("in2", journal)], name="inner", max_restarts=0
        )
        inner.append(sup)
        return sup.ref

    outer = Supervisor.start(
        [
            worker("x", journal),
            ChildSpec("inner", start_inner, Restart.PERMANENT, WAIT),
            worker("y", journal),
        ],
        name="outer",
        listeners=[recorder],
    )
    inner[0].child("in1").tell(Crash())  # max_restarts=0: the inner supervisor gives up at once

    exited = recorder.exited("inner")
    assert exited.kind is ExitKind.FAILURE
    assert "restart intensity exceeded" in exited.detail
    assert recorder.restarted("inner").ref is inner[1].ref
    assert journal.items("stop:") == ["stop:in2"]

    outer.stop()
    assert journal.items("stop:") == ["stop:in2", "stop:y", "stop:in2", "stop:in1", "stop:x"]
