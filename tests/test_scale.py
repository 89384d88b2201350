"""One daemon, one deployment of 2,000 dummy nodes: every node ends deployed, and the daemon's
threads come back to about where they were.

The configuration (bench/_scale_config.py, shared with bench/control_plane.py) sets all three
macrosteps to ``dummy``, so no node is contacted and only the daemon's own work runs. No timing
is asserted: the waits only have deadlines so that a hung daemon fails the test instead of
hanging it. ``bench/control_plane.py`` measures the time.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from daemon_fixtures import finished, stop_all_actors
from waiting import POLL_INTERVAL

from kadeployd.daemon import Daemon
from kadeployd.environment import load_environment
from kadeployd.workflow.job import DeploymentRequest

sys.path.append(str(Path(__file__).resolve().parents[1] / "bench"))
from _scale_config import node_names, write_dummy_config, write_environment

__all__ = ["stop_all_actors"]
pytestmark = pytest.mark.usefixtures("stop_all_actors")

NODES = 2000
DEPLOY_DEADLINE = 600.0
"""Far above what 2,000 dummy nodes need: only a hung daemon reaches it."""
SETTLE_DEADLINE = 60.0
THREAD_SLACK = 5
"""Threads allowed above the count before the deployment, once it ended."""


def thread_count() -> int:
    """Threads of this process (the daemon runs in it), as the kernel counts them."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads line in /proc/self/status")


def test_one_deployment_of_2000_dummy_nodes_deploys_every_node(tmp_path: Path) -> None:
    conf = write_dummy_config(tmp_path / "conf", NODES, log_level="warning")
    environment = load_environment(write_environment(tmp_path / "env"))
    names = node_names(NODES)
    daemon = Daemon.start(conf)
    try:
        before = thread_count()
        deployment_id = daemon.deploy(
            DeploymentRequest(user="alice", environment=environment, nodes=tuple(names))
        )
        view = finished(daemon, deployment_id, timeout=DEPLOY_DEADLINE)
        states = {node.node: node.state for node in daemon.reader().nodes(deployment_id)}
        not_deployed = {name: state for name, state in states.items() if state != "deployed"}
        assert len(states) == NODES
        assert not not_deployed, (
            f"{len(not_deployed)} of {NODES} nodes not deployed, e.g. "
            f"{dict(list(not_deployed.items())[:5])}; deployment {view.status}: {view.reason}"
        )
        assert view.status == "succeeded", view.reason
        # Bounded poll, then a plain assertion that says how many threads are left.
        at_end = after = thread_count()
        deadline = time.monotonic() + SETTLE_DEADLINE
        while after > before + THREAD_SLACK and time.monotonic() < deadline:
            time.sleep(POLL_INTERVAL)
            after = thread_count()
        assert after <= before + THREAD_SLACK, (
            f"{after} threads {SETTLE_DEADLINE:.0f} s after the end, {before} before the "
            f"deployment ({at_end} when it ended)"
        )
    finally:
        daemon.stop()
