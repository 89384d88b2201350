"""Files a node boots with: its power script, sshd config, os-release and boot spec.

The controller writes them into the node's directory before each boot; the node's init
(:mod:`kadeploy_testbed.nodeinit`) copies them to its private ``/run/testbed``.
"""

from __future__ import annotations

import json
import logging
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from kadeploy_testbed.layout import NODE_CHROOT, NODE_RUN_DIR, SSH_PORT, Layout, NodeSpec

logger = logging.getLogger(__name__)

POWER_SCRIPT = r"""#!/bin/sh
# kadeploy-testbed: this node's reboot, poweroff, halt, shutdown and systemctl.
# It signals the node's own init (PID 1 of the node's PID namespace), busybox init's way:
# TERM reboots, USR2 powers off, USR1 halts. It never reaches the host.
name=${0##*/}
sig=""
case "$name" in
  reboot) sig=TERM ;;
  poweroff) sig=USR2 ;;
  halt) sig=USR1 ;;
  shutdown)
    sig=USR2
    for arg in "$@"; do
      case "$arg" in
        -r|--reboot) sig=TERM ;;
        -H|--halt) sig=USR1 ;;
        -c) echo "shutdown: nothing scheduled" >&2; exit 0 ;;
      esac
    done ;;
  *)
    for arg in "$@"; do
      case "$arg" in
        reboot|kexec|soft-reboot) sig=TERM; break ;;
        poweroff) sig=USR2; break ;;
        halt) sig=USR1; break ;;
        -*) ;;
        *) break ;;
      esac
    done
    if [ -z "$sig" ]; then
      echo "$name: this testbed node has no service manager" >&2
      exit 1
    fi ;;
esac
sync
kill -s "$sig" 1
"""


KEXEC_FILE = "kexec.bin"
"""In a node's directory: what its last ``kexec -e`` jumped to (see nodeinit)."""
FIRMWARE_LOG = "firmware.log"
"""In a node's directory: one line per PXE boot and per file its firmware fetched over TFTP."""


@dataclass(frozen=True, slots=True)
class BootSpec:
    """What the firmware decided to boot on a node."""

    env: str
    """``prod``, ``deploy`` or ``deployed``."""
    cmdline: str
    """The APPEND line the node shows in ``/proc/cmdline``."""
    partition: int | None = None
    """For ``deployed``: the partition loop-mounted as the chroot."""
    label: str = ""

    @property
    def describe(self) -> str:
        return f"deployed p{self.partition}" if self.env == "deployed" else self.env


def os_release(env: str, node: NodeSpec) -> str:
    """The os-release a prod or deploy env shows (a deployed env shows its image's own)."""
    if env == "deploy":
        return (
            'NAME="Kadeploy deployment environment"\n'
            "ID=kadeploy-deployenv\n"
            'PRETTY_NAME="Kadeploy testbed deployment environment"\n'
            "KADEPLOY_TESTBED_ENV=deploy\n"
            f"KADEPLOY_TESTBED_NODE={node.name}\n"
        )
    return (
        'NAME="Testbed production system"\n'
        "ID=testbed-prod\n"
        'PRETTY_NAME="Kadeploy testbed production environment"\n'
        "KADEPLOY_TESTBED_ENV=prod\n"
        f"KADEPLOY_TESTBED_NODE={node.name}\n"
    )


def sshd_config(boot: BootSpec, node: NodeSpec, node_dir: Path) -> str:
    """A per-node sshd config; paths under ``/run/testbed`` are the node's private copies."""
    lines = [
        f"ListenAddress {node.address}:{SSH_PORT}",
        f"HostKey {NODE_RUN_DIR}/host_key",
        f"PidFile {node_dir}/sshd.pid",
        "UsePAM no",
        "StrictModes no",
        "PermitRootLogin prohibit-password",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PrintMotd no",
        "UseDNS no",
        "LogLevel INFO",
        "ClientAliveInterval 0",
        "MaxStartups 100:30:200",
        "MaxSessions 50",
        "AcceptEnv LANG LC_*",
    ]
    if boot.env == "deployed":
        lines += [
            f"ChrootDirectory {NODE_CHROOT}",
            f"AuthorizedKeysFile {NODE_CHROOT}/root/.ssh/authorized_keys",
            "Subsystem sftp internal-sftp",
        ]
    else:
        lines += [
            f"AuthorizedKeysFile {NODE_RUN_DIR}/authorized_keys",
            "Subsystem sftp /usr/lib/openssh/sftp-server",
        ]
    return "\n".join(lines) + "\n"


