"""Node disks: sparse files on the host, each attached to a loop device for the testbed's life.

A node sees the loop devices (real block devices) at ``/dev/testbed/sda*``, so ``mkfs``,
``mount``, ``dd`` and ``blockdev`` behave as on hardware. Going through a block device also
gives ``slowdisk`` a real mechanism: the cgroup v1 ``blkio.throttle.write_bps_device`` of the
root group on the node's loop devices throttles every write to them, page-cache writeback
included (measured here: 20 MiB at 5 MB/s took 4 s, 0.06 s unthrottled).
"""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

logger = logging.getLogger(__name__)

BLKIO_WRITE_BPS = Path("/sys/fs/cgroup/blkio/blkio.throttle.write_bps_device")
"""cgroup v1; on a cgroup v2 host the equivalent is io.max in the root's child groups."""


class DiskError(Exception):
    """A loop device could not be attached or throttled."""


def attach(path: Path) -> str:
    """Attach ``path`` to a free loop device and return the device path."""
    result = subprocess.run(
        ["losetup", "--find", "--show", str(path)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if result.returncode != 0:
        raise DiskError(f"losetup {path}: {result.stderr.strip()}")
    return result.stdout.strip()


def detach(device: str) -> None:
    subprocess.run(["losetup", "-d", device], capture_output=True, check=False)


def loops_backed_under(directory: Path) -> list[str]:
    """Loop devices whose backing file lies under ``directory`` (found by scanning sysfs)."""
    found: list[str] = []
    prefix = str(directory.absolute()).rstrip("/") + "/"
    block = Path("/sys/block")
    for entry in sorted(block.glob("loop*")):
        backing = entry / "loop" / "backing_file"
        try:
            text = backing.read_text().strip()
        except OSError:
            continue
        if text.removesuffix(" (deleted)").startswith(prefix):
            found.append(f"/dev/{entry.name}")
    return found


def flush(device: str) -> None:
    """Drop the device's buffer cache so it sees what was written to its backing file."""
    subprocess.run(["blockdev", "--flushbufs", device], capture_output=True, check=False)


def _major_minor(device: str) -> str:
    rdev = os.stat(device).st_rdev
    return f"{os.major(rdev)}:{os.minor(rdev)}"


def throttle(devices: list[str], bytes_per_second: int) -> None:
    """Limit writes to ``devices`` (0 removes the limit)."""
    if not BLKIO_WRITE_BPS.exists():
        raise DiskError(
            f"{BLKIO_WRITE_BPS} is missing: slowdisk needs the cgroup v1 blkio controller"
        )
    for device in devices:
        try:
            BLKIO_WRITE_BPS.write_text(f"{_major_minor(device)} {bytes_per_second}\n")
        except OSError as error:
            raise DiskError(f"cannot throttle {device}: {error}") from None
