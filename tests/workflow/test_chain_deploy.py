"""The chain broadcast inside real deployments on testbed nodes (the default BroadcastEnv)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_fixtures import wait_until
from workflow_helpers import os_release, request_for, reset, start_testbed, wait_finished

from kadeployd.daemon import Daemon

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def shaped_bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Nodes 41-44 in their own network namespaces, links shaped to 50 Mbit/s: a 48 MiB
    stream takes seconds, time enough to kill a node in the middle of it."""
    from kadeploy_testbed.testbed import down  # noqa: PLC0415

    directory = tmp_path_factory.mktemp("shapedbed")
    testbed = start_testbed(directory, 41, netns=True, rate="50mbit")
    try:
        yield testbed
    finally:
        down(directory)


def chain_only(deploy_conf: dict[str, Any], cluster: dict[str, Any]) -> None:
    """SetDeploymentEnv prod (no reboot), then the chain alone: one attempt, no fallback."""
    steps = deploy_conf["automata"]["macrosteps"]
    steps["SetDeploymentEnv"] = [{"type": "prod", "retries": 0, "timeout": 60}]
    steps["BroadcastEnv"] = [{"type": "chain", "retries": 0, "timeout": 300}]


def test_the_default_broadcast_is_the_chain(
    bed: Any,
    nodes: tuple[str, ...],
    images: dict[str, Path],
    user_key: Path,
    start_daemon: Callable[..., Daemon],
) -> None:
    daemon = start_daemon()
    request = request_for(images["tar"], nodes, user_key)
    view = wait_finished(daemon, daemon.deploy(request))
    assert view.status == "succeeded", daemon.reader().nodes(view.id)
    reader = daemon.reader()
    for node in nodes:
        broadcast = {
            (h.variant, h.attempt)
            for h in reader.history(view.id, node)
            if h.macrostep == "BroadcastEnv"
        }
        assert broadcast == {("chain", 1)}
        assert any('"event":"done"' in line.text for line in reader.log(view.id, node))
        assert "ID=debian-min" in os_release(bed, node, user_key)


def test_a_node_dying_mid_stream_is_cut_out_and_the_others_get_the_image(
    shaped_bed: Any,
    padded_image: Path,
    user_key: Path,
    start_daemon: Callable[..., Daemon],
) -> None:
    nodes = reset(shaped_bed)
    victim = nodes[1]
    daemon = start_daemon(chain_only, testbed=shaped_bed)
    request = request_for(padded_image, nodes, user_key)
    deployment_id = daemon.deploy(request)
    reader = daemon.reader()
    wait_until(
        lambda: any(
            '"event":"progress"' in line.text for line in reader.log(deployment_id, victim)
        ),
        120,
        f"{victim} receiving the stream",
    )
    shaped_bed.fault(victim, "die")
    view = wait_finished(daemon, deployment_id)
    states = {n.node: n for n in reader.nodes(view.id)}
    assert states[victim].state == "deploy_failed"
    assert states[victim].error_step == "BroadcastEnv"
    for node in nodes:
        if node != victim:
            assert states[node].state == "deployed", states[node]
            # The victim's successor was re-linked to its predecessor and still got the image
            # the source has: the round's verdict checks each node's SHA-256 and byte count.
            assert "ID=debian-big" in os_release(shaped_bed, node, user_key)
