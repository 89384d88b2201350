"""The microsteps of the deployment workflow, Kadeploy3 style.

Each is a function of a :class:`StepContext` that raises :class:`StepFailed` when the node does
not do what it should, and returns :class:`Again` when it waits for the node (checked again
later, no thread held meanwhile). Which state a node is in while a step runs is not the
step's business: the plans of :mod:`kadeploy_core.plans` say it. :data:`STEPS` binds the plans'
microstep names to these functions and to the pool they run on. Remote work is shell text run
over SSH; every value that comes from configuration or from an environment description is
quoted with :func:`shlex.quote`.
"""

from __future__ import annotations

import contextlib
import shlex
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import BinaryIO

from kadeploy_core.plans import Macrostep
from kadeployd.chain import (
    ReportError,
    parse_report,
    relay_arguments,
    relay_launch,
    relay_stdin,
)
from kadeployd.environment import Compression, ImageKind, ScriptArchive
from kadeployd.pxe.profiles import ChainPartition, DeployKernel, LocalBoot, NetworkKernel
from kadeployd.reboot.levels import LEVELS, RebootLevel, escalate, stronger_level
from kadeployd.workflow.context import Again, ProbeView, RebootTicket, StepContext, StepFailed
from kadeployd.workflow.job import MOUNT_POINT
from kadeployd.workflow.option_steps import (
    format_tmp_partition,
    install_bootloader,
    kexec_deployed_env,
)
from kadeployd.workflow.vlan import set_vlan

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
    """The ``dummy`` variants: the node passes through the macrostep's state, nothing runs.
    A dummy SetDeploymentEnv takes the node as running the deploy env already, so the next
    macrosteps' connections check its pinned host key."""
    ctx.log("info", f"{ctx.position.macrostep}: dummy variant, nothing done")
    if ctx.position.macrostep == Macrostep.SET_DEPLOYMENT_ENV:
        ctx.services.deploy_env_reached()


# ---------------------------------------------------------------- SetDeploymentEnv


def switch_pxe_to_deploy_env(ctx: StepContext) -> None:
    """Point the node's PXE profile at the deploy kernel, marked with the deployment id."""
    boot = ctx.node.settings.boot
    params = f"{boot.deploy_kernel_params} {DEPLOY_MARKER}={ctx.job.deployment_id}".strip()
    ctx.services.set_pxe(DeployKernel(boot.deploy_kernel, boot.deploy_initrd, params))


def reboot_escalating(ctx: StepContext) -> Again | None:
    """Reboot: soft on the first attempt, hard on the second, very hard after."""
    return reboot_at_least(ctx, RebootLevel.SOFT)


def reboot_hard(ctx: StepContext) -> Again | None:
    """Reboot through the BMC whatever the attempt (the ``hard_reboot`` variant)."""
    return reboot_at_least(ctx, RebootLevel.HARD)


REBOOT_ANSWER_CHECK = 30.0
"""Seconds between two looks at a reboot request that has not answered: its answer wakes the
step at once; this only bounds how long a lost wake-up could go unseen."""


def reboot_at_least(ctx: StepContext, level: RebootLevel) -> Again | None:
    """Reboot at ``level``, or harder when the escalation of this attempt (soft, hard, very
    hard) is stronger. The first run asks the reboot service; the answer wakes the step.

    Reboots escalate on evidence, within the attempt: a command that fails is followed at once
    by the next stronger one (a soft reboot into an environment that does not trust the
    daemon's key fails with "Permission denied" at once); the wait that follows escalates a
    reboot whose node is not seen going down (:func:`watch_reboot`).
    """
    if "reboot" not in ctx.scratch:
        level = max(level, escalate(ctx.position.attempt), key=LEVELS.index)
        seen = ctx.services.probe()
        ctx.memory["boot_id_before_reboot"] = seen.boot_id if seen.reachable else ""
        ctx.memory["host_key_before_reboot"] = ctx.services.host_key() or ""
        ctx.services.reset_shell()
        _order_reboot(ctx, level, evidence="")
        return Again(REBOOT_ANSWER_CHECK)
    return _reboot_answered(ctx)


