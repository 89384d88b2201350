"""The API keeps the promises of its own OpenAPI document: a bounded property-based run.

Schemathesis reads ``/openapi.json`` from a real daemon (the dummy config: deployments contact
no node) and, for every operation, sends the document's examples, its boundary and
unexpected-method cases and generated valid and invalid requests, over the daemon's Unix
socket, once with an administrator's token and once with a plain user's. Each answer must be
no server error, a status the operation documents, of a documented content type, matching
the documented schema; a method an operation does not have is answered 405 with ``Allow``;
a request the document says is invalid is refused (4xx).

Half of the time a node, deployment, environment, user or upload parameter takes one of the
daemon's real names (a deployment that ended, the public environment ``tiny``), so requests
reach what exists, not only 404s. Each caller has its own daemon: the administrator's run
deletes what it finds. The run is bounded (25 generated requests per operation and kind, no
shrinking, a fixed seed): it finds the same things every time, in about half a minute.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from api_fixtures import ADMIN, RunningApi, serving_api, upload, wait_finished
from hypothesis import HealthCheck, settings
from requests.adapters import HTTPAdapter
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)
from urllib3.connection import HTTPConnection
from urllib3.connectionpool import HTTPConnectionPool

BASE_URL = "http://kadeployd"
USER = "alice"
"""The non-administrator (allowed on every node by ``serving_api``)."""
EXAMPLES = 25
"""Generated requests per operation and generation mode (valid, invalid)."""
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    unsupported_method,
    negative_data_rejection,
]
TEXT_LIST_QUERIES = {"node"}
"""Query parameters that are lists of any text (``?node=A&node=B``). A value schemathesis
generates as invalid for them (``false``, ``0``) is text again once in the URL, which the
daemon rightly accepts: negative_data_rejection cannot judge such a case."""
NODES = ["n-1", "n-2", "n-3", "n-4"]
KNOWN = 0.5
"""How often a parameter below takes one of the daemon's real names instead of a generated
value: so that requests also reach deployments, nodes and environments that exist."""
BINDINGS = {
    "path.deployment_id": "deployments",
    "path.node": "nodes",
    "path.name": "names",
    "path.owner": "users",
    "path.version": "versions",
    "path.user": "users",
    "path.upload_id": "uploads",
    "query.cluster": "clusters",
    "query.node": "nodes",
    "query.user": "users",
    "query.name": "names",
    "body.nodes[*]": "nodes",
    "body.user": "users",
    "body.environment.name": "environments",
}


def config(deployment: str, upload: str) -> schemathesis.Config:
    """The run's settings, with the real names of the daemon under test."""
    return schemathesis.Config.from_dict(
        {
            "seed": 13,
            "generation": {
                "mode": "all",
                "max-examples": EXAMPLES,
                "deterministic": True,
                "no-shrink": True,
                "database": "none",
                "with-security-parameters": False,
            },
            "phases": {"stateful": {"enabled": False}},
            "dictionaries": {
                "deployments": {"values": [deployment]},
                "nodes": {"values": NODES},
                "names": {"values": ["tiny", *NODES]},
                "environments": {"values": ["tiny"]},
                "users": {"values": ["root", "alice", "bob"]},
                "versions": {"values": [1]},
                "uploads": {"values": [upload]},
                "clusters": {"values": ["tiny"]},
            },
            "parameters": {
                key: {"dictionary": name, "probability": KNOWN} for key, name in BINDINGS.items()
            },
        }
    )


class _UnixConnection(HTTPConnection):
    """An HTTP connection to a Unix socket (``requests`` has no such transport)."""

    def __init__(self, *args: Any, socket_path: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.socket_path = socket_path

    def _new_conn(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(30)
        sock.connect(self.socket_path)
        return sock


class _UnixPool(HTTPConnectionPool):
    ConnectionCls = _UnixConnection


class _UnixAdapter(HTTPAdapter):
    """Sends every request of a session to the daemon's Unix socket."""

    def __init__(self, socket_path: Path) -> None:
        super().__init__()
        self.pool = _UnixPool("kadeployd", socket_path=str(socket_path))

    def get_connection_with_tls_context(
        self, request: Any, verify: Any, proxies: Any = None, cert: Any = None
    ) -> HTTPConnectionPool:
        return self.pool

    def close(self) -> None:
        self.pool.close()
        super().close()


@pytest.fixture(scope="module", params=[ADMIN, USER])
def caller(request: pytest.FixtureRequest) -> str:
    """Whose token the run sends: an administrator's, then a plain user's."""
    user: str = request.param
    return user


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, caller: str) -> Iterator[RunningApi]:
    """A daemon for each caller's run: what the run's operations leave or remove (uploads,
    deployments, rights, the environment) is what its next operations find."""
    with serving_api(tmp_path_factory.mktemp("schemathesis")) as running:
        yield running


@pytest.fixture(scope="module")
def session(api: RunningApi) -> Iterator[requests.Session]:
    """A ``requests`` session over the daemon's Unix socket, as schemathesis sends with."""
    with requests.Session() as unix:
        unix.trust_env = False
        unix.mount(BASE_URL, _UnixAdapter(api.socket))
        yield unix


@pytest.fixture
def api_schema(api: RunningApi, caller: str, tmp_path: Path) -> schemathesis.BaseSchema:
    """The document the running daemon serves; a deployment of ``caller`` that has ended
    and an upload of theirs to name."""
    client = api.client(caller)
    started = client.post(
        "/v1/deployments", json={"nodes": NODES[:2], "environment": {"name": "tiny"}}
    )
    assert started.status_code == 201, started.text
    deployment = wait_finished(client, started.json()["id"])
    key = tmp_path / "key.pub"
    key.write_text("ssh-ed25519 AAAA test\n")
    answer = api.client(None).get("/openapi.json")
    assert answer.status_code == 200, answer.text
    return schemathesis.openapi.from_dict(
        answer.json(), config=config(deployment["id"], upload(client, key))
    )


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request: pytest.FixtureRequest) -> None:
    """Schemathesis 4.32 names each operation's subtest through ``node._nodeid``, which
    pytest 9.2 no longer has (its nodes keep their id elsewhere): give it one to rename."""
    request.node._nodeid = request.node.nodeid


schema = schemathesis.pytest.from_fixture("api_schema")


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
@schema.parametrize()
def test_every_operation_keeps_the_documents_promises(
    case: schemathesis.Case, api: RunningApi, session: requests.Session, caller: str
) -> None:
    case.call_and_validate(
        base_url=BASE_URL,
        session=session,
        headers={"Authorization": f"Bearer {api.tokens[caller]}"},
        checks=checks_for(case),
    )


def checks_for(case: schemathesis.Case) -> list[Any]:
    """Every check, but negative_data_rejection for a case that gives a text-list query
    parameter (see :data:`TEXT_LIST_QUERIES`): schemathesis serialises its invalid value
    (``false``) before the case reaches us, so the case cannot tell which it was."""
    if TEXT_LIST_QUERIES & set(case.query or {}):
        return [c for c in CHECKS if c is not negative_data_rejection]
    return CHECKS
