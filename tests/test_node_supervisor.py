"""The NodeSupervisor with real actors and no nodes (dummy macrosteps; n-4's reboot hangs so
that a deployment stays in flight): admission holds for any caller, from its own record of
which deployment holds which node, and a crashed DeploymentManager is cleared at once.

The same crash on testbed nodes (PXE profiles, a real chain) is in
tests/workflow/test_manager_crash.py.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pykka
import pytest
from daemon_fixtures import (
    dummy_config,
    finished,
    make_tar_environment,
    stop_all_actors,
    wait_until,
)
from pykka.messages import ProxyCall
from test_daemon_actors import UNTRUSTED_REBOOT, processes_with, slow

from kadeploy_core.machine import NodeState
from kadeployd.actors.directory import NODES
from kadeployd.actors.manager import DeploymentManager
from kadeployd.actors.node import NodeActor, prod_boot_target
from kadeployd.admission import AdmissionRefused, Refusal
from kadeployd.daemon import Daemon
from kadeployd.environment import EnvironmentDescription, load_environment
from kadeployd.pxe.profiles import profile_path, render_profile
from kadeployd.workflow.job import DeploymentRequest, NoEnvironment, Operation

__all__ = ["stop_all_actors"]
pytestmark = pytest.mark.usefixtures("stop_all_actors")

MARKER = f"kadeploy-test-node-supervisor-{os.getpid()}"


@pytest.fixture
def daemon(tmp_path: Path) -> Any:
    hanging = {4: UNTRUSTED_REBOOT.format(command=slow(MARKER), retries=0)}
    running = Daemon.start(dummy_config(tmp_path / "conf", hanging))
    yield running
    running.stop()
    wait_until(lambda: not processes_with(MARKER), 30, "n-4's hanging reboot to be killed")


@pytest.fixture
def env(tmp_path: Path) -> EnvironmentDescription:
    return load_environment(make_tar_environment(tmp_path))


def deploy_request(env: EnvironmentDescription, *nodes: str) -> DeploymentRequest:
    return DeploymentRequest(user="alice", environment=env, nodes=nodes)


def holds(daemon: Daemon) -> dict[str, str]:
    held: dict[str, str] = daemon.supervisor.proxy(NODES).holds().get(timeout=10)
    return held


def state(daemon: Daemon, deployment_id: str, node: str) -> str:
    return daemon.reader().node(deployment_id, node).state


def test_two_threads_asking_for_one_node_cannot_both_have_it(
    daemon: Daemon, env: EnvironmentDescription
) -> None:
    barrier = threading.Barrier(2)
    answers: list[str | AdmissionRefused] = []

    def ask() -> None:
        barrier.wait(10)
        try:
            answers.append(daemon.deploy(deploy_request(env, "n-4", "n-3")))
        except AdmissionRefused as exc:
            answers.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    started = [a for a in answers if isinstance(a, str)]
    refused = [a for a in answers if isinstance(a, AdmissionRefused)]
    assert len(started) == 1 and len(refused) == 1, answers
    assert refused[0].kind is Refusal.NODE_BUSY
    assert f"(deployment {started[0]}," in refused[0].problems[0].message
    daemon.cancel(started[0])
    assert finished(daemon, started[0]).status == "aborted"


def test_nodes_are_held_until_final_and_reboot_operations_hold_theirs(
    daemon: Daemon, env: EnvironmentDescription
) -> None:
    first = daemon.deploy(deploy_request(env, "n-1", "n-4"))
    wait_until(lambda: state(daemon, first, "n-1") == "deployed", 30, "n-1 deployed")
    wait_until(lambda: holds(daemon) == {"n-4": first}, 30, "n-1 released")
    # A kareboot deploy_env runs as a deployment: the same rule, in its words.
    reboot = DeploymentRequest(
        user="alice",
        environment=NoEnvironment(name="deploy_env"),
        nodes=("n-4",),
        operation=Operation.DEPLOY_ENV,
    )
    with pytest.raises(AdmissionRefused, match="n-4 in a running deployment; use force to reboot"):
        daemon.deploy(reboot)
    again = daemon.deploy(deploy_request(env, "n-1"))
    assert finished(daemon, again).status == "succeeded"
    # A restarted NodeSupervisor learns the holds again from the running managers.
    old = daemon.supervisor.child(NODES)
    old.tell(ProxyCall(attr_path=("no_such_method",), args=(), kwargs={}))
    wait_until(lambda: daemon.supervisor.child(NODES, 10) != old, 30, "the restart")
    assert holds(daemon) == {"n-4": first}
    with pytest.raises(AdmissionRefused, match="n-4 already in a running deployment"):
        daemon.deploy(deploy_request(env, "n-4"))
    daemon.cancel(first)
    assert finished(daemon, first).status == "aborted"
    assert holds(daemon) == {}


def test_a_crashed_manager_fails_its_unfinished_nodes_and_frees_them(
    daemon: Daemon, env: EnvironmentDescription
) -> None:
    deployment_id = daemon.deploy(deploy_request(env, "n-1", "n-2", "n-3", "n-4"))
    wait_until(lambda: processes_with(MARKER), 30, "n-4's reboot to hang")
    wait_until(lambda: set(holds(daemon)) == {"n-4"}, 30, "n-1..n-3 deployed")
    [manager] = pykka.ActorRegistry.get_by_class(DeploymentManager)
    # A bug: a node reported final in a state that is not final; told, it kills the manager.
    manager.proxy().node_finished.defer("n-4", NodeState.PENDING)

    view = finished(daemon, deployment_id)
    assert view.status == "failed"
    assert view.reason.startswith("deployment manager crashed: ValueError")
    record = daemon.reader().node(deployment_id, "n-4")
    assert (record.state, record.error_message) == ("deploy_failed", view.reason)
    for node in ("n-1", "n-2", "n-3"):
        assert state(daemon, deployment_id, node) == "deployed"
    assert pykka.ActorRegistry.get_by_class(NodeActor) == []
    wait_until(lambda: not processes_with(MARKER), 30, "n-4's reboot to be killed")
    n4 = daemon.config.nodes["n-4"]
    profile = daemon.config.daemon.tftp_root / profile_path(n4.mac)
    assert profile.read_text() == render_profile(prod_boot_target(n4))
    assert holds(daemon) == {}
    again = daemon.deploy(deploy_request(env, "n-4"))
    wait_until(lambda: processes_with(MARKER), 30, "n-4's reboot to hang again")
    daemon.cancel(again)
    assert finished(daemon, again).status == "aborted"
