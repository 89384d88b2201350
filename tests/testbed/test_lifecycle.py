"""``up`` / ``down`` of whole testbeds: clean sweeps (also after a crash), --netns, the CLI.

These testbeds use node numbers far from the session testbed's (``first``), so they can run
while it is up.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kadeploy_testbed.confgen import write_conf
from kadeploy_testbed.layout import Layout, node_specs
from kadeploy_testbed.state import TestbedConfig, load_state
from kadeploy_testbed.testbed import Testbed, down, up, wait_until

CLI = str(Path(sys.executable).with_name("kadeploy-testbed"))


def _namespaces() -> set[str]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            for kind in ("pid", "mnt", "uts", "net"):
                with contextlib.suppress(OSError):
                    found.add(os.readlink(f"/proc/{entry}/ns/{kind}"))
    return found


def _processes() -> set[str]:
    """Processes a testbed runs: controller, unshare and nodeinit (they name the testbed's
    files or module), and the nodes' sshd (their config is under /run/testbed). Other
    processes on the machine (other test runs) are not the testbed's business."""
    markers = ("kadeploy_testbed", "/run/testbed/", "tb16", "/tb/")
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = (
                    Path(f"/proc/{entry}/cmdline")
                    .read_bytes()
                    .replace(b"\0", b" ")
                    .decode(errors="replace")
                )
            except OSError:
                continue
            if any(marker in cmdline for marker in markers):
                found.add(f"{entry} {cmdline.strip()}")
    return found


def _loops() -> set[str]:
    found = set()
    for entry in Path("/sys/block").glob("loop*"):
        with contextlib.suppress(OSError):
            found.add(f"{entry.name}={(entry / 'loop/backing_file').read_text().strip()}")
    return found


def _lines(*argv: str) -> set[str]:
    return set(
        subprocess.run(argv, capture_output=True, text=True, check=False).stdout.splitlines()
    )


def snapshot() -> dict[str, set[str]]:
    """What a testbed may leave behind: processes, namespaces, mounts, loops, links, addresses."""
    return {
        "processes": _processes(),
        "namespaces": _namespaces(),
        "mounts": set(Path("/proc/self/mountinfo").read_text().splitlines()),
        "loops": _loops(),
        "netns": _lines("ip", "netns", "list"),
        "links": {
            line.split(":")[1].strip().split("@")[0] for line in _lines("ip", "-o", "link", "show")
        },
        "addresses": _lines("ip", "-o", "addr", "show"),
    }


def leaked(
    before: dict[str, set[str]], during: dict[str, set[str]], after: dict[str, set[str]]
) -> dict[str, set[str]]:
    """What the testbed made (seen during, not before) that is still there after.

    Robust to other activity on the machine: only things that existed while the testbed ran
    and did not exist before count."""
    return {
        key: (after[key] & during[key]) - before[key]
        for key in before
        if (after[key] & during[key]) - before[key]
    }


def _ssh(bed: Testbed, node: str, command: str) -> str:
    return subprocess.run(
        bed.ssh_argv(node, command), capture_output=True, text=True, timeout=30, check=False
    ).stdout


def _kill_controller(directory: Path) -> None:
    pid = load_state(Layout.at(directory))["controller_pid"]
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: not Path(f"/proc/{pid}").exists(), 10)


@pytest.mark.root
@pytest.mark.testbed
def test_down_leaves_nothing_behind(tmp_path: Path) -> None:
    directory = tmp_path / "tb"
    before = snapshot()
    bed = up(directory, TestbedConfig(nodes=2, first=101, boot_delay=0.1), timeout=60)
    try:
        assert _ssh(bed, "node-101", "hostname").strip() == "node-101"
        during = snapshot()
        assert during["loops"] - before["loops"], "disks are loop devices"
    finally:
        assert down(directory) == [], "an orderly down has nothing left to sweep"
    assert leaked(before, during, snapshot()) == {}
    assert down(directory) == [], "down is idempotent"


