"""The microsteps of the deployment workflow, Kadeploy3 style.

Each is a function of a :class:`StepContext` that raises :class:`StepFailed` when the node does
not do what it should. Remote work is shell text run over SSH; every value that comes from
configuration or from an environment description is quoted with :func:`shlex.quote`.
"""

from __future__ import annotations

import contextlib
import shlex
from collections.abc import Callable, Iterator
from typing import BinaryIO

from kadeployd.chain import (
    ReportError,
    parse_report,
    relay_arguments,
    relay_launch,
    relay_stdin,
)
from kadeployd.environment import Compression, ImageKind, ScriptArchive
from kadeployd.pxe.profiles import ChainPartition, DeployKernel, NetworkKernel
from kadeployd.reboot.levels import LEVELS, RebootLevel, escalate
from kadeployd.workflow.context import SoftRebootUnconfirmed, StepContext, StepFailed
from kadeployd.workflow.job import MOUNT_POINT
from kadeployd.workflow.states import NodeState

DEPLOY_MARKER = "kadeploy.deployment"
"""Kernel parameter added to the deploy env's APPEND line: seeing ``kadeploy.deployment=<id>``
in /proc/cmdline proves the node booted the deploy env of this deployment, not a stale one."""

_DECOMPRESS = {
    Compression.GZIP: "gzip -dc",
    Compression.ZSTD: "zstd -dc",
    Compression.XZ: "xz -dc",
    Compression.NONE: "cat",
}
_MNT = shlex.quote(MOUNT_POINT)
_PIECE = 1024 * 1024
"""Size of the image pieces the direct transfer reads (the SSH adapter's stdin piece)."""


def _bash(script: str) -> str:
    """Run ``script`` under bash with pipefail, so a failure inside a pipeline is seen."""
    return f"bash -o pipefail -c {shlex.quote(script)}"


def nothing(ctx: StepContext) -> None:
    """The ``dummy`` variants: the node passes through the macrostep's state, nothing runs."""
    ctx.log("info", f"{ctx.position.macrostep}: dummy variant, nothing done")


# ---------------------------------------------------------------- SetDeploymentEnv


def switch_pxe_to_deploy_env(ctx: StepContext) -> None:
    """Point the node's PXE profile at the deploy kernel, marked with the deployment id."""
    boot = ctx.node.settings.boot
    params = f"{boot.deploy_kernel_params} {DEPLOY_MARKER}={ctx.job.deployment_id}".strip()
    ctx.services.set_pxe(DeployKernel(boot.deploy_kernel, boot.deploy_initrd, params))


def reboot_escalating(ctx: StepContext) -> None:
    """Reboot: soft on the first attempt, hard on the second, very hard after."""
    reboot_at_least(ctx, RebootLevel.SOFT)


def reboot_hard(ctx: StepContext) -> None:
    """Reboot through the BMC whatever the attempt (the ``hard_reboot`` variant)."""
    reboot_at_least(ctx, RebootLevel.HARD)


def reboot_at_least(ctx: StepContext, level: RebootLevel) -> None:
    """Reboot at ``level``, or harder when the escalation of this attempt (soft, hard, very
    hard) is stronger."""
    level = max(level, escalate(ctx.position.attempt), key=LEVELS.index)
    ctx.memory["host_key_before_reboot"] = ctx.services.host_key() or ""
    ctx.services.reset_shell()
    ctx.log("info", f"{level} reboot")
    try:
        ctx.services.reboot(level, ctx.cancelled)
    except SoftRebootUnconfirmed as exc:
        # Whether the soft reboot worked is for the wait that follows to tell.
        ctx.log("info", f"{exc}; waiting for the node anyway")


def await_deploy_env(ctx: StepContext) -> None:
    """Return once the node answers SSH in this deployment's deploy env (its id in
    /proc/cmdline), probing every ``boot.check_interval``."""
    marker = f"{DEPLOY_MARKER}={ctx.job.deployment_id}"
    interval = ctx.node.settings.boot.check_interval
    while True:
        seen = ctx.services.probe()
        if seen.reachable and marker in seen.cmdline.split():
            return
        ctx.wait(interval)


def wait_deploy_env(ctx: StepContext) -> None:
    """Wait until the node answers SSH in this deployment's deploy env."""
    await_deploy_env(ctx)
    ctx.memory["deploy_env_host_key"] = ctx.services.host_key() or ""
    ctx.set_state(NodeState.DEPLOY_ENV)


def check_prod_env(ctx: StepContext) -> None:
    """The prod variant: the node must run its prod env, not from the deploy partition."""
    seen = ctx.services.probe()
    if not seen.reachable:
        raise StepFailed(f"prod env unreachable: {seen.error}")
    root = next((p[5:] for p in seen.cmdline.split() if p.startswith("root=")), "")
    if root == ctx.deploy_device:
        raise StepFailed(
            f"the deploy partition {ctx.deploy_device} is the running root of the prod env"
        )
    ctx.memory["deploy_env_host_key"] = ctx.services.host_key() or ""
    ctx.set_state(NodeState.DEPLOY_ENV)


