"""NodeActor: one per target node; walks the workflow with retries, timeouts and fallbacks.

The actor's own thread only makes decisions; the microsteps of the current variant attempt run
in a worker thread it owns. Every attempt gets a token number and a cancel token: the worker
reports each state change and its end with ``tell``, a timer tells the variant's timeout, and
messages carrying an old token number are stale and ignored. A timed-out or aborted attempt is
cancelled (its SSH command cut at once) and the next attempt starts only when the old worker
has left, so two attempts never touch the same disk together.

Ask down, tell up: the node asks the store and PXE services with timeouts and tells its
DeploymentManager when it reaches a final state; it never waits on the manager.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass
from typing import Any

import pykka

from kadeployd.actors import directory
from kadeployd.actors.directory import Directory
from kadeployd.actors.node_services import NodeServicesImpl
from kadeployd.config import Node
from kadeployd.errors import KadeployError
from kadeployd.pxe.profiles import BootTarget, ChainPartition, LocalBoot
from kadeployd.workflow.cancel import CancelToken
from kadeployd.workflow.context import StepCancelled, StepContext, StepFailed
from kadeployd.workflow.custom_run import run_microstep
from kadeployd.workflow.job import DeploymentJob
from kadeployd.workflow.operations import microsteps, plan_for
from kadeployd.workflow.policy import Position
from kadeployd.workflow.states import NodeState, check_transition

logger = logging.getLogger(__name__)

WORKER_EXIT_GRACE = 30.0
"""Seconds a cancelled worker gets to leave before the node moves on without it (a bug)."""


@dataclass(frozen=True, slots=True)
class _StateChanged:
    token: int
    state: NodeState
    step: str


@dataclass(frozen=True, slots=True)
class _WorkerDone:
    token: int
    error: str | None
    step: str
    cancelled: bool
    breakpoint: bool = False
    """The node reached the deployment's breakpoint, before ``step``."""


@dataclass(frozen=True, slots=True)
class _TimedOut:
    token: int


@dataclass(frozen=True, slots=True)
class _GraceOver:
    token: int


@dataclass
class _Attempt:
    token: int
    position: Position
    variant: str
    cancel: CancelToken
    timer: threading.Timer
    step: str = ""
    then: Position | NodeState | None = None
    """What to do once the cancelled worker left: another attempt, or a final state."""


def prod_boot_target(node: Node) -> BootTarget:
    """Where a node boots when it is not (or no longer) being deployed: its prod env."""
    disk, boot = node.settings.disk, node.settings.boot
    if boot.prod_boot == "chain" and disk.prod_partition is not None:
        return ChainPartition(0, disk.prod_partition)
    return LocalBoot()


