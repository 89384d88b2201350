"""Microsteps that Kadeploy3's deployment options drive: the /tmp partition (``-r``), the
boot loader (``--disable-bootloader-install``) and the kexec boot of the deployed env.

Like :mod:`kadeployd.workflow.steps`, each is a function of a :class:`StepContext`; remote
work is shell text in which every value from the request, the configuration or the
environment description is quoted with :func:`shlex.quote`.
"""

from __future__ import annotations

import logging
import shlex
import time

from kadeployd.workflow.context import Again, StepContext, StepFailed
from kadeployd.workflow.job import MOUNT_POINT

logger = logging.getLogger(__name__)

_MNT = shlex.quote(MOUNT_POINT)
_FORCE = {"ext2": "-F", "ext3": "-F", "ext4": "-F", "xfs": "-f", "btrfs": "-f"}
"""The flag that lets mkfs overwrite an existing filesystem without asking."""
_MAX_LINKS = 16
"""Symbolic links followed at most to find the kernel inside the deployed partition."""


def format_tmp_partition(ctx: StepContext) -> None:
    """``-r FSTYPE``: make a fresh FSTYPE filesystem on the node's /tmp partition
    (``disk.tmp_partition``); nothing without the option."""
    fstype = ctx.job.request.reformat_tmp
    if fstype is None:
        return
    number = ctx.node.settings.disk.tmp_partition
    if number is None:  # refused at admission; a reload may have removed it since
        raise StepFailed(f"reformat_tmp: the node has no disk.tmp_partition ({fstype} asked)")
    device = shlex.quote(ctx.disk.partition_path(number))
    force = _FORCE.get(fstype, "")
    ctx.run(
        f"umount {device} 2>/dev/null; mkfs.{shlex.quote(fstype)} {force} {device}",
        what=f"mkfs.{fstype} of the tmp partition",
    )


def install_bootloader(ctx: StepContext) -> None:
    """Run the cluster's boot loader script (``disk.bootloader_script``) with the deployed
    partition mounted, as Kadeploy3's install_bootloader does; skipped with
    ``disable_bootloader_install`` or without a script."""
    if ctx.job.request.disable_bootloader_install:
        ctx.log("info", "install_bootloader skipped: disable_bootloader_install")
        return
    script = ctx.disk.bootloader_script
    if script is None:
        return
    try:
        text = script.read_bytes()
    except OSError as exc:
        raise StepFailed(f"boot loader script {script}: {exc.strerror}") from None
    env = {
        "KADEPLOY_BLOCK_DEVICE": ctx.disk.block_device,
        "KADEPLOY_DEPLOY_PART": ctx.deploy_device,
        "KADEPLOY_DEPLOY_PART_NUM": str(ctx.deploy_partition),
        "KADEPLOY_ENV_EXTRACTION_DIR": MOUNT_POINT,
        "KADEPLOY_ENV_KERNEL": ctx.job.environment.boot.kernel,
        "KADEPLOY_ENV_INITRD": ctx.job.environment.boot.initrd or "",
        "KADEPLOY_ENV_KERNEL_PARAMS": ctx.job.environment.boot.kernel_params,
    }
    assignments = " ".join(f"{name}={shlex.quote(value)}" for name, value in env.items())
    ctx.run(f"{assignments} sh -s", stdin=text, what="boot loader script")


def _resolve(variable: str, path: str) -> str:
    """Shell text setting ``variable`` to ``path`` inside the mounted partition, its symbolic
    links followed as if the partition were the root (``/vmlinuz -> boot/vmlinuz-6.1``)."""
    return (
        f"{variable}={shlex.quote(path)}; i=0; "
        f'while [ -L {_MNT}"${variable}" ] && [ $i -lt {_MAX_LINKS} ]; do '
        f't=$(readlink {_MNT}"${variable}"); i=$((i + 1)); '
        f'case "$t" in /*) {variable}=$t ;; *) {variable}=$(dirname "${variable}")/$t ;; esac; '
        "done"
    )


def kexec_deployed_env(ctx: StepContext) -> Again | None:
    """Load the deployed env's kernel and initrd from the deploy partition into the running
    deploy env (``kexec -l``, checked), then jump to it (``kexec -e``, detached so that the
    command answers first): the node boots the new env without its firmware and PXE.

    Done once the deploy env is gone (the node no longer answers as this boot of the deploy
    env); a node still running the same boot ``power.soft_reboot_grace`` seconds after the
    jump did not take it, and fails the attempt at once (the next variant, classical, boots
    it through the firmware) rather than waiting out the variant's timeout.

    The wait that follows (wait_deployed_env) must not escalate to a reboot: a reboot would
    boot through PXE, which is the classical variant's business, tried next if this one
    fails or times out.
    """
    if "jumped_at" not in ctx.scratch:
        _load_and_jump(ctx)
        return Again(ctx.node.settings.boot.check_interval)
    seen = ctx.services.probe(deploy_env=True)
    before = ctx.scratch["boot_id"]
    if not seen.reachable or not before or seen.boot_id != before:
        return None  # the deploy env is gone: the new env is on its way
    waited = time.monotonic() - ctx.scratch["jumped_at"]
    if waited < ctx.node.settings.power.soft_reboot_grace:
        return Again(ctx.node.settings.boot.check_interval)
    raise StepFailed(
        f"kexec -e: the node still runs its deploy env (boot {before}) {waited:.0f} s later"
    )


def _load_and_jump(ctx: StepContext) -> None:
    boot = ctx.job.environment.boot
    if not boot.kernel:
        raise StepFailed("kexec: the environment names no kernel")
    params = f"{boot.kernel_params} root={ctx.deploy_device}".strip()
    device = shlex.quote(ctx.deploy_device)
    lines = [
        f"umount {_MNT} 2>/dev/null; mkdir -p {_MNT} && mount -o ro {device} {_MNT} || exit 1",
        _resolve("kernel", boot.kernel),
        f'set -- -l {_MNT}"$kernel" --append={shlex.quote(params)}',
    ]
    if boot.initrd:
        lines += [_resolve("initrd", boot.initrd), f'set -- "$@" --initrd={_MNT}"$initrd"']
    lines += ['kexec "$@"; status=$?', f"umount {_MNT}", "exit $status"]
    ctx.run("\n".join(lines), what="kexec -l of the deployed kernel")
    seen = ctx.services.probe(deploy_env=True)
    ctx.scratch["boot_id"] = seen.boot_id if seen.reachable else ""
    ctx.memory["host_key_before_reboot"] = ctx.services.host_key() or ""
    ctx.memory.pop("reboot_answered_at", None)  # no reboot escalation: see the docstring
    ctx.run(
        "nohup sh -c 'sleep 1; kexec -e' </dev/null >/dev/null 2>&1 &",
        what="kexec -e",
    )
    ctx.services.reset_shell()
    ctx.scratch["jumped_at"] = time.monotonic()
