"""The REST API against a real daemon (dummy macrosteps, real store, real TFTP), over its Unix
socket with httpx: tokens, environments and visibility, rights, deployments, events, errors."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_fixtures import (
    RunningApi,
    api_config,
    error_of,
    register,
    socket_dir,
    start_api,
    upload,
    wait_finished,
)
from daemon_fixtures import make_tar_environment, stop_all_actors, wait_until
from test_daemon_actors import UNTRUSTED_REBOOT, processes_with, slow

from kadeployd.api.convert import node_state_out, progress_out
from kadeployd.api.routes_events import progress_event
from kadeployd.store import Store

__all__ = ["socket_dir", "stop_all_actors"]
pytestmark = pytest.mark.usefixtures("stop_all_actors")

MARKER = f"kadeploy-test-api-{os.getpid()}"


@pytest.fixture
def api(tmp_path: Path, socket_dir: Path) -> Iterator[RunningApi]:
    """The daemon with its API; n-4's reboot hangs, so a deployment on it stays running."""
    slow_n4 = {4: UNTRUSTED_REBOOT.format(command=slow(MARKER), retries=0)}
    conf = api_config(tmp_path / "conf", socket_dir / "api.sock", slow_n4)
    running = start_api(conf, socket_dir / "api.sock")
    yield running
    running.stop()
    wait_until(lambda: not processes_with(MARKER), 20, "hanging reboots to be killed")


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return make_tar_environment(tmp_path)


def grant(api: RunningApi, user: str, *nodes: str) -> None:
    answer = api.client("root").post("/v1/rights", json={"user": user, "nodes": list(nodes)})
    assert answer.status_code == 201, answer.text


def deploy(client: httpx.Client, nodes: list[str], **body: Any) -> httpx.Response:
    body.setdefault("environment", {"name": "tiny"})
    return client.post("/v1/deployments", json={"nodes": nodes, **body})


# ------------------------------------------------------------------ tokens


def test_health_needs_no_token_and_everything_else_does(api: RunningApi) -> None:
    anonymous = api.client(None)
    health = anonymous.get("/v1/health").json()
    assert health["status"] == "ok"
    assert health["pid"] == os.getpid()
    assert health["deployments_in_flight"] == 0
    answer = anonymous.get("/v1/whoami")
    assert answer.status_code == 401
    assert error_of(answer)["code"] == "unauthorized"
    assert answer.headers["www-authenticate"] == "Bearer"
    bad = httpx.Client(
        transport=httpx.HTTPTransport(uds=str(api.socket)),
        base_url="http://kadeployd",
        headers={"Authorization": "Bearer not-a-token"},
    )
    with bad:
        answer = bad.get("/v1/deployments")
        assert answer.status_code == 401
        assert error_of(answer)["message"] == "invalid or revoked token"
    assert api.client("alice").get("/v1/whoami").json() == {"user": "alice", "admin": False}
    assert api.client("root").get("/v1/whoami").json() == {"user": "root", "admin": True}
    # A token made afterwards works without a reload; a revoked one stops working.
    token = api.context.tokens.add("carol")
    with httpx.Client(
        transport=httpx.HTTPTransport(uds=str(api.socket)),
        base_url="http://kadeployd",
        headers={"Authorization": f"Bearer {token}"},
    ) as carol:
        assert carol.get("/v1/whoami").json()["user"] == "carol"
        assert api.context.tokens.remove("carol")
        assert carol.get("/v1/whoami").status_code == 401


def test_openapi_document_lists_every_resource(api: RunningApi) -> None:
    document = api.client(None).get("/openapi.json").json()
    paths = set(document["paths"])
    for path in (
        "/v1/deployments",
        "/v1/deployments/{deployment_id}/events",
        "/v1/deployments/{deployment_id}/nodes/{node}/log",
        "/v1/deployments/{deployment_id}/cancel",
        "/v1/nodes",
        "/v1/environments",
        "/v1/environments/{owner}/{name}/{version}",
        "/v1/rights",
        "/v1/stats/nodes",
        "/v1/uploads",
    ):
        assert path in paths
    assert "HTTPBearer" in document["components"]["securitySchemes"]


# ------------------------------------------------------------------ environments


