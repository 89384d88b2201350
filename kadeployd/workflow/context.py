"""What a microstep gets to work with, and how it reports its outcome.

Microsteps run on the daemon's bounded pools (:mod:`kadeployd.runtime`), never in an actor's
own thread: they block on SSH commands, bounded by their own timeouts, and the node's actor
stays free to handle an abort or the variant's timeout at once. ``cancelled`` is set by the
actor in both cases; a step waiting on anything waits on it too.

A step never waits for long itself: one that must wait for the node (a reboot, a boot)
checks once and returns :class:`Again`; the actor runs it again after that many seconds, on a
timer, or as soon as something calls :meth:`StepContext.wake` (e.g. the reboot service's
answer). Between two runs no thread is held. ``scratch`` keeps what a step needs across its
runs; ``memory`` keeps facts across steps and attempts.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from kadeploy_core.errors import KadeployError
from kadeploy_core.policy import Position
from kadeployd.adapters.commands import CommandResult
from kadeployd.config import DiskSettings, Node
from kadeployd.pxe.profiles import BootTarget
from kadeployd.pxe.user_profiles import UserProfile
from kadeployd.reboot.levels import RebootLevel
from kadeployd.workflow.cancel import CancelToken
from kadeployd.workflow.job import DeploymentJob


@dataclass(frozen=True, slots=True)
class Again:
    """A microstep's answer meaning "not yet": run me again in ``after`` seconds, or sooner
    if woken."""

    after: float


class StepFailed(KadeployError):
    """An expected failure of a microstep (node unreachable, command failed): retried."""


class StepCancelled(KadeployError):
    """The step was interrupted by an abort or by the variant's timeout."""


class RemoteShell(Protocol):
    """The SSH connection to the node, as microsteps use it."""

    def run(
        self,
        argv: list[str] | None = None,
        script: str | None = None,
        *,
        timeout: float,
        stdin: Any = None,
        on_output: Callable[[str, str], None] | None = None,
    ) -> CommandResult:
        """Run a command or a shell script on the node."""
        ...


class NodeServices(Protocol):
    """Daemon services a microstep calls; implemented by the node's actor with the real actors."""

    def set_pxe(self, target: BootTarget) -> None:
        """Write the node's PXE profile (bounded wait)."""
        ...

    def set_user_pxe(self, profile: UserProfile) -> None:
        """Write a user's own profile as the node's PXE profile (bounded wait)."""
        ...

    def request_reboot(
        self, level: RebootLevel, cancelled: CancelToken, wake: Callable[[], None]
    ) -> RebootTicket:
        """Ask the reboot service to reboot the node at ``level``; ``wake()`` is called when
        the answer is in (from another thread)."""
        ...

    def probe(self, deploy_env: bool = False) -> ProbeView:
        """One quick authenticated look at the node: reachable? and its /proc/cmdline.
        ``deploy_env``: a look for the deploy env, which logs in only if the node offers the
        deploy env's pinned host key (``boot.deploy_host_key_file``), if any."""
        ...

    def deploy_env_reached(self) -> None:
        """The node runs the deploy env until its next reboot (:meth:`reset_shell`): the
        shell's connections accept only the deploy env's pinned host keys."""
        ...

    def host_key(self) -> str | None:
        """The node's SSH host key fingerprint, without logging in; None if unreachable."""
        ...

    def chain_secret(self) -> bytes:
        """The secret of the chain round this node is about to join."""
        ...

    def chain_join(self, port: int) -> None:
        """Report this node's relay listening on ``port``: it joins the forming round."""
        ...

    def chain_verdict(self, cancelled: CancelToken) -> str | None:
        """Wait for the round's verdict on this node: None if it got a correct image."""
        ...

    def progress(self, bytes_done: int, bytes_total: int) -> None:
        """Report how far the image transfer is (fire and forget, rate-limited: cheap to call
        often; the first report, 0, and the last, ``bytes_done == bytes_total``, always go)."""
        ...

    def broadcast_slot(self, cancelled: CancelToken) -> AbstractContextManager[None]:
        """Hold one of the deployment's direct-transfer slots (bounded concurrency)."""
        ...

    def shell(self) -> RemoteShell:
        """The (reused) SSH connection to the node's current env."""
        ...

    def reset_shell(self) -> None:
        """Drop the SSH connection (the node rebooted: the next one is a new env)."""
        ...


