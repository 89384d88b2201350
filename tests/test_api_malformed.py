"""Every endpoint of the OpenAPI document, fed malformed bodies, parameters and ids: none
answers 500, every error has the JSON error shape."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from api_fixtures import RunningApi, api_config, error_of, socket_dir, start_api
from daemon_fixtures import stop_all_actors

__all__ = ["socket_dir", "stop_all_actors"]
pytestmark = pytest.mark.usefixtures("stop_all_actors")

BODIES: list[tuple[bytes, str]] = [
    (b"{", "application/json"),
    (b"[]", "application/json"),
    (b"null", "application/json"),
    (b'"text"', "application/json"),
    (b"12", "application/json"),
    (b'{"unknown": 1}', "application/json"),
    (b'{"nodes": 5, "environment": [], "user": {}, "visibility": 3}', "application/json"),
    (
        b'{"nodes": ["n-1"], "environment": {"name": "x", "version": 99999999999999999999}}',
        "application/json",
    ),
    (b'{"user": "\\u0000", "nodes": ["*"], "partitions": ["0"]}', "application/json"),
    (b'{"description": "", "files": {"../x": "nothex"}}', "application/json"),
    (
        b'{"nodes": ["n-1"], "environment": {"name": "x"}, "breakpoint": "A:b:c", '
        b'"custom_steps": {"steps": {"BroadcastEnv": {"nothing": {"pre-ops": [{"action": '
        b'"exec", "name": "a", "command": null, "timeout": -1, "x": []}]}}, "B": 1}}}',
        "application/json",
    ),
    (
        b'{"nodes": ["n-1"], "environment": {"name": "x"}, "breakpoint": "BroadcastEnv:x", '
        b'"custom_steps": {"steps": {"BroadcastEnv": [1, {"a": null}], "\\u0000": {"": {}}}, '
        b'"files": {"f": "0"}}}',
        "application/json",
    ),
    (
        b'{"nodes": ["n-1"], "environment": {"name": "x"}, "custom_steps": {"steps": '
        b'{"BootNewEnv": {"nothing": {"substitute": [{"action": "run", "name": "r", "file": '
        b'"f", "params": "\\"", "destination": 3}], "post-ops": 7}}}, "files": {"f": "'
        + b"0" * 32
        + b'"}}}',
        "application/json",
    ),
    (b"\xff\xfe\x00garbage", "application/octet-stream"),
    (b"name=x", "application/x-www-form-urlencoded"),
]
IDS = ["x", "0" * 32, "..%2F..%2Fetc", "%00", "a" * 300, "-1"]
QUERY = {
    "limit": "abc",
    "after": "-1",
    "since": "yesterday",
    "status": "bogus",
    "user": "u" * 100,
    "node": "",
    "name": "../x",
    "logs": "maybe",
    "all_versions": "2",
}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApi]:
    from api_fixtures import short_dir  # noqa: PLC0415

    directory = short_dir()
    tmp = tmp_path_factory.mktemp("malformed")
    running = start_api(api_config(tmp / "conf", directory / "api.sock"), directory / "api.sock")
    yield running
    running.stop()
    import pykka  # noqa: PLC0415

    pykka.ActorRegistry.stop_all(timeout=10)
    for entry in directory.iterdir():
        entry.unlink()
    directory.rmdir()


def endpoints(api: RunningApi) -> list[tuple[str, str]]:
    document = api.client(None).get("/openapi.json").json()
    return [
        (method.upper(), path)
        for path, operations in document["paths"].items()
        for method in operations
    ]


def fill(path: str, value: str) -> str:
    for name in ("deployment_id", "node", "owner", "name", "user", "upload_id"):
        path = path.replace("{" + name + "}", value)
    return path.replace("{version}", "0" if value != "x" else "x")


def test_every_endpoint_answers_malformed_requests_without_500(api: RunningApi) -> None:
    found = endpoints(api)
    assert len(found) >= 20
    checked = 0
    for user in ("alice", "root"):
        client = api.client(user)
        for method, template in found:
            for value in IDS:
                path = fill(template, value)
                for body, kind in BODIES:
                    answer = client.request(
                        method, path, content=body, headers={"Content-Type": kind}, params=QUERY
                    )
                    assert answer.status_code < 500, (method, path, body, answer.text)
                    if answer.status_code >= 400:
                        error_of(answer)
                    checked += 1
    assert checked > 1000


def test_unknown_routes_and_methods_have_the_error_shape(api: RunningApi) -> None:
    client = api.client("alice")
    missing = client.get("/v1/nothing")
    assert (missing.status_code, error_of(missing)["code"]) == (404, "not_found")
    wrong = client.put("/v1/deployments")
    assert (wrong.status_code, error_of(wrong)["code"]) == (405, "method_not_allowed")


def test_the_document_declares_each_routes_errors_in_the_error_shape(api: RunningApi) -> None:
    document = api.client(None).get("/openapi.json").json()
    assert "HTTPValidationError" not in document["components"]["schemas"]
    error_schema = {"$ref": "#/components/schemas/ErrorResponse"}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            where = f"{method.upper()} {path}"
            answers = operation["responses"]
            for status, answer in answers.items():
                if int(status) >= 400:
                    assert answer["content"]["application/json"]["schema"] == error_schema, (
                        where,
                        status,
                    )
            if path != "/v1/health":  # the only route without a token
                assert {"401", "429", "503"} <= set(answers), where
            if "parameters" in operation or "requestBody" in operation:
                assert "422" in answers, where
            if "application/json" in operation.get("requestBody", {}).get("content", {}):
                assert {"400", "413", "422"} <= set(answers), where
    health = document["paths"]["/v1/health"]["get"]["responses"]
    assert "401" not in health
    shapes = health["200"]["content"]["application/json"]["schema"]["anyOf"]
    assert {"$ref": "#/components/schemas/LivenessOut"} in shapes
    problem = document["components"]["schemas"]["ErrorBody"]["properties"]["details"]["items"]
    assert problem == {"$ref": "#/components/schemas/ProblemOut"}


def test_a_method_not_allowed_names_every_allowed_one(api: RunningApi) -> None:
    client = api.client("alice")
    for method, path, allowed in (
        ("DELETE", "/v1/health", "GET"),
        ("PUT", "/v1/deployments", "GET, POST"),
        ("POST", "/v1/environments/alice/tiny/1", "GET, PATCH, DELETE"),
        ("GET", "/v1/uploads/" + "0" * 32, "DELETE"),
    ):
        answer = client.request(method, path)
        assert answer.status_code == 405, (method, path, answer.text)
        assert answer.headers["Allow"] == allowed, (method, path)
        error = error_of(answer)
        assert error["code"] == "method_not_allowed"
        assert f"{method} is not allowed on {path}; allowed: {allowed}" in error["message"]


def test_validation_errors_name_each_field(api: RunningApi) -> None:
    client = api.client("alice")
    answer = client.post(
        "/v1/deployments", json={"nodes": [], "environment": {"name": "a b"}, "color": 1}
    )
    assert answer.status_code == 422
    error = error_of(answer)
    assert error["code"] == "invalid_request"
    paths = {d["path"] for d in error["details"]}
    assert {"body.nodes", "body.environment.name", "body.color"} <= paths
    answer = client.post("/v1/deployments", json={"nodes": ["n-1"]})
    assert "exactly one of environment and anonymous_environment" in error_of(answer)["message"]
    answer = client.post(
        "/v1/deployments", content=b"{", headers={"Content-Type": "application/json"}
    )
    assert "not valid JSON" in error_of(answer)["message"]


def test_empty_paths_and_huge_ids(api: RunningApi, tmp_path: Path) -> None:
    client = api.client("alice")
    for path in ("/v1/deployments/", "/v1/environments//x/1", "/v1/nodes/" + "n" * 5000):
        answer = client.get(path)
        assert answer.status_code < 500, (path, answer.text)
