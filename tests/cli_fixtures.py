"""A kadeploy-server started with `kadeploy-server start` on a dummy-variant config, and the
installed command-line tools run against it as subprocesses.

Nodes n-1..n-3 deploy at once (dummy macrosteps); n-4's reboot hangs (``sh -c 'sleep 3600'``,
findable by a marker) so a deployment on it stays in flight until cancelled. n-1 has a real
IPMI BMC (pyghmi, in the test process) that the daemon's ``ipmitool`` commands reach.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from api_fixtures import ADMIN, api_config, client_for, register, short_dir
from daemon_fixtures import make_tar_environment, wait_until
from test_daemon_actors import UNTRUSTED_REBOOT, processes_with, slow

from kadeployd.api import TokenStore
from kadeployd.process import running_pid

BIN = Path(sys.executable).parent
BMC_ADDRESS = "127.0.3.41"
IPMI_PASSWORD = "s3cret"
SLOW_NODE = "n-4"


def tool(name: str) -> str:
    """The installed console script ``name`` beside this interpreter."""
    path = BIN / name
    assert path.exists(), f"{name} is not installed beside {sys.executable}"
    return str(path)


def free_udp_port(address: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((address, 0))
        port: int = probe.getsockname()[1]
        return port


class Chassis:
    """The power of node n-1 as its BMC sees it."""

    def __init__(self) -> None:
        self.on = True
        self.actions: list[str] = []

    def is_on(self) -> bool:
        return self.on

    def power_on(self) -> None:
        self.on = True
        self.actions.append("on")

    def power_off(self) -> None:
        self.on = False
        self.actions.append("off")

    def power_cycle(self) -> None:
        self.on = True
        self.actions.append("cycle")

    def power_reset(self) -> None:
        self.actions.append("reset")


def ipmi_override(port: int, password_file: Path) -> str:
    """nodes.conf lines giving n-1 a BMC and ipmitool power commands."""
    base = (
        f'[ipmitool, -I, lanplus, -H, "{{bmc}}", -p, "{port}", -U, admin, '
        f'-f, "{password_file}", chassis, power'
    )
    return (
        f"bmc: {BMC_ADDRESS}\n"
        "power:\n"
        f'  power_on: {base}, "on"]\n'
        f'  power_off: {base}, "off"]\n'
        f"  power_status: {base}, status]\n"
        f"  reboot_hard: {base}, cycle]\n"
    )


@dataclass
class CliServer:
    """A running kadeploy-server and how to run the tools against it."""

    conf: Path
    socket: Path
    home: Path
    marker: str
    tokens: dict[str, str] = field(default_factory=dict)
    chassis: Chassis = field(default_factory=Chassis)
    bmc_port: int = 0

    @property
    def state(self) -> Path:
        return self.conf / "state"

    def env(self, user: str | None = "alice", **extra: str) -> dict[str, str]:
        """The environment of a tool run as ``user`` (None: no token)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("KADEPLOY_")}
        env.update(HOME=str(self.home), KADEPLOY_SERVER=f"unix:{self.socket}")
        if user is not None:
            env["KADEPLOY_TOKEN"] = self.tokens[user]
        env.update(extra)
        return env

    def run(
        self,
        name: str,
        *args: str,
        user: str | None = "alice",
        timeout: float = 120,
        stdin: str | None = None,
        **extra: str,
    ) -> subprocess.CompletedProcess[str]:
        """Run the installed tool ``name`` to its end."""
        return subprocess.run(
            [tool(name), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=self.env(user, **extra),
            input=stdin,
            cwd=self.home,
        )

    def spawn(self, name: str, *args: str, user: str = "alice") -> subprocess.Popen[str]:
        """Start the tool ``name`` without waiting."""
        return subprocess.Popen(
            [tool(name), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env(user),
            cwd=self.home,
        )

    def server(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        """Run ``kadeploy-server ARGS --conf CONF``."""
        return subprocess.run(
            [tool("kadeploy-server"), *args, "--conf", str(self.conf)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def api(self, user: str = ADMIN) -> Any:
        """An httpx client of the API as ``user`` (to set up and to check)."""
        return client_for(self.socket, self.tokens[user])

    def running_deployments(self) -> list[dict[str, Any]]:
        with self.api() as client:
            found: list[dict[str, Any]] = client.get(
                "/v1/deployments", params={"status": "running"}
            ).json()
            return found

    def cleanup(self) -> None:
        """Stop the server (kill it if it will not stop) and wait for hanging reboots."""
        pid = running_pid(self.state / "kadeployd.pid")
        if pid is not None:
            self.server("stop")
            pid = running_pid(self.state / "kadeployd.pid")
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not processes_with(self.marker), 30, "hanging reboots to end")
        shutil.rmtree(self.socket.parent, ignore_errors=True)


def start_cli_server(base: Path, marker: str) -> CliServer:
    """Config, BMC password file, home dir, a started server, tokens, rights, environment."""
    sockets = short_dir()
    base.mkdir(parents=True, exist_ok=True)
    password_file = base / "ipmi_password"
    password_file.write_text(IPMI_PASSWORD + "\n")
    port = free_udp_port(BMC_ADDRESS)
    overrides = {
        1: ipmi_override(port, password_file),
        4: UNTRUSTED_REBOOT.format(command=slow(marker), retries=0),
    }
    conf = api_config(base / "conf", sockets / "api.sock", overrides)
    home = base / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519.pub").write_text("ssh-ed25519 AAAAC3Nza-test alice@test\n")
    server = CliServer(conf, sockets / "api.sock", home, marker, bmc_port=port)
    started = server.server("start")
    assert started.returncode == 0, started.stdout + started.stderr
    store = TokenStore(server.state)
    for user in ("root", "alice", "bob"):
        server.tokens[user] = store.add(user)
    with server.api() as root:
        granted = root.post("/v1/rights", json={"user": "alice", "nodes": ["*"]})
        assert granted.status_code == 201, granted.text
        environments = base / "environments"
        environments.mkdir()
        tiny = make_tar_environment(environments)
        answer = register(root, tiny, visibility="public")
        assert answer.status_code == 201, answer.text
    return server


@pytest.fixture(scope="module")
def cli_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliServer]:
    """One server for a module's tests (they must leave no deployment running)."""
    from kadeploy_testbed.bmc import start_bmc  # noqa: PLC0415

    marker = f"kadeploy-test-cli-{os.getpid()}-{id(tmp_path_factory)}"
    server = start_cli_server(tmp_path_factory.mktemp("cli"), marker)
    try:
        with start_bmc(
            BMC_ADDRESS, server.bmc_port, "admin", IPMI_PASSWORD, server.chassis, name="n-1"
        ):
            yield server
    finally:
        server.cleanup()


def json_of(result: subprocess.CompletedProcess[str]) -> Any:
    """stdout as one JSON document (asserting it is nothing else)."""
    try:
        return json.loads(result.stdout)
    except json.JSONDecodeError as exc:
        raise AssertionError(f"stdout is not one JSON document: {result.stdout!r}") from exc
