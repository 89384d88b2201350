"""The variant lists one deployment runs: the configured automata, with its options applied.

A request may replace the configured automata (``force_steps``), leave out the kexec variants
of BootNewEnv (``disable_kexec``, and wherever kexec cannot apply: a reboot operation, an
environment that is not Linux or names no kernel, a ``boot_partition`` or a ``pxe`` profile,
which only a firmware boot honours) and override the timeouts of BootNewEnv's variants
(``timeout_reboot_classical`` for classical and hard_reboot, as Kadeploy3's classical
reboot timeout bounds both; ``timeout_reboot_kexec`` for kexec; in a kareboot deploy_env
operation, ``timeout_reboot_classical`` is the timeout of its SetDeploymentEnv reboot). A
BootNewEnv left with no variant gets one classical variant, as Kadeploy3 turns its kexec
instance into a classical one.
"""

from __future__ import annotations

import logging

from kadeploy_core.plans import Macrostep, Operation
from kadeployd.config import Macrosteps, Variant
from kadeployd.workflow.job import DeploymentRequest, NoEnvironment

logger = logging.getLogger(__name__)

KEXEC = "kexec"
CLASSICAL_KINDS = ("classical", "hard_reboot")


def kexec_excluded(request: DeploymentRequest) -> str | None:
    """Why the kexec variants are left out of this request's BootNewEnv, or None."""
    environment = request.environment
    if request.disable_kexec:
        return "disable_kexec"
    if request.operation != Operation.DEPLOY:
        return f"a {request.operation} operation boots through the firmware"
    if isinstance(environment, NoEnvironment) or not environment.boot.kernel:
        return "the environment names no kernel"
    if request.boot_partition is not None:
        return "boot_partition is booted by the firmware"
    if request.pxe is not None:
        return "the user's PXE profile is booted by the firmware"
    return None


def job_macrosteps(configured: Macrosteps, request: DeploymentRequest) -> Macrosteps:
    """The variant lists a node of ``request`` runs, from its ``configured`` ones."""
    macrosteps = configured
    if request.force_steps is not None:
        forced = request.force_steps.macrosteps
        macrosteps = Macrosteps.model_validate(
            {
                m.value: [
                    {"type": v.type, "retries": v.retries, "timeout": v.timeout} for v in forced[m]
                ]
                for m in Macrostep
            }
        )
    if request.operation == Operation.DEPLOY_ENV and request.timeout_reboot_classical is not None:
        # kareboot deploy_env's reboot is a classical one (Kadeploy3's wait_reboot classical)
        reboot = request.timeout_reboot_classical
        setting = tuple(
            v.model_copy(update={"timeout": reboot}) for v in macrosteps.SetDeploymentEnv
        )
        macrosteps = macrosteps.model_copy(update={"SetDeploymentEnv": setting})
    boot: list[Variant] = list(macrosteps.BootNewEnv)
    if kexec_excluded(request) is not None:
        dropped = [v for v in boot if v.type == KEXEC]
        boot = [v for v in boot if v.type != KEXEC]
        if not boot and dropped:
            timeout = str(dropped[0].timeout)
            boot = [Variant.model_validate({"type": "classical", "timeout": timeout})]
    classical, kexec = request.timeout_reboot_classical, request.timeout_reboot_kexec
    boot = [
        v.model_copy(update={"timeout": classical})
        if classical is not None and v.type in CLASSICAL_KINDS
        else v.model_copy(update={"timeout": kexec})
        if kexec is not None and v.type == KEXEC
        else v
        for v in boot
    ]
    if tuple(boot) == macrosteps.BootNewEnv:
        return macrosteps
    return macrosteps.model_copy(update={"BootNewEnv": tuple(boot)})
