"""``force`` on a deployment over another user's running deployment takes an administrator.

alice deploys n-4, whose reboot hangs (her deployment stays in flight); bob holds the right to
deploy n-4's deploy partition. With force he used to take n-4 in the middle of her deployment
(a new PXE profile, a reboot, his image): now 403 ``force_refused``, naming the node, her
deployment and alice, decided by the NodeSupervisor with the busy check. alice may force over
her own deployment, an administrator over anyone's.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_fixtures import (
    BOB_ON_N4,
    RunningApi,
    error_of,
    serving_api,
)
from daemon_fixtures import wait_until
from test_daemon_actors import processes_with, slow

from kadeployd.actors.directory import NODES

MARKER = f"kadeploy-test-deploy-force-{os.getpid()}"

HELD = """\
power: {{reboot_soft: null, reboot_hard: {slow}, reboot_very_hard: {slow}}}
automata:
  macrosteps:
    SetDeploymentEnv: [{{type: untrusted, retries: 0, timeout: 60}}]
"""


@pytest.fixture
def api(tmp_path: Path) -> Iterator[RunningApi]:
    """alice may use every node, bob only partition 3 of n-4, whose reboot never ends."""
    override = HELD.format(slow=slow(MARKER))
    try:
        with serving_api(tmp_path, overrides={4: override}, rights=[BOB_ON_N4]) as running:
            yield running
    finally:
        wait_until(lambda: not processes_with(MARKER), 20, "the hanging reboots to be killed")


def test_forcing_a_deployment_over_another_users_needs_an_administrator(
    api: RunningApi,
) -> None:
    alice, bob, root = api.client("alice"), api.client("bob"), api.client("root")
    started = alice.post(
        "/v1/deployments", json={"nodes": ["n-4"], "environment": {"name": "tiny"}}
    )
    assert started.status_code == 201, started.text
    hers = started.json()["id"]
    wait_until(lambda: processes_with(MARKER), 30, "alice's deployment to be in flight")

    busy = bob.post("/v1/deployments", json={"nodes": ["n-4"], "environment": {"name": "tiny"}})
    assert busy.status_code == 409, busy.text
    assert error_of(busy)["code"] == "node_busy"

    forced = bob.post(
        "/v1/deployments",
        json={"nodes": ["n-4"], "environment": {"name": "tiny"}, "force": True},
    )
    assert forced.status_code == 403, forced.text
    error = error_of(forced)
    assert error["code"] == "force_refused"
    assert error["message"].startswith("force may not deploy n-4: ")
    assert hers in error["message"] and "of alice" in error["message"]
    assert "daemon.almighty_users" in error["message"]
    assert error["details"][0]["message"] == f"n-4 is in deployment {hers} of alice"
    # Nothing of bob's was recorded or started; alice's deployment goes on, n-4 still hers.
    assert bob.get("/v1/deployments", params={"user": "bob"}).json() == []
    assert alice.get(f"/v1/deployments/{hers}").json()["status"] == "running"
    assert len(processes_with(MARKER)) == 1
    assert api.daemon.supervisor.proxy(NODES).holds().get(timeout=10) == {"n-4": hers}

    # Over her own deployment, alice may force; an administrator may over anyone's.
    own = alice.post(
        "/v1/deployments",
        json={"nodes": ["n-4"], "environment": {"name": "tiny"}, "force": True},
    )
    assert own.status_code == 201, own.text
    admin = root.post(
        "/v1/deployments",
        json={"nodes": ["n-4"], "environment": {"name": "tiny"}, "force": True},
    )
    assert admin.status_code == 201, admin.text