def partition_disk(ctx: StepContext) -> None:
    """Run the cluster's partitioning script in the deploy env, if one is configured."""
    script = ctx.disk.partitioning_script
    if script is None:
        ctx.log("info", "no partitioning script: partition table kept")
        return
    try:
        text = script.read_bytes()
    except OSError as exc:
        raise StepFailed(f"partitioning script {script}: {exc.strerror}") from None
    env = f"KADEPLOY_BLOCK_DEVICE={shlex.quote(ctx.disk.block_device)} " + (
        f"KADEPLOY_DEPLOY_PART={shlex.quote(ctx.deploy_device)}"
    )
    ctx.run(f"{env} sh -s", stdin=text, what="partitioning script")


def format_deploy_partition(ctx: StepContext) -> None:
    """Make the environment's filesystem on the deploy partition (tar images only)."""
    environment = ctx.job.environment
    if environment.image.kind != ImageKind.TAR:
        return
    filesystem = str(environment.filesystem or ctx.disk.filesystem)
    force = "-f" if filesystem == "xfs" else "-F"
    device = shlex.quote(ctx.deploy_device)
    ctx.run(f"umount {_MNT} 2>/dev/null; mkfs.{filesystem} -q {force} {device}", what="mkfs")


# ---------------------------------------------------------------- BroadcastEnv


def mount_deploy_partition(ctx: StepContext) -> None:
    """Mount the deploy partition on the mount point (before a tar, after a raw write)."""
    device = shlex.quote(ctx.deploy_device)
    ctx.run(
        f"umount {_MNT} 2>/dev/null; mkdir -p {_MNT} && mount {device} {_MNT}",
        what="mount deploy partition",
    )


def _image_writer(ctx: StepContext) -> str:
    """The pipeline that writes the image stream read on stdin: decompressed and extracted
    into the mounted deploy partition (tar; mounted here first) or raw onto the partition
    (dd; mounted by :func:`_mount_raw_image` once written)."""
    environment = ctx.job.environment
    decompress = _DECOMPRESS[environment.image.compression]
    if environment.image.kind == ImageKind.TAR:
        mount_deploy_partition(ctx)
        return f"{decompress} | tar -x --numeric-owner -C {_MNT}"
    device = shlex.quote(ctx.deploy_device)
    return f"{decompress} | dd of={device} bs=4M conv=fsync status=none"


def _mount_raw_image(ctx: StepContext) -> None:
    if ctx.job.environment.image.kind == ImageKind.DD:
        mount_deploy_partition(ctx)


def _counted(image: BinaryIO, total: int, progress: Callable[[int, int], None]) -> Iterator[bytes]:
    """The image in pieces; ``progress(sent, total)`` once each piece was taken by the SSH
    writer (it asks for the next one only after sending the previous one)."""
    done = 0
    while piece := image.read(_PIECE):
        yield piece
        done += len(piece)
        progress(done, total)


def send_image_direct(ctx: StepContext) -> None:
    """Stream the image from the server to this node over SSH, decompressing on the node."""
    writer = _image_writer(ctx)
    with ctx.services.broadcast_slot(ctx.cancelled):
        ctx.set_state(NodeState.TRANSFERRING)
        try:
            with ctx.job.image.open("rb") as image:
                total = ctx.job.image.stat().st_size
                ctx.services.progress(0, total)
                pieces = _counted(image, total, ctx.services.progress)
                ctx.run(_bash(writer), stdin=pieces, what="image transfer")
        except OSError as exc:
            raise StepFailed(f"cannot read image {ctx.job.image}: {exc.strerror}") from None
    _mount_raw_image(ctx)