def test_environment_visibility_private_shared_public(
    api: RunningApi, tiny: Path, tmp_path: Path
) -> None:
    alice, bob, root = api.client("alice"), api.client("bob"), api.client("root")
    answer = register(alice, tiny)
    assert answer.status_code == 201, answer.text
    assert answer.json()["visibility"] == "private"
    assert answer.headers["location"] == "/v1/environments/alice/tiny/1"
    again = register(alice, tiny)
    assert again.status_code == 409
    assert error_of(again)["code"] == "environment_exists"

    assert [e["name"] for e in alice.get("/v1/environments").json()] == ["tiny"]
    assert bob.get("/v1/environments").json() == []
    assert bob.get("/v1/environments", params={"user": "alice"}).json() == []
    assert error_of(bob.get("/v1/environments/alice/tiny"))["code"] == "unknown_environment"

    shared = alice.patch("/v1/environments/alice/tiny/1", json={"visibility": "shared"})
    assert shared.status_code == 200, shared.text
    assert bob.get("/v1/environments").json() == []
    assert [e["owner"] for e in bob.get("/v1/environments", params={"user": "alice"}).json()] == [
        "alice"
    ]
    assert bob.get("/v1/environments/alice/tiny/1").status_code == 200

    public = alice.patch("/v1/environments/alice/tiny/1", json={"visibility": "public"})
    assert public.status_code == 403
    assert error_of(public)["code"] == "admin_only"
    assert root.patch("/v1/environments/alice/tiny/1", json={"visibility": "public"}).is_success
    assert [e["name"] for e in bob.get("/v1/environments").json()] == ["tiny"]

    assert bob.delete("/v1/environments/alice/tiny/1").status_code == 403
    assert alice.delete("/v1/environments/alice/tiny/1").status_code == 204
    assert alice.get("/v1/environments").json() == []
    assert not (api.context.environments_dir / "alice" / "tiny" / "1").exists()


def test_a_user_description_may_not_name_server_files(api: RunningApi, tiny: Path) -> None:
    alice = api.client("alice")
    text = tiny.read_text().replace("file: tiny.tar.zst", f"file: {tiny.with_suffix('.tar.zst')}")
    answer = alice.post("/v1/environments", json={"description": text})
    assert answer.status_code == 422
    error = error_of(answer)
    assert error["code"] == "invalid_environment"
    assert error["details"][0]["path"] == "image.file"
    # A broken description is reported with its line, and the upload is given back.
    image = upload(alice, tiny.parent / "tiny.tar.zst", "tiny.tar.zst")
    broken = tiny.read_text().replace("version: 1", "version: one")
    answer = alice.post(
        "/v1/environments", json={"description": broken, "files": {"tiny.tar.zst": image}}
    )
    assert answer.status_code == 422
    problem = error_of(answer)["details"][0]
    assert (problem["path"], problem["line"]) == ("version", 2)
    assert [u["id"] for u in alice.get("/v1/uploads").json()] == [image]
    # An administrator may name a file on the server.
    assert (
        api.client("root").post("/v1/environments", json={"description": text}).status_code == 201
    )


# ------------------------------------------------------------------ deployments


def test_deploy_a_registered_environment_and_read_states_logs_nodes_stats(
    api: RunningApi, tiny: Path
) -> None:
    alice, bob = api.client("alice"), api.client("bob")
    assert register(alice, tiny).status_code == 201
    grant(api, "alice", "n-1", "n-2")
    answer = deploy(alice, ["n-1", "n-2"], authorized_keys="ssh-ed25519 AAAA alice@host\n")
    assert answer.status_code == 201, answer.text
    deployment_id = answer.json()["id"]
    assert answer.headers["location"] == f"/v1/deployments/{deployment_id}"
    done = wait_finished(alice, deployment_id)
    assert done["status"] == "succeeded"
    assert done["states"] == {"deployed": 2}
    assert done["options"]["keys"] is True

    nodes = alice.get(f"/v1/deployments/{deployment_id}/nodes").json()
    assert [(n["node"], n["state"]) for n in nodes] == [("n-1", "deployed"), ("n-2", "deployed")]
    detail = alice.get(f"/v1/deployments/{deployment_id}/nodes/n-1").json()
    assert detail["history"][0]["state"] == "pending"
    assert detail["history"][-1]["state"] == "deployed"
    assert alice.get(f"/v1/deployments/{deployment_id}/nodes/n-1/log").status_code == 200
    log = bob.get(f"/v1/deployments/{deployment_id}/nodes/n-1/log")
    assert (log.status_code, error_of(log)["code"]) == (403, "forbidden")
    missing = alice.get(f"/v1/deployments/{deployment_id}/nodes/n-3")
    assert (missing.status_code, error_of(missing)["code"]) == (404, "unknown_node")

    listed = bob.get("/v1/deployments", params={"user": "alice"}).json()
    assert [d["id"] for d in listed] == [deployment_id]
    n1 = alice.get("/v1/nodes/n-1").json()
    assert (n1["state"], n1["owner"], n1["busy"]) == ("deployed", "alice", False)
    assert n1["environment"] == {"name": "tiny", "version": 1, "anonymous": False}
    assert alice.get("/v1/nodes/n-3").json()["state"] is None
    unknown = alice.get("/v1/nodes/n-9")
    assert (unknown.status_code, error_of(unknown)["code"]) == (404, "unknown_node")

    stats = {s["node"]: s for s in alice.get("/v1/stats/nodes").json()}
    assert stats["n-1"]["success_rate"] == 1.0
    assert stats["n-1"]["deployments"] == 1
    states = {s["state"] for s in alice.get("/v1/stats/states").json()}
    assert {"pending", "deploy_env", "transferring"} <= states
    assert alice.get("/v1/stats/nodes", params={"environment": "other"}).json() == []


