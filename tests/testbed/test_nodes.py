"""The emulated nodes against real processes: sshd in namespaces, PXE over tftpy, ipmitool."""

from __future__ import annotations

import subprocess
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from kadeploy_testbed.layout import SSH_PORT
from kadeploy_testbed.testbed import Testbed, ssh_answers, wait_until
from kadeployd.adapters.commands import run_command
from kadeployd.adapters.hostkey import fetch_host_key
from kadeployd.config import load_config
from kadeployd.reboot.jobs import PowerRequest, plan, result_of
from kadeployd.reboot.levels import RebootLevel

pytestmark = [pytest.mark.root, pytest.mark.testbed]

BOOT_TIMEOUT = 30.0


def ssh(
    bed: Testbed, node: str, *command: str, key: Path | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        bed.ssh_argv(node, *command, key=key),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def ipmitool(bed: Testbed, node: str, *command: str) -> str:
    spec = bed.node(node)
    result = subprocess.run(
        ["ipmitool", "-I", "lanplus", "-H", spec.bmc, "-U", "admin",
         "-f", str(bed.layout.ipmi_password), *command],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    return result.stdout.strip()


def env_of(bed: Testbed, node: str) -> str:
    return str(bed.node_status(node)["env"])


def wait_env(bed: Testbed, node: str, env: str) -> None:
    bed.wait_env([node], env, BOOT_TIMEOUT)


def boot_count(bed: Testbed, node: str) -> int:
    """Boots so far of ``node`` (its console log marks each one)."""
    return (bed.layout.node_dir(node) / "console.log").read_text().count("--- boot")


def booted_since(bed: Testbed, node: str, boots: int) -> bool:
    return boot_count(bed, node) > boots


def profile_name(bed: Testbed, node: str) -> str:
    return "pxelinux.cfg/01-" + bed.node(node).mac.replace(":", "-")


def write_profile(tftp: Any, bed: Testbed, node: str, text: str) -> None:
    (tftp.root / profile_name(bed, node)).write_text(text)


def test_every_node_answers_ssh_with_its_name(fresh_testbed: Testbed) -> None:
    for spec in fresh_testbed.nodes:
        result = ssh(
            fresh_testbed,
            spec.name,
            "hostname; grep KADEPLOY_TESTBED_ENV /etc/os-release; cat /proc/cmdline",
        )
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0] == spec.name
        assert lines[1] == "KADEPLOY_TESTBED_ENV=prod"
        assert "root=/dev/testbed/sda2" in lines[2]


def test_each_node_sees_only_its_own_disk(fresh_testbed: Testbed) -> None:
    first, second = fresh_testbed.nodes[0].name, fresh_testbed.nodes[1].name
    for name in (first, second):
        result = ssh(
            fresh_testbed,
            name,
            f"echo disk-of-{name} | dd of=/dev/testbed/sda conv=notrunc status=none && sync",
        )
        assert result.returncode == 0, result.stderr
    for name in (first, second):
        result = ssh(fresh_testbed, name, "head -n 1 /dev/testbed/sda; ls /dev/testbed")
        assert result.stdout.splitlines() == [
            f"disk-of-{name}",
            "sda",
            "sda1",
            "sda2",
            "sda3",
            "sda4",
        ]
    mounted = ssh(
        fresh_testbed,
        first,
        "mkfs.ext4 -q -F /dev/testbed/sda4 && mkdir -p /tmp/t && mount /dev/testbed/sda4 /tmp/t && echo ok > /tmp/t/f && cat /tmp/t/f && umount /tmp/t",
    )
    assert mounted.stdout.strip() == "ok", mounted.stderr
    host_mounts = Path("/proc/self/mountinfo").read_text()
    assert "/dev/testbed" not in host_mounts


def test_ipmitool_power_cycle_pxe_boots_the_node(fresh_testbed: Testbed, testbed_tftp: Any) -> None:
    node = fresh_testbed.nodes[0]
    assert ipmitool(fresh_testbed, node.name, "chassis", "power", "status") == "Chassis Power is on"
    ipmitool(fresh_testbed, node.name, "chassis", "power", "cycle")
    assert wait_until(
        lambda: profile_name(fresh_testbed, node.name) in testbed_tftp.requested(), BOOT_TIMEOUT
    )
    wait_env(fresh_testbed, node.name, "prod")
    # The lookup follows pxelinux order and stops at the default profile.
    asked = [name for name, client in testbed_tftp.requests if name.startswith("pxelinux.cfg/")]
    assert asked[0] == profile_name(fresh_testbed, node.name)
    assert asked[1] == "pxelinux.cfg/7F00020" + format(node.index, "X")
    assert asked[-1] == "pxelinux.cfg/default"
    assert ssh(fresh_testbed, node.name, "hostname").stdout.strip() == node.name


def test_ipmitool_off_and_on(fresh_testbed: Testbed) -> None:
    node = fresh_testbed.nodes[1]
    ipmitool(fresh_testbed, node.name, "chassis", "power", "off")
    assert (
        ipmitool(fresh_testbed, node.name, "chassis", "power", "status") == "Chassis Power is off"
    )
    assert wait_until(lambda: not ssh_answers(node.address), 10)
    ipmitool(fresh_testbed, node.name, "chassis", "power", "on")
    wait_env(fresh_testbed, node.name, "prod")


def test_deploy_kernel_boots_the_deploy_env(fresh_testbed: Testbed, testbed_tftp: Any) -> None:
    node = fresh_testbed.nodes[0].name
    write_profile(testbed_tftp, fresh_testbed, node,
                  "DEFAULT deploy\nLABEL deploy\n  KERNEL kernels/deploy-vmlinuz\n"
                  "  INITRD kernels/deploy-initrd.img\n  APPEND console=ttyS0 kadeploy-test=1\n")  # fmt: skip
    host_key = fresh_testbed.layout.deploy_host_pubkey
    keys = []
    for _ in range(2):
        boots = boot_count(fresh_testbed, node)
        ssh(fresh_testbed, node, "reboot")
        assert wait_until(partial(booted_since, fresh_testbed, node, boots), BOOT_TIMEOUT)
        wait_env(fresh_testbed, node, "deploy")
        keys.append(fetch_host_key(fresh_testbed.node(node).address, SSH_PORT, 5))
        result = ssh(
            fresh_testbed,
            node,
            "grep -E '^(ID|KADEPLOY_TESTBED_ENV)=' /etc/os-release; cat /proc/cmdline; command -v mkfs.ext4 tar python3",
        )
        assert result.stdout.splitlines()[:3] == [
            "ID=kadeploy-deployenv",
            "KADEPLOY_TESTBED_ENV=deploy",
            "console=ttyS0 kadeploy-test=1",
        ]
        assert len(result.stdout.splitlines()) == 6
    assert "kernels/deploy-vmlinuz" in testbed_tftp.requested()
    assert "kernels/deploy-initrd.img" in testbed_tftp.requested()
    # The testbed's one deploy env key, at every boot: the one its configuration pins.
    pinned = " ".join(host_key.read_text().split()[:2])
    assert keys == [pinned, pinned]
    config = load_config(fresh_testbed.layout.conf_dir)
    assert config.nodes[node].settings.boot.deploy_host_keys() == (pinned,)


def _install_image(bed: Testbed, node: str, partition: int, tmp_path: Path) -> tuple[Path, Path]:
    """Put a make-image root with a fresh user key on the node's partition (from the host)."""
    from kadeploy_testbed.image import make_image  # noqa: PLC0415

    result = make_image(tmp_path / "env.tar", name="testbed-img", kind="tar", compression="none")
    root = tmp_path / "root"
    root.mkdir()
    subprocess.run(["tar", "-xf", str(result.image), "-C", str(root)], check=True)
    key = tmp_path / "user_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    (root / "root/.ssh").mkdir(parents=True, exist_ok=True)
    (root / "root/.ssh/authorized_keys").write_text(key.with_suffix(".pub").read_text())
    device = bed.partition_device(node, partition)
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-d", str(root), device], check=True, capture_output=True
    )
    return key, root


