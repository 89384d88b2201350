"""Helpers to run the daemon with its API on a Unix socket and drive it with httpx."""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pykka
import pytest
from daemon_fixtures import dummy_config, make_tar_environment, wait_until

from kadeployd.api import ApiContext, ApiServer, create_app
from kadeployd.daemon import Daemon

ADMIN = "root"
USERS = ("root", "alice", "bob")
BOB_ON_N4 = {"user": "bob", "nodes": ["n-4"], "partitions": ["3"]}
"""A right on one partition of one node: enough to ask for force, not to take others' nodes."""


def short_dir() -> Path:
    """A directory with a short path (Unix socket paths are limited to 107 bytes)."""
    return Path(tempfile.mkdtemp(prefix="kd-", dir="/tmp"))


def api_config(
    directory: Path,
    socket_path: Path,
    overrides: dict[int, str] | None = None,
    nodes: int = 4,
    daemon_extra: str = "",
) -> Path:
    """The dummy config of daemon_fixtures, with the API socket at ``socket_path``."""
    dummy_config(directory, overrides, nodes)
    deploy = directory / "deploy.conf"
    text = deploy.read_text()
    extra = f"  api: {{unix_socket: {socket_path}}}\n  almighty_users: [{ADMIN}]\n" + daemon_extra
    deploy.write_text(text.replace("daemon:\n", "daemon:\n" + extra, 1))
    return directory


def client_for(socket_path: Path, token: str | None) -> httpx.Client:
    """An httpx client over the Unix socket, with ``token`` as bearer."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.Client(
        transport=httpx.HTTPTransport(uds=str(socket_path)),
        base_url="http://kadeployd",
        headers=headers,
        timeout=30.0,
    )


@dataclass
class RunningApi:
    """A daemon and its API server in this process."""

    daemon: Daemon
    context: ApiContext
    server: ApiServer
    socket: Path
    conf: Path
    tokens: dict[str, str] = field(default_factory=dict)
    _clients: list[httpx.Client] = field(default_factory=list)

    def client(self, user: str | None = "alice") -> httpx.Client:
        """A client authenticated as ``user`` (None: no token)."""
        token = self.tokens[user] if user is not None else None
        client = client_for(self.socket, token)
        self._clients.append(client)
        return client

    def stop(self) -> None:
        """Close clients, stop the API then the daemon."""
        for client in self._clients:
            client.close()
        self.server.stop()
        self.daemon.stop()
        self.context.close()


def start_api(conf: Path, socket_path: Path) -> RunningApi:
    """Start the daemon of ``conf`` and its API; tokens for USERS."""
    daemon = Daemon.start(conf)
    context = ApiContext(daemon)
    server = ApiServer(create_app(context), socket_path)
    try:
        server.start()
    except BaseException:
        daemon.stop()
        raise
    api = RunningApi(daemon, context, server, socket_path, conf)
    for user in USERS:
        api.tokens[user] = context.tokens.add(user)
    return api


@contextlib.contextmanager
def serving_api(
    base: Path,
    *,
    daemon_extra: str = "",
    environment: bool = True,
    overrides: dict[int, str] | None = None,
    rights: Sequence[dict[str, Any]] = (),
) -> Iterator[RunningApi]:
    """A daemon and its API on the dummy config under ``base`` (with per-node YAML
    ``overrides``), alice allowed on every node, the other ``rights`` granted and, with
    ``environment``, the tar environment 'tiny' registered public; everything is stopped and
    removed on exit."""
    directory = short_dir()
    socket_path = directory / "api.sock"
    running = start_api(
        api_config(base / "conf", socket_path, overrides, daemon_extra=daemon_extra), socket_path
    )
    try:
        root = running.client("root")
        for body in ({"user": "alice", "nodes": ["*"]}, *rights):
            granted = root.post("/v1/rights", json=body)
            assert granted.status_code == 201, granted.text
        if environment:
            answer = register(root, make_tar_environment(base), visibility="public")
            assert answer.status_code == 201, answer.text
        yield running
    finally:
        running.stop()
        pykka.ActorRegistry.stop_all(timeout=10)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A short directory for Unix sockets, removed afterwards."""
    directory = short_dir()
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def upload(client: httpx.Client, path: Path, name: str | None = None) -> str:
    """Upload a file; its id."""
    with path.open("rb") as handle:
        answer = client.post("/v1/uploads", params={"name": name or path.name}, content=handle)
    assert answer.status_code == 201, answer.text
    upload_id: str = answer.json()["id"]
    return upload_id


def register(client: httpx.Client, description: Path, **extra: Any) -> httpx.Response:
    """Upload an environment's image and register its description."""
    text = description.read_text()
    image = next(description.parent.glob(f"{description.stem}.tar.zst"))
    files = {image.name: upload(client, image)}
    return client.post("/v1/environments", json={"description": text, "files": files, **extra})


def wait_finished(client: httpx.Client, deployment_id: str, timeout: float = 60) -> dict[str, Any]:
    """Poll the API until the deployment is over; its document."""

    def done() -> dict[str, Any] | None:
        body: dict[str, Any] = client.get(f"/v1/deployments/{deployment_id}").json()
        return body if body["status"] != "running" else None

    return wait_until(done, timeout, f"deployment {deployment_id} to finish")


def error_of(answer: httpx.Response) -> dict[str, Any]:
    """The error object of an error answer (asserting its shape)."""
    body = answer.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert set(error) == {"code", "message", "details"}, error
    assert isinstance(error["details"], list)
    assert "Traceback" not in json.dumps(body)
    return error
