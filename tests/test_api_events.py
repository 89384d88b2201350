"""The deployment event stream over the real API: pushed from the store's hub, never polled,
exact on resume and after a lag. A real daemon (dummy macrosteps, n-4's reboot hangs so a
deployment stays running), its real store and API on a Unix socket, httpx as the client."""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from api_fixtures import RunningApi, register, socket_dir
from daemon_fixtures import stop_all_actors, wait_until
from test_api import api, deploy, grant, tiny

from kadeployd.store import RecordState

__all__ = ["api", "socket_dir", "stop_all_actors", "tiny"]
pytestmark = pytest.mark.usefixtures("stop_all_actors")

WAIT = 30.0  # upper bound for any wait; never reached when things work


@dataclass
class Follower:
    """Reads a deployment's event stream in a thread, like ``kadeploy`` does."""

    api: RunningApi
    deployment_id: str
    headers: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    stop_after_states: int | None = None
    """Disconnect after this many ``state`` events (None: read until ``end``)."""
    events: list[tuple[str, str | None, dict[str, Any]]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None

    def start(self) -> Follower:
        self._thread = threading.Thread(target=self._follow)
        self._thread.start()
        return self

    def join(self) -> None:
        assert self._thread is not None
        self._thread.join(WAIT)
        assert not self._thread.is_alive(), self.events

    def states(self) -> list[dict[str, Any]]:
        with self._lock:
            return [data for kind, _, data in self.events if kind == "state"]

    def kinds(self) -> list[str]:
        with self._lock:
            return [kind for kind, _, _ in self.events]

    def _follow(self) -> None:
        url = f"/v1/deployments/{self.deployment_id}/events"
        with (
            self.api.client("alice") as client,
            client.stream("GET", url, headers=self.headers, params=self.params) as stream,
        ):
            assert stream.status_code == 200
            kind, ident, data = "message", None, ""
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    kind = line[len("event: ") :]
                elif line.startswith("id: "):
                    ident = line[len("id: ") :]
                elif line.startswith("data: "):
                    data = line[len("data: ") :]
                elif not line and data:
                    with self._lock:
                        self.events.append((kind, ident, json.loads(data)))
                    if kind == "end":
                        return
                    if self.stop_after_states is not None and len(self.states()) >= (
                        self.stop_after_states
                    ):
                        return
                    kind, ident, data = "message", None, ""


def start_hanging_deployment(api: RunningApi, tiny: Path, nodes: list[str]) -> str:
    """A deployment whose n-4 hangs in ``rebooting`` until it is cancelled."""
    alice = api.client("alice")
    assert register(alice, tiny).status_code == 201
    grant(api, "alice", *nodes)
    answer = deploy(alice, nodes)
    assert answer.status_code == 201, answer.text
    deployment_id: str = answer.json()["id"]

    def n4_rebooting() -> bool:
        body = alice.get(f"/v1/deployments/{deployment_id}/nodes/n-4").json()
        return bool(body["state"] == "rebooting")

    wait_until(n4_rebooting, WAIT, "n-4 to hang in rebooting")
    return deployment_id


def mark(api: RunningApi, deployment_id: str, *texts: str) -> None:
    """Record n-4 in ``rebooting`` again with each text as message, in one store transaction."""
    writes = [RecordState(deployment_id, "n-4", "rebooting", message=text) for text in texts]
    api.daemon.store_call(lambda store: store.write_batch(writes))


def history_seqs(api: RunningApi, deployment_id: str) -> list[int]:
    return [entry.seq for entry in api.context.reader.state_changes(deployment_id)]


def test_a_stream_gets_states_pushed_without_reading_the_database(
    api: RunningApi, tiny: Path
) -> None:
    deployment_id = start_hanging_deployment(api, tiny, ["n-4"])
    follower = Follower(api, deployment_id).start()
    wait_until(lambda: api.context.events.subscribers(deployment_id) == 1, WAIT, "a subscriber")
    wait_until(
        lambda: any(s["state"] == "rebooting" for s in follower.states()), WAIT, "the replay"
    )
    # From now on, every statement the API's store reader runs is recorded.
    statements: list[str] = []
    reader = api.context.reader
    with reader._lock:
        reader._connection().set_trace_callback(statements.append)
    mark(api, deployment_id, "pushed, not polled")
    wait_until(
        lambda: any(s["message"] == "pushed, not polled" for s in follower.states()),
        WAIT,
        "the pushed state",
    )
    assert statements == []  # the stream read nothing: the state came from the hub
    assert api.client("alice").post(f"/v1/deployments/{deployment_id}/cancel").status_code < 300
    follower.join()
    with reader._lock:
        reader._connection().set_trace_callback(None)
    assert follower.kinds()[-1] == "end"
    assert follower.events[-1][2]["status"] == "aborted"
    assert follower.states()[-1]["state"] == "aborted"
    seqs = [s["seq"] for s in follower.states()]
    assert seqs == history_seqs(api, deployment_id)  # each state once, in order


def test_resuming_with_last_event_id_misses_nothing(api: RunningApi, tiny: Path) -> None:
    deployment_id = start_hanging_deployment(api, tiny, ["n-1", "n-4"])
    first = Follower(api, deployment_id, stop_after_states=3).start()
    first.join()
    resumed_from = first.states()[-1]["seq"]
    assert first.events[-1][1] == str(resumed_from)  # the id of a state is its seq
    mark(api, deployment_id, "while nobody followed")
    second = Follower(api, deployment_id, headers={"Last-Event-ID": str(resumed_from)}).start()
    wait_until(
        lambda: any(s["message"] == "while nobody followed" for s in second.states()),
        WAIT,
        "the state recorded while nobody followed",
    )
    mark(api, deployment_id, "while following")
    wait_until(
        lambda: any(s["message"] == "while following" for s in second.states()),
        WAIT,
        "the state recorded while following",
    )
    assert api.client("alice").post(f"/v1/deployments/{deployment_id}/cancel").status_code < 300
    second.join()
    assert second.kinds()[-1] == "end"
    seen = [s["seq"] for s in first.states()] + [s["seq"] for s in second.states()]
    assert seen == history_seqs(api, deployment_id)
    assert min(s["seq"] for s in second.states()) > resumed_from


def test_a_lagging_stream_re_reads_once_and_loses_nothing(
    api: RunningApi, tiny: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kadeployd.events.hub")
    deployment_id = start_hanging_deployment(api, tiny, ["n-4"])
    api.context.events.queue_size = 4  # for subscriptions made from now on
    follower = Follower(api, deployment_id, params={"logs": "true"}).start()
    wait_until(lambda: api.context.events.subscribers(deployment_id) == 1, WAIT, "a subscriber")
    texts = [f"burst {i}" for i in range(50)]
    mark(api, deployment_id, *texts)  # one batch: 50 events at once overflow a queue of 4
    wait_until(
        lambda: any(s["message"] == "burst 49" for s in follower.states()), WAIT, "the burst"
    )
    assert any("lags" in r.getMessage() for r in caplog.records)
    assert api.client("alice").post(f"/v1/deployments/{deployment_id}/cancel").status_code < 300
    follower.join()
    messages = [s["message"] for s in follower.states()]
    assert [m for m in messages if m.startswith("burst")] == texts
    assert [s["seq"] for s in follower.states()] == history_seqs(api, deployment_id)
