"""The actor tree end to end with real parts but no nodes: dummy macrosteps, real power
commands (false, sleep), a real SQLite store and a real TFTP server.

Deployments onto testbed nodes are in tests/workflow/; these tests cover what does not need a
node: the outcome rules (min_nodes, early failure), retries, abort, image errors, restarts of
permanent actors.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pykka
import pytest
from daemon_fixtures import (
    dummy_config,
    finished,
    make_tar_environment,
    request,
    stop_all_actors,
    wait_until,
)
from pykka.messages import ProxyCall

from kadeployd.api import power_wait
from kadeployd.daemon import Daemon
from kadeployd.environment import load_environment
from kadeployd.reboot.levels import RebootLevel

__all__ = ["stop_all_actors"]
pytestmark = pytest.mark.usefixtures("stop_all_actors")

# No soft reboot: its failure only means waiting for the node; a BMC command's failure is final.
UNTRUSTED_REBOOT = """\
power: {{reboot_soft: null, reboot_hard: {command}, reboot_very_hard: {command}}}
automata:
  macrosteps:
    SetDeploymentEnv: [{{type: untrusted, retries: {retries}, timeout: 60}}]
"""


def slow(marker: str) -> str:
    """A reboot command that never ends by itself, findable in /proc by its marker."""
    return f'[sh, -c, "sleep 3600; true", "{marker}"]'


def processes_with(marker: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


@pytest.fixture
def environment(tmp_path: Path) -> Path:
    return make_tar_environment(tmp_path)


def start(tmp_path: Path, overrides: dict[int, str] | None = None) -> Daemon:
    return Daemon.start(dummy_config(tmp_path / "conf", overrides))


def test_dummy_deployment_deploys_every_node_and_records_history(
    tmp_path: Path, environment: Path
) -> None:
    daemon = start(tmp_path)
    try:
        deployment_id = daemon.deploy(request(environment))
        view = finished(daemon, deployment_id)
        assert view.status == "succeeded"
        reader = daemon.reader()
        assert {n.node: n.state for n in reader.nodes(deployment_id)} == {
            f"n-{i}": "deployed" for i in range(1, 5)
        }
        assert reader.deployment(deployment_id).environment["name"] == "tiny"
        # The environment's kernel was published on the TFTP server for the classical boot.
        published = list((tmp_path / "conf" / "state" / "tftp" / "envs").glob("*/vmlinuz"))
        assert [p.read_bytes() for p in published] == [b"KERNEL tiny"]
    finally:
        daemon.stop()


def test_a_deployment_that_deployed_no_node_leaves_no_boot_files(
    tmp_path: Path, environment: Path
) -> None:
    failing = UNTRUSTED_REBOOT.format(command='["false"]', retries=0)
    daemon = start(tmp_path, dict.fromkeys(range(1, 5), failing))
    envs = tmp_path / "conf" / "state" / "tftp" / "envs"
    try:
        deployment_id = daemon.deploy(request(environment))
        assert finished(daemon, deployment_id).status == "failed"
        # Published for the deployment, removed at its end: no node boots them.
        wait_until(lambda: not any(envs.glob("*/vmlinuz")) or None, 10, "boot files removed")
    finally:
        daemon.stop()
    # A deployment that deployed nodes keeps its files: its nodes boot them.
    daemon = Daemon.start(dummy_config(tmp_path / "ok"))
    envs = tmp_path / "ok" / "state" / "tftp" / "envs"
    try:
        deployment_id = daemon.deploy(request(environment))
        assert finished(daemon, deployment_id).status == "succeeded"
        daemon.stop()  # the PXE actor handles what it was told before it stops
        assert [p.parent.name[-8:] for p in envs.glob("*/vmlinuz")] == [deployment_id[:8]]
    finally:
        daemon.stop()


def test_failing_reboot_is_retried_then_fails_only_that_node(
    tmp_path: Path, environment: Path
) -> None:
    daemon = start(tmp_path, {2: UNTRUSTED_REBOOT.format(command='["false"]', retries=2)})
    try:
        deployment_id = daemon.deploy(request(environment))
        view = finished(daemon, deployment_id)
        assert view.status == "failed"
        nodes = {n.node: n for n in daemon.reader().nodes(deployment_id)}
        assert [nodes[f"n-{i}"].state for i in (1, 3, 4)] == ["deployed"] * 3
        failed = nodes["n-2"]
        assert failed.state == "deploy_failed"
        assert failed.error_step == "SetDeploymentEnv"
        assert "reboot failed" in (failed.error_message or "")
        assert failed.attempt == 3
        attempts = [
            h.attempt
            for h in daemon.reader().history(deployment_id, "n-2")
            if h.state == "rebooting"
        ]
        assert sorted(set(attempts)) == [1, 2, 3]
        # The failed node's PXE profile points back at its prod env.
        profile = tmp_path / "conf" / "state" / "tftp" / "pxelinux.cfg" / "01-02-00-00-00-09-02"
        assert "chain.c32" in profile.read_text()
    finally:
        daemon.stop()


def test_min_nodes_reached_aborts_the_straggler(tmp_path: Path, environment: Path) -> None:
    marker = f"kadeploy-test-straggler-{os.getpid()}"
    daemon = start(tmp_path, {4: UNTRUSTED_REBOOT.format(command=slow(marker), retries=5)})
    try:
        deployment_id = daemon.deploy(request(environment, min_nodes=3))
        view = finished(daemon, deployment_id)
        assert view.status == "succeeded"
        assert view.reason.startswith("min nodes reached")
        straggler = daemon.reader().node(deployment_id, "n-4")
        assert straggler.state == "aborted"
        assert straggler.error_message == "min nodes reached"
        wait_until(
            lambda: not processes_with(marker), 20, "the straggler's reboot command to be killed"
        )
    finally:
        daemon.stop()


def test_min_nodes_out_of_reach_fails_early(tmp_path: Path, environment: Path) -> None:
    marker = f"kadeploy-test-early-{os.getpid()}"
    overrides = {i: UNTRUSTED_REBOOT.format(command=slow(marker), retries=0) for i in (1, 3, 4)}
    overrides[2] = UNTRUSTED_REBOOT.format(command='["false"]', retries=0)
    daemon = start(tmp_path, overrides)
    try:
        deployment_id = daemon.deploy(request(environment, min_nodes=4))
        view = finished(daemon, deployment_id)
        assert view.status == "failed"
        assert view.reason == "4 deployed nodes needed, at most 3 possible (1 node failed)"
        states = {n.node: n.state for n in daemon.reader().nodes(deployment_id)}
        assert states == {
            "n-1": "aborted",
            "n-2": "deploy_failed",
            "n-3": "aborted",
            "n-4": "aborted",
        }
        wait_until(lambda: not processes_with(marker), 20, "the other nodes' reboots to be killed")
    finally:
        daemon.stop()


def test_cancel_aborts_every_node_and_kills_their_commands(
    tmp_path: Path, environment: Path
) -> None:
    marker = f"kadeploy-test-cancel-{os.getpid()}"
    overrides = {i: UNTRUSTED_REBOOT.format(command=slow(marker), retries=3) for i in range(1, 5)}
    daemon = start(tmp_path, overrides)
    try:
        deployment_id = daemon.deploy(request(environment))
        wait_until(lambda: len(processes_with(marker)) == 4, 20, "four reboot commands running")
        node = daemon.reader().node(deployment_id, "n-1")
        assert (node.state, node.macrostep, node.variant, node.attempt) == (
            "rebooting",
            "SetDeploymentEnv",
            "untrusted",
            1,
        )
        assert node.elapsed is not None
        assert daemon.cancel(deployment_id)
        view = finished(daemon, deployment_id, timeout=20)
        assert view.status == "aborted"
        assert {n.state for n in daemon.reader().nodes(deployment_id)} == {"aborted"}
        wait_until(lambda: not processes_with(marker), 20, "every reboot command to be killed")
    finally:
        daemon.stop()


def test_missing_image_fails_every_node_with_a_clear_error(
    tmp_path: Path, environment: Path
) -> None:
    daemon = start(tmp_path)
    try:
        env = load_environment(environment)
        env.image.file.unlink()
        deployment_id = daemon.deploy(request(env))
        view = finished(daemon, deployment_id)
        assert view.status == "failed"
        for node in daemon.reader().nodes(deployment_id):
            assert node.state == "deploy_failed"
            assert node.error_step == "prepare"
            assert "not found" in (node.error_message or "")
        # The daemon is still serving: another deployment goes through.
        env2 = load_environment(make_tar_environment(tmp_path, "second"))
        assert finished(daemon, daemon.deploy(request(env2))).status == "succeeded"
    finally:
        daemon.stop()


def test_image_without_its_kernel_fails_every_node(tmp_path: Path) -> None:
    daemon = start(tmp_path)
    try:
        env = load_environment(make_tar_environment(tmp_path, "nokernel", with_kernel=False))
        deployment_id = daemon.deploy(request(env))
        assert finished(daemon, deployment_id).status == "failed"
        messages = {n.error_message for n in daemon.reader().nodes(deployment_id)}
        assert len(messages) == 1
        assert "/boot/vmlinuz" in messages.pop() or ""
    finally:
        daemon.stop()


@pytest.mark.parametrize("name", ["config", "store", "reboot", "pxe", "nodes"])
def test_permanent_actor_crash_mid_deployment_is_survived(
    tmp_path: Path, environment: Path, name: str
) -> None:
    marker = f"kadeploy-test-crash-{name}-{os.getpid()}"
    # Each node's first reboot hangs until its variant times out: the deployment is in flight
    # while the actor is killed, then the nodes retry and finish.
    hanging = UNTRUSTED_REBOOT.format(command=slow(marker), retries=1).replace(
        "timeout: 60", "timeout: 2"
    )
    fallback = hanging.replace(
        "SetDeploymentEnv: [{type: untrusted, retries: 1, timeout: 2}]",
        "SetDeploymentEnv: [{type: untrusted, retries: 0, timeout: 2}, {type: dummy, retries: 0, timeout: 60}]",
    )
    daemon = start(tmp_path, {i: fallback for i in range(1, 5)})
    try:
        deployment_id = daemon.deploy(request(environment))
        wait_until(lambda: len(processes_with(marker)) == 4, 20, "the deployment to be in flight")
        old = daemon.supervisor.child(name)
        _crash(old)
        wait_until(
            lambda: daemon.supervisor.child(name, 10).actor_urn != old.actor_urn,
            20,
            f"{name} restarted",
        )
        view = finished(daemon, deployment_id)
        assert view.status == "succeeded", daemon.reader().nodes(deployment_id)
    finally:
        daemon.stop()


def _crash(ref: pykka.ActorRef[object]) -> None:
    """Make an actor fail as a bug would: an exception raised by a told message kills it."""
    ref.tell(ProxyCall(attr_path=("no_such_method",), args=(), kwargs={}))


def test_kareboot_escalates_a_failed_command_to_the_next_stronger_reboot(tmp_path: Path) -> None:
    escalating = (
        "power: {reboot_soft: [sh, -c, 'echo Permission denied >&2; exit 255'], "
        "reboot_hard: ['true']}\n"
    )
    daemon = start(
        tmp_path, {1: escalating, 2: "power: {reboot_soft: ['false'], reboot_hard: ['false']}\n"}
    )
    try:
        nodes = [daemon.config.nodes[name] for name in ("n-1", "n-2")]
        first, second = asyncio.run(power_wait.reboot(daemon, nodes, RebootLevel.SOFT))
        assert first.ok
        assert first.operation == RebootLevel.HARD
        assert "Permission denied" in first.message
        assert "escalated: hard reboot succeeded" in first.message
        assert not second.ok  # no very hard command: nothing stronger to try after hard
        assert second.operation == RebootLevel.HARD
    finally:
        daemon.stop()
