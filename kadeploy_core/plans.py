"""What runs for a node, as data: macrosteps, their variants, and each variant's microsteps.

A microstep is named (the names users give ``--breakpoint`` and ``--custom-steps``) and says
which event of :mod:`kadeploy_core.machine` it fires before its work starts (``enters``: the
node shows what it is doing now) and, for the few whose success is itself news, after
(``reached``: e.g. the deploy env answers). The daemon binds each name to the code that runs
it (``kadeployd/workflow/steps.py``); this module only says what, in which order, in which state.

=================  ============  ====================================================
macrostep          variant       microsteps (entering event)
=================  ============  ====================================================
SetDeploymentEnv   untrusted     switch_pxe_to_deploy_env, reboot_escalating (reboot_ordered),
                                 wait_deploy_env (-> deploy_env_reached), partition_disk,
                                 format_deploy_partition, format_tmp_partition
                                 (partitioning_started)
                   prod          check_prod_env (deploy_env_reached), format_deploy_partition,
                                 format_tmp_partition
                   dummy         nothing (deploy_env_reached)
BroadcastEnv       chain/direct  send_image_chain | send_image_direct (transfer_started),
                                 run_postinstalls, copy_user_keys, check_kernel_files,
                                 install_bootloader, sync_and_umount (postinstall_started)
                   dummy         nothing (transfer_started)
BootNewEnv         classical     switch_pxe_to_deployed_env, reboot_escalating,
                                 wait_deployed_env (boot_ordered)
                   hard_reboot   the same with reboot_hard
                   kexec         switch_pxe_to_deployed_env, kexec_deployed_env (the deploy
                                 env loads the deployed kernel and jumps to it: no firmware,
                                 no PXE), wait_deployed_env (boot_ordered)
                   dummy         nothing (boot_ordered)
=================  ============  ====================================================

kareboot's ``deploy_env`` and ``recorded_env`` reuse the workflow with fewer macrosteps
(:data:`OPERATION_MACROSTEPS`) and their own microsteps (:func:`microsteps`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from kadeploy_core.machine import NodeEvent


class Macrostep(StrEnum):
    """The three macrosteps of a deployment, in the order they run."""

    SET_DEPLOYMENT_ENV = "SetDeploymentEnv"
    BROADCAST_ENV = "BroadcastEnv"
    BOOT_NEW_ENV = "BootNewEnv"


class Operation(StrEnum):
    """What a job does to its nodes: a deployment, or a kareboot that reuses its workflow."""

    DEPLOY = "deploy"
    DEPLOY_ENV = "deploy_env"
    """kareboot -r deploy_env: PXE to the deploy kernel, reboot, wait for the deploy env."""
    RECORDED_ENV = "recorded_env"
    """kareboot -r recorded_env: boot the environment already on the deploy partition."""


@dataclass(frozen=True, slots=True)
class MicrostepPlan:
    """One named unit of work of a variant, and the events around it."""

    name: str
    enters: NodeEvent | None = None
    """Fired before the work starts (None: the node stays in its state)."""
    reached: NodeEvent | None = None
    """Fired once the work succeeded (None: nothing to announce)."""


E = NodeEvent
_m = MicrostepPlan
_BROADCAST_TAIL = (
    _m("run_postinstalls", E.POSTINSTALL_STARTED),
    _m("copy_user_keys", E.POSTINSTALL_STARTED),
    _m("check_kernel_files", E.POSTINSTALL_STARTED),
    _m("install_bootloader", E.POSTINSTALL_STARTED),
    _m("sync_and_umount", E.POSTINSTALL_STARTED),
)

VARIANT_PLANS: dict[Macrostep, dict[str, tuple[MicrostepPlan, ...]]] = {
    Macrostep.SET_DEPLOYMENT_ENV: {
        "untrusted": (
            _m("switch_pxe_to_deploy_env", E.REBOOT_ORDERED),
            _m("reboot_escalating", E.REBOOT_ORDERED),
            _m("wait_deploy_env", reached=E.DEPLOY_ENV_REACHED),
            _m("partition_disk", E.PARTITIONING_STARTED),
            _m("format_deploy_partition", E.PARTITIONING_STARTED),
            _m("format_tmp_partition", E.PARTITIONING_STARTED),
        ),
        "prod": (
            _m("check_prod_env", E.DEPLOY_ENV_REACHED),
            _m("format_deploy_partition", E.PARTITIONING_STARTED),
            _m("format_tmp_partition", E.PARTITIONING_STARTED),
        ),
        "dummy": (_m("nothing", E.DEPLOY_ENV_REACHED),),
    },
    Macrostep.BROADCAST_ENV: {
        "chain": (_m("send_image_chain", E.TRANSFER_STARTED), *_BROADCAST_TAIL),
        "direct": (_m("send_image_direct", E.TRANSFER_STARTED), *_BROADCAST_TAIL),
        "dummy": (_m("nothing", E.TRANSFER_STARTED),),
    },
    Macrostep.BOOT_NEW_ENV: {
        "classical": (
            _m("switch_pxe_to_deployed_env", E.BOOT_ORDERED),
            _m("reboot_escalating", E.BOOT_ORDERED),
            _m("wait_deployed_env", E.BOOT_ORDERED),
        ),
        "hard_reboot": (
            _m("switch_pxe_to_deployed_env", E.BOOT_ORDERED),
            _m("reboot_hard", E.BOOT_ORDERED),
            _m("wait_deployed_env", E.BOOT_ORDERED),
        ),
        "kexec": (
            _m("switch_pxe_to_deployed_env", E.BOOT_ORDERED),
            _m("kexec_deployed_env", E.BOOT_ORDERED),
            _m("wait_deployed_env", E.BOOT_ORDERED),
        ),
        "dummy": (_m("nothing", E.BOOT_ORDERED),),
    },
}
"""A deployment's microsteps, by macrostep and variant."""

