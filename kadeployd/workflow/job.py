"""What one deployment asks for (the request) and the running job built from it (frozen)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from kadeploy_core.breakpoint import Breakpoint
from kadeploy_core.custom_ops import CustomSteps
from kadeploy_core.environment import EnvironmentDescription, ImageKind
from kadeploy_core.errors import KadeployError
from kadeploy_core.forcesteps import ForcedSteps
from kadeploy_core.plans import Operation
from kadeployd.config.timeouts import Timeout
from kadeployd.pxe.user_profiles import UserProfile
from kadeployd.reboot.levels import RebootLevel

MOUNT_POINT = "/mnt/dest"
"""Where the deploy partition is mounted in the deploy env (Kadeploy3's path)."""


class NoEnvironment(BaseModel):
    """Stands for the environment of a job that boots none (kareboot -r deploy_env): what the
    store records as its environment."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    version: int | None = None


SINGULARITY = "NODE_SINGULARITY"
"""What Kadeploy3 replaces by each node's value in a user's profile (``--set-pxe-pattern``)."""


@dataclass(frozen=True, slots=True)
class CustomPxe:
    """``kadeploy -w``: the user's checked profile (``FILES_PREFIX`` substituted) that
    BootNewEnv writes for each node, and each node's singularity."""

    profile: UserProfile
    singularities: Mapping[str, str] | None = None
    files: tuple[str, ...] = ()
    """The names of the files published under the user's TFTP directory."""

    def for_node(self, node: str) -> UserProfile:
        """The profile of ``node``: ``NODE_SINGULARITY`` replaced by its value ("" if none)."""
        if self.singularities is None or SINGULARITY not in self.profile.text:
            return self.profile
        value = self.singularities.get(node, "")
        return UserProfile(self.profile.user, self.profile.text.replace(SINGULARITY, value))

    def shown(self) -> dict[str, Any]:
        """As recorded in the deployment's options."""
        singularities = dict(self.singularities) if self.singularities is not None else None
        return {
            "profile": self.profile.text,
            "singularities": singularities,
            "files": list(self.files),
        }


@dataclass(frozen=True, slots=True)
class DeploymentRequest:
    """A user's request, validated: environment, nodes, options."""

    user: str
    environment: EnvironmentDescription | NoEnvironment
    nodes: tuple[str, ...]
    authorized_keys: str = ""
    """The user's public keys (``-k``), appended to the deployed root's authorized_keys."""
    min_nodes: int | None = None
    deploy_partition: int | None = None
    """``-p``: overrides the node's configured deploy partition."""
    block_device: str | None = None
    """``-b``: overrides the node's configured block device (``disk.block_device``)."""
    anonymous: bool = True
    """An environment sent with the request rather than taken from the catalogue."""
    operation: Operation = Operation.DEPLOY
    reboot_level: RebootLevel = RebootLevel.SOFT
    """The first reboot's level in a reboot operation (``kareboot -l``); retries go harder."""
    breakpoint: Breakpoint | None = None
    """``--breakpoint``: where each node stops (kadeploy_core/breakpoint.py)."""
    custom_steps: CustomSteps | None = None
    """``--custom-steps``: operations around microsteps (kadeploy_core/custom_ops.py)."""
    vlan: str | None = None
    """``--vlan``: the VLAN id each node is moved onto once it booted its new env
    (kadeployd/workflow/vlan.py)."""
    boot_partition: int | None = None
    """``-c``: the partition BootNewEnv boots instead of the deploy partition (0: the disk's
    own boot record); a firmware boot, so no kexec."""
    reformat_tmp: str | None = None
    """``-r FSTYPE``: SetDeploymentEnv makes this filesystem on ``disk.tmp_partition``."""
    disable_disk_partitioning: bool = False
    """``--disable-disk-partitioning``: partition_disk does nothing."""
    disable_bootloader_install: bool = False
    """``--disable-bootloader-install``: install_bootloader does nothing."""
    disable_kexec: bool = False
    """``--no-kexec``: the kexec variants of BootNewEnv are left out."""
    timeout_reboot_classical: Timeout | None = None
    """``--reboot-classical-timeout``: the timeout of BootNewEnv's classical and hard_reboot
    variants."""
    timeout_reboot_kexec: Timeout | None = None
    """``--reboot-kexec-timeout``: the timeout of BootNewEnv's kexec variants."""
    force_steps: ForcedSteps | None = None
    """``--force-steps``: the automata of this deployment instead of the configured one."""
    pxe: CustomPxe | None = None
    """``-w``/``-x``/``--set-pxe-pattern``: the user's profile BootNewEnv writes."""

    def options(self) -> dict[str, Any]:
        """The options as recorded in the store."""
        options: dict[str, Any] = {
            "deploy_partition": self.deploy_partition,
            "keys": bool(self.authorized_keys),
        }
        if self.block_device is not None:
            options["block_device"] = self.block_device
        if self.operation != Operation.DEPLOY:
            options["operation"] = self.operation.value
            options["reboot_level"] = self.reboot_level.value
        if self.breakpoint is not None:
            options["breakpoint"] = str(self.breakpoint)
        if self.custom_steps is not None:
            options["custom_steps"] = self.custom_steps.shown()
        if self.vlan is not None:
            options["vlan"] = self.vlan
        return options | self._kadeploy3_options()

    def _kadeploy3_options(self) -> dict[str, Any]:
        """The Kadeploy3 deployment options given, under their API names."""
        options: dict[str, Any] = {}
        for name in ("boot_partition", "reformat_tmp"):
            if getattr(self, name) is not None:
                options[name] = getattr(self, name)
        for name in ("disable_disk_partitioning", "disable_bootloader_install", "disable_kexec"):
            if getattr(self, name):
                options[name] = True
        for name in ("timeout_reboot_classical", "timeout_reboot_kexec"):
            if getattr(self, name) is not None:
                options[name] = str(getattr(self, name))
        if self.force_steps is not None:
            options["force_steps"] = self.force_steps.text
        if self.pxe is not None:
            options["pxe"] = self.pxe.shown()
        return options


@dataclass(frozen=True, slots=True)
class BootFilesRef:
    """Kernel and initrd of the environment, published on the TFTP server."""

    kernel: str
    initrd: str | None


@dataclass(frozen=True, slots=True)
class DeploymentJob:
    """A request being carried out under its deployment id."""

    deployment_id: str
    request: DeploymentRequest
    boot_files: BootFilesRef | None = None
    """Set by the manager once the kernel is published; None boots the partition by chain."""
    image_checks_itself: bool = False
    """Set by the manager: decompressing the image checks every byte (see
    :func:`kadeployd.environment.image.checks_itself`), so chain relays compute no digest."""

    @property
    def environment(self) -> EnvironmentDescription:
        """The environment being deployed (a job that boots none has no such thing)."""
        environment = self.request.environment
        if isinstance(environment, NoEnvironment):
            raise KadeployError(f"{self.request.operation} job {self.deployment_id} has no image")
        return environment

    @property
    def operation(self) -> Operation:
        """What the job does: a deployment or a kind of reboot."""
        return self.request.operation

    @property
    def nodes(self) -> tuple[str, ...]:
        """The target nodes, in deployment order."""
        return self.request.nodes

    @property
    def authorized_keys(self) -> str:
        """The user's public keys."""
        return self.request.authorized_keys

    @property
    def deploy_partition(self) -> int | None:
        """The requested deploy partition, if any."""
        return self.request.deploy_partition

    @property
    def block_device(self) -> str | None:
        """The requested block device, if any."""
        return self.request.block_device

    @property
    def image(self) -> Path:
        """The image file."""
        return self.environment.image.file

    @property
    def node_count(self) -> int:
        """``n`` in timeout expressions."""
        return len(self.request.nodes)

    @property
    def publishes_boot_files(self) -> bool:
        """Whether the job needs the environment's kernel on the TFTP server: a deployment
        does (it checks its image), a reboot into a recorded tar environment does, the others
        chain to a partition or boot the deploy kernel."""
        if self.operation == Operation.DEPLOY:
            return True
        if self.operation == Operation.DEPLOY_ENV:
            return False
        return self.environment.image.kind == ImageKind.TAR
