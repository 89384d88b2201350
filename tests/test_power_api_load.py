"""Power requests under load: they wait on the event loop, not in the API's threads, and one
user's are capped.

The power command is a real shell script that marks its start in a directory and then waits
until the test creates a ``release`` file: while it waits, the test knows exactly which
commands are running, and asserts that the API still answers before releasing them (ordering,
no wall-clock threshold).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx
import pykka
import pytest
from api_fixtures import RunningApi, api_config, client_for, error_of, short_dir, start_api
from daemon_fixtures import wait_until

WAITING = (
    "power: {{power_off: [sh, -c, "
    '\'touch "$1/started.$$"; while [ ! -e "$1/release" ]; do sleep 0.05; done\', '
    'power-off, "{markers}"]}}\n'
)


def serve(base: Path, markers: Path, *, many: bool) -> tuple[RunningApi, Path]:
    directory = short_dir()
    socket_path = directory / "api.sock"
    conf = api_config(base / "conf", socket_path, {1: WAITING.format(markers=markers)})
    if many:  # room for 45 commands at once: the API's threads are what is measured
        deploy = conf / "deploy.conf"
        text = deploy.read_text().replace("reboot_window: 8", "reboot_window: 64")
        text = text.replace(
            f"api: {{unix_socket: {socket_path}}}",
            f"api: {{unix_socket: {socket_path}, max_requests_per_user: 64, "
            f"max_power_requests_per_user: 64}}",
        )
        deploy.write_text(text)
    api = start_api(conf, socket_path)
    granted = api.client("root").post("/v1/rights", json={"user": "alice", "nodes": ["*"]})
    assert granted.status_code == 201, granted.text
    return api, directory


@pytest.fixture
def markers(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "markers"
    path.mkdir()
    yield path
    (path / "release").touch()  # whatever happened, no command is left waiting


def power_off(api: RunningApi) -> httpx.Response:
    with client_for(api.socket, api.tokens["alice"]) as client:
        client.timeout = httpx.Timeout(120)
        return client.post("/v1/power", json={"nodes": ["n-1"], "action": "off"})


def started(markers: Path) -> int:
    return len(list(markers.glob("started.*")))


def test_the_api_answers_while_45_power_commands_of_one_user_run(
    tmp_path: Path, markers: Path
) -> None:
    api, directory = serve(tmp_path, markers, many=True)
    try:
        with ThreadPoolExecutor(45) as pool:
            answers = [pool.submit(power_off, api) for _ in range(45)]
            # Every request is in flight, its command running (before: 40 held the API's
            # threads and the last 5 never reached the daemon).
            wait_until(lambda: started(markers) == 45, 60, "45 power commands to run")
            alice = api.client("alice")
            health = alice.get("/v1/health")
            nodes = alice.get("/v1/nodes")
            assert (health.status_code, nodes.status_code) == (200, 200), health.text + nodes.text
            assert health.json()["status"] == "ok"
            assert not any(answer.done() for answer in answers)  # commands still waiting
            (markers / "release").touch()
            results = [answer.result(timeout=120) for answer in answers]
        assert [r.status_code for r in results] == [200] * 45
        assert all(r.json()[0]["ok"] for r in results)
    finally:
        api.stop()
        pykka.ActorRegistry.stop_all(timeout=10)
        shutil.rmtree(directory, ignore_errors=True)


def test_one_users_power_requests_are_capped_with_429(tmp_path: Path, markers: Path) -> None:
    api, directory = serve(tmp_path, markers, many=False)  # cap: 8 by default
    try:
        with ThreadPoolExecutor(20) as pool:
            answers: list[Future[httpx.Response]] = [pool.submit(power_off, api) for _ in range(20)]
            wait_until(lambda: sum(answer.done() for answer in answers) == 12, 60, "12 refusals")
            wait_until(lambda: started(markers) == 8, 60, "8 power commands to run")
            refused = [answer for answer in answers if answer.done()]
            for answer in (future.result() for future in refused):
                assert answer.status_code == 429, answer.text
                assert answer.headers["Retry-After"] == "5"
                assert "daemon.api.max_power_requests_per_user" in error_of(answer)["message"]
            # Another user is not affected by alice's cap.
            status = api.client("root").post("/v1/power", json={"nodes": ["n-2"], "action": "on"})
            assert status.status_code == 200, status.text
            (markers / "release").touch()
            accepted = [answer.result(timeout=120) for answer in answers if answer not in refused]
            assert len(accepted) == 8
        assert [r.status_code for r in accepted] == [200] * 8
    finally:
        api.stop()
        pykka.ActorRegistry.stop_all(timeout=10)
        shutil.rmtree(directory, ignore_errors=True)
