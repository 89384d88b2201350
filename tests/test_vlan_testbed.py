"""KaVLAN on the testbed: ``vlan`` moves a deployed node's link onto a VLAN of the bridge.

A ``--netns`` testbed has one bridge per VLAN and its generated configuration switches nodes
with ``kadeploy-testbed vlan NODE ID`` (``vlan.switch``). After a deployment asking for VLAN
100, the node no longer answers from the default VLAN (the host's bridge address), the other
node still does, and a namespace on VLAN 100 logs into the deployed env; a reset puts the
node back, and ``down`` removes the VLAN namespaces too.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from api_fixtures import wait_finished
from g5k_fixtures import g5k_api

pytestmark = pytest.mark.root

FIRST = 91
"""Nodes 91-92 (198.18.0.92-93 behind kdtb0): no other testbed of the suite uses them."""
VLAN = 100


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _up(directory: Path, nodes: int, first: int) -> Any:
    if os.geteuid() != 0:
        pytest.skip("needs root (namespaces, mounts, loop devices, port 22)")
    from kadeploy_testbed.state import TestbedConfig  # noqa: PLC0415
    from kadeploy_testbed.testbed import up  # noqa: PLC0415

    config = TestbedConfig(
        nodes=nodes,
        first=first,
        netns=True,
        rate="1gbit",
        tftp_host="127.0.0.1",
        tftp_port=_free_udp_port(),
        boot_delay=0.1,
    )
    return up(directory, config, timeout=90)


@pytest.fixture(scope="module")
def vlan_bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from kadeploy_testbed.testbed import down  # noqa: PLC0415

    directory = tmp_path_factory.mktemp("vlanbed")
    bed = _up(directory, 2, FIRST)
    try:
        yield bed
    finally:
        down(directory)


@pytest.fixture(scope="module")
def image(vlan_bed: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from kadeploy_testbed.image import make_image  # noqa: PLC0415

    folder = tmp_path_factory.mktemp("vlanimage")
    return make_image(folder / "debian-min", name="debian-min", kind="tar").description


def in_namespace(namespace: str, argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", namespace, *argv],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


def test_a_deployment_with_vlan_moves_the_node_onto_it(
    vlan_bed: Any, image: Path, tmp_path: Path
) -> None:
    from kadeploy_testbed import netns  # noqa: PLC0415
    from kadeploy_testbed.testbed import ssh_answers  # noqa: PLC0415

    key = tmp_path / "key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    target, other = (vlan_bed.node(spec.name) for spec in vlan_bed.nodes)
    with g5k_api(vlan_bed, tmp_path / "daemon", image) as api:
        alice = api.running.client("alice")
        answer = alice.post(
            "/v1/deployments",
            json={
                "nodes": [target.name],
                "environment": {"name": "debian-min"},
                "authorized_keys": key.with_suffix(".pub").read_text(),
                "vlan": str(VLAN),
            },
        )
        assert answer.status_code == 201, answer.text
        done = wait_finished(alice, answer.json()["id"], timeout=240)
        nodes = alice.get(f"/v1/deployments/{done['id']}/nodes").json()
        assert done["status"] == "succeeded", (done, nodes)
        assert done["options"]["vlan"] == str(VLAN)
        log = alice.get(f"/v1/deployments/{done['id']}/nodes/{target.name}/log").json()
        assert any("kadeploy_testbed.cli vlan" in line["text"] for line in log), log
    space = vlan_bed.vlan_namespace(VLAN)
    try:
        assert netns.port_vlan(target.veth_host) == VLAN
        assert not ssh_answers(target.address), "still reachable from the default VLAN"
        assert ssh_answers(other.address), "the other node left the default VLAN too"
        login = in_namespace(
            space.name, vlan_bed.ssh_argv(target.name, "cat", "/etc/os-release", key=key)
        )
        assert login.returncode == 0, login.stderr
        assert "ID=debian-min" in login.stdout
        unreachable = in_namespace(space.name, vlan_bed.ssh_argv(other.name, "true"))
        assert unreachable.returncode != 0, "a node of VLAN 1 answers on VLAN 100"
    finally:
        vlan_bed.remove_vlan_namespace(VLAN)
        vlan_bed.reset([target.name])
    assert netns.port_vlan(target.veth_host) == netns.DEFAULT_VLAN
    assert ssh_answers(target.address)
    assert space.name not in netns.leftover_namespaces()
    assert netns.vlan_bridge(VLAN) not in netns.leftover_links()


def test_the_vlan_command_and_down_sweeping_vlan_namespaces(tmp_path: Path) -> None:
    from kadeploy_testbed import netns  # noqa: PLC0415
    from kadeploy_testbed.testbed import down, ssh_answers  # noqa: PLC0415

    bed = _up(tmp_path / "bed", 1, FIRST + 5)
    try:
        (node,) = bed.nodes
        command = [
            sys.executable,
            "-m",
            "kadeploy_testbed.cli",
            "vlan",
            "--dir",
            str(bed.layout.root),
        ]
        moved = subprocess.run(
            [*command, node.name, "300"], capture_output=True, text=True, check=False
        )
        assert moved.returncode == 0, moved.stderr
        assert netns.port_vlan(node.veth_host) == 300
        assert not ssh_answers(node.address)
        bad = subprocess.run(
            [*command, node.name, "4095"], capture_output=True, text=True, check=False
        )
        assert bad.returncode == 2 and "4095" in bad.stderr
        unknown = subprocess.run(
            [*command, "node-1", "300"], capture_output=True, text=True, check=False
        )
        assert unknown.returncode == 1 and "no node 'node-1'" in unknown.stderr
        space = bed.vlan_namespace(300)
        assert space.name in netns.leftover_namespaces()
    finally:
        down(bed.layout.root)
    assert "kdtb-vlan-300" not in netns.leftover_namespaces()
    assert "kdtbv300" not in netns.leftover_links()
    assert "kdtbvlan300" not in netns.leftover_links()
