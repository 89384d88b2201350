"""Testbeds and deployments for the workflow tests (shared by conftest and the tests)."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from daemon_fixtures import wait_until

from kadeployd.daemon import Daemon
from kadeployd.environment import load_environment
from kadeployd.store.records import DeploymentView
from kadeployd.workflow.job import DeploymentRequest

NODES = 4


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def start_testbed(directory: Path, first: int, **options: Any) -> Any:
    """Four testbed nodes numbered from ``first``, booting from 127.0.0.1:<free port>, where
    each test's daemon will listen."""
    if os.geteuid() != 0:
        pytest.skip("needs root (namespaces, mounts, loop devices, port 22)")
    from kadeploy_testbed.state import TestbedConfig  # noqa: PLC0415
    from kadeploy_testbed.testbed import up  # noqa: PLC0415

    config = TestbedConfig(
        nodes=NODES,
        first=first,
        tftp_host="127.0.0.1",
        tftp_port=_free_udp_port(),
        boot_delay=0.1,
        **options,
    )
    return up(directory, config, timeout=90)


def reset(testbed: Any) -> tuple[str, ...]:
    """Every node back in its prod env with no fault and no PXE profile; their names."""
    testbed.reset()
    for profile in (testbed.layout.tftp_root / "pxelinux.cfg").glob("01-*"):
        profile.unlink()
    return tuple(spec.name for spec in testbed.nodes)


DEPLOY_TIMEOUT = 240


def request_for(
    env: Path, nodes: tuple[str, ...], key: Path | None, **options: Any
) -> DeploymentRequest:
    """alice's request to deploy the environment described in ``env``, with her key."""
    return DeploymentRequest(
        user="alice",
        environment=load_environment(env),
        nodes=nodes,
        authorized_keys=key.with_suffix(".pub").read_text() if key else "",
        **options,
    )


def deploy(
    daemon: Daemon, env: Path, nodes: tuple[str, ...], key: Path | None, **options: Any
) -> DeploymentView:
    """Deploy and wait for the end; the deployment as recorded."""
    return wait_finished(daemon, daemon.deploy(request_for(env, nodes, key, **options)))


def wait_finished(daemon: Daemon, deployment_id: str) -> DeploymentView:
    """Wait until the store records the deployment finished."""
    reader = daemon.reader()
    return wait_until(
        lambda: (view := reader.deployment(deployment_id)).status != "running" and view,
        DEPLOY_TIMEOUT,
        f"deployment {deployment_id}",
    )


def ssh_run(
    testbed: Any, node: str, *command: str, key: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``command`` on ``node`` over SSH (``key``: the user's, for the deployed system;
    None: the deploy key); the completed process, whatever its exit status."""
    return subprocess.run(
        testbed.ssh_argv(node, *command, key=key),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def ssh_output(testbed: Any, node: str, *command: str, key: Path | None = None) -> str:
    """The output of ``command`` on ``node``, which must succeed."""
    result = ssh_run(testbed, node, *command, key=key)
    assert result.returncode == 0, result.stderr
    return result.stdout


def os_release(testbed: Any, node: str, key: Path) -> str:
    """/etc/os-release of ``node``, read over SSH with ``key``."""
    return ssh_output(testbed, node, "cat", "/etc/os-release", key=key)


ConfEdit = Callable[[dict[str, Any], dict[str, Any]], None]
"""Edits (deploy.conf data, cluster file data) of a copied testbed configuration."""


def variant(kind: str, retries: int = 0, timeout: float | str = 60) -> dict[str, Any]:
    """One entry of a macrostep's variant list."""
    return {"type": kind, "retries": retries, "timeout": timeout}


def variants(
    set_env: list[dict[str, Any]] | None = None,
    broadcast: list[dict[str, Any]] | None = None,
    boot: list[dict[str, Any]] | None = None,
) -> ConfEdit:
    """A configuration edit replacing the given macrosteps' variant lists."""

    def edit(deploy_conf: dict[str, Any], cluster: dict[str, Any]) -> None:
        steps = deploy_conf["automata"]["macrosteps"]
        for name, chosen in (
            ("SetDeploymentEnv", set_env),
            ("BroadcastEnv", broadcast),
            ("BootNewEnv", boot),
        ):
            if chosen is not None:
                steps[name] = chosen

    return edit