def write_power_script(layout: Layout) -> None:
    layout.power_script.parent.mkdir(parents=True, exist_ok=True)
    layout.power_script.write_text(POWER_SCRIPT, encoding="utf-8")
    layout.power_script.chmod(0o755)


def ensure_host_key(path: Path, *, regenerate: bool) -> None:
    """An ed25519 host key at ``path``; a new one when ``regenerate``."""
    if regenerate or not path.exists():
        for old in (path, path.with_name(path.name + ".pub")):
            old.unlink(missing_ok=True)
        subprocess.run(
            [
                "ssh-keygen",
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                path.parent.name,
                "-f",
                str(path),
            ],
            check=True,
            stdin=subprocess.DEVNULL,
            capture_output=True,
        )


def write_boot_files(layout: Layout, node: NodeSpec, boot: BootSpec, disk: dict[str, str]) -> Path:
    """Write the node's files for this boot and return the boot spec path for its init.

    ``disk`` maps ``sda``, ``sda1``... to the host block devices (loop devices) backing them.
    """
    node_dir = layout.node_dir(node.name)
    boot_dir = node_dir / "boot"
    boot_dir.mkdir(parents=True, exist_ok=True)
    # Each env has its own host key, as on a real node: the prod env keeps its key across
    # boots; a deployed env makes a new one at every boot (as a deployed image without host
    # keys does; one that ships its own would keep them). The deploy env boots with the
    # testbed's one deploy env key, built into it as a site builds its deploy env image with
    # a key the daemon's configuration pins (boot.deploy_host_key_file).
    if boot.env == "deploy":
        host_key = layout.deploy_host_key
        ensure_host_key(host_key, regenerate=False)
    else:
        host_key = node_dir / f"host_key_{boot.env}"
        ensure_host_key(host_key, regenerate=boot.env != "prod")
    (boot_dir / "sshd_config").write_text(sshd_config(boot, node, node_dir), encoding="utf-8")
    (boot_dir / "cmdline").write_text(boot.cmdline + "\n", encoding="utf-8")
    # A new boot id at every boot, as the kernel makes one: the nodes share the host's kernel.
    (boot_dir / "boot_id").write_text(f"{uuid.uuid4()}\n", encoding="utf-8")
    (boot_dir / "os-release").write_text(os_release(boot.env, node), encoding="utf-8")
    spec = {
        "name": node.name,
        "env": boot.env,
        "files": {
            "sshd_config": str(boot_dir / "sshd_config"),
            "cmdline": str(boot_dir / "cmdline"),
            "boot_id": str(boot_dir / "boot_id"),
            "os-release": str(boot_dir / "os-release"),
            "host_key": str(host_key),
            "authorized_keys": str(layout.deploy_pubkey),
        },
        "power_script": str(layout.power_script),
        "disk": disk,
        "chroot_partition": f"sda{boot.partition}" if boot.env == "deployed" else None,
        "status_file": str(node_dir / "init.status"),
        "kexec_file": str(node_dir / KEXEC_FILE),
    }
    path = boot_dir / "spec.json"
    path.write_text(json.dumps(spec, indent=2), encoding="utf-8")
    return path


def make_disk(layout: Layout, node: NodeSpec, sizes_mb: dict[int, int], whole_mb: int) -> None:
    """Create the node's sparse disk files if they do not exist (their content survives)."""
    disk_dir = layout.disk_dir(node.name)
    disk_dir.mkdir(parents=True, exist_ok=True)
    files: dict[int | None, int] = {None: whole_mb}
    for number, size_mb in sizes_mb.items():
        files[number] = size_mb
    for partition, size in files.items():
        path = layout.disk_file(node.name, partition)
        if not path.exists():
            with path.open("wb") as stream:
                stream.truncate(size * 1024 * 1024)
