"""NodeSupervisor: the permanent actor that admits, starts and supervises deployments.

**Admission.** Every deployment and reboot operation, whoever asks (the API, ``Daemon.deploy``
from any thread), is admitted here by :mod:`kadeployd.admission`: unknown or busy nodes,
rights, the disk, ``min_nodes``. The busy rule reads this actor's own record of which running
deployment holds which node (:class:`~kadeployd.admission.NodeHolds`), and the nodes are taken
in the message that admits them, so two requests for one node never both pass. A node is
given back when it reaches a final state or its deployment ends (its manager's reports).

**Supervision.** Each deployment is a DeploymentManager (temporary) linked to this actor
(:mod:`kadeployd.supervision.links`). It reports up what this actor needs to clear up after
it: the actors it starts, the nodes it releases, its end. If it crashes (an exception in a told
message), its exit report arrives here at once and the deployment's wreck is cleared in this
actor's thread, before any later request: its NodeActors and ChainTransfer are stopped, every
node not yet final is recorded ``deploy_failed`` with the reason and its PXE profile points at
its prod env again, the deployment is recorded failed, and its nodes are free.

**Restarts.** Managers are independent actors: if this supervisor crashes, deployments go on.
Its successor asks each live manager in Pykka's registry for its census, links it again, and
clears the deployments that the store calls running but whose manager is gone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pykka
from pykka.messages import ProxyGetAttr

from kadeploy_core.errors import KadeployError
from kadeploy_core.machine import NodeState
from kadeployd.actors import directory
from kadeployd.actors.directory import Directory
from kadeployd.actors.manager import DeploymentManager, DeploymentOutcome, ManagerCensus
from kadeployd.actors.node import prod_boot_target
from kadeployd.admission import Hold, NodeHolds, admit_deployment, admit_nodes
from kadeployd.config import Config, Node
from kadeployd.runtime import Workers
from kadeployd.store.connection import database_path
from kadeployd.store.errors import StoreError
from kadeployd.store.reader import StoreReader
from kadeployd.store.rights import Right
from kadeployd.store.writes import FinishDeployment, FinishNode
from kadeployd.supervision import ExitKind, SupervisedActor
from kadeployd.supervision.links import ExitReport, link, unlink
from kadeployd.workflow.job import DeploymentJob, DeploymentRequest
from kadeployd.workflow.outcome import Verdict

logger = logging.getLogger(__name__)

STOP_TIMEOUT = 15.0
"""Seconds running deployments get to end when the daemon stops."""
CLEAR_TIMEOUT = 15.0
"""Seconds a lost deployment's actors get to stop, and its PXE resets to be answered."""
READY_TIMEOUT = 10.0
"""Seconds a new manager gets to run its ``on_start``."""
CRASHED = "deployment manager crashed"
LOST = "deployment manager lost while the node supervisor restarted"
STOPPED = "deployment manager stopped before the deployment ended"

_READY_PROBE = ProxyGetAttr(attr_path=("actor_urn",))
"""Answered by any Pykka actor once its on_start is done, without touching its on_receive."""


# --- what managers report (see ManagerReports), and their exits ---------------------------


@dataclass(frozen=True, slots=True)
class _ChildrenStarted:
    deployment_id: str
    refs: tuple[pykka.ActorRef[Any], ...]


@dataclass(frozen=True, slots=True)
class _NodeReleased:
    deployment_id: str
    node: str


@dataclass(frozen=True, slots=True)
class _Finished:
    outcome: DeploymentOutcome


@dataclass(frozen=True, slots=True)
class _ManagerExited:
    deployment_id: str
    report: ExitReport


class _Reports:
    """A manager's reports, told to whichever NodeSupervisor incarnation runs, as messages
    (no proxy built per node); never waiting for one that restarts or stops, since a stopping
    supervisor waits for its managers. A report lost during a restart is made up for by the
    successor's census."""

    def __init__(self, services: Directory) -> None:
        self._services = services

    def children(self, deployment_id: str, refs: tuple[pykka.ActorRef[Any], ...]) -> None:
        directory.send(self._services, directory.NODES, _ChildrenStarted(deployment_id, refs), 0.0)

    def node_released(self, deployment_id: str, node: str) -> None:
        directory.send(self._services, directory.NODES, _NodeReleased(deployment_id, node), 0.0)

    def finished(self, outcome: DeploymentOutcome) -> None:
        directory.send(self._services, directory.NODES, _Finished(outcome), 0.0)