def _order_reboot(ctx: StepContext, level: RebootLevel, evidence: str) -> None:
    ctx.log(
        "info", f"{evidence}: escalating to a {level} reboot" if evidence else f"{level} reboot"
    )
    ctx.scratch["reboot"] = ctx.services.request_reboot(level, ctx.cancelled, ctx.wake)
    ctx.scratch["level"] = level


def _reboot_answered(ctx: StepContext) -> Again | None:
    """None once the reboot ordered by :func:`_order_reboot` succeeded; a failed command is
    followed by the next stronger one (StepFailed when there is none)."""
    ticket: RebootTicket = ctx.scratch["reboot"]
    level: RebootLevel = ctx.scratch["level"]
    try:
        if ticket.outcome() is None:
            return Again(REBOOT_ANSWER_CHECK)
    except StepFailed as exc:
        stronger = stronger_level(ctx.node.settings.power, level)
        if stronger is None:
            raise
        _order_reboot(ctx, stronger, evidence=str(exc))
        return Again(REBOOT_ANSWER_CHECK)
    del ctx.scratch["reboot"]
    ctx.memory["reboot_level"] = level.value
    ctx.memory["reboot_answered_at"] = repr(time.monotonic())
    return None


def watch_reboot(ctx: StepContext, *, down: bool, seen: ProbeView | None = None) -> Again | None:
    """For a step waiting for a node to come back from its reboot, and not seeing it yet:
    escalate when the node was never seen going down (``down``: it did not answer) and, the
    reboot's grace (``power.soft_reboot_grace``, ``power.hard_reboot_grace``) over, it still
    runs the same boot (its boot id from ``seen`` or a new probe; its host key when the daemon
    cannot log in). Again while an escalated reboot is on its way, else None."""
    if "reboot" in ctx.scratch:
        return _reboot_answered(ctx)
    if down:
        ctx.scratch["down"] = True
    if ctx.scratch.get("down") or not ctx.memory.get("reboot_answered_at"):
        return None
    level = RebootLevel(ctx.memory["reboot_level"])
    power = ctx.node.settings.power
    grace = power.soft_reboot_grace if level == RebootLevel.SOFT else power.hard_reboot_grace
    waited = time.monotonic() - float(ctx.memory["reboot_answered_at"])
    stronger = stronger_level(ctx.node.settings.power, level)
    if waited < grace or stronger is None:
        return None
    evidence = _same_boot(ctx, seen or ctx.services.probe())
    if evidence is None:
        ctx.scratch["down"] = True  # it did reboot, between two looks
        return None
    _order_reboot(ctx, stronger, f"{evidence} {waited:.0f} s after its {level} reboot")
    return Again(REBOOT_ANSWER_CHECK)


def _same_boot(ctx: StepContext, seen: ProbeView) -> str | None:
    """What shows that the node still runs the boot it ran before its reboot, or None."""
    before = ctx.memory.get("boot_id_before_reboot", "")
    if seen.reachable and before and seen.boot_id:
        return f"the node still runs boot {before}" if seen.boot_id == before else None
    key, key_before = ctx.services.host_key(), ctx.memory.get("host_key_before_reboot", "")
    if key and key == key_before:
        return "the node still answers with the same host key"
    return None


def await_deploy_env(ctx: StepContext) -> Again | None:
    """Done once the node answers SSH in this deployment's deploy env (its id in
    /proc/cmdline); else look again in ``boot.check_interval`` seconds.

    With the deploy env's host keys pinned (``boot.deploy_host_key_file``), a node offering
    another key is not logged into: it answers, so it is up (its old env, not gone down yet,
    or something else at its address), but it is not the deploy env. The step waits on; if the
    variant times out, its message names the key offered and the one expected."""
    marker = f"{DEPLOY_MARKER}={ctx.job.deployment_id}"
    seen = ctx.services.probe(deploy_env=True)
    if seen.reachable and marker in seen.cmdline.split():
        ctx.waiting = ""
        ctx.services.deploy_env_reached()
        return None
    if seen.refused_key:
        if ctx.scratch.get("refused_key") != seen.refused_key:
            ctx.scratch["refused_key"] = seen.refused_key
            ctx.log("info", f"not the deploy env yet: {seen.error}")
        ctx.waiting = f"the last answer: {seen.error}"
    down = not seen.reachable and not seen.refused_key
    if (again := watch_reboot(ctx, down=down, seen=seen)) is not None:
        return again
    return Again(ctx.node.settings.boot.check_interval)


