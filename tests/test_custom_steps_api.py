"""``breakpoint`` and ``custom_steps`` in ``POST /v1/deployments`` (real daemon, dummy
macrosteps): 422 with field paths for every mistake, uploads taken and swept, options shown."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_fixtures import RunningApi, error_of, serving_api, upload
from api_fixtures import wait_finished as api_wait_finished
from daemon_fixtures import wait_until

PREFIX = "body.custom_steps.steps"


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApi]:
    """One daemon and API for the module; alice may deploy every node; 'tiny' is public."""
    with serving_api(tmp_path_factory.mktemp("customapi")) as running:
        yield running


def deploy(client: httpx.Client, **body: Any) -> httpx.Response:
    return client.post(
        "/v1/deployments", json={"nodes": ["n-1"], "environment": {"name": "tiny"}, **body}
    )


def invalid(answer: httpx.Response, code: str) -> dict[str, str]:
    """The details of a 422 answer, by path."""
    assert answer.status_code == 422, answer.text
    error = error_of(answer)
    assert error["code"] == code, error
    return {d["path"]: d["message"] for d in error["details"]}


def steps(*ops: dict[str, Any], macro: str = "BootNewEnv", micro: str = "nothing") -> Any:
    return {macro: {micro: {"post-ops": list(ops)}}}


def test_an_unknown_breakpoint_is_422_with_the_valid_names(api: RunningApi) -> None:
    alice = api.client("alice")
    details = invalid(
        deploy(alice, breakpoint="BroadcastEnv:send_image_chian"), "invalid_breakpoint"
    )
    assert "did you mean 'send_image_chain'" in details["body.breakpoint"]
    assert "valid: send_image_chain, run_postinstalls" in details["body.breakpoint"]
    details = invalid(deploy(alice, breakpoint="a:b:c"), "invalid_breakpoint")
    assert "expected MACROSTEP or MACROSTEP:MICROSTEP" in details["body.breakpoint"]
    wrong_type = deploy(alice, breakpoint=5)
    assert wrong_type.status_code == 422
    assert error_of(wrong_type)["details"][0]["path"] == "body.breakpoint"


def test_every_mistake_of_the_custom_steps_is_422_with_its_field_path(api: RunningApi) -> None:
    alice = api.client("alice")
    document = {
        "BroadcastEnvv": {"nothing": {"pre-ops": []}},
        "BroadcastEnv": {
            "nothnig": {"pre-ops": []},
            "nothing": {
                "pre_ops": [],
                "post-ops": [
                    {"action": "exec", "name": "a"},
                    {"action": "spawn", "name": "b"},
                    {"action": "exec", "name": "c", "command": "true", "timeout": -1},
                    {"action": "exec", "name": "d", "command": "true", "retries": 2},
                    {"action": "send", "name": "e", "file": "x.txt"},
                ],
            },
        },
    }
    details = invalid(deploy(alice, custom_steps={"steps": document}), "invalid_custom_steps")
    ops = f"{PREFIX}.BroadcastEnv.nothing.post-ops"
    assert set(details) == {
        f"{PREFIX}.BroadcastEnvv",
        f"{PREFIX}.BroadcastEnv.nothnig",
        f"{PREFIX}.BroadcastEnv.nothing.pre_ops",
        f"{ops}[0].command",
        f"{ops}[1].action",
        f"{ops}[2].timeout",
        f"{ops}[3].retries",
        f"{ops}[4].destination",
    }
    assert "did you mean 'BroadcastEnv'" in details[f"{PREFIX}.BroadcastEnvv"]
    assert "did you mean 'nothing'" in details[f"{PREFIX}.BroadcastEnv.nothnig"]
    assert "did you mean 'pre-ops'" in details[f"{PREFIX}.BroadcastEnv.nothing.pre_ops"]
    assert "required for action exec" in details[f"{ops}[0].command"]
    assert "expected one of exec" in details[f"{ops}[1].action"]
    assert "expected a number of seconds > 0" in details[f"{ops}[2].timeout"]
    assert "unknown key" in details[f"{ops}[3].retries"]


def test_files_must_be_uploaded_and_named(api: RunningApi) -> None:
    alice = api.client("alice")
    send = {"action": "send", "name": "m", "file": "motd.txt", "destination": "/tmp"}
    details = invalid(deploy(alice, custom_steps={"steps": steps(send)}), "invalid_custom_steps")
    assert details == {
        f"{PREFIX}.BootNewEnv.nothing.post-ops[0].file": "'motd.txt' is not among "
        "custom_steps.files (upload it and name it there)"
    }
    extra = {"steps": steps(send), "files": {"motd.txt": "0" * 32, "other": "1" * 32}}
    details = invalid(deploy(alice, custom_steps=extra), "invalid_custom_steps")
    assert details == {"body.custom_steps.files.other": "no operation names this file"}
    unknown = deploy(alice, custom_steps={"steps": steps(send), "files": {"motd.txt": "0" * 32}})
    assert (unknown.status_code, error_of(unknown)["code"]) == (404, "unknown_upload")
    bodies: list[dict[str, Any]] = [
        {"steps": {}},
        {"steps": []},
        {"steps": steps(send), "files": {"../x": "y"}},
    ]
    for body in bodies:
        answer = deploy(alice, custom_steps=body)
        assert answer.status_code == 422, (body, answer.text)
        assert error_of(answer)["details"][0]["path"].startswith("body.custom_steps")


def test_names_on_the_node_must_be_file_names_of_files_in_the_request(api: RunningApi) -> None:
    alice = api.client("alice")
    send = {"action": "send", "name": "m", "file": "motd.txt", "destination": "/tmp"}
    files = {"motd.txt": "0" * 32}
    body = {"steps": steps(send), "files": files, "names": {"motd.txt": "..", "x": "my x"}}
    details = invalid(deploy(alice, custom_steps=body), "invalid_custom_steps")
    assert set(details) == {"body.custom_steps.names.motd.txt", "body.custom_steps.names.x"}
    wrong = details["body.custom_steps.names.motd.txt"]
    assert "'..' cannot be the name of the file on the node" in wrong
    assert details["body.custom_steps.names.x"] == "not among custom_steps.files"
    # Spaces are fine: the name is an argument of a fixed script, never shell code.
    spaced = {"steps": steps(send), "files": files, "names": {"motd.txt": "my motd"}}
    answer = deploy(alice, custom_steps=spaced)
    assert (answer.status_code, error_of(answer)["code"]) == (404, "unknown_upload")


def test_options_show_both_and_the_uploaded_files_are_swept_after_the_deployment(
    api: RunningApi, tmp_path: Path
) -> None:
    alice = api.client("alice")
    motd = tmp_path / "motd.txt"
    motd.write_text("hello\n")
    send = {"action": "send", "name": "m", "file": "motd.txt", "destination": "/mnt/dest/etc"}
    exec_ = {"action": "exec", "name": "x", "command": "touch /tmp/never", "timeout": 5}
    body = {"steps": steps(send, exec_), "files": {"motd.txt": upload(alice, motd)}}
    # The operations come after BootNewEnv's microstep: the breakpoint stops the nodes first.
    answer = deploy(alice, custom_steps=body, breakpoint="BroadcastEnv")
    assert answer.status_code == 201, answer.text
    ident = answer.json()["id"]
    done = api_wait_finished(alice, ident)
    assert (done["status"], done["states"]) == ("succeeded", {"breakpointed": 1})
    assert done["options"]["breakpoint"] == "BroadcastEnv"
    assert done["options"]["custom_steps"] == {
        "BootNewEnv": {
            "nothing": {
                "post-ops": [
                    {"action": "send", "name": "m", "file": "motd.txt",
                     "destination": "/mnt/dest/etc"},
                    {"action": "exec", "name": "x", "command": "touch /tmp/never", "timeout": 5},
                ]
            }
        }
    }  # fmt: skip
    assert alice.get("/v1/uploads").json() == []  # taken by the deployment
    held = api.context.state_dir / "custom-steps"
    assert [d.joinpath("deployment").read_text() for d in held.iterdir()] == [ident]
    # The next request sweeps the files of deployments that ended.
    again = deploy(alice, breakpoint="BroadcastEnv")
    assert again.status_code == 201, again.text
    api_wait_finished(alice, again.json()["id"])
    wait_until(lambda: not list(held.iterdir()), 10, "the custom-steps files to be swept")


def test_a_started_deployment_keeps_its_files_when_the_sweep_after_it_fails(
    api: RunningApi, tmp_path: Path
) -> None:
    """An OSError once the deployment runs (here: the anonymous-environments directory
    replaced by a file, so that sweeping it fails) is logged: the answer is 201 and the
    deployment's custom-steps files stay, marked with its id."""
    alice = api.client("alice")
    motd = tmp_path / "motd.txt"
    motd.write_text("hello\n")
    send = {"action": "send", "name": "m", "file": "motd.txt", "destination": "/mnt/dest/etc"}
    body = {"steps": steps(send), "files": {"motd.txt": upload(alice, motd)}}
    anonymous = api.context.anonymous_dir
    saved = anonymous.with_name(anonymous.name + ".saved")
    anonymous.rename(saved)
    anonymous.write_text("not a directory\n")
    try:
        answer = deploy(alice, custom_steps=body, breakpoint="BroadcastEnv")
        assert answer.status_code == 201, answer.text
        ident = answer.json()["id"]
        held = api.context.state_dir / "custom-steps"
        marked = [d for d in held.iterdir() if (d / "deployment").is_file()]
        mine = [d for d in marked if (d / "deployment").read_text() == ident]
        assert len(mine) == 1
        assert (mine[0] / "motd.txt").read_text() == "hello\n"
        api_wait_finished(alice, ident)
    finally:
        anonymous.unlink()
        saved.rename(anonymous)