@dataclass
class _Running:
    """A deployment this supervisor started or adopted, until its manager's exit is known."""

    deployment_id: str
    user: str
    nodes: tuple[str, ...]
    config: Config
    """The configuration it started with (its nodes' MACs and boot targets)."""
    ref: pykka.ActorRef[Any] | None = None
    children: list[pykka.ActorRef[Any]] = field(default_factory=list)
    outcome: DeploymentOutcome | None = None
    """Set when the manager reported the end; its exit report follows."""


class _StoreReads:
    """Admission's reads (rights, node states), on a read-only connection of this actor's own:
    never queued behind the StoreActor's writes. Opened at first use."""

    def __init__(self, database: Path) -> None:
        self._database = database
        self._reader: StoreReader | None = None

    def rights(self, user: str) -> Sequence[Right]:
        return self._open().rights(user=user)

    def node_states(self, deployment_id: str) -> Mapping[str, str]:
        try:
            return {view.node: view.state for view in self._open().nodes(deployment_id)}
        except StoreError as exc:  # only decorates a refusal: never fail it for this
            logger.warning("cannot read the nodes of %s: %s", deployment_id, exc)
            return {}

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def _open(self) -> StoreReader:
        if self._reader is None:
            self._reader = StoreReader(self._database)
        return self._reader