def wait_deploy_env(ctx: StepContext) -> Again | None:
    """Wait until the node answers SSH in this deployment's deploy env."""
    if (again := await_deploy_env(ctx)) is not None:
        return again
    ctx.memory["deploy_env_host_key"] = ctx.services.host_key() or ""
    return None


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


def partition_disk(ctx: StepContext) -> None:
    """Run the cluster's partitioning script in the deploy env, if one is configured."""
    script = ctx.disk.partitioning_script
    if ctx.job.request.disable_disk_partitioning:
        ctx.log("info", "partition_disk skipped: disable_disk_partitioning")
        return
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


def _mount_command(ctx: StepContext) -> str:
    """Shell text that mounts the deploy partition on the mount point."""
    device = shlex.quote(ctx.deploy_device)
    return f"umount {_MNT} 2>/dev/null; mkdir -p {_MNT} && mount {device} {_MNT}"


def _image_writer(ctx: StepContext) -> str:
    """The pipeline that writes the image stream read on stdin: decompressed and extracted
    into the deploy partition (tar) or raw onto the partition (dd; mounted by
    :func:`_mount_raw_image` once written).

    A tar image's pipeline mounts the partition itself, before it reads its stdin: the relay
    or the SSH transfer then starts right after the partition is made, with no SSH command
    of its own for the mount (one round trip less per node in BroadcastEnv's set-up).
    """
    environment = ctx.job.environment
    decompress = _DECOMPRESS[environment.image.compression]
    if environment.image.kind == ImageKind.TAR:
        return f"{_mount_command(ctx)} && {decompress} | tar -x --numeric-owner -C {_MNT}"
    device = shlex.quote(ctx.deploy_device)
    return f"{decompress} | dd of={device} bs=4M conv=fsync status=none"


def _mount_raw_image(ctx: StepContext) -> None:
    if ctx.job.environment.image.kind == ImageKind.DD:
        ctx.run(_mount_command(ctx), what="mount deploy partition")


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
    digest = not ctx.job.image_checks_itself  # else the node's decompressor checks it
    argv = relay_launch(
        relay_arguments(writer_argv, idle_timeout=timeout, flush=flush, digest=digest)
    )
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


