"""DeploymentManager: one per deployment; starts its node actors and decides the outcome.

It prepares what all nodes share (the environment's kernel and initrd, published once on the
TFTP server, read on the daemon's file-work pool so the manager stays responsive), starts one
NodeActor per node, counts their final states, and ends the deployment when every node
finished, as soon as ``min_nodes`` are deployed (the stragglers are aborted with "min nodes
reached"), or as soon as ``min_nodes`` can no longer be reached.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import pykka

from kadeploy_core.errors import KadeployError
from kadeploy_core.machine import NodeState
from kadeployd.actors import directory
from kadeployd.actors.chain_rounds import ChainRounds
from kadeployd.actors.chain_transfer import ChainTransfer
from kadeployd.actors.directory import Directory
from kadeployd.actors.node import AbortNode, NodeActor, StartNode
from kadeployd.chain import ChainResult, Hop
from kadeployd.config import Config
from kadeployd.environment import ImageKind
from kadeployd.environment.bootfiles import BootFileLimits, publish_boot_files
from kadeployd.environment.image import checks_itself
from kadeployd.runtime import TimerHandle, Workers
from kadeployd.store.records import LogStream
from kadeployd.store.writes import AppendLog, FinishDeployment, FinishNode
from kadeployd.supervision import SupervisedActor
from kadeployd.workflow.job import BootFilesRef, DeploymentJob, NoEnvironment
from kadeployd.workflow.outcome import Tally, Verdict

logger = logging.getLogger(__name__)

STOP_TIMEOUT = 10.0
MIN_NODES_REACHED = "min nodes reached"
CHAIN_ROUND_STARTED = "chain round started"
"""Opens the log line written to every node of a chain round when the server starts streaming
(its time is when the round started: every relay of the round listened)."""
CHAIN_WAITED = "chain round gathered: waited"
"""Opens the log line telling how long a node's relay listened before its round started
(time spent waiting for the other nodes, not transferring)."""
CHAIN_ROUND_ENDED = "chain round ended"
"""Opens the log line written to every node of the round when the stream's acknowledgement
came back: every node of the chain held the whole stream and its writer had finished."""


@dataclass(frozen=True, slots=True)
class DeploymentOutcome:
    """How a deployment ended."""

    deployment_id: str
    verdict: Verdict
    reason: str
    nodes: dict[str, NodeState]


class ManagerReports(Protocol):
    """What a DeploymentManager tells its node supervisor (tell up: none of these waits).

    From these reports alone the supervisor knows what to clear if the manager crashes: the
    actors to stop and the nodes still held. It never asks a crashed manager anything."""

    def children(self, deployment_id: str, refs: tuple[pykka.ActorRef[Any], ...]) -> None:
        """The manager started these actors (its NodeActors, a round's ChainTransfer)."""
        ...

    def node_released(self, deployment_id: str, node: str) -> None:
        """``node`` reached its final state: the deployment no longer holds it."""
        ...

    def finished(self, outcome: DeploymentOutcome) -> None:
        """The deployment ended. Told before its record is closed, so that whoever reads the
        record closed finds its nodes free."""
        ...


@dataclass(frozen=True, slots=True)
class ManagerCensus:
    """What a running manager tells a restarted node supervisor about its deployment."""

    job: DeploymentJob
    config: Config
    finished: frozenset[str]
    """Nodes that reached a final state."""
    children: tuple[pykka.ActorRef[Any], ...]
    """Its live NodeActors and ChainTransfer."""


@dataclass(frozen=True, slots=True)
class _GatherOver:
    """The forming chain round waited its gather window: start it with the ready nodes."""


@dataclass(frozen=True, slots=True)
class _Prepared:
    boot_files: BootFilesRef | None
    error: str | None
    checks_itself: bool = False


class DeploymentManager(SupervisedActor):
    """Runs one deployment. Public methods are its message API.

    Linked to its NodeSupervisor (kadeployd/supervision/links.py): an exception in a told
    message ends it with a failure report, and the supervisor clears what it leaves."""

    def __init__(
        self,
        job: DeploymentJob,
        config: Config,
        services: Directory,
        workers: Workers,
        reports: ManagerReports,
    ) -> None:
        super().__init__()
        self._job = job
        self._config = config
        self._services = services
        self._workers = workers
        self._reports = reports
        self._tally = Tally(job.nodes, job.request.min_nodes)
        self._nodes: dict[str, pykka.ActorRef[Any]] = {}
        self._decided: tuple[Verdict, str] | None = None
        self._slots = threading.BoundedSemaphore(config.daemon.direct_transfer_window)
        self._rounds = ChainRounds(job.nodes)
        self._chain: pykka.ActorRef[Any] | None = None
        self._gather_timer: TimerHandle | None = None
        self._round_started = 0.0
        self._started = time.monotonic()

    # ------------------------------------------------------------ message API

    def on_start(self) -> None:
        """Prepare the boot files on the file-work pool; the nodes start when they are ready."""
        self._workers.files.submit(self._prepare)

    def node_finished(self, node: str, state: NodeState) -> None:
        """A node actor reached a final state (told by the node)."""
        self._tally.record(node, state)
        self._reports.node_released(self._job.deployment_id, node)
        self._nodes.pop(node, None)
        self._rounds.leave(node)
        self._decide()
        self._maybe_start_round()

    def cancel(self, reason: str = "cancelled by user") -> None:
        """Abort every node still working; the deployment ends ``aborted``."""
        if self._decided is None:
            self._decided = (Verdict.ABORTED, reason)
        if self._chain is not None:
            with contextlib.suppress(pykka.ActorDeadError):
                self._chain.proxy().cancel()
        self._abort_all(reason)
        self._maybe_end()

    def chain_secret(self, node: str) -> bytes:
        """The secret of the chain round now forming (asked by a node before its relay starts:
        the round now waits for that relay)."""
        return self._rounds.secret_for(node)

    def chain_ready(self, node: str, hop: Hop, reply: Callable[[str | None], None]) -> None:
        """A node's relay listens at ``hop``; ``reply(None | why it failed)`` after the round."""
        self._rounds.ready(node, hop, reply)
        self._maybe_start_round()

    def attempt_failed(self, node: str) -> None:
        """A node failed an attempt (told by the node): chain rounds no longer wait for it."""
        self._rounds.attempt_failed(node)
        self._maybe_start_round()

    def chain_leave(self, node: str) -> None:
        """A node's attempt ended before its round started (timeout, abort)."""
        self._rounds.leave(node)
        self._maybe_start_round()

    def chain_done(self, result: ChainResult | None, error: str | None) -> None:
        """The round's ChainTransfer finished: tell each node its verdict."""
        self._chain = None
        self._log_round(CHAIN_ROUND_ENDED, self._round_summary(result, error))
        self._rounds.finish(result, error)
        self._maybe_start_round()

    @property
    def job(self) -> DeploymentJob:
        """What this deployment was asked to do."""
        return self._job

    def status(self) -> dict[str, str]:
        """Final states known so far, by node."""
        return {node: state.value for node, state in self._tally.finished.items()}

    def census(self) -> ManagerCensus:
        """The deployment, its finished nodes and its live children (asked by a restarted
        NodeSupervisor)."""
        chain = (self._chain,) if self._chain is not None else ()
        return ManagerCensus(
            self._job,
            self._config,
            frozenset(self._tally.finished),
            tuple(self._nodes.values()) + chain,
        )

    def on_receive(self, message: Any) -> Any:
        """The prepared boot files (worker thread); the end of a gather window (timer)."""
        match message:
            case _Prepared():
                self._prepared(message)
            case _GatherOver():
                self._gather_timer = None
                self._maybe_start_round(window_over=True)

    def on_stop(self) -> None:
        """Stop node actors still alive (shutdown)."""
        if self._gather_timer is not None:
            self._gather_timer.cancel()
        self._abort_all("daemon stopping")
        super().on_stop()

    # ------------------------------------------------------------ internals

    def _prepare(self) -> None:
        try:
            boot_files = self._publish_boot_files()
            message = _Prepared(boot_files, None, self._image_checks_itself())
        except KadeployError as exc:
            message = _Prepared(None, str(exc))
        except OSError as exc:
            message = _Prepared(None, f"cannot read the image: {exc}")
        with contextlib.suppress(pykka.ActorDeadError):  # cancelled and gone meanwhile
            self.actor_ref.tell(message)

    def _image_checks_itself(self) -> bool:
        request = self._job.request
        if isinstance(request.environment, NoEnvironment):
            return False
        image = request.environment.image
        return checks_itself(image.file, image.compression)

    def _publish_boot_files(self) -> BootFilesRef | None:
        if not self._job.publishes_boot_files:
            return None  # deploy_env boots the deploy kernel, a recorded dd env its partition
        environment = self._job.environment
        if not environment.image.file.is_file():
            raise KadeployError(f"image {environment.image.file} not found")
        if environment.image.kind != ImageKind.TAR:
            return None  # a dd image boots from its partition (chain.c32)
        # Streamed from the image to the TFTP root within the configured bounds: a kernel
        # of a compressed image is never whole in memory (PxeActor.clean_boot_files finds
        # the files by the deployment id that ends the key).
        key = f"{environment.name}-{environment.version}-{self._job.deployment_id[:8]}"
        settings = self._config.daemon
        limits = BootFileLimits.from_mib(settings.max_boot_file_mib, settings.max_boot_files_mib)
        published = publish_boot_files(environment, settings.tftp_root, key, limits)
        return BootFilesRef(published.kernel, published.initrd)

    def _prepared(self, prepared: _Prepared) -> None:
        if self._decided is not None:  # cancelled before the nodes started
            for node in self._job.nodes:
                self._fail_unstarted(node, NodeState.ABORTED, self._decided[1])
            self._maybe_end()
            return
        if prepared.error is not None:
            for node in self._job.nodes:
                self._fail_unstarted(node, NodeState.DEPLOY_FAILED, prepared.error)
            self._decide()
            return
        job = dataclasses.replace(
            self._job,
            boot_files=prepared.boot_files,
            image_checks_itself=prepared.checks_itself,
        )
        self._job = job
        proxy = self.actor_ref.proxy()
        try:
            for name in job.nodes:
                ref = NodeActor.start(
                    job,
                    self._config.nodes[name],
                    self._services,
                    proxy,
                    workers=self._workers,
                    transfer_slots=self._slots,
                )
                self._nodes[name] = ref
                # At once: the first nodes work while the next threads start. Whatever they
                # report waits in this actor's mailbox until the loop is over.
                ref.tell(StartNode())
        finally:  # even if a start fails: the supervisor must know whom to stop
            self._reports.children(self._job.deployment_id, tuple(self._nodes.values()))

    def _maybe_start_round(self, window_over: bool = False) -> None:
        if self._chain is not None or self._decided is not None or not self._rounds.forming:
            return  # (no node waits for a round: nothing to look at, whatever the node count)
        if self._gather_timer is None:
            self._gather_timer = self._workers.timers.call_later(
                self._gather_window(), lambda: self._tell_self(_GatherOver())
            )
        hops = self._rounds.start_if_complete(self._tally.unfinished, window_over=window_over)
        if hops:
            if self._gather_timer is not None:
                self._gather_timer.cancel()
                self._gather_timer = None
            self._round_started = time.monotonic()
            nodes = self._rounds.running_nodes
            self._log_waits(nodes)
            self._log_round(CHAIN_ROUND_STARTED, f"{len(nodes)} nodes in this order: {nodes}")
            self._chain = ChainTransfer.start(
                self._job.image,
                hops,
                self._rounds.running_secret,
                self.actor_ref.proxy(),
                digest=not self._job.image_checks_itself,
            )
            self._reports.children(self._job.deployment_id, (self._chain,))

    def _gather_window(self) -> float:
        """How long the round now forming waits for the nodes not ready yet: the share of the
        time its first node took to get ready, at most the configured window."""
        settings = self._config.daemon
        took = time.monotonic() - self._started
        return min(settings.chain_gather_window, settings.chain_gather_share * took)

    def _round_summary(self, result: ChainResult | None, error: str | None) -> str:
        seconds = time.monotonic() - self._round_started
        if result is None:
            return f"after {seconds:.2f} s: {error}"
        rate = result.size * 8 / seconds / 1e6 if seconds > 0 else 0.0
        cut = f"; cut out: {', '.join(result.dead)}" if result.dead else ""
        return f"{result.size} bytes in {seconds:.2f} s ({rate:.1f} Mbit/s per node){cut}"

    def _log_round(self, event: str, detail: str) -> None:
        """One line in the log of every node of the running round, stamped now."""
        at, text = time.time(), f"{event}: {detail}"
        logger.info("deployment %s: %s", self._job.deployment_id, text)
        for node in self._rounds.running_nodes:
            write = AppendLog(self._job.deployment_id, node, LogStream.INFO, text, at)
            directory.send(self._services, directory.STORE, write)

    def _log_waits(self, nodes: list[str]) -> None:
        """Each node's wait for its round to gather: waiting, not transferring."""
        now, at = time.monotonic(), time.time()
        for node in nodes:
            waited = now - self._rounds.ready_since.get(node, now)
            text = f"{CHAIN_WAITED} {waited:.2f} s for the other nodes"
            write = AppendLog(self._job.deployment_id, node, LogStream.INFO, text, at)
            directory.send(self._services, directory.STORE, write)

    def _tell_self(self, message: object) -> None:
        with contextlib.suppress(pykka.ActorDeadError):  # the deployment ended meanwhile
            self.actor_ref.tell(message)

    def _fail_unstarted(self, node: str, state: NodeState, message: str) -> None:
        step = "prepare" if state == NodeState.DEPLOY_FAILED else None
        write = FinishNode(self._job.deployment_id, node, state.value, message, error_step=step)
        directory.send(self._services, directory.STORE, write)
        self._tally.record(node, state)

    def _decide(self) -> None:
        if self._decided is None:
            verdict, reason = self._tally.verdict()
            if verdict != Verdict.RUNNING:
                self._decided = (verdict, reason)
                if self._nodes:
                    why = MIN_NODES_REACHED if verdict == Verdict.SUCCEEDED else reason
                    self._abort_all(why)
        self._maybe_end()

    def _abort_all(self, reason: str) -> None:
        for ref in list(self._nodes.values()):
            try:
                ref.tell(AbortNode(reason))
            except pykka.ActorDeadError:
                continue

    def _maybe_end(self) -> None:
        if self._decided is None or self._tally.unfinished_count:
            return
        verdict, reason = self._decided
        outcome = DeploymentOutcome(
            self._job.deployment_id, verdict, reason, dict(self._tally.finished)
        )
        logger.info("deployment %s %s: %s", self._job.deployment_id, verdict, reason)
        try:
            # First the supervisor (the nodes are free), then the record (the end is news).
            self._reports.finished(outcome)
            # The nodes' final states reached the store's mailbox before they told this
            # manager, so this write comes after them (FIFO) and aborts no finished node.
            write = FinishDeployment(self._job.deployment_id, verdict.value, reason)
            directory.send(self._services, directory.STORE, write)
        finally:
            self.actor_ref.stop(block=False)
