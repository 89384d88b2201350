"""The disk a request writes to: whether its ``block_device`` (kadeploy -b) fits the nodes'
partition naming, and the partition key of the right it needs.

With ``-b`` the deploy partition's path is the node's ``disk.partition_device`` template
filled with the given device; that path is both the device written to and the key of the
right checked (:func:`rights_key`). So it must name one partition of that disk and nothing
else. With the usual ``{block_device}{partition}``, a device ending in a digit is ambiguous
(``/dev/sda1`` partition 3 and ``/dev/sda`` partition 13 are both ``/dev/sda13``) or wrong
(``/dev/nvme0n1`` partition 3 is ``/dev/nvme0n1p3``, not ``/dev/nvme0n13``); and the names
under ``/dev/disk/`` (by-id, by-path...) name their partitions ``NAME-partN``, which only a
template joining with ``-part`` gives.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from kadeploy_core.errors import Problem
from kadeployd.admission.refusal import AdmissionRefused, Refusal
from kadeployd.config import DiskSettings, Node

logger = logging.getLogger(__name__)

_BLOCK = "{block_device}"
_JOINED = "{block_device}{partition}"
_UDEV_JOINED = "{block_device}-part{partition}"


def rights_key(disk: DiskSettings, partition: int | None, block_device: str | None) -> str:
    """The partition key of a right to deploy on ``disk``: the partition number (``-p`` or
    the configured one), or with a block device (``-b``) the deploy partition's device path,
    such as ``/dev/sdb3``: a right on partition 3 of the usual disk is none on another disk."""
    number = partition or disk.deploy_partition
    if block_device is None:
        return str(number)
    return disk.model_copy(update={"block_device": block_device}).partition_path(number)


def block_device_problem(
    disk: DiskSettings, device: str, partition: int | None = None
) -> str | None:
    """Why ``device`` cannot stand for ``disk.block_device`` in ``disk.partition_device``,
    or None when the partition paths it gives are right and unambiguous. ``partition`` (the
    request's, else the configured deploy partition) only serves the example in the reason."""
    template = disk.partition_device
    number = partition or disk.deploy_partition
    path = disk.model_copy(update={"block_device": device}).partition_path(number)
    if _BLOCK not in template:
        return (
            f"the node's disk.partition_device {template!r} does not use {{block_device}}, "
            f"so its partitions stay on the configured disk {disk.block_device} whatever the "
            "block device; deploy without block_device"
        )
    if device.startswith("/dev/disk/") and _UDEV_JOINED not in template:
        return (
            f"the partitions of a name under /dev/disk/ are NAME-partN, but the node's "
            f"disk.partition_device {template!r} would make partition {number} {path}; "
            "give the disk's kernel name instead, such as /dev/sdb"
        )
    if _JOINED in template and device[-1].isdigit():
        return (
            f"it ends in a digit and the node's disk.partition_device {template!r} puts the "
            f"partition number right after it, so partition {number} would be {path}, which is "
            "ambiguous or not that disk's partition; give a disk whose name ends in a letter, "
            "such as /dev/sdb (disks named like /dev/nvme0n1 need a cluster whose "
            "disk.partition_device is '{block_device}p{partition}')"
        )
    return None


def check_block_device(nodes: Sequence[Node], device: str | None, partition: int | None) -> None:
    """Refuse (INVALID_BLOCK_DEVICE, naming ``block_device``) a ``device`` that does not fit
    the partition naming of one of ``nodes``: one problem per distinct reason, with its
    nodes."""
    if device is None:
        return
    reasons: dict[str, list[str]] = {}
    for node in nodes:
        reason = block_device_problem(node.settings.disk, device, partition)
        if reason is not None:
            reasons.setdefault(reason, []).append(node.name)
    if not reasons:
        return
    problems = [
        Problem("request", f"block_device {device} on {_some(names)}: {reason}", "block_device")
        for reason, names in reasons.items()
    ]
    raise AdmissionRefused(Refusal.INVALID_BLOCK_DEVICE, problems[0].message, problems)


def _some(names: list[str], shown: int = 5) -> str:
    """The first ``shown`` names, and how many more."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
