"""NodeActor: one per target node; drives the node through the state machine.

The machine is :mod:`kadeploy_core.machine` (the table) and the plans of
:mod:`kadeploy_core.plans` (what runs, in which state); the retries and fallbacks are
:mod:`kadeploy_core.policy` over the configured variant lists. This actor only feeds events
to the table and starts the next microstep; every decision is taken in its own thread, in the
order its messages arrive. It holds no other thread:

- a microstep runs on one of the daemon's bounded pools (:mod:`kadeployd.runtime`), or inline
  when it neither blocks nor waits; its outcome comes back as a ``_StepResult`` message;
- a step that waits for the node answers :class:`~kadeployd.workflow.context.Again`: a timer of
  the daemon's one timer thread tells ``_Wake`` when it is time to look again (a reboot's
  answer wakes it sooner);
- the variant's timeout is a timer too (``_TimedOut``).

Every attempt has a token and every microstep run an id; a message carrying an old one is
stale and ignored. A timed-out attempt is cancelled (its SSH command cut at once) and the next
attempt starts only when the step still running has left, so two attempts never touch the same
disk together.

Tell up: the node tells the store (state changes, logs, its end) and its DeploymentManager
(its end), and never waits on either.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass
from typing import Any, Protocol

import pykka

from kadeploy_core.errors import KadeployError
from kadeploy_core.machine import NodeEvent, NodeState, next_state
from kadeploy_core.plans import OPERATION_MACROSTEPS, MicrostepPlan, microsteps
from kadeploy_core.policy import Plan, Position
from kadeployd.actors import directory
from kadeployd.actors.directory import Directory
from kadeployd.actors.node_services import NodeServicesImpl
from kadeployd.config import Node, Variant
from kadeployd.pxe.profiles import BootTarget, ChainPartition, LocalBoot
from kadeployd.runtime import TimerHandle, Workers
from kadeployd.store.writes import AppendLog, FinishNode, RecordState, Write, Writes
from kadeployd.workflow.automata import job_macrosteps
from kadeployd.workflow.cancel import CancelToken
from kadeployd.workflow.context import Again, StepCancelled, StepContext, StepFailed
from kadeployd.workflow.custom_run import run_microstep
from kadeployd.workflow.job import DeploymentJob
from kadeployd.workflow.steps import STEPS, Pool

logger = logging.getLogger(__name__)

E = NodeEvent

WORKER_EXIT_GRACE = 30.0
"""Seconds a cancelled step gets to leave before the node moves on without it (a bug)."""


class NodeReports(Protocol):
    """What a NodeActor tells its DeploymentManager (a proxy of it)."""

    def node_finished(self, node: str, state: NodeState) -> object:
        """The node reached ``state``, a final one."""
        ...

    def attempt_failed(self, node: str) -> object:
        """The node failed an attempt (it retries, or falls to another variant, or fails)."""
        ...


@dataclass(frozen=True, slots=True)
class StartNode:
    """Begin the node's plan (told by the DeploymentManager)."""


@dataclass(frozen=True, slots=True)
class AbortNode:
    """Stop now: the node ends ``aborted`` with ``reason``."""

    reason: str


@dataclass(frozen=True, slots=True)
class _StepResult:
    token: int
    run: int
    again: Again | None = None
    error: str | None = None
    cancelled: bool = False


@dataclass(frozen=True, slots=True)
class _Wake:
    token: int
    run: int


@dataclass(frozen=True, slots=True)
class _TimedOut:
    token: int


@dataclass(frozen=True, slots=True)
class _GraceOver:
    token: int


@dataclass
class _Attempt:
    """One attempt of one variant: its microsteps and where it is in them."""

    token: int
    position: Position
    variant: str
    steps: tuple[MicrostepPlan, ...]
    cancel: CancelToken
    timeout: TimerHandle | None = None
    index: int = 0
    run: int = 0
    """Id of the current microstep (its runs share it); results and wakes carry it."""
    context: StepContext | None = None
    first: bool = True
    running: bool = False
    woken: bool = False
    """A wake arrived while the step ran: run it again as soon as it answers Again."""
    poll: TimerHandle | None = None
    then: Position | NodeEvent | None = None
    """Once the cancelled step left: another attempt, or the event that ends the node."""

    @property
    def step(self) -> MicrostepPlan | None:
        return self.steps[self.index] if self.index < len(self.steps) else None

    def stop_timers(self) -> None:
        for timer in (self.timeout, self.poll):
            if timer is not None:
                timer.cancel()


