"""``kadeploy --custom-steps`` and ``--breakpoint`` as an installed subprocess against a daemon
and API in this process (dummy macrosteps, uploads limited to 1 MiB): malformed files exit 2
with ``FILE:LINE: key: ...`` and send nothing; good ones are uploaded and recorded."""

from __future__ import annotations

import os
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_fixtures import RunningApi, serving_api
from api_fixtures import wait_finished as api_wait_finished
from cli_fixtures import json_of, tool
from daemon_fixtures import make_tar_environment

from kadeploy_cli import custom_steps
from kadeploy_cli.client import Client, ServerAddress


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApi]:
    """Uploads limited to 1 MiB."""
    base = tmp_path_factory.mktemp("clicustom")
    with serving_api(base, daemon_extra="  max_upload_mib: 1\n") as running:
        yield running


def kadeploy(api: RunningApi, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return kadeploy_as(api, home, "alice", "-e", "tiny", *args)


def kadeploy_as(
    api: RunningApi, home: Path, user: str, *args: str
) -> subprocess.CompletedProcess[str]:
    """kadeploy -m n-1 ARGS as ``user``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KADEPLOY_")}
    env.update(
        HOME=str(home), KADEPLOY_SERVER=f"unix:{api.socket}", KADEPLOY_TOKEN=api.tokens[user]
    )
    return subprocess.run(
        [tool("kadeploy"), "-m", "n-1", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
        cwd=home,
    )


def nothing_sent(api: RunningApi, deployments_before: int) -> None:
    alice = api.client("alice")
    assert alice.get("/v1/uploads").json() == []
    assert len(alice.get("/v1/deployments").json()) == deployments_before


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


CASES = [
    (
        """\
        BroadcastEnv:
          run_postinstalls:
            pre-ops:
              - {action: exec, name: a, command: "true", colour: red}
        """,
        ":4: BroadcastEnv.run_postinstalls.pre-ops[0].colour: unknown key; valid keys are "
        "action, name, command, file, destination, params, timeout",
    ),
    (
        "BroadcastEnvChian: {send_image_chain: {pre-ops: []}}\n",
        ":1: BroadcastEnvChian: unknown macrostep 'BroadcastEnvChian'; did you mean "
        "'BroadcastEnvChain'",
    ),
    (
        "BroadcastEnv: {send_image_chian: {pre-ops: []}}\n",
        ":1: BroadcastEnv.send_image_chian: unknown microstep 'send_image_chian' of "
        "BroadcastEnv; did you mean 'send_image_chain'",
    ),
    (
        """\
        SetDeploymentEnv:
          format_deploy_partition:
            post-ops:
              - action: exec
                name: make_tmp
        """,
        ":4: SetDeploymentEnv.format_deploy_partition.post-ops[0].command: required for action "
        "exec: the shell command to run on the node",
    ),
    (
        """\
        SetDeploymentEnv:
          format_deploy_partition:
            post-ops:
              - action: send
                name: motd
                destination: /tmp
        """,
        ":4: SetDeploymentEnv.format_deploy_partition.post-ops[0].file: required for action "
        "send: a local file (relative to the custom-steps file)",
    ),
    (
        "BootNewEnv: {nothing: {substitute: [{action: copy, name: a}]}}\n",
        ":1: BootNewEnv.nothing.substitute[0].action: expected one of exec (a shell command), "
        "send (copy a file), run (send a script and run it); got 'copy'",
    ),
    (
        """\
        BootNewEnv:
          nothing:
            post-ops:
              - action: exec
                name: a
                command: "true"
                timeout: -5
        """,
        ":7: BootNewEnv.nothing.post-ops[0].timeout: expected a number of seconds > 0",
    ),
    (
        "BootNewEnv: {nothing: {post-ops: [{action: run, name: a, file: nope.sh}]}}\n",
        ":1: BootNewEnv.nothing.post-ops[0].file: no such file: ",
    ),
    (
        "BootNewEnv: {nothing: {post-ops: [{action: run, name: a, file: adir}]}}\n",
        ":1: BootNewEnv.nothing.post-ops[0].file: not a regular file: ",
    ),
    ("BootNewEnv: {nothing: [\n", ":2: invalid YAML"),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_malformed_custom_steps_exit_2_with_file_line_and_key_and_send_nothing(
    api: RunningApi, tmp_path: Path, text: str, expected: str
) -> None:
    (tmp_path / "adir").mkdir()
    before = len(api.client("alice").get("/v1/deployments").json())
    steps = write(tmp_path / "steps.yaml", text)
    result = kadeploy(api, tmp_path, "--custom-steps", str(steps))
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"kadeploy: {steps}{expected}" in result.stderr
    assert "Traceback" not in result.stderr
    nothing_sent(api, before)


def test_missing_custom_steps_file(api: RunningApi, tmp_path: Path) -> None:
    result = kadeploy(api, tmp_path, "--custom-steps", str(tmp_path / "none.yaml"))
    assert result.returncode == 2
    assert f"kadeploy: {tmp_path / 'none.yaml'}: file not found" in result.stderr


def test_a_file_over_the_upload_limit_is_named_with_its_line_and_nothing_stays(
    api: RunningApi, tmp_path: Path
) -> None:
    before = len(api.client("alice").get("/v1/deployments").json())
    (tmp_path / "small.txt").write_text("small\n")
    (tmp_path / "big.bin").write_bytes(b"x" * (2**20 + 1))
    steps = write(
        tmp_path / "steps.yaml",
        """\
        BootNewEnv:
          nothing:
            post-ops:
              - {action: send, name: s, file: small.txt, destination: /tmp}
              - {action: send, name: b, file: big.bin, destination: /tmp}
        """,
    )
    result = kadeploy(api, tmp_path, "--custom-steps", str(steps))
    assert result.returncode == 2, result.stdout + result.stderr
    assert (
        f"kadeploy: {steps}:5: BootNewEnv.nothing.post-ops[1].file: big.bin: 1048577 bytes "
        "is more than the limit of 1 MiB (daemon.max_upload_mib)"
    ) in result.stderr
    nothing_sent(api, before)  # small.txt was uploaded, then deleted


def test_bad_breakpoint_exits_2_with_the_valid_names(api: RunningApi, tmp_path: Path) -> None:
    result = kadeploy(api, tmp_path, "--breakpoint", "BroadcastEnv:send_image_chian")
    assert result.returncode == 2
    assert result.stderr.startswith(
        "kadeploy: --breakpoint BroadcastEnv:send_image_chian: unknown microstep "
        "'send_image_chian' of BroadcastEnv; did you mean 'send_image_chain'"
    )
    assert "valid: send_image_chain, run_postinstalls" in result.stderr
    unknown = kadeploy(api, tmp_path, "--breakpoint", "Broadcast")
    assert unknown.returncode == 2
    assert "unknown macrostep 'Broadcast'; did you mean 'BroadcastEnv'" in unknown.stderr


def test_custom_steps_and_breakpoint_are_uploaded_and_recorded(
    api: RunningApi, tmp_path: Path
) -> None:
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "tune.sh").write_text('#!/bin/sh\necho tuned "$@"\n')
    steps = write(
        tmp_path / "steps.yaml",
        """\
        BootNewEnvDummy:
          nothing:
            pre-ops:
              - {action: run, name: tune, file: files/tune.sh, params: "--fast 'a b'"}
        """,
    )
    result = kadeploy(
        api, tmp_path, "--custom-steps", str(steps), "--breakpoint", "BroadcastEnv", "--json"
    )
    assert result.returncode == 0, result.stderr
    document = json_of(result)
    options = document["deployment"]["options"]
    assert options["breakpoint"] == "BroadcastEnv"
    assert options["custom_steps"] == {
        "BootNewEnvDummy": {
            "nothing": {
                "pre-ops": [
                    {"action": "run", "name": "tune", "file": "tune.sh", "params": "--fast 'a b'"}
                ]
            }
        }
    }
    assert document["deployed"] == ["n-1"]
    text = kadeploy(api, tmp_path, "--breakpoint", "BroadcastEnv")
    assert text.returncode == 0, text.stderr
    assert "succeeded" in text.stdout
    assert "1/1 nodes stopped at breakpoint BroadcastEnv" in text.stdout
    assert "Stopped at breakpoint BroadcastEnv on 1 node (left as they are):\n  n-1" in text.stdout


def test_each_send_gives_the_file_its_own_name_on_the_node(api: RunningApi, tmp_path: Path) -> None:
    """The uploads need distinct plain names (motd, 2-motd, my_file); the request says which
    name each file keeps on the node."""
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "motd").write_text(f"from {folder}\n")
    (tmp_path / "my file").write_text("spaced\n")
    steps = write(
        tmp_path / "steps.yaml",
        """\
        BootNewEnv:
          nothing:
            post-ops:
              - {action: send, name: a, file: ./a/motd, destination: /tmp/a}
              - {action: send, name: b, file: ./b/motd, destination: /tmp/b}
              - {action: send, name: c, file: my file, destination: /tmp/b}
              - {action: run, name: r, file: ./a/motd}
        """,
    )
    local = custom_steps.load(steps)
    with Client(ServerAddress(socket=api.socket), api.tokens["alice"]) as client:
        body = custom_steps.upload(local, client)
    ops = body["steps"]["BootNewEnv"]["nothing"]["post-ops"]
    assert [op["file"] for op in ops] == ["motd", "2-motd", "my_file", "motd"]
    assert body["names"] == {"motd": "motd", "2-motd": "motd", "my_file": "my file"}
    alice = api.client("alice")
    answer = alice.post(
        "/v1/deployments",
        json={
            "nodes": ["n-1"],
            "environment": {"name": "tiny"},
            "custom_steps": body,
            "breakpoint": "BroadcastEnv",
        },
    )
    assert answer.status_code == 201, answer.text
    api_wait_finished(alice, answer.json()["id"])
    assert alice.get("/v1/uploads").json() == []


def test_a_send_that_cannot_keep_its_name_is_refused_before_any_upload(
    api: RunningApi, tmp_path: Path
) -> None:
    before = len(api.client("alice").get("/v1/deployments").json())
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "motd").write_text(f"from {folder}\n")
    steps = write(
        tmp_path / "steps.yaml",
        """\
        BootNewEnv:
          nothing:
            pre-ops:
              - {action: send, name: a, file: a/motd, destination: /etc}
              - {action: send, name: b, file: b/motd, destination: /etc}
              - {action: send, name: c, file: a/.., destination: /etc}
              - {action: send, name: d, file: ./a/motd, destination: /etc}
        """,
    )
    result = kadeploy(api, tmp_path, "--custom-steps", str(steps))
    assert result.returncode == 2, result.stdout + result.stderr
    ops = "BootNewEnv.nothing.pre-ops"
    assert (
        f"{steps}:5: {ops}[1].file: sends another file as 'motd' into /etc like {ops}[0].file "
        "(line 4): one would overwrite the other on the node; rename one of the files"
    ) in result.stderr
    assert (
        f"{steps}:6: {ops}[2].file: '..' cannot be the name of the file on the node: expected "
        "a file name"
    ) in result.stderr
    assert "[3]" not in result.stderr  # the same file again, under the same name: fine
    nothing_sent(api, before)


def test_a_refused_request_leaves_no_upload_behind(api: RunningApi, tmp_path: Path) -> None:
    """The custom-steps files (and the environment's) are deleted when the image upload or
    the request fails."""
    (tmp_path / "motd").write_text("hello\n")
    steps = write(
        tmp_path / "steps.yaml",
        "BootNewEnv: {nothing: {post-ops: [{action: send, name: m, file: motd, "
        "destination: /tmp}]}}\n",
    )
    bob = api.client("bob")
    before = len(bob.get("/v1/deployments").json())
    refused = kadeploy_as(api, tmp_path, "bob", "-e", "tiny", "--custom-steps", str(steps))
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "no right to deploy n-1" in refused.stderr
    assert bob.get("/v1/uploads").json() == []
    description = make_tar_environment(tmp_path, name="big")
    (tmp_path / "big.tar.zst").write_bytes(b"x" * (2**20 + 1))  # over the 1 MiB limit
    too_big = kadeploy_as(
        api, tmp_path, "bob", "-a", str(description), "--custom-steps", str(steps)
    )
    assert too_big.returncode == 2, too_big.stdout + too_big.stderr
    assert "is more than the limit of 1 MiB" in too_big.stderr
    assert bob.get("/v1/uploads").json() == []
    assert len(bob.get("/v1/deployments").json()) == before
