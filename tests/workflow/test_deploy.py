"""Deployments of real images onto testbed nodes: the workflow issue's acceptance tests.

Every node here is a real sshd in its own namespaces, booted by its emulated PXE firmware from
the daemon's own TFTP server, power-cycled through a real IPMI BMC. No mock anywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from daemon_fixtures import wait_until
from pykka.messages import ProxyCall
from workflow_helpers import (
    DEPLOY_TIMEOUT,
    deploy,
    os_release,
    request_for,
    variant,
    variants,
    wait_finished,
)

from kadeployd.daemon import Daemon
from kadeployd.environment import load_environment

pytestmark = pytest.mark.root


def states(daemon: Daemon, deployment_id: str) -> dict[str, str]:
    return {n.node: n.state for n in daemon.reader().nodes(deployment_id)}


@pytest.mark.parametrize("kind", ["tar", "dd"])
def test_image_is_deployed_to_every_node_and_boots_with_the_users_key(
    bed: Any,
    nodes: tuple[str, ...],
    images: dict[str, Path],
    user_key: Path,
    start_daemon: Callable[..., Daemon],
    kind: str,
) -> None:
    daemon = start_daemon()
    view = deploy(daemon, images[kind], nodes, user_key)
    assert view.status == "succeeded", daemon.reader().nodes(view.id)
    assert set(states(daemon, view.id).values()) == {"deployed"}
    name = "debian-min" if kind == "tar" else "debian-raw"
    for node in nodes:
        assert f"ID={name}" in os_release(bed, node, user_key)
    history = [h.state for h in daemon.reader().history(view.id, nodes[0])]
    for state in (
        "rebooting",
        "deploy_env",
        "partitioning",
        "transferring",
        "postinstall",
        "booting",
        "deployed",
    ):
        assert state in history


def test_prod_variant_deploys_without_rebooting_into_the_deploy_env(
    bed: Any,
    nodes: tuple[str, ...],
    images: dict[str, Path],
    user_key: Path,
    start_daemon: Callable[..., Daemon],
) -> None:
    daemon = start_daemon(variants(set_env=[variant("prod")]))
    view = deploy(daemon, images["tar"], nodes, user_key)
    assert view.status == "succeeded", daemon.reader().nodes(view.id)
    for node in nodes:
        assert "ID=debian-min" in os_release(bed, node, user_key)
        assert "rebooting" not in [
            h.state
            for h in daemon.reader().history(view.id, node)
            if h.macrostep == "SetDeploymentEnv"
        ]


FAST_FAIL = variants(set_env=[variant("untrusted", retries=1, timeout=15)])


def test_node_that_never_boots_fails_after_its_retries_and_the_others_succeed(
    bed: Any,
    nodes: tuple[str, ...],
    images: dict[str, Path],
    user_key: Path,
    start_daemon: Callable[..., Daemon],
) -> None:
    bed.fault(nodes[1], "noboot")
    daemon = start_daemon(FAST_FAIL)
    view = deploy(daemon, images["tar"], nodes, user_key)
    assert view.status == "failed"
    failed = daemon.reader().node(view.id, nodes[1])
    assert (failed.state, failed.error_step, failed.attempt) == (
        "deploy_failed",
        "SetDeploymentEnv",
        2,
    )
    assert "timed out" in (failed.error_message or "")
    assert [states(daemon, view.id)[n] for n in nodes if n != nodes[1]] == ["deployed"] * 3


def test_min_nodes_reached_does_not_wait_for_the_failing_node(
    bed: Any,
    nodes: tuple[str, ...],
    images: dict[str, Path],
    user_key: Path,
    start_daemon: Callable[..., Daemon],
) -> None:
    bed.fault(nodes[3], "noboot")
    daemon = start_daemon(variants(set_env=[variant("untrusted", retries=5, timeout=300)]))
    view = deploy(daemon, images["tar"], nodes, user_key, min_nodes=3)
    assert view.status == "succeeded"
    assert view.reason.startswith("min nodes reached")
    straggler = daemon.reader().node(view.id, nodes[3])
    assert (straggler.state, straggler.error_message) == ("aborted", "min nodes reached")
    assert straggler.attempt == 1  # it did not go through its retries


def test_ready_nodes_do_not_wait_the_whole_gather_window_for_a_node_that_never_boots(
    bed: Any,
    nodes: tuple[str, ...],
    images: dict[str, Path],
    user_key: Path,
    start_daemon: Callable[..., Daemon],
) -> None:
    """The silent node neither failed (its attempt may last 300 s) nor comes: the others wait
    for it as long as the first of them took to get ready, not the 600-s window."""
    bed.fault(nodes[3], "noboot")

    def edit(deploy_conf: dict[str, Any], cluster: dict[str, Any]) -> None:
        variants(set_env=[variant("untrusted", retries=5, timeout=300)])(deploy_conf, cluster)
        deploy_conf["daemon"]["chain_gather_window"] = 600

    daemon = start_daemon(edit)
    view = deploy(daemon, images["tar"], nodes, user_key, min_nodes=3)
    assert view.status == "succeeded"
    gathered = [
        line.text
        for line in daemon.reader().log(view.id, nodes[0])
        if line.text.startswith("chain round started")
    ]
    assert gathered and nodes[3] not in gathered[0]


def test_min_nodes_out_of_reach_fails_early_and_says_why(
    bed: Any,
    nodes: tuple[str, ...],
    images: dict[str, Path],
    user_key: Path,
    start_daemon: Callable[..., Daemon],
) -> None:
    bed.fault(nodes[0], "noboot")
    daemon = start_daemon(FAST_FAIL)
    view = deploy(daemon, images["tar"], nodes, user_key, min_nodes=4)
    assert view.status == "failed"
    assert view.reason == "4 deployed nodes needed, at most 3 possible (1 node failed)"


def test_wrong_power_command_is_a_clear_per_node_error(
    bed: Any, nodes: tuple[str, ...], images: dict[str, Path], start_daemon: Callable[..., Daemon]
) -> None:
    def wrong_power(deploy_conf: dict[str, Any], cluster: dict[str, Any]) -> None:
        FAST_FAIL(deploy_conf, cluster)
        deploy_conf["vars"]["ipmi_password_file"] = "/nonexistent/password"
        deploy_conf["power"]["reboot_soft"] = ["ssh-no-such-tool", "{address}"]

    daemon = start_daemon(wrong_power)
    view = deploy(daemon, images["tar"], nodes[:1], None)
    node = daemon.reader().node(view.id, nodes[0])
    assert node.state == "deploy_failed"
    assert "reboot failed" in (node.error_message or "")
    assert daemon.supervisor.wait(0) is None  # the tree is still running


def test_truncated_image_fails_the_transfer_on_every_node(
    bed: Any,
    nodes: tuple[str, ...],
    images: dict[str, Path],
    tmp_path: Path,
    start_daemon: Callable[..., Daemon],
) -> None:
    env = load_environment(images["tar"])
    data = env.image.file.read_bytes()
    broken = tmp_path / "broken.tar.zst"
    broken.write_bytes(data[: len(data) // 2])
    description = tmp_path / "broken.yaml"
    description.write_text(images["tar"].read_text().replace(env.image.file.name, broken.name))
    daemon = start_daemon(variants(set_env=[variant("prod")]))
    view = deploy(daemon, description, nodes[:2], None)
    assert view.status == "failed"
    # Found either while the daemon reads the kernel out of the image (before any node is
    # touched) or by the nodes' decompressor during the transfer, depending on where the cut
    # falls relative to /boot in the archive; either way every node says why.
    for node in daemon.reader().nodes(view.id):
        assert node.state == "deploy_failed"
        message = node.error_message or ""
        found_early = node.error_step == "prepare" and "truncated" in message
        found_on_node = node.error_step == "BroadcastEnv" and "image transfer" in message
        assert found_early or found_on_node, node


def test_unmountable_deploy_partition_is_a_clear_per_node_error(
    bed: Any, nodes: tuple[str, ...], images: dict[str, Path], start_daemon: Callable[..., Daemon]
) -> None:
    daemon = start_daemon(variants(set_env=[variant("prod")]))
    view = deploy(daemon, images["tar"], nodes[:1], None, deploy_partition=9)
    node = daemon.reader().node(view.id, nodes[0])
    assert node.state == "deploy_failed"
    assert "/dev/testbed/sda9" in (node.error_message or "")


def test_every_permanent_actor_crashing_mid_deployment_is_survived(
    bed: Any,
    nodes: tuple[str, ...],
    images: dict[str, Path],
    user_key: Path,
    start_daemon: Callable[..., Daemon],
) -> None:
    daemon = start_daemon()
    deployment_id = daemon.deploy(request_for(images["tar"], nodes, user_key))
    reader = daemon.reader()
    for name, when in (
        ("store", "rebooting"),
        ("reboot", "rebooting"),
        ("config", "deploy_env"),
        ("pxe", "partitioning"),
        ("nodes", "transferring"),
    ):
        wait_until(
            lambda when=when: (
                any(h.state == when for h in reader.history(deployment_id))
                or reader.deployment(deployment_id).status != "running"
            ),
            DEPLOY_TIMEOUT,
            f"a node in {when}",
        )
        old = daemon.supervisor.child(name)
        old.tell(ProxyCall(attr_path=("no_such_method",), args=(), kwargs={}))
        wait_until(
            lambda name=name, old=old: daemon.supervisor.child(name, 10).actor_urn != old.actor_urn,
            30,
            f"{name} restarted",
        )
    view = wait_finished(daemon, deployment_id)
    assert view.status == "succeeded", reader.nodes(deployment_id)
    for node in nodes:
        assert "ID=debian-min" in os_release(bed, node, user_key)
