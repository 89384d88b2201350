"""RebootActor: runs nodes' power and reboot commands, a bounded number at a time.

Message API (proxy calls; none of them waits for a command)::

    reboot = RebootActor.start(window=10, window_sleep=0).proxy()
    reboot.reboot("dep1/node-3/1", node, RebootLevel.SOFT, reply_to)   # queued
    reboot.power("p7", node, PowerAction.STATUS, reply_to)             # queued
    reboot.cancel("dep1/node-3/1").get(timeout=5)                      # True if it was known
    reboot.activity().get(timeout=5)                                   # queued/running ids

Each request gets exactly one :class:`RebootResult` through ``reply_to`` (a callable that must
not block: e.g. one that ``tell``s the node actor). When the actor stops or crashes, pending
requests are answered with ``stopped=True``: the requester should submit them again to the
restarted actor. Commands run in worker threads
that this actor owns, never in its own thread, so its inbox is always served; a worker calls
``reply_to`` itself and then tells the actor the slot is free. The pause between batches
(``window_sleep``) is a timer that tells the actor when it is over. On stop or failure the
actor answers every queued request as cancelled and kills every running command.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import pykka

from kadeployd.adapters.commands import DEFAULT_KILL_GRACE, RunningCommand
from kadeployd.config.model import Node
from kadeployd.reboot.errors import DuplicateRequest
from kadeployd.reboot.jobs import (
    Operation,
    PowerRequest,
    RebootResult,
    ReplyTo,
    label,
    not_run,
    plan,
    result_of,
)
from kadeployd.reboot.levels import PowerAction, RebootLevel
from kadeployd.reboot.window import RebootWindow
from kadeployd.supervision import SupervisedActor

logger = logging.getLogger(__name__)

_STOPPED = "the reboot service stopped"
_JOIN_MARGIN = 2.0
"""Seconds beyond the kill grace that on_stop waits for each worker thread."""


@dataclass(frozen=True, slots=True)
class RebootActivity:
    """What the RebootActor is doing: for status pages and tests."""

    queued: tuple[str, ...]
    running: tuple[str, ...]
    sleeping: bool
    """True while the pause between two batches runs."""


@dataclass(frozen=True, slots=True)
class _Dispatch:
    """Start what the window allows (sent to itself, so a burst of requests forms one batch)."""


@dataclass(frozen=True, slots=True)
class _CommandDone:
    job: _Job


@dataclass(frozen=True, slots=True)
class _SleepOver:
    pass


@dataclass(eq=False)
class _Job:
    """One queued or running request. ``result`` is set by its worker thread when it ends."""

    request: PowerRequest
    command: RunningCommand
    reply_to: ReplyTo
    thread: threading.Thread | None = None
    cancel_reason: str = ""
    stopped: bool = False
    """Set when the actor stops while this job runs."""
    result: RebootResult | None = None
    _answered: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, result: RebootResult) -> None:
        """Deliver ``result`` unless this job was already answered (exactly one reply)."""
        with self._lock:
            if self._answered:
                return
            self._answered = True
        _deliver(self.reply_to, result)


def _deliver(reply_to: ReplyTo, result: RebootResult) -> None:
    """Hand ``result`` to its requester; a requester that is gone is logged, not fatal."""
    try:
        reply_to(result)
    except Exception:
        logger.exception(
            "request %s (node %s): the result could not be delivered: %s",
            result.request_id,
            result.node.name,
            result.message,
        )


class RebootActor(SupervisedActor):
    """Power and reboot commands with a concurrency window; see the module docstring."""

    def __init__(
        self, window: int, window_sleep: float, kill_grace: float = DEFAULT_KILL_GRACE
    ) -> None:
        super().__init__()
        self._window: RebootWindow[_Job] = RebootWindow(window, window_sleep)
        self._kill_grace = kill_grace
        self._jobs: dict[str, _Job] = {}
        self._dispatch_pending = False
        self._timer: threading.Timer | None = None

    # ------------------------------------------------------------ message API

    def reboot(self, request_id: str, node: Node, level: RebootLevel, reply_to: ReplyTo) -> None:
        """Queue a reboot of ``node`` at ``level`` (or the next configured one)."""
        self._submit(request_id, node, RebootLevel(level), reply_to)

    def power(self, request_id: str, node: Node, action: PowerAction, reply_to: ReplyTo) -> None:
        """Queue a power on, off or status of ``node``."""
        self._submit(request_id, node, PowerAction(action), reply_to)

    def cancel(self, request_id: str) -> bool:
        """Drop a queued request or kill a running one; False when the id is not known.

        The requester still gets its one result, with ``cancelled`` set.
        """
        job = self._jobs.get(request_id)
        if job is None:
            return False
        if self._window.remove_queued(request_id) is not None:
            del self._jobs[request_id]
            logger.info(
                "request %s (node %s): cancelled while queued", request_id, job.request.node.name
            )
            self._answer_unrun(job, "cancelled before it started")
            return True
        logger.info(
            "request %s (node %s): cancelling the running command",
            request_id,
            job.request.node.name,
        )
        return job.command.cancel()

    def activity(self) -> RebootActivity:
        """Queued and running request ids, and whether a between-batch pause runs."""
        return RebootActivity(
            queued=self._window.queued,
            running=tuple(sorted(self._window.running)),
            sleeping=self._window.sleeping,
        )

    # ------------------------------------------------------------ internal messages

    def on_receive(self, message: Any) -> Any:
        match message:
            case _Dispatch():
                self._dispatch_pending = False
                self._dispatch()
            case _CommandDone(job):
                # Bookkeeping before the answer, so that the requester may reuse the id at once.
                request_id = job.request.request_id
                self._jobs.pop(request_id, None)
                if self._window.finished(request_id):
                    self._start_sleep()
                assert job.result is not None
                job.answer(job.result)
                self._dispatch()
            case _SleepOver():
                self._timer = None
                self._window.sleep_over()
                self._dispatch()
            case _:
                return super().on_receive(message)
        return None

    def on_stop(self) -> None:
        self._shut_down()
        super().on_stop()

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._shut_down()
        super().on_failure(exception_type, exception_value, traceback)

    # ------------------------------------------------------------ internals

    def _submit(self, request_id: str, node: Node, requested: Operation, reply_to: ReplyTo) -> None:
        if request_id in self._jobs:
            logger.error("request %s (node %s): id already in use; refused", request_id, node.name)
            raise DuplicateRequest(f"request {request_id!r} is already queued or running")
        planned = plan(request_id, node, requested)
        if isinstance(planned, RebootResult):
            logger.warning("request %s (node %s): %s", request_id, node.name, planned.message)
            _deliver(reply_to, planned)
            return
        command = RunningCommand(
            planned.argv, planned.timeout, kill_grace=self._kill_grace, shown=planned.shown
        )
        job = _Job(planned, command, reply_to)
        self._jobs[request_id] = job
        self._window.submit(request_id, job)
        logger.debug("request %s (node %s): %s queued", request_id, node.name, label(requested))
        if not self._dispatch_pending:
            self._dispatch_pending = True
            self.actor_ref.tell(_Dispatch())

    def _dispatch(self) -> None:
        for request_id, job in self._window.take_startable():
            request = job.request
            logger.info(
                "request %s (node %s): %s (%s): %s",
                request_id,
                request.node.name,
                label(request.operation),
                request.template_name,
                request.shown,
            )
            job.thread = threading.Thread(
                target=self._work, args=(job,), name=f"reboot-{request_id}", daemon=True
            )
            job.thread.start()

    def _work(self, job: _Job) -> None:
        """Worker thread: run the command, answer the requester, free the slot."""
        request = job.request
        try:
            outcome = job.command.run()
            result = result_of(request, outcome, job.cancel_reason)
            if job.stopped and outcome.cancelled:
                result = dataclasses.replace(result, stopped=True)
        except Exception as err:  # a bug, but the requester must still get its answer
            logger.exception("request %s: running the command failed", request.request_id)
            result = not_run(
                request.request_id, request.node, request.requested, f"internal error: {err}"
            )
        log = logger.info if result.ok else logger.warning
        log("request %s (node %s): %s", request.request_id, request.node.name, result.message)
        job.result = result
        try:
            self.actor_ref.tell(_CommandDone(job))
        except pykka.ActorDeadError:  # stopping: nothing left to schedule; answer from here
            job.answer(result)

    def _start_sleep(self) -> None:
        timer = threading.Timer(self._window.sleep, self._sleep_over)
        timer.daemon = True
        timer.name = "reboot-window-sleep"
        self._timer = timer
        timer.start()

    def _sleep_over(self) -> None:
        with contextlib.suppress(pykka.ActorDeadError):
            self.actor_ref.tell(_SleepOver())

    def _answer_unrun(self, job: _Job, why: str, stopped: bool = False) -> None:
        request = job.request
        message = f"{label(request.requested)} {why}"
        result = not_run(
            request.request_id,
            request.node,
            request.requested,
            message,
            cancelled=True,
            stopped=stopped,
        )
        job.answer(result)

    def _shut_down(self) -> None:
        """Answer queued requests, kill running commands and wait (bounded) for their threads."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for _request_id, job in self._window.drain():
            self._answer_unrun(job, f"cancelled: {_STOPPED}", stopped=True)
        running = [job for job in self._jobs.values() if job.thread is not None]
        for job in running:
            job.cancel_reason = _STOPPED
            job.stopped = True
            job.command.cancel()
        for job in running:
            assert job.thread is not None
            job.thread.join(self._kill_grace + _JOIN_MARGIN)
            if job.thread.is_alive():  # its worker answers when it ends
                logger.error(
                    "request %s: command still running after stop: %s",
                    job.request.request_id,
                    job.request.shown,
                )
            elif job.result is not None:  # ended, but its _CommandDone will never be handled
                job.answer(job.result)
        self._jobs.clear()
