"""Image transfer progress recorded by real deployments (chain and direct) on testbed nodes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from workflow_helpers import request_for, variant, variants, wait_finished

from kadeployd.daemon import Daemon

pytestmark = pytest.mark.root


@pytest.mark.parametrize("kind", ["chain", "direct"])
def test_a_deployment_records_every_node_fully_transferred(
    kind: str,
    bed: Any,
    nodes: tuple[str, ...],
    images: dict[str, Path],
    user_key: Path,
    start_daemon: Callable[..., Daemon],
) -> None:
    daemon = start_daemon(variants(broadcast=[variant(kind, retries=1, timeout=300)]))
    request = request_for(images["tar"], nodes, user_key)
    size = request.environment.image.file.stat().st_size
    view = wait_finished(daemon, daemon.deploy(request))
    assert view.status == "succeeded", daemon.reader().nodes(view.id)
    records = daemon.reader().nodes(view.id)
    assert {n.node for n in records} == set(nodes)
    for record in records:
        assert (record.bytes_done, record.bytes_total) == (size, size), record
    used = {h.variant for h in daemon.reader().history(view.id) if h.macrostep == "BroadcastEnv"}
    assert used == {kind}