class RebootTicket(Protocol):
    """A reboot request on its way."""

    def outcome(self) -> bool | None:
        """None while the command has not answered; True once it succeeded. Raises
        StepFailed if it failed, StepCancelled if cancelled."""
        ...


@dataclass(frozen=True, slots=True)
class ProbeView:
    """What a probe saw."""

    reachable: bool
    cmdline: str = ""
    error: str = ""
    boot_id: str = ""
    """The kernel's id of the boot the node runs ("" when it could not be read)."""
    refused_key: str = ""
    """The host key the node offered to a deploy env probe, not the pinned one ("" if none):
    the node answers, but not as the deploy env; nothing was sent to it."""


@dataclass
class StepContext:
    """Everything a microstep may use, for one node of one deployment."""

    job: DeploymentJob
    node: Node
    position: Position
    variant: str
    services: NodeServices
    cancelled: CancelToken
    log: Callable[[str, str], None]
    """``log(stream, text)``: kept in the node's log in the store."""
    wake: Callable[[], None]
    """Run the step again now rather than after its :class:`Again` delay (any thread)."""
    memory: dict[str, str] = field(default_factory=dict)
    """Facts a later step needs, e.g. the deploy env's host key (survives retries)."""
    scratch: dict[str, Any] = field(default_factory=dict)
    """What one microstep keeps between its runs (emptied when the next microstep starts)."""
    waiting: str = ""
    """What a waiting microstep last saw, added to the timeout's message if its variant times
    out meanwhile (e.g. the host key a node offers instead of the deploy env's)."""

    @property
    def disk(self) -> DiskSettings:
        """The node's disk settings, with the block device the request asked for (``-b``)."""
        disk = self.node.settings.disk
        if self.job.block_device is None:
            return disk
        return disk.model_copy(update={"block_device": self.job.block_device})

    @property
    def deploy_partition(self) -> int:
        """The partition the environment goes to."""
        return self.job.deploy_partition or self.node.settings.disk.deploy_partition

    @property
    def deploy_device(self) -> str:
        """Device path of the deploy partition on the node."""
        return self.disk.partition_path(self.deploy_partition)

    @property
    def command_timeout(self) -> float:
        """Upper bound of any single remote command."""
        return self.node.settings.ssh.command_timeout

    def check_cancelled(self) -> None:
        """Raise StepCancelled if the step was cancelled."""
        if self.cancelled.is_set():
            raise StepCancelled(self.cancelled.reason)

    def run(self, script: str, *, stdin: Any = None, what: str) -> CommandResult:
        """Run ``script`` on the node, log it, raise StepFailed on failure."""
        self.check_cancelled()
        self.log("cmd", script)
        result = self.services.shell().run(
            script=script, timeout=self.command_timeout, stdin=stdin, on_output=self.log
        )
        return self.checked(result, what, self.command_timeout)

    def checked(self, result: CommandResult, what: str, timeout: float) -> CommandResult:
        """``result`` of a remote command run for ``what`` with ``timeout``; StepCancelled if
        the step was cancelled meanwhile, StepFailed naming ``what`` if it timed out or
        failed."""
        self.check_cancelled()
        if result.timed_out:
            raise StepFailed(f"{what}: timed out after {timeout:g} s")
        if result.returncode != 0:
            tail = result.stderr_tail(5).strip() or result.stdout[-500:].strip()
            raise StepFailed(f"{what}: exit status {result.returncode}: {tail}")
        return result
