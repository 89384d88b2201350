"""What other users see of a deployment: not its custom steps' commands (secrets live there),
nor its nodes' error and history messages (they quote commands and their stderr). The owner
and administrators see everything. A real daemon and API over its Unix socket, three users."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from api_fixtures import RunningApi, serving_api, wait_finished

from kadeployd.api.convert import HIDDEN

SECRET = "SECRET-b6f1c2"
COMMAND = f"curl -H 'X-Token: {SECRET}' https://example.invalid/hook"


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningApi, str]]:
    """alice's deployment of n-1 with a custom step holding a secret; it failed on n-1 (the
    dummy nodes have no SSH), so its node has an error message."""
    with serving_api(tmp_path_factory.mktemp("privacy")) as api:
        op = {"action": "exec", "name": "hook", "command": COMMAND, "timeout": 5}
        answer = api.client("alice").post(
            "/v1/deployments",
            json={
                "nodes": ["n-1"],
                "environment": {"name": "tiny"},
                "custom_steps": {"steps": {"SetDeploymentEnv": {"nothing": {"post-ops": [op]}}}},
            },
        )
        assert answer.status_code == 201, answer.text
        ident: str = answer.json()["id"]
        assert wait_finished(api.client("alice"), ident)["status"] == "failed"
        yield api, ident


def views(api: RunningApi, user: str, ident: str) -> dict[str, Any]:
    """Everything ``user`` can read of the deployment, by route."""
    client = api.client(user)
    listed = [d for d in client.get("/v1/deployments").json() if d["id"] == ident]
    with client.stream("GET", f"/v1/deployments/{ident}/events") as stream:
        assert stream.status_code == 200
        events = [
            json.loads(line[len("data: ") :])
            for line in stream.iter_lines()
            if line.startswith("data: ")
        ]
    return {
        "list": listed[0],
        "one": client.get(f"/v1/deployments/{ident}").json(),
        "nodes": client.get(f"/v1/deployments/{ident}/nodes").json(),
        "node": client.get(f"/v1/deployments/{ident}/nodes/n-1").json(),
        "events": events,
    }


def test_others_see_neither_commands_nor_messages(finished: tuple[RunningApi, str]) -> None:
    api, ident = finished
    seen = views(api, "bob", ident)
    assert SECRET not in json.dumps(seen)
    for document in (seen["list"], seen["one"], seen["events"][-1]):
        assert document["options"]["custom_steps"] == HIDDEN
        assert document["status"] == "failed"  # what is not private stays
    (node,) = seen["nodes"]
    assert node["error_message"] == HIDDEN
    assert node["state"] == "deploy_failed"
    assert seen["node"]["error_message"] == HIDDEN
    assert {h["message"] for h in seen["node"]["history"]} <= {"", HIDDEN}
    assert {e["message"] for e in seen["events"][:-1]} <= {"", HIDDEN}
    assert api.client("bob").get(f"/v1/deployments/{ident}/log").status_code == 403


@pytest.mark.parametrize("user", ["alice", "root"])
def test_the_owner_and_administrators_see_everything(
    finished: tuple[RunningApi, str], user: str
) -> None:
    api, ident = finished
    seen = views(api, user, ident)
    for document in (seen["list"], seen["one"], seen["events"][-1]):
        steps = document["options"]["custom_steps"]
        assert steps["SetDeploymentEnv"]["nothing"]["post-ops"][0]["command"] == COMMAND
    error = seen["node"]["error_message"]
    assert error and error != HIDDEN
    assert seen["nodes"][0]["error_message"] == error
    assert error in {h["message"] for h in seen["node"]["history"]}
    assert error in {e.get("message") for e in seen["events"]}
