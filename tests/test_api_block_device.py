"""``block_device`` (kadeploy -b) through the API of a real daemon (dummy macrosteps): malformed
values are 422 naming the field, never 500, and so are devices whose partition path would be
ambiguous or wrong for the node's ``disk.partition_device``; with a block device the right
needed is on the deploy partition's device path (or ``*``), not on its number."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_fixtures import RunningApi, error_of, serving_api, wait_finished
from daemon_fixtures import stop_all_actors

from kadeployd.admission import block_device_problem
from kadeployd.config import DiskSettings

__all__ = ["stop_all_actors"]
pytestmark = pytest.mark.usefixtures("stop_all_actors")


@pytest.fixture
def api(tmp_path: Path) -> Iterator[RunningApi]:
    """The dummy config (disk /dev/vdz, deploy partition 3), alice allowed everywhere."""
    with serving_api(tmp_path) as running:
        yield running


MALFORMED: list[object] = [
    "sdb",  # relative
    "dev/sdb",
    "/dev/../etc/passwd",  # a '..' component
    "/dev/sdb/..",
    "/dev//sdb",
    "/dev/" + "a" * 60,  # over 64 characters
    "/dev/sd b",
    "/dev/sdb\n",
    "/dev/",
    3,  # wrong types
    [],
    {"x": 1},
]


def deploy(client: httpx.Client, node: str, **body: Any) -> httpx.Response:
    return client.post(
        "/v1/deployments", json={"nodes": [node], "environment": {"name": "tiny"}, **body}
    )


def deployed(client: httpx.Client, answer: httpx.Response) -> dict[str, Any]:
    assert answer.status_code == 201, answer.text
    return wait_finished(client, answer.json()["id"])


def test_malformed_block_devices_are_422_naming_the_field(api: RunningApi) -> None:
    alice = api.client("alice")
    for value in MALFORMED:
        answer = deploy(alice, "n-1", block_device=value)
        assert answer.status_code == 422, (value, answer.text)
        error = error_of(answer)
        paths = {d["path"] for d in error["details"]}
        assert paths == {"body.block_device"}, (value, error)
        if isinstance(value, str):
            assert "expected an absolute device path under /dev" in error["message"]
    # A right on a device path is checked the same way (and a good one is accepted below).
    root = api.client("root")
    bad = root.post("/v1/rights", json={"user": "bob", "nodes": ["n-1"], "partitions": ["sdb3"]})
    assert bad.status_code == 422
    assert "a partition's device path such as /dev/sdb3" in error_of(bad)["message"]


def test_rights_with_a_block_device_are_on_the_partition_device_path(api: RunningApi) -> None:
    bob, root, alice = api.client("bob"), api.client("root"), api.client("alice")
    granted = root.post("/v1/rights", json={"user": "bob", "nodes": ["n-1"], "partitions": ["3"]})
    assert granted.status_code == 201, granted.text
    # Partition 3 of the configured disk is not partition 3 of another disk.
    refused = deploy(bob, "n-1", block_device="/dev/vdb")
    assert refused.status_code == 403
    error = error_of(refused)
    assert error["code"] == "no_right"
    assert "a right on the partition's device path, such as /dev/vdb3, or on *" in error["message"]
    assert error["details"][0]["message"] == "bob has no right to deploy n-1 (partition /dev/vdb3)"
    assert deployed(bob, deploy(bob, "n-1"))["status"] == "succeeded"
    # A right on the device path allows it.
    granted = root.post(
        "/v1/rights", json={"user": "bob", "nodes": ["n-1"], "partitions": ["/dev/vdb3"]}
    )
    assert granted.status_code == 201, granted.text
    view = deployed(bob, deploy(bob, "n-1", block_device="/dev/vdb"))
    assert view["status"] == "succeeded"
    assert view["options"]["block_device"] == "/dev/vdb"
    # -p changes the path: a right on /dev/vdb3 is none on /dev/vdb4.
    assert deploy(bob, "n-1", block_device="/dev/vdb", partition=4).status_code == 403
    # A right on * (alice's) covers any disk.
    view = deployed(alice, deploy(alice, "n-2", block_device="/dev/vdc"))
    assert view["options"]["block_device"] == "/dev/vdc"


# Forms whose partition path would be ambiguous or wrong with the dummy config's template
# {block_device}{partition}: what the message must say about each.
REFUSED = {
    "/dev/vda1": "ends in a digit",  # with -p 3, /dev/vda13: also partition 13 of /dev/vda
    "/dev/nvme0n1": "ends in a digit",  # its partition 3 is /dev/nvme0n1p3, not nvme0n13
    "/dev/disk/by-id/wwn-0x5000c5": "NAME-partN",
    "/dev/disk/by-path/pci-0000-00-1f.2-ata-1": "NAME-partN",
}


def test_ambiguous_or_wrong_block_devices_are_422_before_the_rights(api: RunningApi) -> None:
    root = api.client("root")
    granted = root.post(
        "/v1/rights", json={"user": "bob", "nodes": ["n-1"], "partitions": ["/dev/vda13"]}
    )
    assert granted.status_code == 201, granted.text
    for client in (api.client("alice"), api.client("bob")):
        for device, why in REFUSED.items():
            answer = deploy(client, "n-1", block_device=device, partition=3)
            assert answer.status_code == 422, (device, answer.text)
            error = error_of(answer)
            assert error["code"] == "invalid_block_device", error
            assert [d["path"] for d in error["details"]] == ["block_device"]
            assert error["message"].startswith(f"block_device {device} on n-1: "), error
            assert why in error["message"], error
            assert "{block_device}{partition}" in error["message"], error
            assert "such as /dev/sdb" in error["message"], error
    ambiguous = error_of(deploy(api.client("bob"), "n-1", block_device="/dev/vda1", partition=3))
    assert "so partition 3 would be /dev/vda13, which is ambiguous" in ambiguous["message"]
    # The right on /dev/vda13 does not let bob deploy partition 3 of /dev/vda1 (above) but
    # is the one for partition 13 of /dev/vda.
    bob = api.client("bob")
    view = deployed(bob, deploy(bob, "n-1", block_device="/dev/vda", partition=13))
    assert view["status"] == "succeeded"


@pytest.mark.parametrize(
    ("template", "device", "refused_because"),
    [
        ("{block_device}{partition}", "/dev/sdb", None),
        ("{block_device}{partition}", "/dev/sdb1", "ends in a digit"),
        ("{block_device}{partition}", "/dev/disk/by-id/ata-X", "NAME-partN"),
        ("{block_device}p{partition}", "/dev/nvme0n1", None),
        ("{block_device}p{partition}", "/dev/disk/by-id/nvme-X", "NAME-partN"),
        ("{block_device}-part{partition}", "/dev/disk/by-id/nvme-X", None),
        ("{block_device}-part{partition}", "/dev/disk/by-path/pci-0-nvme-1", None),
        ("/dev/sda{partition}", "/dev/sdb", "does not use {block_device}"),
    ],
)
def test_block_device_problem_follows_the_partition_template(
    template: str, device: str, refused_because: str | None
) -> None:
    disk = DiskSettings(block_device="/dev/sda", partition_device=template)
    problem = block_device_problem(disk, device)
    if refused_because is None:
        assert problem is None
    else:
        assert problem is not None and refused_because in problem, problem