def test_chain_to_a_partition_boots_the_deployed_image(
    fresh_testbed: Testbed, testbed_tftp: Any, tmp_path: Path
) -> None:
    node = fresh_testbed.nodes[2].name
    key, root = _install_image(fresh_testbed, node, 3, tmp_path)
    write_profile(
        testbed_tftp,
        fresh_testbed,
        node,
        "DEFAULT disk\nLABEL disk\n  COM32 chain.c32\n  APPEND hd0 3\n",
    )
    ipmitool(fresh_testbed, node, "chassis", "power", "cycle")
    assert wait_until(
        lambda: (
            env_of(fresh_testbed, node) == "deployed p3"
            and ssh_answers(fresh_testbed.node(node).address)
        ),
        BOOT_TIMEOUT,
    )
    result = ssh(fresh_testbed, node, "cat /etc/os-release", key=key)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (root / "etc/os-release").read_text()
    assert "KADEPLOY_TESTBED_ENV=deployed" in result.stdout
    refused = ssh(fresh_testbed, node, "true")
    assert refused.returncode == 255, "the deploy key is not authorized in a deployed env"
    # A busybox reboot -f inside the chroot is reboot(2): the node reboots into the same env.
    boots = boot_count(fresh_testbed, node)
    ssh(fresh_testbed, node, "reboot -f", key=key)
    assert wait_until(lambda: boot_count(fresh_testbed, node) > boots, BOOT_TIMEOUT)
    fresh_testbed.wait_env([node], "deployed p3", BOOT_TIMEOUT)
    assert ssh(fresh_testbed, node, "cat /proc/cmdline", key=key).stdout.startswith("BOOT_IMAGE")