def send_key_in_deploy_env(ctx: StepContext) -> None:
    """kareboot deploy_env ``-k``: append the user's public keys to the deploy env's root
    keys (``boot.deploy_authorized_keys``)."""
    keys = ctx.job.authorized_keys
    if not keys:
        return
    path = ctx.node.settings.boot.deploy_authorized_keys
    directory = shlex.quote(path.rsplit("/", 1)[0] or "/")
    target = shlex.quote(path)
    ctx.run(
        f"mkdir -p {directory} && cat >> {target}",
        stdin=(keys if keys.endswith("\n") else keys + "\n").encode(),
        what="send the SSH keys into the deploy env",
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
    """Boot the environment's kernel over TFTP, or chain-load the deploy partition, or the
    partition the request names (``boot_partition``; 0: the disk's own boot record), or
    write the user's own profile (``pxe``, ``kadeploy -w``)."""
    refs = ctx.job.boot_files
    custom = ctx.job.request.pxe
    if custom is not None:
        ctx.services.set_user_pxe(custom.for_node(ctx.node.name))
        return
    chosen = ctx.job.request.boot_partition
    if chosen is not None:
        ctx.services.set_pxe(ChainPartition(0, chosen) if chosen else LocalBoot())
        return
    if refs is None:
        ctx.services.set_pxe(ChainPartition(0, ctx.deploy_partition))
        return
    params = f"{ctx.job.environment.boot.kernel_params} root={ctx.deploy_device}".strip()
    ctx.services.set_pxe(NetworkKernel(refs.kernel, refs.initrd, params))


def wait_deployed_env(ctx: StepContext) -> Again | None:
    """Wait until SSH answers with another host key than the deploy env's: the new env."""
    old_keys = {ctx.memory.get("deploy_env_host_key"), ctx.memory.get("host_key_before_reboot")}
    key = ctx.services.host_key()
    if key and key not in old_keys:
        return None
    if (again := watch_reboot(ctx, down=key is None)) is not None:
        return again
    return Again(ctx.node.settings.boot.check_interval)


# ---------------------------------------------------------------- kareboot operations


def wait_for_deploy_env(ctx: StepContext) -> Again | None:
    """kareboot deploy_env: wait until the node answers SSH in the deploy env booted for this
    job, without going on to partition: the operation ends there."""
    if (again := await_deploy_env(ctx)) is not None:
        return again
    ctx.log("info", "the deploy env answers")
    return None


def reboot_from_level(ctx: StepContext) -> Again | None:
    """Reboot at the level asked (``kareboot -l``) on the first attempt, and at least as hard
    as the escalation (soft, hard, very hard) on the retries."""
    return reboot_at_least(ctx, ctx.job.request.reboot_level)


DOWN_CONFIRMATIONS = 2
"""Host-key probes in a row that must fail before a node counts as gone down for its reboot
(one failed probe may be a lost packet while the old system still runs)."""


def wait_for_recorded_env(ctx: StepContext) -> Again | None:
    """kareboot recorded_env: wait until the node answers SSH again after its reboot.

    A deployment knows the new env by a host key other than the deploy env's. Here the node
    may already run the environment it reboots into, and come back with the same key: so a
    node also counts as rebooted once it was seen down, then answers, whatever its key.
    """
    before = ctx.memory.get("host_key_before_reboot")
    misses: int = ctx.scratch.get("misses", 0)
    key = ctx.services.host_key()
    if key and (key != before or misses >= DOWN_CONFIRMATIONS):
        return None
    ctx.scratch["misses"] = 0 if key else misses + 1
    if (again := watch_reboot(ctx, down=misses + 1 >= DOWN_CONFIRMATIONS)) is not None:
        return again
    return Again(ctx.node.settings.boot.check_interval)


# ---------------------------------------------------------------- the names of the plans


class Pool(StrEnum):
    """Where a microstep runs."""

    INLINE = "inline"
    """In the node actor's own thread: for steps that neither block nor wait."""
    SSH = "ssh"
    """On the SSH pool: remote commands, probes, and reboots (which probe the host key)."""
    FILES = "files"
    """On the file-work pool: PXE profiles (an ask of the PXE actor, which writes files)."""


@dataclass(frozen=True, slots=True)
class StepRunner:
    """The code behind a microstep name, and the pool it runs on."""

    run: Callable[[StepContext], Again | None]
    pool: Pool


STEPS: dict[str, StepRunner] = {
    "nothing": StepRunner(nothing, Pool.INLINE),
    "switch_pxe_to_deploy_env": StepRunner(switch_pxe_to_deploy_env, Pool.FILES),
    "switch_pxe_to_deployed_env": StepRunner(switch_pxe_to_deployed_env, Pool.FILES),
    "set_vlan": StepRunner(set_vlan, Pool.SSH),  # a local command: blocks like SSH
    **{
        step.__name__: StepRunner(step, Pool.SSH)
        for step in (
            reboot_escalating,
            reboot_hard,
            reboot_from_level,
            wait_deploy_env,
            wait_for_deploy_env,
            wait_deployed_env,
            wait_for_recorded_env,
            check_prod_env,
            partition_disk,
            format_deploy_partition,
            format_tmp_partition,
            kexec_deployed_env,
            install_bootloader,
            send_image_chain,
            send_image_direct,
            run_postinstalls,
            copy_user_keys,
            send_key_in_deploy_env,
            check_kernel_files,
            sync_and_umount,
        )
    },
}
"""Every microstep name of :mod:`kadeploy_core.plans`, bound to its code."""
