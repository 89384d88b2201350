"""Anonymous environments requested at the same time: no request sweeps another's files.

Ten ``kadeploy -a env.yaml`` at once on disjoint nodes (dummy variants), through the real API
over its Unix socket: each request's directory under ``<state>/anonymous/`` must survive the
sweeps of the others while it is being created and while its deployment runs; once they are
all finished, the next request sweeps them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from api_fixtures import RunningApi, api_config, socket_dir, start_api, upload, wait_finished
from daemon_fixtures import make_tar_environment, stop_all_actors

NODES = 10

pytestmark = pytest.mark.usefixtures("stop_all_actors")
__all__ = ["socket_dir", "stop_all_actors"]


@pytest.fixture
def api(tmp_path: Path, socket_dir: Path) -> Iterator[RunningApi]:
    socket_path = socket_dir / "api.sock"
    running = start_api(api_config(tmp_path / "conf", socket_path, nodes=NODES), socket_path)
    try:
        granted = running.client("root").post("/v1/rights", json={"user": "alice", "nodes": ["*"]})
        assert granted.status_code == 201, granted.text
        yield running
    finally:
        running.stop()


def anonymous_body(api: RunningApi, tiny: Path, node: str) -> dict[str, Any]:
    image = upload(api.client("alice"), tiny.parent / "tiny.tar.zst", "tiny.tar.zst")
    return {
        "nodes": [node],
        "anonymous_environment": {
            "description": tiny.read_text(),
            "files": {"tiny.tar.zst": image},
        },
    }


def test_ten_concurrent_anonymous_deployments_all_deploy(api: RunningApi, tmp_path: Path) -> None:
    tiny = make_tar_environment(tmp_path)
    bodies = [anonymous_body(api, tiny, f"n-{i}") for i in range(1, NODES + 1)]
    clients = [api.client("alice") for _ in bodies]
    barrier = threading.Barrier(len(bodies))
    answers: list[Any] = [None] * len(bodies)

    def post(index: int) -> None:
        barrier.wait(timeout=30)
        answers[index] = clients[index].post("/v1/deployments", json=bodies[index])

    threads = [threading.Thread(target=post, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert all(a is not None and a.status_code == 201 for a in answers), [
        a.text if a is not None else None for a in answers
    ]
    finished = [wait_finished(clients[0], a.json()["id"], timeout=120) for a in answers]
    failures = {
        body["id"]: [
            n.get("message") for n in clients[0].get(f"/v1/deployments/{body['id']}/nodes").json()
        ]
        for body in finished
        if body["status"] != "succeeded"
    }
    assert not failures, failures

    # Every deployment is over (later requests may have swept the first finished ones): the
    # next request sweeps the rest and keeps its own.
    anonymous = api.context.anonymous_dir
    assert 1 <= len(list(anonymous.iterdir())) <= NODES
    last = clients[0].post("/v1/deployments", json=anonymous_body(api, tiny, "n-1"))
    assert last.status_code == 201, last.text
    assert len(list(anonymous.iterdir())) == 1
    assert wait_finished(clients[0], last.json()["id"])["status"] == "succeeded"