def test_anonymous_environment_from_uploads_with_an_uploaded_key(
    api: RunningApi, tiny: Path, tmp_path: Path
) -> None:
    alice = api.client("alice")
    grant(api, "alice", "*")
    image = upload(alice, tiny.parent / "tiny.tar.zst", "tiny.tar.zst")
    key_file = tmp_path / "id.pub"
    key_file.write_text("ssh-ed25519 AAAA alice@laptop\n")
    key = upload(alice, key_file)
    answer = deploy(
        alice,
        ["n-1", "n-2", "n-3"],
        environment=None,
        anonymous_environment={"description": tiny.read_text(), "files": {"tiny.tar.zst": image}},
        authorized_keys_upload=key,
        min_nodes=2,
    )
    assert answer.status_code == 201, answer.text
    body = wait_finished(alice, answer.json()["id"])
    assert body["status"] == "succeeded"
    assert body["environment"]["anonymous"] is True
    assert alice.get("/v1/uploads").json() == []
    # The upload is used once.
    again = deploy(
        alice,
        ["n-1"],
        environment=None,
        anonymous_environment={"description": tiny.read_text(), "files": {"tiny.tar.zst": image}},
    )
    assert (again.status_code, error_of(again)["code"]) == (404, "unknown_upload")


def test_rights_are_required_and_only_admins_grant(api: RunningApi, tiny: Path) -> None:
    alice, bob, root = api.client("alice"), api.client("bob"), api.client("root")
    assert register(alice, tiny).status_code == 201
    refused = deploy(alice, ["n-1"])
    assert refused.status_code == 403
    error = error_of(refused)
    assert error["code"] == "no_right"
    assert "n-1" in error["message"]
    grant(api, "alice", "n-1")
    assert deploy(alice, ["n-1", "n-2"]).status_code == 403
    ok = deploy(alice, ["n-1"])
    assert ok.status_code == 201
    wait_finished(alice, ok.json()["id"])
    # A right on another partition is not a right on the deploy partition (3).
    root.post("/v1/rights", json={"user": "bob", "nodes": ["n-1"], "partitions": ["5"]})
    bob_env = {"name": "tiny", "user": "alice"}
    assert error_of(deploy(bob, ["n-1"], environment=bob_env))["code"] in {
        "unknown_environment",
        "no_right",
    }

    answer = bob.post("/v1/rights", json={"user": "bob", "nodes": ["*"]})
    assert (answer.status_code, error_of(answer)["code"]) == (403, "admin_only")
    assert alice.get("/v1/rights").json() == [{"user": "alice", "node": "n-1", "partition": "*"}]
    assert bob.get("/v1/rights", params={"user": "alice"}).status_code == 403
    typo = root.post("/v1/rights", json={"user": "bob", "nodes": ["n-11"]})
    assert typo.status_code == 422
    assert "did you mean" in error_of(typo)["message"]
    assert root.delete("/v1/rights/alice", params={"node": "n-1"}).json() == {"changed": 1}
    assert deploy(alice, ["n-1"]).status_code == 403
    # A right on a partition's device path (kadeploy -b) is revoked by that path.
    root.post("/v1/rights", json={"user": "bob", "nodes": ["n-2"], "partitions": ["/dev/vdb3"]})
    revoke = {"node": "n-2", "partition": "/dev/vdb3"}
    assert root.delete("/v1/rights/bob", params=revoke).json() == {"changed": 1}
    bad = root.delete("/v1/rights/bob", params={"partition": "/dev/../x"})
    assert (bad.status_code, error_of(bad)["code"]) == (422, "invalid_request")


