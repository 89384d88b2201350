"""The daemon services a node's microsteps use, bound to one node of one deployment.

This is where the workflow meets the adapters (SSH, host keys) and the permanent actors (PXE,
reboot, store), always through :mod:`kadeployd.actors.directory` so that a restarted actor is
found again. It runs in the node's worker thread, never in an actor's thread.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from kadeployd.actors import directory
from kadeployd.actors.directory import Directory
from kadeployd.adapters.hostkey import fetch_host_key
from kadeployd.adapters.ssh import SshConnection, SshTarget, probe
from kadeployd.chain import Hop
from kadeployd.config import Node
from kadeployd.pxe.profiles import BootTarget
from kadeployd.pxe.user_profiles import UserProfile
from kadeployd.reboot.jobs import RebootResult
from kadeployd.reboot.levels import RebootLevel
from kadeployd.store.writes import RecordProgress
from kadeployd.workflow.cancel import CancelToken
from kadeployd.workflow.context import (
    ProbeView,
    RebootTicket,
    StepCancelled,
    StepFailed,
)
from kadeployd.workflow.job import DeploymentJob

logger = logging.getLogger(__name__)

PXE_TIMEOUT = 10.0
MANAGER_TIMEOUT = 10.0
REBOOT_RESUBMISSIONS = 3
PROGRESS_INTERVAL = 1.0
"""Seconds between two progress writes of one node (the first and the last always go)."""
VERDICT_ALLOWANCE = 3600.0
"""Upper bound of a relay's wait for its chain round's verdict once its stream ended; the
variant's timeout normally cancels long before."""


class NodeServicesImpl:
    """:class:`~kadeployd.workflow.context.NodeServices` over the real actors and adapters."""

    def __init__(
        self,
        job: DeploymentJob,
        node: Node,
        services: Directory,
        transfer_slots: threading.Semaphore,
        manager: Any,
    ) -> None:
        self._job = job
        self._node = node
        self._services = services
        self._slots = transfer_slots
        self._manager = manager
        self._verdict: tuple[threading.Event, list[str | None]] | None = None
        self._target = SshTarget.from_node(node)
        self._deploy_env_target = self._target.pinned(node.settings.boot.deploy_host_keys())
        """The deploy env's: only its pinned host keys, if the configuration has some."""
        self._in_deploy_env = False
        """Whether the node runs the deploy env, as far as the workflow knows: set when a step
        saw it (:meth:`deploy_env_reached`), cleared when the node reboots (:meth:`reset_shell`)."""
        self._connection: SshConnection | None = None
        self._lock = threading.Lock()
        self._progress_at = float("-inf")

    def bind(self, token: CancelToken) -> None:
        """Attach the cancel token of the attempt about to run: cancelling it cuts SSH."""
        token.on_cancel(self.interrupt)

    def interrupt(self) -> None:
        """Abort whatever SSH command runs now (from any thread)."""
        with self._lock:
            connection, self._connection = self._connection, None
        if connection is not None:
            connection.cancel()

    def close(self) -> None:
        """Release the SSH connection."""
        self.reset_shell()

    def set_pxe(self, target: BootTarget) -> None:
        """Write the node's PXE profile."""
        directory.call(
            self._services,
            directory.PXE,
            lambda pxe: pxe.set_profile(self._node.mac, target),
            PXE_TIMEOUT,
        )

    def set_user_pxe(self, profile: UserProfile) -> None:
        """Write a user's own profile (``kadeploy -w``) as the node's PXE profile."""
        mac = self._node.mac
        directory.call(
            self._services,
            directory.PXE,
            lambda pxe: pxe.set_user_profile([mac], profile),
            PXE_TIMEOUT,
        )

    def request_reboot(
        self, level: RebootLevel, cancelled: CancelToken, wake: Callable[[], None]
    ) -> RebootTicket:
        """Ask the RebootActor; its answer calls ``wake``."""
        return _RebootTicket(
            self._services,
            f"{self._job.deployment_id}:{self._node.name}",
            self._node,
            level,
            cancelled=cancelled,
            wake=wake,
        )

    def probe(self, deploy_env: bool = False) -> ProbeView:
        """Log in and read /proc/cmdline; ``deploy_env``: only if the node offers the deploy
        env's pinned host key (else nothing is sent, and ``refused_key`` says what it offered)."""
        target = self._deploy_env_target if deploy_env else self._target
        seen = probe(target, timeout=self._node.settings.ssh.connect_timeout)
        return ProbeView(
            seen.reachable,
            seen.cmdline or "",
            seen.error or "",
            seen.boot_id or "",
            seen.refused_host_key or "",
        )

    def deploy_env_reached(self) -> None:
        """The node runs the deploy env from now until it reboots: the shell's connections
        accept only the deploy env's pinned host keys (``boot.deploy_host_key_file``)."""
        with self._lock:
            if self._in_deploy_env:
                return
            self._in_deploy_env = True
            connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    def host_key(self) -> str | None:
        """The host key the node's SSH server offers now."""
        ssh = self._node.settings.ssh
        return fetch_host_key(self._node.address, ssh.port, ssh.connect_timeout)

    def shell(self) -> SshConnection:
        """The reused SSH connection to the node's current env (pinned to the deploy env's
        host keys while the node runs it)."""
        with self._lock:
            if self._connection is None:
                target = self._deploy_env_target if self._in_deploy_env else self._target
                self._connection = SshConnection(target)
            return self._connection

    def reset_shell(self) -> None:
        """Forget the connection: the node is about to reboot into another env."""
        with self._lock:
            self._in_deploy_env = False
            connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    def chain_secret(self) -> bytes:
        """The forming round's secret, from the deployment's manager."""
        secret: bytes = self._manager.chain_secret(self._node.name).get(timeout=MANAGER_TIMEOUT)
        return secret

    def chain_join(self, port: int) -> None:
        """Tell the manager this node's relay listens (called from the SSH reader thread)."""
        done = threading.Event()
        box: list[str | None] = []
        self._verdict = (done, box)

        def reply(verdict: str | None) -> None:
            box.append(verdict)
            done.set()
            if verdict is not None:
                self.interrupt()  # a relay cut out of the chain (e.g. frozen) is not waited for

        self._manager.chain_ready(self._node.name, Hop(self._node.address, port), reply)

    def chain_verdict(self, cancelled: CancelToken) -> str | None:
        """Wait for the round's verdict; leave the round if the attempt is cancelled."""
        if self._verdict is None:
            return "the relay never reported that it listens"
        done, box = self._verdict
        unregister = cancelled.on_cancel(done.set)
        try:
            done.wait(VERDICT_ALLOWANCE)
        finally:
            unregister()
            self._verdict = None
        if cancelled.is_set() and not box:
            self._manager.chain_leave(self._node.name)
            raise StepCancelled(cancelled.reason)
        return box[0] if box else "no verdict from the chain broadcast"

    def progress(self, bytes_done: int, bytes_total: int) -> None:
        """Record the transfer's progress in the store, at most once per
        :data:`PROGRESS_INTERVAL` (the start and the end always). Called from SSH reader or
        writer threads; never waits for the store."""
        total = max(0, int(bytes_total))
        done = min(max(0, int(bytes_done)), total)
        now = time.monotonic()
        with self._lock:
            boundary = done in {0, total}
            if not boundary and now - self._progress_at < PROGRESS_INTERVAL:
                return
            self._progress_at = now
        write = RecordProgress(self._job.deployment_id, self._node.name, done, total)
        directory.send(self._services, directory.STORE, write)

    @contextlib.contextmanager
    def broadcast_slot(self, cancelled: CancelToken) -> Iterator[None]:
        """One of the deployment's direct-transfer slots, released on exit."""
        while not self._slots.acquire(timeout=0.5):
            if cancelled.is_set():
                raise StepCancelled(cancelled.reason)
        try:
            yield
        finally:
            self._slots.release()


