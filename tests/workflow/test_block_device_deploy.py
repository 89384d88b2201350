"""``block_device`` (kadeploy -b) reaching the testbed nodes: the configured disk named
explicitly deploys; a disk the nodes do not have fails them naming its deploy partition.

The prod variant (no reboot), the direct transfer and a dummy BootNewEnv keep it short; both
deployments run at once, on two nodes each.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from workflow_helpers import request_for, variant, variants, wait_finished

from kadeployd.daemon import Daemon

pytestmark = pytest.mark.root

SHORT = variants(
    set_env=[variant("prod")],
    broadcast=[variant("direct", timeout=120)],
    boot=[variant("dummy")],
)


def test_block_device_override_reaches_the_nodes(
    bed: Any,
    nodes: tuple[str, ...],
    images: dict[str, Path],
    user_key: Path,
    start_daemon: Callable[..., Daemon],
) -> None:
    daemon = start_daemon(SHORT)
    configured = daemon.config.nodes[nodes[0]].settings.disk
    partition = configured.deploy_partition
    missing_disk = str(Path(configured.block_device).with_name("sdz"))
    same = daemon.deploy(
        request_for(images["tar"], nodes[:2], user_key, block_device=configured.block_device)
    )
    other = daemon.deploy(
        request_for(images["tar"], nodes[2:], user_key, block_device=missing_disk)
    )
    same_view, other_view = wait_finished(daemon, same), wait_finished(daemon, other)
    reader = daemon.reader()

    assert same_view.status == "succeeded", [reader.node(same, n) for n in nodes[:2]]
    assert same_view.options["block_device"] == configured.block_device
    mkfs = f"mkfs.ext4 -q -F {configured.block_device}{partition}"
    for node in nodes[:2]:
        assert reader.node(same, node).state == "deployed"
        assert any(mkfs in line.text for line in reader.log(same, node))

    assert other_view.status == "failed"
    for node in nodes[2:]:
        record = reader.node(other, node)
        assert record.state == "deploy_failed"
        assert f"{missing_disk}{partition}" in (record.error_message or ""), record
