"""``force`` over another user's running deployment takes an administrator.

alice deploys n-4, whose reboot hangs (the deployment stays in flight); bob holds a right on
one partition of n-4 only. Without force he is told the node is busy; with force he used to
power it off and replace its PXE profile in the middle of alice's deployment: now 403, naming
the deployment and alice. alice may force over her own deployment, an administrator over
anyone's.
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

MARKER = f"kadeploy-test-power-force-{os.getpid()}"

HELD = """\
power: {{reboot_soft: null, reboot_hard: {slow}, reboot_very_hard: {slow},
         power_off: [touch, "{off}"]}}
automata:
  macrosteps:
    SetDeploymentEnv: [{{type: untrusted, retries: 0, timeout: 60}}]
"""


@pytest.fixture
def api(tmp_path: Path) -> Iterator[RunningApi]:
    """alice may use every node, bob only partition 3 of n-4, whose reboot never ends."""
    override = HELD.format(slow=slow(MARKER), off=tmp_path / "powered-off")
    try:
        with serving_api(tmp_path, overrides={4: override}, rights=[BOB_ON_N4]) as running:
            yield running
    finally:
        wait_until(lambda: not processes_with(MARKER), 20, "the hanging reboot to be killed")


def test_force_over_another_users_deployment_needs_an_administrator(
    api: RunningApi, tmp_path: Path
) -> None:
    alice, bob, root = api.client("alice"), api.client("bob"), api.client("root")
    started = alice.post(
        "/v1/deployments", json={"nodes": ["n-4"], "environment": {"name": "tiny"}}
    )
    assert started.status_code == 201, started.text
    deployment_id = started.json()["id"]
    wait_until(lambda: processes_with(MARKER), 30, "alice's deployment to be in flight")
    powered_off = tmp_path / "powered-off"

    busy = bob.post("/v1/power", json={"nodes": ["n-4"], "action": "off"})
    assert busy.status_code == 409, busy.text
    assert error_of(busy)["code"] == "node_busy"

    forced = bob.post("/v1/power", json={"nodes": ["n-4"], "action": "off", "force": True})
    assert forced.status_code == 403, forced.text
    error = error_of(forced)
    assert error["code"] == "force_refused"
    assert deployment_id in error["message"] and "of alice" in error["message"]
    assert "daemon.almighty_users" in error["message"]
    assert not powered_off.exists()  # no command ran

    profile = "DEFAULT evil\nLABEL evil\n  LOCALBOOT 0\n"
    repxe = bob.post(
        "/v1/reboots",
        json={"nodes": ["n-4"], "kind": "set_pxe", "profile": profile, "force": True},
    )
    assert repxe.status_code == 403, repxe.text
    assert error_of(repxe)["code"] == "force_refused"
    assert not list((api.daemon.config.daemon.tftp_root / "users").glob("bob*"))

    # Over her own deployment, alice may force; an administrator may over anyone's.
    own = alice.post("/v1/power", json={"nodes": ["n-4"], "action": "off", "force": True})
    assert own.status_code == 200 and own.json()[0]["ok"], own.text
    assert powered_off.exists()
    powered_off.unlink()
    admin = root.post("/v1/power", json={"nodes": ["n-4"], "action": "off", "force": True})
    assert admin.status_code == 200 and admin.json()[0]["ok"], admin.text
    assert powered_off.exists()
    assert alice.get(f"/v1/deployments/{deployment_id}").json()["status"] == "running"