class NodeSupervisor(SupervisedActor):
    """Admits, starts, lists, cancels and supervises deployments. Public methods are its
    message API; managers report through private messages (see :class:`_Reports`)."""

    def __init__(
        self,
        services: Directory,
        config: Callable[[], Config],
        workers: Workers,
        *,
        restarted: bool = False,
    ) -> None:
        """``restarted``: a later incarnation, which looks for deployments a predecessor left
        without a manager (the first has none: the daemon's start closed every record left
        running, and its siblings cannot be reached before the tree is up)."""
        super().__init__()
        self._restarted = restarted
        self._services = services
        self._config = config
        self._workers = workers
        self._running: dict[str, _Running] = {}
        self._outcomes: dict[str, DeploymentOutcome] = {}
        self._holds = NodeHolds()
        self._reads: _StoreReads | None = None

    def on_start(self) -> None:
        """Adopt the deployments a previous incarnation started; clear those it lost."""
        silent = 0
        for ref in pykka.ActorRegistry.get_by_class(DeploymentManager):
            try:
                census: ManagerCensus = ref.proxy().census().get(timeout=5.0)
            except pykka.ActorDeadError:
                continue  # ended meanwhile
            except pykka.Timeout:
                silent += 1
                logger.error("deployment manager %s did not answer its census", ref)
                continue
            self._adopt(ref, census)
        if self._running:
            logger.info("found %d running deployments", len(self._running))
        if self._restarted:
            self._clear_lost(look_in_store=silent == 0)

    def deploy(
        self, request: DeploymentRequest, force: bool = False, caller: str | None = None
    ) -> str:
        """Admit ``request``, record it and start its manager; returns the deployment id.

        Raises AdmissionRefused (:mod:`kadeployd.admission`) if it may not have its nodes;
        nothing is recorded then. ``force`` takes nodes that running deployments hold.
        ``caller``: the authenticated user who asks, whose rights are checked (None: the
        daemon's own code, which needs none).
        """
        config = self._config()
        names = admit_deployment(
            request,
            caller=caller,
            force=force,
            config=config,
            holds=self._holds,
            reads=self._store_reads(),
        )
        if names != request.nodes:  # a reboot operation listing a node twice
            request = dataclasses.replace(request, nodes=names)
        environment = request.environment
        deployment_id: str = directory.call(
            self._services,
            directory.STORE,
            lambda store: store.create_deployment(
                user=request.user,
                environment_name=environment.name,
                environment_version=environment.version,
                environment=environment.model_dump(mode="json"),
                options=request.options(),
                min_nodes=request.min_nodes,
                anonymous=request.anonymous,
                nodes=request.nodes,
            ),
        )
        self._holds.take(Hold(deployment_id, request.user), names)
        running = _Running(deployment_id, request.user, names, config)
        self._running[deployment_id] = running
        self._start_manager(DeploymentJob(deployment_id, request), running)
        return deployment_id

    def check_nodes(
        self, user: str, names: Sequence[str], action: str, force: bool = False
    ) -> tuple[Node, ...]:
        """The configured nodes named, each once, if ``user`` may ``action`` them now (power
        commands, simple reboots: ``power on``, ``reboot``...); raises AdmissionRefused.
        Nothing is taken: a power command is not a deployment."""
        return admit_nodes(
            user,
            names,
            action=action,
            force=force,
            config=self._config(),
            holds=self._holds,
            reads=self._store_reads(),
        )

    def cancel(self, deployment_id: str, reason: str = "cancelled by user") -> bool:
        """Cancel a running deployment; False if it is not running."""
        running = self._running.get(deployment_id)
        if running is None or running.ref is None or running.outcome is not None:
            return False
        try:
            running.ref.proxy().cancel(reason)
        except pykka.ActorDeadError:
            return False
        return True

    def running(self) -> list[str]:
        """Ids of the deployments in progress."""
        return [
            d
            for d, r in self._running.items()
            if r.outcome is None and r.ref is not None and r.ref.is_alive()
        ]

    def outcome(self, deployment_id: str) -> DeploymentOutcome | None:
        """How a deployment finished, if it did while this incarnation ran."""
        return self._outcomes.get(deployment_id)

    def holds(self) -> dict[str, str]:
        """Every node a running deployment holds -> that deployment's id."""
        return self._holds.held()

    def on_receive(self, message: Any) -> Any:
        """The managers' reports (told from their threads) and exits (their links)."""
        match message:
            case _ChildrenStarted(deployment_id, refs):
                self._children_started(deployment_id, refs)
            case _NodeReleased(deployment_id, node):
                self._holds.release(deployment_id, (node,))
            case _Finished(outcome):
                self._finished(outcome)
            case _ManagerExited(deployment_id, report):
                self._on_manager_exit(deployment_id, report)
            case _:
                return super().on_receive(message)
        return None

    def on_stop(self) -> None:
        """Shutdown: running deployments are cancelled; each manager ends once its nodes have
        recorded their final state (bounded wait), and is stopped if it does not."""
        managers = [r.ref for r in self._running.values() if r.ref is not None]
        for ref in managers:
            with contextlib.suppress(pykka.ActorDeadError):
                ref.proxy().cancel("daemon stopping")
        deadline = time.monotonic() + STOP_TIMEOUT
        for ref in managers:
            if not ref.actor_stopped.wait(max(0.0, deadline - time.monotonic())):
                logger.error("deployment manager %s did not end in time: stopping it", ref)
                ref.stop(block=False)
        self._close_reads()
        super().on_stop()

    def on_failure(self, *exc_info: Any) -> None:
        """A bug here: the managers go on; the successor adopts them."""
        self._close_reads()
        super().on_failure(*exc_info)

    # ------------------------------------------------------------ starting

    def _store_reads(self) -> _StoreReads:
        if self._reads is None:
            self._reads = _StoreReads(database_path(self._config().daemon.state_dir))
        return self._reads

    def _close_reads(self) -> None:
        if self._reads is not None:
            self._reads.close()

    def _start_manager(self, job: DeploymentJob, running: _Running) -> None:
        """Start and link the manager of ``job``; a manager that cannot start leaves a
        deployment recorded failed, not one that runs forever."""
        deployment_id = job.deployment_id
        try:
            ref = DeploymentManager.start(
                job, running.config, self._services, self._workers, _Reports(self._services)
            )
        except Exception as exc:  # e.g. RuntimeError: can't start new thread
            logger.exception("deployment %s: its manager cannot start", deployment_id)
            self._clear(deployment_id, f"deployment manager failed to start: {exc!r}")
            return
        running.ref = ref
        self._link(deployment_id, ref)
        try:
            ref.ask(_READY_PROBE, timeout=READY_TIMEOUT)
        except pykka.ActorDeadError:  # died in on_start, which reports no exit
            unlink(ref.actor_urn)
            self._clear(deployment_id, "deployment manager failed to start (see the log)")
        except pykka.Timeout:
            logger.warning("deployment %s: manager not ready in %s s", deployment_id, READY_TIMEOUT)

    def _link(self, deployment_id: str, ref: pykka.ActorRef[Any]) -> None:
        link(ref, functools.partial(self._tell_exit, deployment_id))

    def _tell_exit(self, deployment_id: str, report: ExitReport) -> None:
        """Runs in the ending manager's thread: hand its exit report to this actor's inbox."""
        with contextlib.suppress(pykka.ActorDeadError):  # a successor adopts it instead
            self.actor_ref.tell(_ManagerExited(deployment_id, report))

    def _adopt(self, ref: pykka.ActorRef[Any], census: ManagerCensus) -> None:
        job = census.job
        running = _Running(
            job.deployment_id,
            job.request.user,
            job.nodes,
            census.config,
            ref,
            list(census.children),
        )
        self._running[job.deployment_id] = running
        unfinished = [n for n in job.nodes if n not in census.finished]
        self._holds.take(Hold(job.deployment_id, job.request.user), unfinished)
        self._link(job.deployment_id, ref)

    def _clear_lost(self, look_in_store: bool) -> None:
        """Clear the deployments whose manager died while no supervisor listened: adopted ones
        already dead and, unless a manager did not say which deployment it runs (it may be
        any), those the store calls running with no manager at all."""
        for deployment_id, running in list(self._running.items()):
            if running.ref is not None and not running.ref.is_alive():
                self._clear(deployment_id, LOST)
        if not look_in_store:
            return
        try:
            recorded: list[str] = directory.call(
                self._services, directory.STORE, lambda store: store.running()
            )
            for deployment_id in recorded:
                if deployment_id not in self._running:
                    self._adopt_record(deployment_id)
                    self._clear(deployment_id, LOST)
        except (KadeployError, pykka.Timeout) as exc:
            logger.error("cannot look for deployments left without a manager: %s", exc)

    def _adopt_record(self, deployment_id: str) -> None:
        """Take charge of a running deployment known from its record alone."""
        view = directory.call(
            self._services, directory.STORE, lambda s: s.deployment(deployment_id)
        )
        nodes = directory.call(self._services, directory.STORE, lambda s: s.nodes(deployment_id))
        names = tuple(n.node for n in nodes)
        self._running[deployment_id] = _Running(deployment_id, view.user, names, self._config())
        self._holds.take(Hold(deployment_id, view.user), [n.node for n in nodes if not n.final])

    # ------------------------------------------------------------ the managers' reports

    def _children_started(self, deployment_id: str, refs: tuple[pykka.ActorRef[Any], ...]) -> None:
        running = self._running.get(deployment_id)
        if running is None:
            if deployment_id in self._outcomes:  # cleared meanwhile: they must not outlive it
                for ref in refs:
                    ref.stop(block=False)
            return
        running.children = [r for r in running.children if r.is_alive()] + list(refs)

    def _finished(self, outcome: DeploymentOutcome) -> None:
        self._outcomes[outcome.deployment_id] = outcome
        running = self._running.get(outcome.deployment_id)
        if running is not None:
            running.outcome = outcome
            self._holds.release(outcome.deployment_id, running.nodes)
        self._clean_boot_files(outcome)

    def _clean_boot_files(self, outcome: DeploymentOutcome) -> None:
        """The ended deployment's boot files go if no node boots them; others no profile
        names go too (kadeployd/pxe/actor.py ``clean_boot_files``)."""
        deployed_any = NodeState.DEPLOYED in outcome.nodes.values()
        others = [d for d, r in self._running.items() if r.outcome is None]
        directory.tell(
            self._services,
            directory.PXE,
            lambda pxe: pxe.clean_boot_files(outcome.deployment_id, deployed_any, others),
        )

    def _on_manager_exit(self, deployment_id: str, report: ExitReport) -> None:
        running = self._running.get(deployment_id)
        if running is None or running.ref is None or running.ref.actor_urn != report.urn:
            return  # already cleared, or an exit of another incarnation's making
        if report.kind is ExitKind.NORMAL and running.outcome is not None:
            del self._running[deployment_id]  # the usual end
            return
        reason = STOPPED if report.kind is ExitKind.NORMAL else f"{CRASHED}: {report.detail}"
        logger.error("deployment %s: %s", deployment_id, reason)
        self._clear(deployment_id, reason)

    # ------------------------------------------------------------ clearing a lost deployment

    def _clear(self, deployment_id: str, reason: str) -> None:
        """What a deployment whose manager is gone leaves, cleared in order: its actors
        stopped (so that nothing writes after), its unfinished nodes recorded
        ``deploy_failed`` with ``reason`` and their PXE profiles pointed at their prod env, its
        record closed, its nodes free. Best effort, each wait bounded: a service that does not
        answer is logged, and the nodes are freed all the same."""
        running = self._running.pop(deployment_id)
        try:
            self._stop_children(deployment_id, running.children)
            mine = {
                node
                for node, hold in self._holds.holders(running.nodes).items()
                if hold.deployment_id == deployment_id
            }
            unfinished = self._fail_unfinished(deployment_id, reason, fallback=mine)
            # A node another (forced) deployment took is that deployment's to point.
            nodes = running.config.nodes
            self._reset_pxe([nodes[n] for n in unfinished if n in mine and n in nodes])
            verdict, why = Verdict.FAILED, reason
            if running.outcome is not None:  # it had decided: keep its verdict
                verdict, why = running.outcome.verdict, running.outcome.reason
            directory.send(
                self._services, directory.STORE, FinishDeployment(deployment_id, verdict.value, why)
            )
            finished = {n: NodeState.DEPLOY_FAILED for n in unfinished}
            if running.outcome is not None:
                finished = {**running.outcome.nodes, **finished}
            self._outcomes[deployment_id] = DeploymentOutcome(deployment_id, verdict, why, finished)
            self._clean_boot_files(self._outcomes[deployment_id])
        finally:
            self._holds.release(deployment_id, running.nodes)
        logger.info("deployment %s cleared: %s", deployment_id, reason)

    def _stop_children(self, deployment_id: str, children: Sequence[pykka.ActorRef[Any]]) -> None:
        for ref in children:
            ref.stop(block=False)
        deadline = time.monotonic() + CLEAR_TIMEOUT
        for ref in children:
            if not ref.actor_stopped.wait(max(0.0, deadline - time.monotonic())):
                logger.error(
                    "deployment %s: %s did not stop within %s s", deployment_id, ref, CLEAR_TIMEOUT
                )

    def _fail_unfinished(self, deployment_id: str, reason: str, fallback: set[str]) -> list[str]:
        """Record each node not yet final ``deploy_failed`` (error step: where it was); the
        nodes recorded. Without the store's answer, the nodes still held count as unfinished."""
        try:
            views = directory.call(
                self._services, directory.STORE, lambda s: s.nodes(deployment_id)
            )
            where = {v.node: v.state for v in views if not v.final}
        except (KadeployError, pykka.Timeout) as exc:
            logger.error("deployment %s: cannot read its nodes: %s", deployment_id, exc)
            where = dict.fromkeys(sorted(fallback), None)
        failed = NodeState.DEPLOY_FAILED.value
        for node, state in where.items():
            write = FinishNode(deployment_id, node, failed, reason, error_step=state)
            directory.send(self._services, directory.STORE, write)
        return list(where)

    def _reset_pxe(self, nodes: Sequence[Node]) -> None:
        """Point each node's PXE profile at its prod env: all asked at once, then awaited."""
        if not nodes:
            return
        futures: list[tuple[Node, pykka.Future[Any] | None]] = []
        try:
            pxe = self._services.child(directory.PXE).proxy()
        except (KadeployError, pykka.ActorDeadError) as exc:
            logger.error("cannot reset the PXE profiles of %d nodes: %s", len(nodes), exc)
            return
        for node in nodes:
            try:
                futures.append((node, pxe.set_profile(node.mac, prod_boot_target(node))))
            except pykka.ActorDeadError:
                futures.append((node, None))
        deadline = time.monotonic() + CLEAR_TIMEOUT
        for node, future in futures:
            try:
                if future is None:
                    raise pykka.ActorDeadError("the PXE actor died")
                future.get(timeout=max(0.0, deadline - time.monotonic()))
            except (KadeployError, pykka.Timeout, pykka.ActorDeadError) as exc:
                logger.warning("%s: could not reset the PXE profile: %s", node.name, exc)