def prod_boot_target(node: Node) -> BootTarget:
    """Where a node boots when it is not (or no longer) being deployed: its prod env."""
    disk, boot = node.settings.disk, node.settings.boot
    if boot.prod_boot == "chain" and disk.prod_partition is not None:
        return ChainPartition(0, disk.prod_partition)
    return LocalBoot()


class NodeActor(pykka.ThreadingActor):
    """Deploys one node. Its message API is :class:`StartNode`, :class:`AbortNode` and
    :meth:`state`."""

    use_daemon_thread = True
    """Thousands of node threads: CPython keeps a shutdown lock per non-daemon thread and scans
    them all at every thread start. The daemon stops its actors itself."""

    def __init__(
        self,
        job: DeploymentJob,
        node: Node,
        services: Directory,
        manager: NodeReports,
        *,
        workers: Workers,
        transfer_slots: threading.Semaphore,
    ) -> None:
        super().__init__()
        self._job = job
        self._node = node
        self._services = services
        self._manager = manager
        self._workers = workers
        self._macrosteps = job_macrosteps(node.settings.automata.macrosteps, job.request)
        """The node's variant lists with the request's options applied (force_steps...)."""
        self._plan = Plan(self._macrosteps, OPERATION_MACROSTEPS[job.operation])
        self._node_services = NodeServicesImpl(job, node, services, transfer_slots, manager)
        self._state = NodeState.PENDING
        self._tokens = 0
        self._runs = 0
        self._attempt: _Attempt | None = None
        self._memory: dict[str, str] = {}
        self._last_error = ""
        self._final_reported = False
        self._outbox: list[Write] = []
        """Store writes made while handling one message, sent together at its end."""
        self._thread_id = 0

    # ------------------------------------------------------------ message API

    def state(self) -> NodeState:
        """The node's current state."""
        return self._state

    def on_start(self) -> None:
        """Remember the actor's thread: writes made in it are sent in one message."""
        self._thread_id = threading.get_ident()

    def on_receive(self, message: Any) -> Any:
        """Orders from the manager; results, wakes and timeouts of the node's own work,
        handled in one of the daemon's node turns (kadeployd/runtime: ``node_turns``)."""
        with self._workers.node_turns:
            try:
                self._handle(message)
            finally:
                self._send_outbox()

    def _handle(self, message: object) -> None:
        match message:
            case StartNode():
                self._begin(self._plan.first())
            case AbortNode(reason):
                if not self._state.final:
                    self._finish(E.ABORT, reason)
            case _StepResult() if self._is_current(message.token, message.run):
                self._step_result(message)
            case _Wake(token, run) if self._is_current(token, run):
                self._wake()
            case _TimedOut(token) if self._is_current(token):
                self._timed_out()
            case _GraceOver(token) if self._is_current(token):
                logger.error(
                    "%s: step did not leave within %ss", self._node.name, WORKER_EXIT_GRACE
                )
                self._move_on()
            case _:
                logger.debug("%s: stale message %r", self._node.name, message)

    # ------------------------------------------------------------ pykka hooks

    def on_stop(self) -> None:
        """Cut any running command and free the SSH connection."""
        self._cancel_attempt("node actor stopped")
        self._node_services.close()
        self._send_outbox()

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        """A bug in this actor (e.g. a transition the table refuses): the node fails, with the
        reason recorded; the deployment goes on."""
        self._cancel_attempt("node actor crashed")
        self._node_services.close()
        if not self._final_reported:
            self._final_reported = True
            reason = f"internal error: {exception_value!r}"
            self._record_end(NodeState.DEPLOY_FAILED, reason, None)
            self._send_outbox()
            self._manager.node_finished(self._node.name, NodeState.DEPLOY_FAILED)

    # ------------------------------------------------------------ attempts

    def _is_current(self, token: int, run: int | None = None) -> bool:
        attempt = self._attempt
        if attempt is None or attempt.token != token:
            return False
        return run is None or attempt.run == run

    def _begin(self, position: Position) -> None:
        variant = self._variant(position)
        self._tokens += 1
        token = self._tokens
        vlan = self._job.request.vlan is not None
        keys = bool(self._job.request.authorized_keys)
        steps = microsteps(
            self._job.operation, position.macrostep, variant.type, vlan=vlan, keys=keys
        )
        attempt = _Attempt(token, position, variant.type, steps, CancelToken())
        self._attempt = attempt
        self._node_services.bind(attempt.cancel)
        seconds = variant.timeout.seconds(self._job.node_count)
        attempt.timeout = self._workers.timers.call_later(
            seconds, lambda: self._tell_self(_TimedOut(token))
        )
        self._log("info", f"{position.macrostep}: {variant.type} attempt {position.attempt}")
        self._next_microstep()

    def _next_microstep(self) -> None:
        attempt = self._attempt
        assert attempt is not None
        step = attempt.step
        if step is None:  # the macrostep succeeded
            attempt.stop_timers()
            self._attempt = None
            after = self._plan.after_success(attempt.position)
            if after is not None:
                self._begin(after)
            else:
                self._finish(E.DONE, "")
            return
        stop = self._job.request.breakpoint
        position = attempt.position
        if stop is not None and stop.stops_before(
            position.macrostep, attempt.variant, attempt.index, step.name
        ):
            self._last_error = f"stopped at breakpoint {stop}"
            self._log("info", f"{self._last_error}, before {step.name}; node left as it is")
            self._finish(E.BREAKPOINT, self._last_error)
            return
        if step.enters is not None:
            self._fire(step.enters, step.name)
        self._runs += 1
        attempt.run = self._runs
        attempt.first, attempt.woken = True, False
        token, run = attempt.token, attempt.run
        attempt.context = StepContext(
            job=self._job,
            node=self._node,
            position=position,
            variant=attempt.variant,
            services=self._node_services,
            cancelled=attempt.cancel,
            log=self._log,
            wake=lambda: self._tell_self(_Wake(token, run)),
            memory=self._memory,
        )
        self._run_step(attempt)

    def _run_step(self, attempt: _Attempt) -> None:
        step, context = attempt.step, attempt.context
        assert step is not None and context is not None
        runner = STEPS[step.name]
        first, attempt.first = attempt.first, False
        attempt.running = True
        token, run = attempt.token, attempt.run

        if runner.pool == Pool.INLINE:  # neither blocks nor waits: no round trip
            self._step_result(_execute(context, step.name, first, token, run))
            return

        def work() -> None:
            self._tell_self(_execute(context, step.name, first, token, run))

        pool = self._workers.ssh if runner.pool == Pool.SSH else self._workers.files
        pool.submit(work)

    def _step_result(self, result: _StepResult) -> None:
        attempt = self._attempt
        assert attempt is not None and attempt.step is not None
        attempt.running = False
        if attempt.then is not None:  # the attempt was cancelled (timeout): the step left
            self._move_on()
        elif result.cancelled:
            return  # aborted: the node's end is already recorded
        elif result.error is not None:
            self._failed(attempt, f"{attempt.step.name}: {result.error}")
        elif result.again is not None:
            if attempt.woken:
                attempt.woken = False
                self._run_step(attempt)
            else:
                token, run = attempt.token, attempt.run
                attempt.poll = self._workers.timers.call_later(
                    result.again.after, lambda: self._tell_self(_Wake(token, run))
                )
        else:
            if attempt.step.reached is not None:
                self._fire(attempt.step.reached, attempt.step.name)
            attempt.index += 1
            self._next_microstep()

    def _wake(self) -> None:
        attempt = self._attempt
        assert attempt is not None
        if attempt.running:
            attempt.woken = True
            return
        if attempt.poll is not None:
            attempt.poll.cancel()
            attempt.poll = None
        self._run_step(attempt)

    def _failed(self, attempt: _Attempt, error: str) -> None:
        self._last_error = error
        self._log("stderr", error)
        self._fire(E.STEP_FAILED)
        self._manager.attempt_failed(self._node.name)
        attempt.then = self._plan.after_failure(attempt.position) or E.FAIL
        attempt.stop_timers()
        self._move_on()

    def _timed_out(self) -> None:
        attempt = self._attempt
        assert attempt is not None
        variant = self._variant(attempt.position)
        seconds = variant.timeout.seconds(self._job.node_count)
        where = attempt.step.name if attempt.step is not None else attempt.variant
        self._last_error = f"{where}: timed out after {seconds:g} s"
        if attempt.context is not None and attempt.context.waiting:
            self._last_error += f" ({attempt.context.waiting})"
        self._log("stderr", self._last_error)
        self._fire(E.TIMED_OUT)
        self._manager.attempt_failed(self._node.name)
        attempt.then = self._plan.after_failure(attempt.position) or E.FAIL
        self._cancel_attempt(f"{attempt.position.macrostep} timeout")
        if not attempt.running:
            self._move_on()
            return
        token = attempt.token
        self._workers.timers.call_later(
            WORKER_EXIT_GRACE, lambda: self._tell_self(_GraceOver(token))
        )

    def _move_on(self) -> None:
        """The attempt is over and nothing of it runs: the next attempt, or the end."""
        attempt = self._attempt
        assert attempt is not None and attempt.then is not None
        self._attempt = None
        if isinstance(attempt.then, Position):
            self._begin(attempt.then)
        else:
            self._finish(attempt.then, self._last_error, attempt.position)

    def _cancel_attempt(self, reason: str) -> None:
        attempt = self._attempt
        if attempt is not None:
            attempt.stop_timers()
            attempt.cancel.cancel(reason)

    # ------------------------------------------------------------ the machine

    def _fire(self, event: NodeEvent, step: str = "") -> None:
        """Move the node by ``event`` (InvalidTransition, a bug, if the table has no such
        row: the actor fails and so does the node); record the state it enters."""
        state = next_state(self._state, event)
        if event in (E.STEP_FAILED, E.TIMED_OUT):
            return  # the state does not change; the failure is in the log
        self._state = state
        attempt = self._attempt
        assert attempt is not None
        position = attempt.position
        write = RecordState(
            self._job.deployment_id,
            self._node.name,
            state.value,
            macrostep=position.macrostep.value,
            variant=attempt.variant,
            attempt=position.attempt,
            message=step,
        )
        self._write(write)

    def _finish(self, event: NodeEvent, message: str, position: Position | None = None) -> None:
        state = next_state(self._state, event)
        failed_at = position or (self._attempt.position if self._attempt else None)
        self._cancel_attempt(message or str(state))
        self._attempt = None
        self._state = state
        if state not in (NodeState.DEPLOYED, NodeState.BREAKPOINTED):  # left as it is
            node = self._node
            self._workers.files.submit(lambda: _leave_pxe_sane(self._services, node))
        step = failed_at.macrostep.value if failed_at and state == NodeState.DEPLOY_FAILED else None
        self._record_end(state, "" if state == NodeState.DEPLOYED else message, step)
        self._send_outbox()
        self._final_reported = True
        self._manager.node_finished(self._node.name, state)
        self.actor_ref.stop(block=False)

    # ------------------------------------------------------------ helpers

    def _variant(self, position: Position) -> Variant:
        return self._macrosteps.variants(position.macrostep)[position.variant_index]

    def _record_end(self, state: NodeState, message: str, error_step: str | None) -> None:
        write = FinishNode(
            self._job.deployment_id, self._node.name, state.value, message, error_step
        )
        self._write(write)

    def _write(self, write: Write) -> None:
        """Record ``write``: with the others of this message if in the actor's thread (a step
        running on a pool logs from its own thread: sent at once)."""
        if threading.get_ident() == self._thread_id:
            self._outbox.append(write)
        else:
            directory.send(self._services, directory.STORE, write)

    def _send_outbox(self) -> None:
        if self._outbox:
            writes, self._outbox = tuple(self._outbox), []
            message = writes[0] if len(writes) == 1 else Writes(writes)
            directory.send(self._services, directory.STORE, message)

    def _tell_self(self, message: object) -> None:
        # Once the node is finished, late timer or worker messages have nowhere to go.
        with contextlib.suppress(pykka.ActorDeadError):
            self.actor_ref.tell(message)

    def _log(self, stream: str, text: str) -> None:
        write = AppendLog(self._job.deployment_id, self._node.name, stream, text)
        self._write(write)


def _execute(context: StepContext, name: str, first: bool, token: int, run: int) -> _StepResult:
    """Run microstep ``name`` once (on a pool, or inline) and say how it went."""
    try:
        context.check_cancelled()
        again = run_microstep(context, name, STEPS[name], first)
        return _StepResult(token, run, again=again)
    except StepCancelled as exc:
        return _StepResult(token, run, error=str(exc), cancelled=True)
    except (StepFailed, KadeployError) as exc:
        return _StepResult(token, run, error=str(exc))
    except Exception as exc:  # a bug in a step: fail the attempt, keep the daemon
        logger.exception("%s: microstep %s crashed", context.node.name, name)
        return _StepResult(token, run, error=f"internal error in {name}: {exc!r}")


def _leave_pxe_sane(services: Directory, node: Node) -> None:
    """Point a node that is no longer deployed back at its prod env."""
    try:
        directory.call(
            services, directory.PXE, lambda pxe: pxe.set_profile(node.mac, prod_boot_target(node))
        )
    except (KadeployError, pykka.Timeout) as exc:
        logger.warning("%s: could not reset the PXE profile: %s", node.name, exc)
