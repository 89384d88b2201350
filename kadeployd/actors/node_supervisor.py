"""NodeSupervisor: the permanent actor that starts deployments and keeps track of them.

Each deployment is a DeploymentManager (temporary) that owns its NodeActors. The managers are
independent actors: if this supervisor crashes, running deployments go on, and its successor
finds them again in Pykka's registry (state rebuilt, not remembered).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import pykka

from kadeployd.actors import directory
from kadeployd.actors.directory import Directory
from kadeployd.actors.manager import DeploymentManager, DeploymentOutcome
from kadeployd.config import Config
from kadeployd.errors import KadeployError, Problem
from kadeployd.suggest import did_you_mean
from kadeployd.supervision import SupervisedActor
from kadeployd.workflow.job import DeploymentJob, DeploymentRequest

logger = logging.getLogger(__name__)

STOP_TIMEOUT = 15.0


class DeploymentRefused(KadeployError):
    """A deployment request names nodes or options the configuration does not allow."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


class NodeSupervisor(SupervisedActor):
    """Starts, lists, cancels deployments. Public methods are its message API."""

    def __init__(self, services: Directory, config: Callable[[], Config]) -> None:
        super().__init__()
        self._services = services
        self._config = config
        self._managers: dict[str, pykka.ActorRef[Any]] = {}
        self._outcomes: dict[str, DeploymentOutcome] = {}

    def on_start(self) -> None:
        """Find the deployments a previous incarnation started."""
        for ref in pykka.ActorRegistry.get_by_class(DeploymentManager):
            job = ref.proxy().job.get(timeout=5.0)
            self._managers[job.deployment_id] = ref
        if self._managers:
            logger.info("found %d running deployments", len(self._managers))

    def deploy(self, request: DeploymentRequest) -> str:
        """Record and start ``request``; returns the deployment id.

        Raises DeploymentRefused for nodes the configuration does not know, or a min_nodes
        the node list cannot reach.
        """
        config = self._config()
        problems = [
            Problem("request", f"unknown node {n}{did_you_mean(n, config.nodes)}", "nodes")
            for n in request.nodes
            if n not in config.nodes
        ]
        if not request.nodes:
            problems.append(Problem("request", "no node to deploy", "nodes"))
        if request.min_nodes is not None and not 1 <= request.min_nodes <= len(request.nodes):
            problems.append(Problem("request", f"expected 1 to {len(request.nodes)}", "min_nodes"))
        if problems:
            raise DeploymentRefused(problems)
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
        job = DeploymentJob(deployment_id, request)
        self._managers[deployment_id] = DeploymentManager.start(
            job, config, self._services, _report_to_node_supervisor(self._services)
        )
        return deployment_id

    def cancel(self, deployment_id: str, reason: str = "cancelled by user") -> bool:
        """Cancel a running deployment; False if it is not running."""
        ref = self._managers.get(deployment_id)
        if ref is None:
            return False
        try:
            ref.proxy().cancel(reason)
        except pykka.ActorDeadError:
            return False
        return True

    def running(self) -> list[str]:
        """Ids of the deployments in progress."""
        return [d for d, ref in self._managers.items() if ref.is_alive()]

    def outcome(self, deployment_id: str) -> DeploymentOutcome | None:
        """How a deployment finished, if it did while this incarnation ran."""
        return self._outcomes.get(deployment_id)

    def deployment_finished(self, outcome: DeploymentOutcome) -> None:
        """Told by a manager when its deployment ends."""
        self._managers.pop(outcome.deployment_id, None)
        self._outcomes[outcome.deployment_id] = outcome

    def on_stop(self) -> None:
        """Shutdown: running deployments are cancelled; each manager ends once its nodes have
        recorded their final state (bounded wait), and is stopped if it does not."""
        managers = list(self._managers.values())
        for ref in managers:
            with contextlib.suppress(pykka.ActorDeadError):
                ref.proxy().cancel("daemon stopping")
        deadline = time.monotonic() + STOP_TIMEOUT
        for ref in managers:
            if not ref.actor_stopped.wait(max(0.0, deadline - time.monotonic())):
                logger.error("deployment manager %s did not end in time: stopping it", ref)
                ref.stop(block=False)
        super().on_stop()


def _report_to_node_supervisor(services: Directory) -> Callable[[DeploymentOutcome], None]:
    def report(outcome: DeploymentOutcome) -> None:
        # Never wait for a NodeSupervisor that is itself stopping and waiting for us.
        directory.tell(
            services, directory.NODES, lambda nodes: nodes.deployment_finished(outcome), wait=0.0
        )

    return report
