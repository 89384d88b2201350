"""kareboot deploy_env ``-k`` (``authorized_keys``) on a testbed node, through the real API:
the deploy env booted for the operation lets the user's key in (Kadeploy3's
send_key_in_deploy_env), and only when the keys were given; other kinds refuse the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from api_fixtures import error_of, wait_finished
from test_reboot_kinds import Served, served
from workflow_helpers import ssh_run

__all__ = ["served"]
pytestmark = pytest.mark.root


def deploy_env(served: Served, node: str, **body: Any) -> dict[str, Any]:
    with served.client() as alice:
        answer = alice.post("/v1/reboots", json={"nodes": [node], "kind": "deploy_env", **body})
        assert answer.status_code == 202, answer.text
        done = wait_finished(alice, answer.json()["id"])
    assert done["status"] == "succeeded", done
    return done


def test_deploy_env_lets_the_users_key_in_only_when_given(
    bed: Any, nodes: tuple[str, ...], served: Served, user_key: Path
) -> None:
    node = nodes[1]
    plain = deploy_env(served, node)
    assert plain["options"]["keys"] is False
    refused = ssh_run(bed, node, "true", key=user_key)
    assert refused.returncode != 0, "the deploy env let alice's key in before -k"

    public = user_key.with_suffix(".pub").read_text()
    keyed = deploy_env(served, node, authorized_keys=public)
    assert keyed["options"]["keys"] is True
    inside = ssh_run(bed, node, "cat", "/etc/os-release", key=user_key)
    assert inside.returncode == 0, inside.stderr
    assert "KADEPLOY_TESTBED_ENV=deploy" in inside.stdout, inside.stdout
    history = [h.message for h in served.daemon.reader().history(keyed["id"], node)]
    assert "send_key_in_deploy_env" in history, history

    with served.client() as alice:
        answer = alice.post(
            "/v1/reboots",
            json={"nodes": [node], "kind": "recorded_env", "environment": {"name": "x"},
                  "partition": 3, "authorized_keys": public},
        )  # fmt: skip
    assert answer.status_code == 422, answer.text
    [problem] = error_of(answer)["details"]
    assert problem["path"] == "authorized_keys"
    assert problem["message"] == "only with kind deploy_env, not recorded_env"