def test_kernel_from_a_partition_boots_that_partition(
    fresh_testbed: Testbed, testbed_tftp: Any, tmp_path: Path
) -> None:
    node = fresh_testbed.nodes[3].name
    key, root = _install_image(fresh_testbed, node, 3, tmp_path)
    kernels = testbed_tftp.root / "kernels"
    (kernels / "user-vmlinuz").write_bytes((root / "boot/vmlinuz").read_bytes())
    (kernels / "user-initrd").write_bytes((root / "boot/initrd.img").read_bytes())
    write_profile(testbed_tftp, fresh_testbed, node,
                  "DEFAULT u\nLABEL u\n  KERNEL kernels/user-vmlinuz\n  INITRD kernels/user-initrd\n"
                  "  APPEND root=/dev/testbed/sda3 console=ttyS0 user=1\n")  # fmt: skip
    fresh_testbed.power(node, "cycle")
    assert wait_until(
        lambda: (
            env_of(fresh_testbed, node) == "deployed p3"
            and ssh_answers(fresh_testbed.node(node).address)
        ),
        BOOT_TIMEOUT,
    )
    result = ssh(fresh_testbed, node, "cat /proc/cmdline; hostname", key=key)
    assert result.stdout.splitlines() == ["root=/dev/testbed/sda3 console=ttyS0 user=1", node]


