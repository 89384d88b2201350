"""Faults on demand: noboot, hang, die, slowdisk (slowlink is in test_lifecycle, with --netns)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import paramiko
import pytest

from kadeploy_testbed.disks import BLKIO_WRITE_BPS
from kadeploy_testbed.node import SLOWDISK_BPS
from kadeploy_testbed.testbed import Testbed, ssh_answers, wait_until

pytestmark = [pytest.mark.root, pytest.mark.testbed]

BOOT_TIMEOUT = 30.0


def _ssh_ok(bed: Testbed, node: str) -> bool:
    result = subprocess.run(
        bed.ssh_argv(node, "hostname"), capture_output=True, text=True, timeout=30, check=False
    )
    return result.stdout.strip() == node


def _client(bed: Testbed, node: str) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    client.connect(
        bed.node(node).address,
        username="root",
        key_filename=str(bed.layout.deploy_key),
        timeout=10,
        allow_agent=False,
        look_for_keys=False,
    )
    return client


def test_noboot_keeps_the_node_silent_until_cleared(fresh_testbed: Testbed) -> None:
    node = fresh_testbed.nodes[0]
    fresh_testbed.fault(node.name, "noboot")
    assert _ssh_ok(fresh_testbed, node.name), "noboot only affects the next boot"
    fresh_testbed.power(node.name, "cycle")
    assert wait_until(lambda: fresh_testbed.node_status(node.name)["env"] == "silent", BOOT_TIMEOUT)
    assert fresh_testbed.node_status(node.name)["power"] == "on"
    assert not ssh_answers(node.address)
    fresh_testbed.fault(node.name, "clear")
    fresh_testbed.power(node.name, "cycle")
    fresh_testbed.wait_env([node.name], "prod", BOOT_TIMEOUT)


def test_hang_freezes_the_node_mid_session(fresh_testbed: Testbed) -> None:
    node = fresh_testbed.nodes[1]
    client = _client(fresh_testbed, node.name)
    try:
        _, out, _ = client.exec_command("hostname", timeout=10)
        assert out.read().decode().strip() == node.name
        fresh_testbed.fault(node.name, "hang")
        assert fresh_testbed.node_status(node.name)["env"] == "hung"
        with pytest.raises((TimeoutError, paramiko.SSHException, OSError)):
            _, out, _ = client.exec_command("hostname", timeout=2)
            out.read()
        assert not ssh_answers(node.address, timeout=1.0)
        assert fresh_testbed.node_status(node.name)["power"] == "on"
    finally:
        client.close()
    fresh_testbed.fault(node.name, "clear")
    assert wait_until(lambda: _ssh_ok(fresh_testbed, node.name), BOOT_TIMEOUT)


def test_hung_node_recovers_with_a_power_cycle(fresh_testbed: Testbed) -> None:
    node = fresh_testbed.nodes[1]
    fresh_testbed.fault(node.name, "hang")
    assert not ssh_answers(node.address, timeout=1.0)
    fresh_testbed.power(node.name, "cycle")
    fresh_testbed.wait_env([node.name], "prod", BOOT_TIMEOUT)


def test_die_cuts_the_power(fresh_testbed: Testbed) -> None:
    node = fresh_testbed.nodes[2]
    client = _client(fresh_testbed, node.name)
    try:
        _, out, _ = client.exec_command("sleep 60; echo survived", timeout=30)
        fresh_testbed.fault(node.name, "die")
        assert out.read().decode() == ""
    finally:
        client.close()
    assert fresh_testbed.node_status(node.name)["power"] == "off"
    result = subprocess.run(
        ["ipmitool", "-I", "lanplus", "-H", node.bmc, "-U", "admin", "-f",
         str(fresh_testbed.layout.ipmi_password), "chassis", "power", "status"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    assert result.stdout.strip() == "Chassis Power is off"
    assert wait_until(lambda: not ssh_answers(node.address), 10)


def _limits() -> dict[str, int]:
    limits = {}
    for line in BLKIO_WRITE_BPS.read_text().splitlines():
        device, rate = line.split()
        limits[device] = int(rate)
    return limits


def _major_minor(device: str) -> str:
    rdev = os.stat(device).st_rdev
    return f"{os.major(rdev)}:{os.minor(rdev)}"


def test_slowdisk_throttles_the_node_disk(fresh_testbed: Testbed) -> None:
    """Checks the mechanism (a blkio write limit on each of the node's block devices) and that
    writes through it go through the throttle; no wall-clock assertion."""
    node = fresh_testbed.nodes[3].name
    devices = [fresh_testbed.partition_device(node, p) for p in (1, 2, 3, 4)]
    fresh_testbed.fault(node, "slowdisk")
    limits = _limits()
    for device in devices:
        assert limits.get(_major_minor(device)) == SLOWDISK_BPS
    stats = Path("/sys/fs/cgroup/blkio/blkio.throttle.io_service_bytes")
    sda4 = _major_minor(devices[3])

    def written() -> int:
        for line in stats.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] == sda4 and parts[1] == "Write":
                return int(parts[2])
        return 0

    before = written()
    result = subprocess.run(
        fresh_testbed.ssh_argv(node, "dd if=/dev/zero of=/dev/testbed/sda4 bs=64k count=8 oflag=direct status=none && echo done"),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.stdout.strip() == "done", result.stderr
    assert written() - before >= 512 * 1024
    fresh_testbed.fault(node, "clear")
    limits = _limits()
    for device in devices:
        assert _major_minor(device) not in limits


def test_slowlink_needs_netns(fresh_testbed: Testbed) -> None:
    from kadeploy_testbed.testbed import TestbedError  # noqa: PLC0415

    with pytest.raises(TestbedError, match="--netns"):
        fresh_testbed.fault(fresh_testbed.nodes[0].name, "slowlink")