VARIANTS: dict[Macrostep, tuple[str, ...]] = {m: tuple(v) for m, v in VARIANT_PLANS.items()}
"""The variant names of each macrostep (what the configuration may list)."""

OPERATION_MACROSTEPS: dict[Operation, tuple[Macrostep, ...]] = {
    Operation.DEPLOY: tuple(Macrostep),
    Operation.DEPLOY_ENV: (Macrostep.SET_DEPLOYMENT_ENV,),
    Operation.RECORDED_ENV: (Macrostep.BOOT_NEW_ENV,),
}
"""The macrosteps each operation runs, in order."""

_DEPLOY_ENV_STEPS = (
    _m("switch_pxe_to_deploy_env", E.REBOOT_ORDERED),
    _m("reboot_from_level", E.REBOOT_ORDERED),
    _m("wait_for_deploy_env", E.BOOT_ORDERED),
)
"""kareboot deploy_env, whatever way the cluster reaches the deploy env for a deployment."""

_RECORDED_ENV_RENAMES = {
    "reboot_escalating": "reboot_from_level",
    "reboot_hard": "reboot_from_level",
    "wait_deployed_env": "wait_for_recorded_env",
}
"""kareboot recorded_env: the BootNewEnv variant's microsteps, rebooting at the level asked
and waiting for a node that may come back with the host key it had."""


SET_VLAN = _m("set_vlan", E.BOOT_ORDERED)
"""``kadeploy --vlan``: the last microstep of every BootNewEnv variant, once the node
answers in its new env: the site's switch command moves it onto the VLAN (Kadeploy3's
set_vlan; after it the daemon may no longer reach the node, so nothing follows)."""


SEND_KEY = _m("send_key_in_deploy_env", E.BOOT_ORDERED)
"""``kareboot -r deploy_env -k``: the user's keys appended to the deploy env's root keys,
once it answers (before set_vlan, after which the daemon may no longer reach it)."""


def microsteps(
    operation: Operation,
    macrostep: Macrostep,
    variant: str,
    *,
    vlan: bool = False,
    keys: bool = False,
) -> tuple[MicrostepPlan, ...]:
    """What runs for an attempt of ``variant`` of ``macrostep`` in ``operation``; with
    ``vlan``, BootNewEnv ends with :data:`SET_VLAN`, and so does kareboot deploy_env's
    reboot (Kadeploy3's reboots run set_vlan too); with ``keys``, deploy_env's reboot ends
    with :data:`SEND_KEY`."""
    steps = _variant_microsteps(operation, macrostep, variant)
    if keys and operation == Operation.DEPLOY_ENV and variant != "dummy":
        steps = (*steps, SEND_KEY)  # a dummy deploy env is no system to send keys to
    if vlan and (macrostep == Macrostep.BOOT_NEW_ENV or operation == Operation.DEPLOY_ENV):
        return (*steps, SET_VLAN)
    return steps


def _variant_microsteps(
    operation: Operation, macrostep: Macrostep, variant: str
) -> tuple[MicrostepPlan, ...]:
    """What runs for an attempt of ``variant`` of ``macrostep`` in ``operation``."""
    if operation == Operation.DEPLOY_ENV:
        return (_m("nothing", E.BOOT_ORDERED),) if variant == "dummy" else _DEPLOY_ENV_STEPS
    chosen = VARIANT_PLANS[macrostep][variant]
    if operation == Operation.DEPLOY:
        return chosen
    return tuple(
        MicrostepPlan(_RECORDED_ENV_RENAMES.get(m.name, m.name), m.enters, m.reached)
        for m in chosen
    )