class NodeActor(pykka.ThreadingActor):
    """Deploys one node. Public methods are its message API (call them through a proxy)."""

    def __init__(
        self,
        job: DeploymentJob,
        node: Node,
        services: Directory,
        manager: Any,
        transfer_slots: threading.Semaphore,
    ) -> None:
        super().__init__()
        self._job = job
        self._node = node
        self._services = services
        self._manager = manager
        self._plan = plan_for(job, node)
        self._node_services = NodeServicesImpl(job, node, services, transfer_slots, manager)
        self._state = NodeState.PENDING
        self._tokens = 0
        self._attempt: _Attempt | None = None
        self._memory: dict[str, str] = {}
        self._last_error = ""
        self._final_reported = False

    # ------------------------------------------------------------ message API

    def start_deployment(self) -> None:
        """Begin with the first variant of the first macrostep."""
        self._begin(self._plan.first())

    def abort(self, reason: str) -> None:
        """Stop now: the node ends ``aborted`` with ``reason``, its PXE back to the prod env."""
        if self._state.final:
            return
        self._finish(NodeState.ABORTED, reason)

    def state(self) -> NodeState:
        """The node's current state."""
        return self._state

    # ------------------------------------------------------------ pykka hooks

    def on_receive(self, message: Any) -> Any:
        """Messages from the worker thread and the timers."""
        match message:
            case _StateChanged(token, state, step) if self._is_current(token):
                self._enter(state, step)
            case _WorkerDone() if self._is_current(message.token):
                self._worker_done(message)
            case _TimedOut(token) if self._is_current(token):
                self._timed_out()
            case _GraceOver(token) if self._is_current(token):
                logger.error(
                    "%s: worker did not leave within %ss", self._node.name, WORKER_EXIT_GRACE
                )
                self._worker_done(_WorkerDone(token, "worker did not stop", "", True))
            case _:
                logger.debug("%s: stale message %r", self._node.name, message)

    def on_stop(self) -> None:
        """Cut any running command and free the SSH connection."""
        self._cancel_attempt("node actor stopped")
        self._node_services.close()

    def on_failure(self, *_exc: object) -> None:
        """A bug in this actor: the node fails, the deployment goes on."""
        self._cancel_attempt("node actor crashed")
        self._node_services.close()
        if not self._final_reported:
            self._final_reported = True
            self._manager.node_finished(self._node.name, NodeState.DEPLOY_FAILED)

    # ------------------------------------------------------------ attempts

    def _is_current(self, token: int) -> bool:
        return self._attempt is not None and self._attempt.token == token

    def _begin(self, position: Position) -> None:
        variant = self._plan.variant(position)
        self._tokens += 1
        token = self._tokens
        cancel = CancelToken()
        seconds = variant.timeout.seconds(self._job.node_count)
        timer = threading.Timer(seconds, self._tell_self, args=(_TimedOut(token),))
        timer.daemon = True
        self._attempt = _Attempt(token, position, variant.type, cancel, timer)
        self._log("info", f"{position.macrostep}: {variant.type} attempt {position.attempt}")
        worker = threading.Thread(
            target=self._work,
            args=(token, position, variant.type, cancel),
            name=f"node-{self._node.name}-{token}",
            daemon=True,
        )
        timer.start()
        worker.start()

    def _work(self, token: int, position: Position, variant: str, cancel: CancelToken) -> None:
        """Run the variant's microsteps in the worker thread; report the end."""
        self._node_services.bind(cancel)
        step = ""
        context = StepContext(
            job=self._job,
            node=self._node,
            position=position,
            variant=variant,
            services=self._node_services,
            cancelled=cancel,
            set_state=lambda state: self._tell_self(_StateChanged(token, state, step)),
            log=self._log,
            memory=self._memory,
        )
        error: str | None = None
        try:
            stop = self._job.request.breakpoint
            chosen = microsteps(self._job.operation, position.macrostep, variant)
            for index, microstep in enumerate(chosen):
                step = microstep.name
                context.check_cancelled()
                if stop is not None and stop.stops_before(position.macrostep, variant, index, step):
                    self._tell_self(_WorkerDone(token, None, step, False, breakpoint=True))
                    return
                self._tell_self(_StateChanged(token, microstep.state, step))
                run_microstep(context, microstep)
        except StepCancelled as exc:
            self._tell_self(_WorkerDone(token, str(exc), step, cancelled=True))
            return
        except (StepFailed, KadeployError) as exc:
            error = str(exc)
        except Exception as exc:  # a bug in a step: fail the attempt, keep the daemon
            logger.exception("%s: microstep %s crashed", self._node.name, step)
            error = f"internal error in {step}: {exc!r}"
        self._tell_self(_WorkerDone(token, error, step, cancelled=False))

    def _enter(self, state: NodeState, step: str) -> None:
        assert self._attempt is not None
        self._attempt.step = step
        if state == self._state and not step:
            return
        check_transition(self._state, state)
        self._state = state
        position, variant = self._attempt.position, self._attempt.variant
        directory.call(
            self._services,
            directory.STORE,
            lambda store: store.record_state(
                self._job.deployment_id,
                self._node.name,
                state.value,
                macrostep=position.macrostep.value,
                variant=variant,
                attempt=position.attempt,
                message=step,
            ),
        )

    def _worker_done(self, done: _WorkerDone) -> None:
        attempt = self._attempt
        assert attempt is not None
        attempt.timer.cancel()
        if done.cancelled and attempt.then is None:
            return  # aborted: the final state is already recorded
        if attempt.then is not None:
            then = attempt.then
        elif done.breakpoint:
            then = NodeState.BREAKPOINTED
            self._last_error = f"stopped at breakpoint {self._job.request.breakpoint}"
            self._log("info", f"{self._last_error}, before {done.step}; node left as it is")
        elif done.error is None:
            then = self._plan.after_success(attempt.position) or NodeState.DEPLOYED
        else:
            self._last_error = f"{done.step}: {done.error}"
            self._log("stderr", self._last_error)
            then = self._plan.after_failure(attempt.position) or NodeState.DEPLOY_FAILED
        self._attempt = None
        if isinstance(then, Position):
            self._begin(then)
        else:
            message = "" if then == NodeState.DEPLOYED else self._last_error
            self._finish(then, message, attempt.position)

    def _timed_out(self) -> None:
        attempt = self._attempt
        assert attempt is not None
        variant = self._plan.variant(attempt.position)
        seconds = variant.timeout.seconds(self._job.node_count)
        self._last_error = f"{attempt.step or attempt.variant}: timed out after {seconds:g} s"
        self._log("stderr", self._last_error)
        attempt.then = self._plan.after_failure(attempt.position) or NodeState.DEPLOY_FAILED
        self._cancel_attempt(f"{attempt.position.macrostep} timeout")

    def _cancel_attempt(self, reason: str) -> None:
        attempt = self._attempt
        if attempt is None:
            return
        attempt.timer.cancel()
        attempt.cancel.cancel(reason)
        grace = threading.Timer(
            WORKER_EXIT_GRACE, self._tell_self, args=(_GraceOver(attempt.token),)
        )
        grace.daemon = True
        grace.start()

    # ------------------------------------------------------------ the end

    def _finish(self, state: NodeState, message: str, position: Position | None = None) -> None:
        check_transition(self._state, state)
        failed_position = position or (self._attempt.position if self._attempt else None)
        self._cancel_attempt(message or str(state))
        if self._attempt is not None and self._attempt.then is None:
            self._attempt = None
        self._state = state
        if state not in (NodeState.DEPLOYED, NodeState.BREAKPOINTED):  # left as it is
            self._leave_pxe_sane()
        step = failed_position.macrostep.value if failed_position else None
        directory.call(
            self._services,
            directory.STORE,
            lambda store: store.finish_node(
                self._job.deployment_id,
                self._node.name,
                state.value,
                message,
                error_step=step if state == NodeState.DEPLOY_FAILED else None,
            ),
        )
        self._final_reported = True
        self._manager.node_finished(self._node.name, state)
        self.actor_ref.stop(block=False)

    def _leave_pxe_sane(self) -> None:
        try:
            directory.call(
                self._services,
                directory.PXE,
                lambda pxe: pxe.set_profile(self._node.mac, prod_boot_target(self._node)),
            )
        except (KadeployError, pykka.Timeout) as exc:
            logger.warning("%s: could not reset the PXE profile: %s", self._node.name, exc)

    # ------------------------------------------------------------ helpers

    def _tell_self(self, message: object) -> None:
        # Once the node is finished, late timer or worker messages have nowhere to go.
        with contextlib.suppress(pykka.ActorDeadError):
            self.actor_ref.tell(message)

    def _log(self, stream: str, text: str) -> None:
        directory.tell(
            self._services,
            directory.STORE,
            lambda store: store.append_log(self._job.deployment_id, self._node.name, stream, text),
        )
