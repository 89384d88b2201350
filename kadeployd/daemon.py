"""Wiring: the daemon's supervision tree, started in dependency order, stopped in reverse.

::

    Supervisor (one_for_one)
    ├─ config   ConfigActor      the configuration snapshot
    ├─ store    StoreActor       the SQLite store, only writer; publishes on the EventHub
    ├─ reboot   RebootActor      power and reboot commands, windowed
    ├─ pxe      PxeActor         TFTP server and PXE profiles
    └─ nodes    NodeSupervisor   deployments: DeploymentManager -> NodeActor x N

Everything that can be checked before the tree runs is checked first (configuration, the
database), so a bad start-up fails at once with a clear message and exit status 1.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pykka

from kadeploy_core.errors import KadeployError
from kadeployd.actors import directory
from kadeployd.actors.config_actor import ConfigActor
from kadeployd.actors.directory import CONFIG, NODES, PXE, REBOOT, STORE
from kadeployd.actors.node_supervisor import NodeSupervisor
from kadeployd.config import Config, Node, load_config
from kadeployd.config.host_keys import unpinned_warning
from kadeployd.events import EventHub
from kadeployd.pxe import user_profiles
from kadeployd.pxe.actor import PxeActor
from kadeployd.pxe.user_profiles import UserProfile
from kadeployd.reboot.actor import RebootActor
from kadeployd.reboot.jobs import ReplyTo
from kadeployd.reboot.levels import PowerAction, RebootLevel
from kadeployd.runtime import Workers
from kadeployd.store.actor import StoreActor
from kadeployd.store.connection import database_path
from kadeployd.store.reader import StoreReader
from kadeployd.store.store import Store
from kadeployd.supervision import ChildSpec, Restart, Supervisor, SupervisorExit
from kadeployd.workflow.job import DeploymentRequest

logger = logging.getLogger(__name__)

CALL_TIMEOUT = 30.0
ABORT_TIMEOUT = 30.0
"""Seconds running deployments get to record their nodes aborted when the daemon stops."""
STOPPING = "daemon stopping"
POWER_MARGIN = 10.0
"""Seconds beyond the command timeouts that a power or reboot request of the API waits."""
CANCEL_GRACE = 10.0
"""Seconds a timed-out power request's commands get to answer their cancellation."""


def _cancel(proxy: pykka.ActorProxy[Any], request_id: str) -> pykka.Future[Any]:
    future: pykka.Future[Any] = proxy.cancel(request_id)
    return future


class _Tree:
    """A Directory that forwards to the supervisor once it exists.

    The NodeSupervisor is started by the supervisor and needs to reach its siblings through
    it, so its directory is handed out before the supervisor handle is.
    """

    def __init__(self) -> None:
        self.supervisor: Supervisor | None = None

    def child(self, name: str, timeout: float = 5.0) -> pykka.ActorRef[Any]:
        """The current incarnation of the permanent actor ``name``."""
        assert self.supervisor is not None, "the tree is not started yet"
        return self.supervisor.child(name, timeout)


