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
from collections.abc import Iterator
from typing import Any

from kadeployd.actors import directory
from kadeployd.actors.directory import Directory
from kadeployd.adapters.hostkey import fetch_host_key
from kadeployd.adapters.ssh import SshConnection, SshTarget, probe
from kadeployd.chain import Hop
from kadeployd.config import Node
from kadeployd.pxe.profiles import BootTarget
from kadeployd.reboot.jobs import RebootResult
from kadeployd.reboot.levels import RebootLevel
from kadeployd.store.writes import RecordProgress
from kadeployd.workflow.cancel import CancelToken
from kadeployd.workflow.context import (
    ProbeView,
    SoftRebootUnconfirmed,
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
REBOOT_QUEUE_ALLOWANCE = 3600.0
"""Upper bound of a reboot request's wait in the reboot window queue; the variant's timeout
normally cancels long before."""


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

    def reboot(self, level: RebootLevel, cancelled: CancelToken) -> None:
        """Ask the RebootActor; ask its successor if it was restarted before answering."""
        for _incarnation in range(REBOOT_RESUBMISSIONS):
            result = self._reboot_once(level, cancelled)
            if cancelled.is_set():
                raise StepCancelled(cancelled.reason)
            if result is not None and not result.stopped:
                if result.ok:
                    return
                if result.operation == RebootLevel.SOFT:
                    raise SoftRebootUnconfirmed(f"soft reboot: {result.message}")
                raise StepFailed(f"{result.operation} reboot failed: {result.message}")
            logger.info("%s: reboot service restarted, asking again", self._node.name)
        raise StepFailed(f"{level} reboot: the reboot service keeps restarting")

    def _reboot_once(self, level: RebootLevel, cancelled: CancelToken) -> RebootResult | None:
        """One request; None if the service died without answering."""
        done = threading.Event()
        box: list[RebootResult] = []
        request_id = f"{self._job.deployment_id}:{self._node.name}:{uuid.uuid4().hex[:8]}"

        def reply(result: RebootResult) -> None:
            box.append(result)
            done.set()

        ref = self._services.child(directory.REBOOT, PXE_TIMEOUT)
        ref.proxy().reboot(request_id, self._node, level, reply)
        unregister = cancelled.on_cancel(done.set)
        try:
            waited = 0.0
            while not done.wait(1.0):
                waited += 1.0
                if not ref.is_alive():
                    return None
                if waited > REBOOT_QUEUE_ALLOWANCE:
                    raise StepFailed(f"{level} reboot: no answer from the reboot service")
        finally:
            unregister()
        if cancelled.is_set() and not box:
            directory.tell(self._services, directory.REBOOT, lambda r: r.cancel(request_id))
        return box[0] if box else None

    def probe(self) -> ProbeView:
        """Log in and read /proc/cmdline."""
        seen = probe(self._target, timeout=self._node.settings.ssh.connect_timeout)
        return ProbeView(seen.reachable, seen.cmdline or "", seen.error or "")

    def host_key(self) -> str | None:
        """The host key the node's SSH server offers now."""
        ssh = self._node.settings.ssh
        return fetch_host_key(self._node.address, ssh.port, ssh.connect_timeout)

    def shell(self) -> SshConnection:
        """The reused SSH connection to the node's current env."""
        with self._lock:
            if self._connection is None:
                self._connection = SshConnection(self._target)
            return self._connection

    def reset_shell(self) -> None:
        """Forget the connection: the node is about to reboot into another env."""
        with self._lock:
            connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    def chain_secret(self) -> bytes:
        """The forming round's secret, from the deployment's manager."""
        secret: bytes = self._manager.chain_secret().get(timeout=MANAGER_TIMEOUT)
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
            done.wait(REBOOT_QUEUE_ALLOWANCE)
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
