"""The emulated PXE firmware: fetch the profile and files over TFTP, decide what boots.

Decision (see DESIGN.md, "The testbed"):

* kernel whose bytes are the testbed's deploy kernel -> deploy env;
* ``LOCALBOOT`` -> what the disk's boot record says: the partition a boot loader installed
  there names (:data:`BOOT_RECORD`, written by a deployment's install_bootloader), else the
  prod env;
* ``chain.c32 hd0 <prod partition>`` -> prod env;
* ``chain.c32 hd0 P`` for another partition, or a kernel whose bytes equal a regular file in
  ``/boot`` of partition P -> deployed env on partition P;
* anything else (no profile, unparsable profile, missing kernel or initrd, kernel matching
  nothing, another disk) -> :class:`Silent`: the node stays on and says nothing.

Partitions are read with ``debugfs`` (e2fsprogs) from the node's block device while the node is
off, so nothing is mounted on the host.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

from kadeploy_testbed.layout import DEPLOY_PARTITION, PROD_PARTITION, SWAP_PARTITION, NodeSpec
from kadeploy_testbed.nodefiles import BootSpec
from kadeploy_testbed.pxelinux import ProfileError, parse_profile
from kadeploy_testbed.tftpfetch import TftpFetchError, TftpUnreachable, fetch, fetch_profile

logger = logging.getLogger(__name__)

TFTP_TIMEOUT = 3.0
BOOT_RECORD = b"KDTB-BOOT "
"""How the testbed's boot loader starts the disk's first sector: ``KDTB-BOOT <partition>``
(a site's bootloader_script writes it, as grub-install writes a real one)."""


def boot_record_partition(device: str | None) -> int | None:
    """The partition the boot record of disk ``device`` boots, or None (no boot loader)."""
    if device is None:
        return None
    try:
        with open(device, "rb") as disk:
            sector = disk.read(512)
    except OSError:
        return None
    if not sector.startswith(BOOT_RECORD):
        return None
    word = sector[len(BOOT_RECORD) :].split(b"\n", 1)[0].strip()
    return int(word) if word.isdigit() else None


@dataclass(frozen=True, slots=True)
class Silent:
    """The firmware found nothing bootable; ``reason`` goes to the controller log."""

    reason: str


class Interrupted(Exception):
    """The node lost power (or was reset) while its firmware ran."""


def prod_cmdline(partition: int = PROD_PARTITION) -> str:
    return f"BOOT_IMAGE=/vmlinuz root=/dev/testbed/sda{partition} ro quiet"


def boot_files(device: str) -> dict[str, int]:
    """Regular files directly in ``/boot`` of the ext2/3/4 filesystem on ``device``, with sizes.

    Empty when the device holds no such filesystem or no ``/boot``.
    """
    result = subprocess.run(
        ["debugfs", "-R", "ls -p /boot", device],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    files: dict[str, int] = {}
    if result.returncode != 0:
        return files
    for line in result.stdout.decode(errors="replace").splitlines():
        # "/inode/mode/uid/gid/name/size/"
        fields = line.strip().split("/")
        if len(fields) < 8 or not fields[2].startswith("100"):
            continue
        name, size = fields[5], fields[6]
        if name and size.isdigit():
            files[name] = int(size)
    return files


def read_boot_file(device: str, name: str) -> bytes | None:
    result = subprocess.run(
        ["debugfs", "-R", f"cat /boot/{name}", device],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    return result.stdout if result.returncode == 0 else None


def partition_with_kernel(kernel: bytes, devices: dict[int, str]) -> int | None:
    """The partition whose ``/boot`` holds a file with exactly these bytes (deploy part first)."""
    order = sorted(devices, key=lambda p: (p != DEPLOY_PARTITION, p))
    for partition in order:
        if partition == SWAP_PARTITION:
            continue
        for name, size in boot_files(devices[partition]).items():
            if size == len(kernel) and read_boot_file(devices[partition], name) == kernel:
                return partition
    return None


@dataclass
class Firmware:
    """One node's firmware. ``keep_going()`` turns False when power goes away mid-boot."""

    node: NodeSpec
    tftp_server: str
    tftp_port: int
    deploy_kernel: bytes
    partitions: dict[int, str]
    """Partition number -> host block device."""
    keep_going: Callable[[], bool]
    pause: Callable[[float], None]
    """Waits, returning early when power changes (an Event.wait in the controller)."""
    whole_disk: str | None = None
    """The host block device of the whole disk (its first sector is the boot record)."""
    record: Callable[[str], None] = lambda line: None
    """Writes a line to the node's firmware log (each PXE boot, each file fetched)."""

    def _fetch(self, remote: str) -> bytes | None:
        while True:
            if not self.keep_going():
                raise Interrupted
            try:
                self.record(f"TFTP {remote.lstrip('/')}")
                return fetch(self.tftp_server, self.tftp_port, remote.lstrip("/"), TFTP_TIMEOUT)
            except TftpUnreachable as error:
                logger.info("%s: %s; retrying", self.node.name, error)
                self.pause(1.0)

    def _profile(self) -> tuple[str, str] | None:
        while True:
            if not self.keep_going():
                raise Interrupted
            try:
                return fetch_profile(
                    self.tftp_server, self.tftp_port, self.node.mac, self.node.address, TFTP_TIMEOUT
                )
            except TftpUnreachable as error:
                logger.info("%s: PXE: %s; retrying", self.node.name, error)
                self.pause(1.0)

    def boot(self) -> BootSpec | Silent:
        """Run PXE: profile, files, decision. Raises Interrupted if power goes away."""
        try:
            self.record(f"PXE boot from tftp://{self.tftp_server}:{self.tftp_port}")
            found = self._profile()
            if found is None:
                return Silent("PXE: no profile on the TFTP server (01-<mac>, hex IP, default)")
            name, text = found
            logger.info("%s: PXE profile %s", self.node.name, name)
            self.record(f"TFTP {name}")
            try:
                entry = parse_profile(text, source=name)
            except ProfileError as error:
                return Silent(f"PXE: {error}")
            if entry.kind == "localboot":
                part = boot_record_partition(self.whole_disk)
                if part is not None and part != PROD_PARTITION:
                    if part not in self.partitions:
                        return Silent(f"boot record: no partition {part}")
                    return BootSpec(
                        env="deployed",
                        cmdline=prod_cmdline(part),
                        partition=part,
                        label=entry.label,
                    )
                return BootSpec(env="prod", cmdline=prod_cmdline(), label=entry.label)
            if entry.kind == "chain":
                part = entry.chain_partition
                if entry.chain_disk != 0 or part not in self.partitions:
                    return Silent(f"PXE: chain.c32 {entry.append!r}: no such disk or partition")
                if part == PROD_PARTITION:
                    return BootSpec(env="prod", cmdline=prod_cmdline(), label=entry.label)
                return BootSpec(
                    env="deployed", cmdline=prod_cmdline(part), partition=part, label=entry.label
                )
            return self._boot_kernel(entry.kernel or "", entry.initrd, entry.append, entry.label)
        except TftpFetchError as error:
            return Silent(f"PXE: {error}")

    def _boot_kernel(
        self, kernel: str, initrd: str | None, append: str, label: str
    ) -> BootSpec | Silent:
        data = self._fetch(kernel)
        if data is None:
            return Silent(f"PXE: kernel {kernel!r} not found on the TFTP server")
        if initrd is not None and self._fetch(initrd) is None:
            return Silent(f"PXE: initrd {initrd!r} not found on the TFTP server")
        if data == self.deploy_kernel:
            return BootSpec(env="deploy", cmdline=append, label=label)
        partition = partition_with_kernel(data, self.partitions)
        if partition is None:
            return Silent(f"PXE: kernel {kernel!r} matches no deploy kernel nor any /boot file")
        return BootSpec(env="deployed", cmdline=append, partition=partition, label=label)