class Daemon:
    """A running supervision tree, and the calls the API and the tests make on it."""

    def __init__(
        self,
        config_dir: Path,
        config: Config,
        tree: _Tree,
        supervisor: Supervisor,
        workers: Workers,
        *,
        events: EventHub | None = None,
    ) -> None:
        self.config_dir = config_dir
        self.config = config
        self._tree = tree
        self.supervisor = supervisor
        self.workers = workers
        self.events = events or EventHub()
        """What the store committed, as typed events (the API's event streams subscribe)."""
        self.database = database_path(config.daemon.state_dir)

    @classmethod
    def start(cls, config_dir: Path, *, max_restarts: int = 5, period: float = 10.0) -> Daemon:
        """Validate, then start the tree. Raises ConfigError or StoreError before starting."""
        config = load_config(config_dir)
        unpinned = [n.name for n in config.nodes.values() if not n.settings.boot.deploy_host_keys()]
        if (warning := unpinned_warning(unpinned, len(config.nodes))) is not None:
            logger.warning("%s", warning)
        daemon_settings = config.daemon
        daemon_settings.state_dir.mkdir(parents=True, exist_ok=True)
        database = database_path(daemon_settings.state_dir)
        with Store.open(database) as store:
            interrupted = store.mark_interrupted()
        if interrupted:
            logger.warning("deployments left running by a previous daemon: %s", interrupted)
        tree = _Tree()
        events = EventHub()
        sizes = daemon_settings.workers
        workers = Workers.create(ssh=sizes.ssh, files=sizes.files, node_turns=sizes.node_turns)

        def current_config() -> Config:
            snapshot: Config = directory.call(tree, CONFIG, lambda c: c.snapshot())
            return snapshot

        node_supervisors = itertools.count()  # the incarnations started
        specs = [
            ChildSpec(CONFIG, lambda: ConfigActor.start(config_dir), Restart.PERMANENT, 5.0),
            ChildSpec(
                STORE,
                lambda: StoreActor.start(path=database, hub=events),
                Restart.PERMANENT,
                10.0,
            ),
            ChildSpec(
                REBOOT,
                lambda: RebootActor.start(
                    window=daemon_settings.reboot_window,
                    window_sleep=daemon_settings.reboot_window_sleep,
                ),
                Restart.PERMANENT,
                10.0,
            ),
            ChildSpec(
                PXE,
                lambda: PxeActor.start(
                    root=daemon_settings.tftp_root,
                    listen=daemon_settings.tftp.listen,
                    port=daemon_settings.tftp.port,
                ),
                Restart.PERMANENT,
                10.0,
            ),
            ChildSpec(
                NODES,
                lambda: NodeSupervisor.start(
                    tree, current_config, workers, restarted=next(node_supervisors) > 0
                ),
                Restart.PERMANENT,
                30.0,
            ),
        ]
        supervisor = Supervisor.start(specs, max_restarts=max_restarts, period=period)
        tree.supervisor = supervisor
        return cls(config_dir, config, tree, supervisor, workers, events=events)

    def deploy(
        self, request: DeploymentRequest, *, force: bool = False, caller: str | None = None
    ) -> str:
        """Start a deployment (or a reboot operation); returns its id. The NodeSupervisor
        admits it first: AdmissionRefused (kadeployd.admission) says why not. ``force`` takes
        nodes that running deployments hold; ``caller`` is the authenticated user who asks
        (the API's), whose rights are checked; None is in-process code, which needs none."""
        deployment_id: str = directory.call(
            self._tree, NODES, lambda n: n.deploy(request, force, caller), CALL_TIMEOUT
        )
        return deployment_id

    def check_nodes(
        self, user: str, names: Sequence[str], action: str, force: bool = False
    ) -> list[Node]:
        """The configured nodes named (each once) if ``user`` may ``action`` them now (power
        commands, simple reboots), as the NodeSupervisor's admission decides: a right on each
        and, unless ``force``, none held by a running deployment. Raises AdmissionRefused."""
        nodes: tuple[Node, ...] = directory.call(
            self._tree, NODES, lambda n: n.check_nodes(user, list(names), action, force)
        )
        return list(nodes)

    def cancel(self, deployment_id: str, reason: str = "cancelled by user") -> bool:
        """Cancel a running deployment."""
        cancelled: bool = directory.call(
            self._tree, NODES, lambda n: n.cancel(deployment_id, reason)
        )
        return cancelled

    def set_pxe(
        self, nodes: Sequence[Node], profile: UserProfile, files: Mapping[str, Path]
    ) -> list[str]:
        """kareboot set_pxe: publish a user's ``files`` under their TFTP directory, then write
        their checked ``profile`` for ``nodes``; the profiles' TFTP paths. Raises PxeError.

        The files (kernels: up to the upload limit) are copied here, in the caller's thread,
        so the PxeActor that every deployment asks is never held by a copy; they go to
        ``users/<user>/``, where the actor never writes. The profiles go through the actor."""
        user_profiles.publish_files(
            self.config.daemon.tftp_root,
            profile.user,
            files,
            self.config.daemon.max_set_pxe_files_mib << 20,
        )
        macs = [n.mac for n in nodes]
        paths: list[str] = directory.call(
            self._tree, PXE, lambda pxe: pxe.set_user_profile(macs, profile)
        )
        return paths

    def power_wait(self, nodes: Sequence[Node]) -> float:
        """How long a power or reboot request waits for ``nodes`` (kadeployd/api/power_wait.py):
        their longest command timeout per batch of the reboot window, the pauses between
        batches, and a margin."""
        settings = self.config.daemon
        batches = math.ceil(len(nodes) / settings.reboot_window) if nodes else 0
        longest = max((float(n.settings.power.command_timeout) for n in nodes), default=0.0)
        pauses = max(batches - 1, 0) * settings.reboot_window_sleep
        return batches * longest + pauses + POWER_MARGIN

    def submit_power(
        self, nodes: Sequence[Node], operation: PowerAction | RebootLevel, reply: ReplyTo
    ) -> dict[str, str]:
        """Queue ``operation`` for each of ``nodes`` (distinct) on the RebootActor, without
        waiting for any command; node name -> request id. Each node's one result goes to
        ``reply``, from another thread (it must not block). The asks are bounded."""
        batch = uuid.uuid4().hex[:12]
        ids = {node.name: f"api-{batch}/{node.name}" for node in nodes}

        def submit(proxy: pykka.ActorProxy[Any], node: Node) -> pykka.Future[Any]:
            if isinstance(operation, PowerAction):
                future: pykka.Future[Any] = proxy.power(ids[node.name], node, operation, reply)
            else:
                future = proxy.reboot(ids[node.name], node, operation, reply)
            return future

        for node in nodes:
            directory.call(self._tree, REBOOT, functools.partial(submit, node=node), CALL_TIMEOUT)
        return ids

    def cancel_power(self, request_id: str) -> bool:
        """Cancel a queued or running power request (its result still comes, cancelled)."""
        cancelled: bool = directory.call(
            self._tree, REBOOT, functools.partial(_cancel, request_id=request_id)
        )
        return cancelled

    def reload(self) -> Config:
        """Re-read the configuration (SIGHUP); running deployments keep the one they started
        with, new ones get the new one. Raises ConfigError and keeps the old one on error."""
        config: Config = directory.call(self._tree, CONFIG, lambda c: c.reload())
        old, new = self.config.daemon, config.daemon
        for key in ("state_dir", "api", "tftp", "reboot_window", "reboot_window_sleep"):
            if getattr(old, key) != getattr(new, key):
                logger.warning("daemon.%s changed: it takes effect at the next restart", key)
        self.config = config
        return config

    def store_call(
        self, method: Callable[[pykka.ActorProxy[Any]], pykka.Future[Any]], timeout: float = 10.0
    ) -> Any:
        """Ask the StoreActor (the only writer): ``method(proxy)`` answered within ``timeout``."""
        return directory.call(self._tree, STORE, method, timeout)

    def reader(self) -> StoreReader:
        """A read-only view of the store for this thread."""
        return StoreReader(self.database)

    def wait(self, timeout: float) -> SupervisorExit | None:
        """Wait for the tree to end by itself (restart intensity exceeded)."""
        return self.supervisor.wait(timeout)

    def stop(self, abort_timeout: float = ABORT_TIMEOUT) -> SupervisorExit:
        """Orderly shutdown: running deployments are aborted and recorded as such (bounded
        wait), then the actors stop in reverse order."""
        reader = self.reader()
        try:
            # A tree that gave up has no NodeSupervisor left to cancel through (its last act
            # was to cancel them): nobody would record an end that this loop could wait for.
            running = reader.running() if self.supervisor.wait(0) is None else []
            for deployment_id in running:
                try:
                    self.cancel(deployment_id, STOPPING)
                except KadeployError as exc:
                    logger.error("cannot cancel %s: %s", deployment_id, exc)
            deadline = time.monotonic() + abort_timeout
            while running and time.monotonic() < deadline:
                time.sleep(0.1)  # the main thread polls the store; no actor waits here
                running = reader.running()
        finally:
            reader.close()
        outcome = self.supervisor.stop()
        self.workers.shutdown()
        with Store.open(self.database) as store:
            left = store.mark_interrupted(STOPPING)
        if left:
            self.events.resync()  # written without the StoreActor: followers re-read
            logger.error(
                "deployments not finished in %ss, recorded aborted: %s", abort_timeout, left
            )
        for ref in pykka.ActorRegistry.get_all():
            logger.error("actor still alive after shutdown (a bug): %s", ref)
        return outcome