def test_unknown_environment_and_unknown_nodes(api: RunningApi, tiny: Path) -> None:
    alice = api.client("alice")
    grant(api, "alice", "*")
    assert register(alice, tiny).status_code == 201
    answer = deploy(alice, ["n-1"], environment={"name": "tinny"})
    assert answer.status_code == 404
    error = error_of(answer)
    assert error["code"] == "unknown_environment"
    assert "did you mean 'tiny'" in error["message"]
    answer = deploy(alice, ["n-1"], environment={"name": "tiny", "version": 7})
    assert error_of(answer)["code"] == "unknown_environment"
    answer = deploy(alice, ["n-1", "n-7", "n-1"])
    assert answer.status_code == 422
    details = error_of(answer)["details"]
    assert [d["path"] for d in details] == ["nodes[1]", "nodes[2]"]
    assert "unknown node n-7" in details[0]["message"]


def test_a_busy_node_needs_force_and_cancel_aborts(api: RunningApi, tiny: Path) -> None:
    alice, bob = api.client("alice"), api.client("bob")
    assert register(alice, tiny, visibility="shared").status_code == 201
    grant(api, "alice", "n-4")
    grant(api, "bob", "n-4")
    first = deploy(alice, ["n-4"])
    assert first.status_code == 201
    deployment_id = first.json()["id"]
    wait_until(lambda: processes_with(MARKER), 20, "n-4's reboot to hang")
    assert api.client(None).get("/v1/health").json()["deployments_in_flight"] == 1
    busy = deploy(bob, ["n-4"], environment={"name": "tiny", "user": "alice"})
    assert busy.status_code == 409
    assert error_of(busy)["code"] == "node_busy"
    assert "alice" in error_of(busy)["details"][0]["message"]
    assert api.client("alice").get("/v1/nodes/n-4").json()["busy"] is True

    refused = bob.post(f"/v1/deployments/{deployment_id}/cancel")
    assert refused.status_code == 403
    cancelled = alice.post(f"/v1/deployments/{deployment_id}/cancel", json={"reason": "oops"})
    assert cancelled.status_code == 202, cancelled.text
    done = wait_finished(alice, deployment_id)
    assert (done["status"], done["reason"]) == ("aborted", "oops")
    again = alice.post(f"/v1/deployments/{deployment_id}/cancel")
    assert (again.status_code, error_of(again)["code"]) == (409, "not_running")
    wait_until(lambda: not processes_with(MARKER), 20, "the reboot to be killed")


def test_force_deploys_a_busy_node(api: RunningApi, tiny: Path) -> None:
    alice = api.client("alice")
    assert register(alice, tiny).status_code == 201
    grant(api, "alice", "n-4", "n-1")
    first = deploy(alice, ["n-4"]).json()["id"]
    forced = deploy(alice, ["n-4", "n-1"], force=True, min_nodes=1)
    assert forced.status_code == 201, forced.text
    assert wait_finished(alice, forced.json()["id"])["status"] == "succeeded"
    alice.post(f"/v1/deployments/{first}/cancel")
    assert wait_finished(alice, first)["status"] == "aborted"


def test_event_stream_follows_a_deployment_until_its_end(api: RunningApi, tiny: Path) -> None:
    alice = api.client("alice")
    assert register(alice, tiny).status_code == 201
    grant(api, "alice", "n-1", "n-4")
    deployment_id = deploy(alice, ["n-1", "n-4"]).json()["id"]
    events: list[tuple[str, str]] = []
    rebooting = threading.Event()

    def follow() -> None:
        with (
            api.client("alice") as reader,
            reader.stream(
                "GET", f"/v1/deployments/{deployment_id}/events", params={"logs": "true"}
            ) as stream,
        ):
            assert stream.headers["content-type"].startswith("text/event-stream")
            kind = ""
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    kind = line[len("event: ") :]
                elif line.startswith("data: "):
                    events.append((kind, line[len("data: ") :]))
                    if kind == "state" and '"rebooting"' in line:
                        rebooting.set()

    follower = threading.Thread(target=follow)
    follower.start()
    assert rebooting.wait(20), events
    alice.post(f"/v1/deployments/{deployment_id}/cancel")
    follower.join(30)
    assert not follower.is_alive()
    kinds = [k for k, _ in events]
    assert kinds[-1] == "end"
    assert '"status":"aborted"' in events[-1][1]
    states = [data for kind, data in events if kind == "state"]
    assert any('"node":"n-1","state":"deployed"' in s for s in states)
    assert any('"node":"n-4","state":"aborted"' in s for s in states)
    # Resuming after an event id sends only what came after it.
    with alice.stream(
        "GET", f"/v1/deployments/{deployment_id}/events", headers={"Last-Event-ID": "3"}
    ) as stream:
        ids = [int(line[4:]) for line in stream.iter_lines() if line.startswith("id: ")]
    assert ids
    assert min(ids) == 4
    missing = alice.get("/v1/deployments/0123/events")
    assert (missing.status_code, error_of(missing)["code"]) == (404, "unknown_deployment")