class _RebootTicket:
    """One reboot request to the RebootActor, submitted again to its successor if the actor
    stopped before running it (at most :data:`REBOOT_RESUBMISSIONS` times)."""

    def __init__(
        self,
        services: Directory,
        label: str,
        node: Node,
        level: RebootLevel,
        *,
        cancelled: CancelToken,
        wake: Callable[[], None],
    ) -> None:
        self._services = services
        self._label = label
        self._node = node
        self._level = level
        self._cancelled = cancelled
        self._wake = wake
        self._lock = threading.Lock()
        self._result: RebootResult | None = None
        self._request_id = ""
        self._submissions = 0
        self._submit()
        cancelled.on_cancel(self._cancel)

    def outcome(self) -> bool | None:
        """See :class:`kadeployd.workflow.context.RebootTicket`."""
        if self._cancelled.is_set():
            raise StepCancelled(self._cancelled.reason)
        with self._lock:
            result = self._result
        if result is None:
            return None
        if result.stopped:
            if self._submissions >= REBOOT_RESUBMISSIONS:
                raise StepFailed(f"{self._level} reboot: the reboot service keeps restarting")
            logger.info("%s: reboot service restarted, asking again", self._node.name)
            self._submit()
            return None
        if result.ok:
            return True
        raise StepFailed(f"{result.operation} reboot failed: {result.message}")

    def _submit(self) -> None:
        self._submissions += 1
        with self._lock:
            self._result = None
            self._request_id = f"{self._label}:{uuid.uuid4().hex[:8]}"
        request_id, node, level, reply = self._request_id, self._node, self._level, self._reply
        directory.tell(
            self._services, directory.REBOOT, lambda r: r.reboot(request_id, node, level, reply)
        )

    def _reply(self, result: RebootResult) -> None:
        with self._lock:
            self._result = result
        self._wake()

    def _cancel(self) -> None:
        with self._lock:
            answered, request_id = self._result is not None, self._request_id
        if not answered:
            directory.tell(self._services, directory.REBOOT, lambda r: r.cancel(request_id))