@pytest.mark.root
@pytest.mark.testbed
def test_netns_shaping_and_sweep_after_a_controller_crash(tmp_path: Path) -> None:
    directory = tmp_path / "tb"
    before = snapshot()
    config = TestbedConfig(nodes=2, first=201, netns=True, rate="100mbit", boot_delay=0.1)
    bed = up(directory, config, timeout=60)
    try:
        node = bed.nodes[0]
        assert node.address == "198.18.0.202"
        assert _ssh(bed, node.name, "hostname").strip() == node.name
        assert "rate 100Mbit" in _ssh(bed, node.name, "tc qdisc show dev eth0")
        host_qdisc = subprocess.run(
            ["tc", "qdisc", "show", "dev", node.veth_host],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "rate 100Mbit" in host_qdisc
        bed.fault(node.name, "slowlink")
        assert "rate 10Mbit" in _ssh(bed, node.name, "tc qdisc show dev eth0")
        bed.fault(node.name, "clear")
        assert "rate 100Mbit" in _ssh(bed, node.name, "tc qdisc show dev eth0")
        during = snapshot()
        _kill_controller(directory)
    finally:
        swept = down(directory)
    assert any(item.startswith("process") for item in swept)
    assert any(item.startswith("loop") for item in swept)
    assert any(item.startswith("netns") for item in swept)
    assert leaked(before, during, snapshot()) == {}


@pytest.mark.root
@pytest.mark.testbed
def test_cli_up_16_nodes_status_and_down(tmp_path: Path) -> None:
    directory = tmp_path / "tb16"
    before = snapshot()
    run = subprocess.run(
        [CLI, "up", "-n", "16", "--first", "120", "--dir", str(directory), "--boot-delay", "0.1", "--disk-mb", "8,16,64,16"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    try:
        assert run.returncode == 0, run.stderr
        status = subprocess.run(
            [CLI, "status", "--dir", str(directory)], capture_output=True, text=True, check=True
        ).stdout
        rows = status.splitlines()[1:]
        assert len(rows) == 16
        assert all(row.split()[1:3] == ["on", "prod"] for row in rows)
        power = subprocess.run(
            [CLI, "power", "--dir", str(directory), "node-135", "status"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert power.stdout.strip() == "node-135: on"
        during = snapshot()
    finally:
        result = subprocess.run(
            [CLI, "down", "--dir", str(directory)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert result.returncode == 0
    assert leaked(before, during, snapshot()) == {}


@pytest.mark.root
def test_up_without_root_says_so(tmp_path: Path) -> None:
    directory = tmp_path / "tb"
    tmp_path.chmod(0o777)
    result = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", CLI, "up", "-n", "1", "--dir", str(directory)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "root privileges" in result.stderr
    assert "Traceback" not in result.stderr


def test_up_without_tools_names_them(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    result = subprocess.run(
        [CLI, "up", "-n", "1", "--dir", str(tmp_path / "tb")],
        capture_output=True, text=True, timeout=60, check=False, env={"PATH": str(empty)},
    )  # fmt: skip
    assert result.returncode == 1
    assert "unshare" in result.stderr
    assert "ipmitool" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tftp", "nowhere"], "expected HOST:PORT"),
        (["--rate", "fast"], "expected a tc rate"),
        (["--disk-mb", "1,2"], "four sizes"),
    ],
)
def test_up_rejects_bad_options(tmp_path: Path, args: list[str], message: str) -> None:
    result = subprocess.run(
        [CLI, "up", "-n", "1", "--dir", str(tmp_path), *args],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert message in result.stderr


def test_status_without_testbed_is_a_clear_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [CLI, "status", "--dir", str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 1
    assert "no testbed" in result.stderr


@pytest.mark.parametrize("count", [1, 4, 12])
def test_generated_configuration_passes_check_config(tmp_path: Path, count: int) -> None:
    layout = Layout.at(tmp_path)
    write_conf(layout, node_specs(count, netns=False), "127.0.0.1", 6969)
    result = subprocess.run(
        [str(Path(sys.executable).with_name("kadeploy-server")), "check-config", "--conf", str(layout.conf_dir), "--node", f"node-{count}"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"127.0.2.{count}" in result.stdout
    assert f"02:00:00:00:02:{count:02x}" in result.stdout
