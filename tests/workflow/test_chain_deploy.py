"""The chain broadcast inside real deployments on testbed nodes (the default BroadcastEnv)."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_fixtures import wait_until
from workflow_helpers import (
    os_release,
    request_for,
    reset,
    start_testbed,
    variant,
    variants,
    wait_finished,
)

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


CHAIN_ONLY = variants(
    set_env=[variant("prod")],  # no reboot: the broadcast is what these tests look at
    broadcast=[variant("chain", timeout=300)],  # one attempt, no fallback to direct
)


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
        log = reader.log(view.id, node)
        assert any('"event":"done"' in line.text for line in log)
        # A zstd image with a content checksum: the node's zstd checks every byte, the
        # relay computes no SHA-256 of its own.
        relays = [line.text for line in log if line.stream == "cmd" and "--writer" in line.text]
        assert relays and all("--digest none" in command for command in relays)
        assert "ID=debian-min" in os_release(bed, node, user_key)


def test_a_node_dying_mid_stream_is_cut_out_and_the_others_get_the_image(
    shaped_bed: Any,
    padded_image: Path,
    user_key: Path,
    start_daemon: Callable[..., Daemon],
) -> None:
    nodes = reset(shaped_bed)
    victim = nodes[1]
    daemon = start_daemon(CHAIN_ONLY, testbed=shaped_bed)
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


def _relay_port(reader: Any, deployment_id: str, node: str) -> int | None:
    """The port ``node``'s relay said it listens on, from the node's log."""
    for line in reader.log(deployment_id, node):
        if '"event":"listening"' in line.text:
            return int(json.loads(line.text)["port"])
    return None


def _closed_by_peer(sock: socket.socket) -> bool:
    """Whether the other side closed (FIN) or reset (RST) the connection without data."""
    try:
        return sock.recv(8) == b""
    except ConnectionResetError:
        return True


def test_a_stalled_node_is_cut_out_after_its_stall_timeout(
    shaped_bed: Any, padded_image: Path, user_key: Path, start_daemon: Callable[..., Daemon]
) -> None:
    nodes = reset(shaped_bed)
    frozen = nodes[2]
    daemon = start_daemon(CHAIN_ONLY, testbed=shaped_bed)
    deployment_id = daemon.deploy(request_for(padded_image, nodes, user_key))
    reader = daemon.reader()
    wait_until(
        lambda: any(
            '"event":"progress"' in line.text for line in reader.log(deployment_id, frozen)
        ),
        120,
        f"{frozen} receiving the stream",
    )
    shaped_bed.fault(frozen, "hang")  # every process of the node stops: sshd, relay, writer
    view = wait_finished(daemon, deployment_id)
    states = {n.node: n for n in reader.nodes(view.id)}
    assert states[frozen].state == "deploy_failed"
    # The predecessor's relay judged it: no data nor heartbeat for the stall timeout.
    assert "stalled" in (states[frozen].error_message or "")
    for node in nodes:
        if node != frozen:
            assert states[node].state == "deployed", states[node]
            assert "ID=debian-big" in os_release(shaped_bed, node, user_key)


def test_a_connection_without_the_secret_is_refused_and_the_broadcast_goes_on(
    shaped_bed: Any, padded_image: Path, user_key: Path, start_daemon: Callable[..., Daemon]
) -> None:
    nodes = reset(shaped_bed)
    target = nodes[1]
    daemon = start_daemon(CHAIN_ONLY, testbed=shaped_bed)
    deployment_id = daemon.deploy(request_for(padded_image, nodes, user_key))
    reader = daemon.reader()
    port = wait_until(lambda: _relay_port(reader, deployment_id, target), 120, f"{target}'s relay")
    address = shaped_bed.node(target).address
    with socket.create_connection((address, port), timeout=30) as intruder:
        challenge = intruder.recv(24)
        assert len(challenge) == 24  # MAGIC + nonce: the relay asks for proof of the secret
        header = json.dumps({"size": 1, "you": f"{address}:{port}", "rest": []}).encode()
        intruder.sendall(b"\0" * 32 + len(header).to_bytes(4, "big") + header)
        assert _closed_by_peer(intruder)  # wrong HMAC: closed without a word
    view = wait_finished(daemon, deployment_id)
    assert view.status == "succeeded", reader.nodes(view.id)
