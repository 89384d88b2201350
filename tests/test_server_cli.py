"""`kadeploy-server start|stop|status|reload|token` as subprocesses, against the real daemon
(dummy macrosteps; node n-4's reboot hangs so a deployment stays in flight)."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_fixtures import api_config, client_for, error_of, socket_dir
from daemon_fixtures import make_tar_environment, wait_until
from test_daemon_actors import UNTRUSTED_REBOOT, processes_with, slow

from kadeployd.process import running_pid
from kadeployd.store import StoreReader, database_path

__all__ = ["socket_dir"]

SERVER = str(Path(sys.executable).parent / "kadeploy-server")
MARKER = f"kadeploy-test-server-cli-{os.getpid()}"


def server(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SERVER, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture
def conf(tmp_path: Path, socket_dir: Path) -> Iterator[Path]:
    slow_n4 = {4: UNTRUSTED_REBOOT.format(command=slow(MARKER), retries=0)}
    directory = api_config(tmp_path / "conf", socket_dir / "api.sock", slow_n4)
    yield directory
    pidfile = directory / "state" / "kadeployd.pid"
    pid = running_pid(pidfile)
    if pid is not None:  # a failed test left our daemon running
        server("stop", "--conf", str(directory))
        pid = running_pid(pidfile)
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not processes_with(MARKER), 20, "hanging reboots to end")


def test_start_status_deploy_reload_stop_during_a_deployment(conf: Path, tmp_path: Path) -> None:
    started = server("start", "--conf", str(conf))
    assert started.returncode == 0, started.stdout + started.stderr
    assert "kadeploy-server started" in started.stdout
    pid = running_pid(conf / "state" / "kadeployd.pid")
    assert pid is not None

    twice = server("start", "--conf", str(conf))
    assert twice.returncode == 1
    assert f"already running (pid {pid})" in twice.stdout + twice.stderr

    token_file = tmp_path / "token"
    added = server("token", "add", "root", "--output", str(token_file), "--conf", str(conf))
    assert added.returncode == 0, added.stderr
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text().strip()

    socket_path = next(
        Path(line.split("unix_socket: ")[1].rstrip("}\n"))
        for line in (conf / "deploy.conf").read_text().splitlines()
        if "unix_socket" in line
    )
    with client_for(socket_path, token) as root, client_for(socket_path, "wrong") as intruder:
        assert error_of(intruder.get("/v1/nodes"))["code"] == "unauthorized"
        tiny = make_tar_environment(tmp_path)
        # An administrator may name files on the server.
        text = tiny.read_text().replace("tiny.tar.zst", str(tmp_path / "tiny.tar.zst"))
        anonymous = {"description": text}
        answer = root.post(
            "/v1/deployments", json={"nodes": ["n-4"], "anonymous_environment": anonymous}
        )
        assert answer.status_code == 201, answer.text
        deployment_id = answer.json()["id"]
        wait_until(lambda: processes_with(MARKER), 20, "the deployment to be in flight")

    status = server("status", "--conf", str(conf))
    assert status.returncode == 0
    assert f"running (pid {pid})" in status.stdout
    assert "deployments in flight: 1" in status.stdout

    reloaded = server("reload", "--conf", str(conf))
    assert reloaded.returncode == 0, reloaded.stdout + reloaded.stderr
    assert "configuration reloaded" in reloaded.stdout
    assert processes_with(MARKER), "a reload must not drop the running deployment"

    os.kill(pid, signal.SIGUSR1)  # logs every thread's stack, keeps running
    log = conf / "state" / "kadeployd.log"
    wait_until(
        lambda: "Current state of MainThread" in log.read_text(), 20, "thread stacks in the log"
    )
    assert server("status", "--conf", str(conf)).returncode == 0

    stopped = server("stop", "--conf", str(conf))
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert running_pid(conf / "state" / "kadeployd.pid") is None
    assert not socket_path.exists()
    with StoreReader(database_path(conf / "state")) as reader:
        view = reader.deployment(deployment_id)
        assert view.status == "aborted"
        assert reader.node(deployment_id, "n-4").state == "aborted"
    wait_until(lambda: not processes_with(MARKER), 20, "the reboot command to be killed")

    status = server("status", "--conf", str(conf))
    assert (status.returncode, status.stdout.strip()) == (3, "kadeploy-server is not running")
    assert server("stop", "--conf", str(conf)).returncode == 0


def test_start_with_a_broken_config_fails_with_the_check_config_messages(conf: Path) -> None:
    nodes = conf / "nodes.conf"
    nodes.write_text(nodes.read_text().replace("cluster: tiny", "cluster: tinny", 1))
    answer = server("start", "--conf", str(conf))
    assert answer.returncode == 1
    assert "1 error in" in answer.stderr
    assert "did you mean 'tiny'" in answer.stderr
    assert "Traceback" not in answer.stderr
    assert running_pid(conf / "state" / "kadeployd.pid") is None


def test_reload_with_a_broken_config_is_refused_and_the_daemon_goes_on(conf: Path) -> None:
    assert server("start", "--conf", str(conf)).returncode == 0
    nodes = conf / "nodes.conf"
    good = nodes.read_text()
    nodes.write_text(
        good + "n-9:\n  cluster: tinny\n  address: 127.0.9.9\n  mac: 02:00:00:00:09:09\n"
    )
    refused = server("reload", "--conf", str(conf))
    assert refused.returncode == 1
    assert "did you mean 'tiny'" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert server("status", "--conf", str(conf)).returncode == 0
    assert server("stop", "--conf", str(conf)).returncode == 0


def test_token_add_for_an_unknown_user_fails_cleanly(conf: Path) -> None:
    answer = server("token", "add", "no-such-user-kd", "--conf", str(conf))
    assert answer.returncode == 1
    assert "no system user 'no-such-user-kd'" in answer.stderr
    assert "Traceback" not in answer.stderr


def test_the_port_taken_fails_the_start_with_a_clear_message(conf: Path) -> None:
    import socket  # noqa: PLC0415

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        deploy = conf / "deploy.conf"
        listen = f"  api: {{tcp_listen: '127.0.0.1:{port}', unix_socket:"
        deploy.write_text(deploy.read_text().replace("  api: {unix_socket:", listen))
        answer = server("start", "--conf", str(conf))
    assert answer.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in answer.stdout
    assert "Traceback" not in answer.stdout