def test_reload_is_for_admins_and_a_broken_config_keeps_the_old_one(api: RunningApi) -> None:
    root, alice = api.client("root"), api.client("alice")
    assert alice.post("/v1/server/reload").status_code == 403
    answer = root.post("/v1/server/reload")
    assert answer.json() == {"nodes": 4, "clusters": ["tiny"]}
    nodes_conf = api.conf / "nodes.conf"
    nodes_conf.write_text(nodes_conf.read_text() + "n-5:\n  cluster: tinny\n")
    broken = root.post("/v1/server/reload")
    assert broken.status_code == 422
    assert "tinny" in error_of(broken)["message"]
    assert len(alice.get("/v1/nodes").json()) == 4
    health = api.client(None).get("/v1/health").json()
    assert (health["reloads"], health["reload_failures"]) == (1, 1)


def test_upload_larger_than_the_limit_is_refused(tmp_path: Path, socket_dir: Path) -> None:
    conf = api_config(
        tmp_path / "conf", socket_dir / "api.sock", daemon_extra="  max_upload_mib: 1\n"
    )
    running = start_api(conf, socket_dir / "api.sock")
    try:
        alice = running.client("alice")
        answer = alice.post("/v1/uploads", params={"name": "big.img"}, content=b"x" * (2**20 + 1))
        assert answer.status_code == 413
        assert error_of(answer)["code"] == "upload_too_large"

        def chunks() -> Iterator[bytes]:  # streamed: no Content-Length to check up front
            for _ in range(3):
                yield b"y" * 2**19

        answer = alice.post("/v1/uploads", params={"name": "big.img"}, content=chunks())
        assert answer.status_code == 413
        assert alice.get("/v1/uploads").json() == []
        assert [p.name for p in running.context.uploads.directory.iterdir()] == []
        bad_name = alice.post("/v1/uploads", params={"name": "../etc/passwd"}, content=b"x")
        assert error_of(bad_name)["code"] == "invalid_request"
        ok = alice.post("/v1/uploads", params={"name": "small.img"}, content=b"x" * 10)
        assert ok.status_code == 201
        assert ok.json()["size"] == 10
    finally:
        running.stop()


def test_progress_event_sums_the_nodes_in_transfer_and_is_sent_when_it_changes(
    tmp_path: Path,
) -> None:
    """The event builder over records written to a real store (a dummy deployment never
    transfers an image)."""
    with Store.open(tmp_path / "kadeployd.db") as store:
        ident = store.create_deployment(
            user="alice", environment_name="tiny", nodes=("n-1", "n-2", "n-3", "n-4")
        )
        assert progress_event(progress_out(store.nodes(ident)), None) is None  # none started
        store.record_progress(ident, "n-1", 1024, 4096)
        store.record_progress(ident, "n-2", 4096, 4096)
        store.record_progress(ident, "n-3", 2048, 4096)
        store.finish_node(ident, "n-2", "deployed")
        store.finish_node(ident, "n-3", "deploy_failed", "relay died", error_step="BroadcastEnv")
        first = progress_out(store.nodes(ident))
        assert first is not None
        nodes = {n.node: n for n in store.nodes(ident)}
    # Outputs carry the bytes; the failed n-3 leaves the sums, n-4 never started.
    assert node_state_out(nodes["n-1"]).model_dump()["bytes_done"] == 1024
    assert node_state_out(nodes["n-4"]).bytes_total is None
    assert (first.bytes_done, first.bytes_total) == (1024 + 4096, 2 * 4096)
    assert set(first.nodes) == {"n-1", "n-2"}
    text = progress_event(first, None)
    assert text is not None
    assert text.startswith("event: progress\ndata: {") and text.endswith("}\n\n")
    data = json.loads(text.split("data: ", 1)[1])
    assert data["nodes"]["n-1"] == {"bytes_done": 1024, "bytes_total": 4096}
    assert progress_event(first, first) is None  # unchanged: nothing sent
    moved = first.model_copy(update={"bytes_done": first.bytes_done + 1})
    assert progress_event(moved, first) is not None
