"""A DeploymentManager crashing in the middle of a real deployment onto testbed nodes: its
NodeSupervisor clears what it leaves at once (records, PXE profiles, actors, held nodes), and
the nodes can be deployed again."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pykka
import pytest
from daemon_fixtures import wait_until
from workflow_helpers import DEPLOY_TIMEOUT, deploy, os_release, request_for, wait_finished

from kadeploy_core.machine import NodeState
from kadeployd.actors.chain_transfer import ChainTransfer
from kadeployd.actors.directory import NODES
from kadeployd.actors.manager import CHAIN_ROUND_STARTED, DeploymentManager
from kadeployd.actors.node import NodeActor, prod_boot_target
from kadeployd.daemon import Daemon
from kadeployd.pxe.profiles import profile_path, render_profile

pytestmark = pytest.mark.root


def test_a_manager_crashing_mid_transfer_fails_its_nodes_and_frees_them(
    bed: Any,
    nodes: tuple[str, ...],
    images: dict[str, Path],
    padded_image: Path,
    user_key: Path,
    start_daemon: Callable[..., Daemon],
) -> None:
    daemon = start_daemon()
    reader = daemon.reader()
    deployment_id = daemon.deploy(request_for(padded_image, nodes, user_key))
    wait_until(
        lambda: (
            any(line.text.startswith(CHAIN_ROUND_STARTED) for line in reader.log(deployment_id))
            or reader.deployment(deployment_id).status != "running"
        ),
        DEPLOY_TIMEOUT,
        "the image streaming down the chain",
    )
    [manager] = pykka.ActorRegistry.get_by_class(DeploymentManager)
    [chain] = pykka.ActorRegistry.get_by_class(ChainTransfer)
    children = [chain, *pykka.ActorRegistry.get_by_class(NodeActor)]
    # A bug: a node said to be final in a state that is not; told, it kills the manager.
    manager.proxy().node_finished.defer(nodes[0], NodeState.TRANSFERRING)

    view = wait_finished(daemon, deployment_id)
    assert view.status == "failed"
    assert view.reason.startswith("deployment manager crashed: ValueError"), view.reason
    assert not manager.is_alive()
    assert not any(ref.is_alive() for ref in children)
    assert pykka.ActorRegistry.get_by_class(NodeActor) == []
    assert pykka.ActorRegistry.get_by_class(ChainTransfer) == []
    for node in nodes:
        record = reader.node(deployment_id, node)
        assert (record.state, record.error_message) == ("deploy_failed", view.reason), record
        # Each node boots its prod env again, not the deploy env it was left in.
        spec = daemon.config.nodes[node]
        profile = bed.layout.tftp_root / profile_path(spec.mac)
        assert profile.read_text() == render_profile(prod_boot_target(spec))
    held: dict[str, str] = daemon.supervisor.proxy(NODES).holds().get(timeout=10)
    assert held == {}

    again = deploy(daemon, images["tar"], nodes, user_key)
    assert again.status == "succeeded", reader.nodes(again.id)
    for node in nodes:
        assert "ID=debian-min" in os_release(bed, node, user_key)
