"""``scripts/demo`` twice, then ``scripts/demo down``: the front door works every time.

The second run reuses the testbed, the daemon and the registered environment, deploys again
(a redeploy, timed) and ends with the same ``ssh ... cat /etc/os-release``; ``down`` leaves
nothing: no daemon, no testbed process, mount or loop device, no directory.

The demo runs here on its own testbed, beside the session testbed and the workflow ones:
nodes 61-62 (KADEPLOY_DEMO_FIRST) in a tmp directory (KADEPLOY_DEMO_DIR), its daemon's TFTP
server on a free port (KADEPLOY_DEMO_TFTP).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.root, pytest.mark.testbed]

DEMO = Path(__file__).resolve().parents[1] / "scripts" / "demo"
FIRST = 61
NODES = 2
RUN_TIMEOUT = 900
"""Seconds for one run of the demo: a redeploy may wait out reboot timeouts today."""
PROOF = "KADEPLOY_TESTBED_ENV=deployed"
"""In the deployed env's /etc/os-release, which the demo prints over ssh at the end."""


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _demo(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(DEMO), *args],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def _told(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n{result.stdout[-6000:]}\n{result.stderr[-3000:]}"


def _daemon_pid(directory: Path) -> int:
    return int((directory / "daemon" / "kadeployd.pid").read_text().split()[0])


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _leftovers(directory: Path) -> list[str]:
    """What of the demo still exists: processes naming its directory (controller, nodes,
    daemon), sockets on its nodes' and BMCs' addresses, mounts and loop devices under it."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
                if str(directory).encode() in cmdline:
                    found.append(f"process {entry}: {cmdline.decode(errors='replace')}")
    addresses = [f"127.0.{net}.{n}:" for net in (2, 3) for n in range(FIRST, FIRST + NODES)]
    sockets = subprocess.run(["ss", "-Hltun"], capture_output=True, text=True, check=True)
    found += [f"socket {line}" for line in sockets.stdout.splitlines() if any(
        address in line for address in addresses
    )]  # fmt: skip
    found += [
        f"mount {line}"
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if str(directory) in line
    ]
    for loop in Path("/sys/block").glob("loop*"):
        with contextlib.suppress(OSError):
            backing = (loop / "loop" / "backing_file").read_text().strip()
            if backing.startswith(str(directory)):
                found.append(f"loop {loop.name}: {backing}")
    if directory.exists():
        found.append(f"directory {directory}")
    return found


def test_the_demo_runs_twice_then_down_removes_everything(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (namespaces, mounts, loop devices, port 22)")
    directory = tmp_path / "demo"
    env = {
        **os.environ,
        "KADEPLOY_DEMO_DIR": str(directory),
        "KADEPLOY_DEMO_FIRST": str(FIRST),
        "KADEPLOY_DEMO_TFTP": f"127.0.0.1:{_free_udp_port()}",
    }
    env = {k: v for k, v in env.items() if k not in ("KADEPLOY_CONF", "KADEPLOY_TOKEN")}
    daemon = None
    try:
        first = _demo(env, str(NODES))
        assert first.returncode == 0, _told(first)
        assert f"{NODES}/{NODES} nodes deployed" in first.stdout, _told(first)
        assert f"first deployment of {NODES} nodes: " in first.stdout, _told(first)
        assert first.stdout.count(PROOF) == 1, _told(first)
        daemon = _daemon_pid(directory)

        second = _demo(env, str(NODES))
        assert second.returncode == 0, _told(second)
        for reused in (
            "already up with these nodes: reused",
            "already running on this configuration: reused",
            "debian-min is already registered with this image: reused",
        ):
            assert reused in second.stdout, _told(second)
        assert f"{NODES}/{NODES} nodes deployed" in second.stdout, _told(second)
        assert f"redeploy of {NODES} nodes: " in second.stdout, _told(second)
        assert second.stdout.count(PROOF) == 1, _told(second)
        assert _daemon_pid(directory) == daemon  # the same daemon, not a new one
    finally:
        down = _demo(env, "down")
    assert down.returncode == 0, _told(down)
    assert daemon is not None and not _alive(daemon)
    assert _leftovers(directory) == []
