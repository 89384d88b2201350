"""When the supervision tree gives up, the ``kadeploy-server start --foreground`` process ends
with a non-zero status (so that systemd starts a new one), instead of living on without it.

The failure is the one seen in production: the process can start no more threads ("can't
start new thread"). The daemon runs in a pids cgroup of its own whose limit the test lowers
while a deployment is in flight (n-4's reboot hangs): the supervisor's next periodic check
cannot start its timer, the supervisor crashes, the tree ends, and what was left of the
deployment must not keep the process alive.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_fixtures import api_config, client_for, socket_dir
from daemon_fixtures import make_tar_environment, wait_until
from test_daemon_actors import UNTRUSTED_REBOOT, processes_with, slow

from kadeployd.process import EXIT_DEADLINE, running_pid

__all__ = ["socket_dir"]

SERVER = str(Path(sys.executable).parent / "kadeploy-server")
MARKER = f"kadeploy-test-server-exit-{os.getpid()}"


def _pids_hierarchy() -> Path | None:
    """Where pids cgroups are made: the cgroup v1 pids hierarchy, or the v2 root if the pids
    controller is enabled for its children; None if neither."""
    v1 = Path("/sys/fs/cgroup/pids")
    if (v1 / "cgroup.procs").is_file():
        return v1
    v2 = Path("/sys/fs/cgroup")
    controllers = v2 / "cgroup.subtree_control"
    if controllers.is_file() and "pids" in controllers.read_text().split():
        return v2
    return None


@pytest.fixture
def pids_cgroup() -> Iterator[Path]:
    """An empty pids cgroup, removed afterwards (once the processes put in it ended)."""
    hierarchy = _pids_hierarchy()
    if hierarchy is None or not os.access(hierarchy, os.W_OK):
        pytest.skip("needs a writable pids cgroup hierarchy")
    cgroup = hierarchy / f"kadeploy-test-{os.getpid()}"
    cgroup.mkdir()
    try:
        yield cgroup
    finally:
        (cgroup / "pids.max").write_text("max")
        wait_until(lambda: not (cgroup / "cgroup.procs").read_text().split(), 30, "an empty cgroup")
        cgroup.rmdir()


@pytest.mark.root
def test_the_process_exits_non_zero_when_the_supervision_tree_gives_up(
    tmp_path: Path, socket_dir: Path, pids_cgroup: Path
) -> None:
    socket_path = socket_dir / "api.sock"
    hanging = {4: UNTRUSTED_REBOOT.format(command=slow(MARKER), retries=0)}
    conf = api_config(tmp_path / "conf", socket_path, hanging)
    token_file = tmp_path / "token"
    added = subprocess.run(
        [SERVER, "token", "add", "root", "--output", str(token_file), "--conf", str(conf)],
        capture_output=True,
        check=False,
    )
    assert added.returncode == 0, added.stderr
    tiny = make_tar_environment(tmp_path)
    description = tiny.read_text().replace("tiny.tar.zst", str(tmp_path / "tiny.tar.zst"))
    log = tmp_path / "server.log"
    with log.open("wb") as output:
        server = subprocess.Popen(
            [SERVER, "start", "--foreground", "--conf", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        (pids_cgroup / "cgroup.procs").write_text(str(server.pid))  # every thread moves
        wait_until(
            lambda: server.poll() is not None or "kadeploy-server running" in log.read_text(),
            60,
            "the daemon to run",
        )
        assert server.poll() is None, log.read_text()
        with client_for(socket_path, token_file.read_text().strip()) as root:
            answer = root.post(
                "/v1/deployments",
                json={
                    "nodes": ["n-1", "n-4"],
                    "anonymous_environment": {"description": description},
                },
            )
            assert answer.status_code == 201, answer.text
        wait_until(lambda: processes_with(MARKER), 30, "the deployment to be in flight")
        (pids_cgroup / "pids.max").write_text("1")  # from now on, no new thread

        wait_until(lambda: server.poll() is not None, EXIT_DEADLINE + 30, "the daemon's exit")
        assert server.returncode == 1, log.read_text()
        text = log.read_text()
        assert "can't start new thread" in text, text
        assert "the supervision tree ended" in text, text
        assert running_pid(conf / "state" / "kadeployd.pid") is None
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(30)
        for pid in processes_with(MARKER):  # a reboot command the dead daemon left
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_a_thread_left_running_after_the_stop_does_not_keep_the_process_alive() -> None:
    # What Python's own exit would wait for, forever: a non-daemon thread that never ends.
    program = (
        "import threading\n"
        "from kadeployd.process import exit_process\n"
        "threading.Thread(target=threading.Event().wait, name='stuck', daemon=False).start()\n"
        "exit_process(0)\n"
    )
    ended = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=False
    )
    assert ended.returncode == 1, ended.stderr
    assert "threads still running after the stop (a bug): stuck;" in ended.stderr