def send_image_chain(ctx: StepContext) -> None:
    """Run the chain relay on this node; it writes the image and forwards it down the chain.

    The relay listens on a free port and says so on its first output line; the node then
    joins the broadcast round its deployment is forming. The relay ends once its part of the
    chain acknowledged the stream; the verdict on this node (bytes, SHA-256 against the
    source, writer status) comes from the round's result.
    """
    writer = _image_writer(ctx)
    secret = ctx.services.chain_secret()
    timeout = ctx.command_timeout
    writer_argv = ["bash", "-o", "pipefail", "-c", writer]
    image_kind = ctx.job.environment.image.kind
    flush = MOUNT_POINT if image_kind == ImageKind.TAR else ctx.deploy_device
    argv = relay_launch(relay_arguments(writer_argv, idle_timeout=timeout, flush=flush))
    try:
        total = ctx.job.image.stat().st_size
    except OSError as exc:
        raise StepFailed(f"cannot read image {ctx.job.image}: {exc.strerror}") from None

    def watch(stream: str, text: str) -> None:
        ctx.log(stream, text)
        if stream == "stdout":
            with contextlib.suppress(ReportError):
                event = parse_report(text)
                if event.kind == "listening" and event.port:
                    ctx.services.chain_join(event.port)
                elif event.kind == "progress":
                    ctx.services.progress(min(event.bytes, total), total)

    ctx.set_state(NodeState.TRANSFERRING)
    ctx.services.progress(0, total)
    ctx.log("cmd", shlex.join(argv))
    result = ctx.services.shell().run(
        argv, timeout=timeout, stdin=relay_stdin(secret), on_output=watch
    )
    verdict = ctx.services.chain_verdict(ctx.cancelled)
    if verdict is not None:
        raise StepFailed(f"chain transfer: {verdict}")
    if result.returncode != 0:
        raise StepFailed(f"chain relay: exit status {result.returncode}: {result.stderr_tail(3)}")
    ctx.services.progress(total, total)  # the verdict: this node has the whole image
    _mount_raw_image(ctx)


def run_postinstalls(ctx: StepContext) -> None:
    """Extract each postinstall archive on the node and run its script."""
    for index, archive in enumerate(ctx.job.environment.postinstalls):
        _run_script_archive(ctx, archive, f"postinstall-{index}")


def _run_script_archive(ctx: StepContext, archive: ScriptArchive, label: str) -> None:
    workdir = shlex.quote(f"/tmp/kadeploy-{label}")  # noqa: S108 - on the node's deploy env
    decompress = _DECOMPRESS[archive.compression]
    try:
        with archive.archive.open("rb") as data:
            ctx.run(
                _bash(
                    f"rm -rf {workdir} && mkdir -p {workdir} && {decompress} | tar -x -C {workdir}"
                ),
                stdin=data,
                what=f"{label} archive",
            )
    except OSError as exc:
        raise StepFailed(f"cannot read {label} archive {archive.archive}: {exc.strerror}") from None
    if archive.argv:
        program, *args = archive.argv
        command = shlex.join([program if "/" in program else f"./{program}", *args])
        ctx.run(
            f"cd {workdir} && KADEPLOY_ENV_EXTRACTION_DIR={_MNT} "
            f"KADEPLOY_PREPOST_EXTRACTION_DIR={workdir} {command}",
            what=f"{label} script {archive.script}",
        )


def copy_user_keys(ctx: StepContext) -> None:
    """Append the user's public keys (``-k``) to the deployed root's authorized_keys."""
    keys = ctx.job.authorized_keys
    if not keys:
        return
    ssh_dir = shlex.quote(f"{MOUNT_POINT}/root/.ssh")
    target = shlex.quote(f"{MOUNT_POINT}/root/.ssh/authorized_keys")
    ctx.run(
        f"mkdir -p {ssh_dir} && chmod 700 {ssh_dir} && cat >> {target} && chmod 600 {target}",
        stdin=(keys if keys.endswith("\n") else keys + "\n").encode(),
        what="copy SSH keys",
    )


def check_kernel_files(ctx: StepContext) -> None:
    """The kernel and initrd the environment declares exist in the deployed partition."""
    boot = ctx.job.environment.boot
    for path in (boot.kernel, boot.initrd):
        if path:
            inside = shlex.quote(f"{MOUNT_POINT}{path}")
            ctx.run(f"test -e {inside} || test -L {inside}", what=f"kernel file {path} check")


def sync_and_umount(ctx: StepContext) -> None:
    """Unmount the deploy partition, which writes back everything it holds.

    Not ``sync && umount``: ``sync`` flushes every filesystem of the machine, and on the
    testbed all emulated nodes share one kernel, so each node's sync waited for the others'.
    """
    ctx.run(f"umount {_MNT}", what="sync and umount")


# ---------------------------------------------------------------- BootNewEnv


def switch_pxe_to_deployed_env(ctx: StepContext) -> None:
    """Boot the environment's kernel over TFTP, or chain-load the deploy partition."""
    refs = ctx.job.boot_files
    if refs is None:
        ctx.services.set_pxe(ChainPartition(0, ctx.deploy_partition))
        return
    params = f"{ctx.job.environment.boot.kernel_params} root={ctx.deploy_device}".strip()
    ctx.services.set_pxe(NetworkKernel(refs.kernel, refs.initrd, params))


def wait_deployed_env(ctx: StepContext) -> None:
    """Wait until SSH answers with another host key than the deploy env's: the new env."""
    old_keys = {ctx.memory.get("deploy_env_host_key"), ctx.memory.get("host_key_before_reboot")}
    interval = ctx.node.settings.boot.check_interval
    while True:
        key = ctx.services.host_key()
        if key and key not in old_keys:
            return
        ctx.wait(interval)
