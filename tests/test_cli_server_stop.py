"""`kadeploy-server stop` while `kadeploy` follows a deployment: the deployment is recorded
aborted, kadeploy prints the summary and exits 4; afterwards the tools exit 3."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_fixtures import SLOW_NODE, CliServer, start_cli_server
from daemon_fixtures import wait_until
from test_daemon_actors import processes_with

from kadeployd.store import StoreReader, database_path


@pytest.fixture
def server(tmp_path: Path) -> Iterator[CliServer]:
    started = start_cli_server(tmp_path / "cli", f"kadeploy-test-cli-stop-{os.getpid()}")
    try:
        yield started
    finally:
        started.cleanup()


def test_stop_during_a_deployment(server: CliServer) -> None:
    follower = server.spawn("kadeploy", "-m", SLOW_NODE, "-e", "tiny")
    try:
        wait_until(lambda: processes_with(server.marker), 30, "the reboot to hang")
        ident = server.running_deployments()[0]["id"]
        stopped = server.server("stop")
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        out, err = follower.communicate(timeout=60)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.communicate()
    assert "Traceback" not in out + err
    assert follower.returncode == 4, out + err
    assert f"Deployment {ident} aborted" in out
    assert re.search(rf"^  {SLOW_NODE}  aborted: .*daemon stopping$", out, re.MULTILINE), out
    with StoreReader(database_path(server.state)) as reader:
        assert reader.deployment(ident).status == "aborted"

    after = server.run("kanodes")
    assert after.returncode == 3
    assert len(after.stderr.strip().splitlines()) == 1
    assert after.stderr.startswith("kanodes: cannot reach the kadeployd server")
