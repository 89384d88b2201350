"""Least privilege of the root daemon: a real `kadeploy-server` keeps its state to itself.

The daemon is started as a subprocess, on an install whose state dir and log were left
world-readable (as every release before this one made them); the test reads the modes of
what it finds and creates, and the umask and open-files limit of the daemon's process.
"""

from __future__ import annotations

import os
import resource
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_fixtures import api_config, socket_dir
from test_server_cli import SERVER, server

from kadeployd.privileges import prepare_socket_dir, secure_state_dir
from kadeployd.process import running_pid
from kadeployd.store import database_path

__all__ = ["socket_dir"]

UNIT = Path(__file__).parent.parent / "conf" / "kadeployd.service"


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def conf(tmp_path: Path, socket_dir: Path) -> Iterator[Path]:
    directory = api_config(tmp_path / "conf", socket_dir / "api.sock")
    yield directory
    pid = running_pid(directory / "state" / "kadeployd.pid")
    if pid is not None:
        server("stop", "--conf", str(directory))


def open_files_limit(pid: int) -> tuple[str, str]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return soft, hard
    raise AssertionError("no open-files limit in /proc/PID/limits")


def umask_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Umask:"):
            return int(line.split()[1], 8)
    raise AssertionError("no Umask in /proc/PID/status")


def test_the_daemon_keeps_its_state_dir_and_files_private(conf: Path) -> None:
    state = conf / "state"
    state.mkdir(mode=0o755)
    os.chmod(state, 0o755)  # whatever this test's umask
    old_log = state / "kadeployd.log"
    old_log.write_text("a line from an older daemon\n")
    os.chmod(old_log, 0o644)
    leftover = state / "environments"
    leftover.mkdir()
    os.chmod(leftover, 0o755)

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(1024, soft)

    def low_soft_limit() -> None:  # the usual default of a login shell
        os.umask(0o022)
        resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))

    started = subprocess.run(
        [SERVER, "start", "--conf", str(conf)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        preexec_fn=low_soft_limit,  # a setrlimit and umask only
    )
    assert started.returncode == 0, started.stdout + started.stderr
    pid = running_pid(state / "kadeployd.pid")
    assert pid is not None

    assert mode(state) == 0o700  # the API socket is elsewhere in this config
    assert mode(leftover) == 0o700
    database = database_path(state)
    for path in [database, state / "kadeployd.log", state / "kadeployd.pid"]:
        assert mode(path) == 0o600, path
    for extra in state.glob("kadeployd.db-*"):  # SQLite's WAL and shared memory
        assert mode(extra) == 0o600, extra
    assert umask_of(pid) == 0o077
    expected = "unlimited" if hard == resource.RLIM_INFINITY else str(hard)
    limit_soft, limit_hard = open_files_limit(pid)
    assert limit_hard == expected
    if hard != resource.RLIM_INFINITY:
        assert limit_soft == limit_hard
    else:
        assert int(limit_soft) > low

    stopped = server("stop", "--conf", str(conf))
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr


def test_a_state_dir_holding_the_api_socket_is_traversable_only(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    os.chmod(state, 0o755)
    (state / "tokens.json").write_text("{}")
    os.chmod(state / "tokens.json", 0o644)
    secure_state_dir(state, state / "kadeployd.sock")
    assert mode(state) == 0o711  # users reach the socket by name; they list and read nothing
    assert mode(state / "tokens.json") == 0o600
    secure_state_dir(state, tmp_path / "elsewhere.sock")
    assert mode(state) == 0o700


def test_a_new_socket_directory_elsewhere_is_reachable(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        socket_path = tmp_path / "run" / "kadeployd" / "api.sock"
        prepare_socket_dir(tmp_path / "state", socket_path)
    finally:
        os.umask(old)
    assert mode(tmp_path / "run") == mode(socket_path.parent) == 0o755


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_the_systemd_unit_verifies_and_is_sandboxed(tmp_path: Path) -> None:
    text = UNIT.read_text()
    for directive in [
        "UMask=0077",
        "StateDirectoryMode=0711",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/kadeployd",
        "ProtectHome=read-only",
        "PrivateTmp=yes",
        "ProtectKernelTunables=yes",
        "ProtectControlGroups=yes",
        "RestrictSUIDSGID=yes",
        "LockPersonality=yes",
    ]:
        assert directive in text.splitlines(), directive
    capabilities = next(x for x in text.splitlines() if x.startswith("CapabilityBoundingSet="))
    assert "CAP_NET_BIND_SERVICE" in capabilities.split("=")[1].split()  # TFTP on port 69
    # verify checks that ExecStart's program exists: point it at this checkout's.
    unit = tmp_path / "kadeployd.service"
    unit.write_text(text.replace("/usr/local/bin/kadeploy-server", SERVER))
    answer = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    complaints = [line for line in answer.stderr.splitlines() if unit.name in line]
    assert answer.returncode == 0 and not complaints, answer.stderr