@pytest.mark.parametrize(
    "profile",
    [
        None,
        "this is not pxelinux\nDEFAULT nowhere\nLABEL x\n",
        "DEFAULT k\nLABEL k\n  KERNEL kernels/missing-vmlinuz\n",
        "DEFAULT k\nLABEL k\n  KERNEL kernels/deploy-initrd.img\n",
        "DEFAULT d\nLABEL d\n  COM32 chain.c32\n  APPEND hd0 4\n",
    ],
    ids=[
        "no-profile",
        "garbage",
        "missing-kernel",
        "kernel-matching-nothing",
        "unmountable-partition",
    ],
)
def test_no_valid_profile_leaves_the_node_silent(
    fresh_testbed: Testbed, testbed_tftp: Any, profile: str | None
) -> None:
    node = fresh_testbed.nodes[1]
    if profile is None:
        (testbed_tftp.root / "pxelinux.cfg/default").unlink()
    else:
        write_profile(testbed_tftp, fresh_testbed, node.name, profile)
    if profile is not None and "hd0 4" in profile:
        subprocess.run(
            [
                "dd",
                "if=/dev/zero",
                f"of={fresh_testbed.partition_device(node.name, 4)}",
                "bs=1M",
                "count=1",
                "conv=notrunc",
                "status=none",
            ],
            check=True,
        )
    ipmitool(fresh_testbed, node.name, "chassis", "power", "cycle")
    assert wait_until(lambda: env_of(fresh_testbed, node.name) == "silent", BOOT_TIMEOUT)
    assert not ssh_answers(node.address)
    assert ipmitool(fresh_testbed, node.name, "chassis", "power", "status") == "Chassis Power is on"


def _host_identity() -> tuple[str, str]:
    return Path("/proc/sys/kernel/random/boot_id").read_text(), Path("/proc/1/cmdline").read_text()


@pytest.mark.parametrize(
    "command", ["reboot", "reboot -f", "/sbin/reboot", "systemctl reboot", "shutdown -r now"]
)
def test_reboot_inside_a_node_reboots_only_that_node(
    fresh_testbed: Testbed, testbed_tftp: Any, command: str
) -> None:
    node = fresh_testbed.nodes[0].name
    before = _host_identity()
    boots = boot_count(fresh_testbed, node)
    ssh(fresh_testbed, node, command)
    assert wait_until(lambda: boot_count(fresh_testbed, node) > boots, BOOT_TIMEOUT)
    wait_env(fresh_testbed, node, "prod")
    assert profile_name(fresh_testbed, node) in testbed_tftp.requested()
    assert _host_identity() == before


def test_the_configured_soft_reboot_answers_then_reboots_the_node(fresh_testbed: Testbed) -> None:
    # The generated configuration's reboot_soft, run as the RebootActor runs it: the command
    # must report success (not ssh's 255 when the reboot cuts the connection) and the node
    # must really reboot.
    config = load_config(fresh_testbed.layout.conf_dir)
    node = config.nodes[fresh_testbed.nodes[0].name]
    boots = boot_count(fresh_testbed, node.name)
    request = plan("soft", node, RebootLevel.SOFT)
    assert isinstance(request, PowerRequest), request

    result = result_of(request, run_command(request.argv, request.timeout))

    assert (result.ok, result.message) == (True, "soft reboot succeeded")
    assert wait_until(partial(booted_since, fresh_testbed, node.name, boots), BOOT_TIMEOUT)
    wait_env(fresh_testbed, node.name, "prod")


def test_reboot_syscall_inside_a_node_does_not_touch_the_host(fresh_testbed: Testbed) -> None:
    node = fresh_testbed.nodes[0].name
    before = _host_identity()
    boots = boot_count(fresh_testbed, node)
    code = "import ctypes; ctypes.CDLL(None, use_errno=True).reboot(0x01234567)"
    ssh(fresh_testbed, node, "python3", "-c", f"'{code}'")
    assert wait_until(lambda: boot_count(fresh_testbed, node) > boots, BOOT_TIMEOUT)
    wait_env(fresh_testbed, node, "prod")
    assert _host_identity() == before
    assert ssh(fresh_testbed, node, "hostname").stdout.strip() == node


@pytest.mark.parametrize("command", ["poweroff", "halt", "systemctl poweroff"])
def test_poweroff_inside_a_node_turns_it_off(fresh_testbed: Testbed, command: str) -> None:
    node = fresh_testbed.nodes[1].name
    ssh(fresh_testbed, node, command)
    assert wait_until(lambda: fresh_testbed.node_status(node)["power"] == "off", BOOT_TIMEOUT)
    assert ipmitool(fresh_testbed, node, "chassis", "power", "status") == "Chassis Power is off"
