"""``POST /v1/reboots`` kinds set_pxe, deploy_env and recorded_env on the dummy-variant
configuration: validation (422 naming each field), rights, and what is written on the real
TFTP server. The boots themselves are in tests/workflow/test_reboot_kinds.py (testbed)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_fixtures import (
    RunningApi,
    error_of,
    register,
    serving_api,
    upload,
    wait_finished,
)
from daemon_fixtures import make_tar_environment

from kadeployd.actors.directory import PXE
from kadeployd.pxe.profiles import profile_path

PROFILE = (
    "DEFAULT mine\nLABEL mine\n  KERNEL FILES_PREFIX/vmlinuz\n"
    "  APPEND initrd=FILES_PREFIX--initrd quiet\n"
)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApi]:
    """One daemon and API for the module; alice may reboot every node."""
    with serving_api(tmp_path_factory.mktemp("reboot-kinds"), environment=False) as running:
        yield running


def reboot(client: httpx.Client, **body: Any) -> httpx.Response:
    return client.post("/v1/reboots", json={"nodes": ["n-1"], **body})


def problems(answer: httpx.Response) -> dict[str, str]:
    error = error_of(answer)
    return {str(d["path"]): str(d["message"]) for d in error["details"]}


def test_missing_and_misplaced_fields_are_422_with_their_paths(api: RunningApi) -> None:
    alice = api.client("alice")
    answer = reboot(alice, kind="recorded_env")
    assert answer.status_code == 422, answer.text
    assert problems(answer) == {
        "environment": "required with kind recorded_env",
        "partition": "required with kind recorded_env",
    }
    answer = reboot(alice, kind="set_pxe")
    assert (answer.status_code, problems(answer)) == (
        422,
        {"profile": "required with kind set_pxe"},
    )
    answer = reboot(alice, kind="deploy_env", profile="x", partition=3)
    assert answer.status_code == 422
    assert problems(answer) == {
        "profile": "only with kind set_pxe, not deploy_env",
        "partition": "only with kind recorded_env, not deploy_env",
    }
    answer = reboot(alice, kind="simple", environment={"name": "tiny"})
    assert problems(answer) == {"environment": "only with kind recorded_env, not simple"}


def test_bad_profiles_are_422_with_their_lines(api: RunningApi) -> None:
    alice = api.client("alice")
    too_big = reboot(alice, kind="set_pxe", profile="#" * (64 * 1024 + 1))
    assert too_big.status_code == 422
    assert any("profile" in path for path in problems(too_big))
    for text, line, message in (
        ("DEFAULT x\nKERNEL ../../etc/passwd\n", 2, "KERNEL ../../etc/passwd: "),
        ("KERNEL /envs/x/vmlinuz\n", 1, "absolute paths must stay inside your directory"),
        ("LABEL x\n\n APPEND initrd=a,/users/bob/i\n", 3, "APPEND initrd=/users/bob/i: "),
        ("LABEL x\n KERNEL http://evil/k\n", 2, "names another server"),
        ("LABEL x\n KERNEL tftp::k\n", 2, "names another server"),
        ("LABEL x\x01\n", 1, "control character"),
        ("  \n", None, "empty profile"),
    ):
        answer = reboot(alice, kind="set_pxe", profile=text)
        assert answer.status_code == 422, (text, answer.text)
        error = error_of(answer)
        assert error["code"] == "invalid_profile", error
        detail = error["details"][0]
        assert (detail["path"], detail["line"]) == ("profile", line), (text, error)
        assert message in json.dumps(error), (text, error)


def test_set_pxe_writes_the_profile_and_publishes_the_files_on_tftp(
    api: RunningApi, tmp_path: Path
) -> None:
    from kadeploy_testbed.tftpfetch import fetch  # noqa: PLC0415

    alice = api.client("alice")
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"my kernel" * 1000)
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"my initrd")
    files = {"vmlinuz": upload(alice, kernel), "initrd": upload(alice, initrd)}
    answer = reboot(alice, kind="set_pxe", profile=PROFILE, files=files)
    assert answer.status_code == 200, answer.text
    # The dummy configuration's soft reboot is `false`: the reboot fails, reported per node.
    [result] = answer.json()
    assert (result["node"], result["ok"]) == ("n-1", False)

    port = api.daemon.supervisor.child(PXE).proxy().port().get(timeout=5)
    mac = api.daemon.config.nodes["n-1"].mac
    served = fetch("127.0.0.1", port, profile_path(mac), 5.0)
    assert served is not None
    assert served.decode() == (
        "DEFAULT mine\nLABEL mine\n  KERNEL users/alice/vmlinuz\n"
        "  APPEND initrd=users/alice/initrd quiet\n"
    )
    assert fetch("127.0.0.1", port, "users/alice/vmlinuz", 5.0) == kernel.read_bytes()
    assert fetch("127.0.0.1", port, "users/alice/initrd", 5.0) == b"my initrd"
    # The uploads were consumed.
    again = reboot(alice, kind="set_pxe", profile=PROFILE, files=files)
    assert (again.status_code, error_of(again)["code"]) == (404, "unknown_upload")


def test_rights_and_visibility(api: RunningApi, tmp_path: Path) -> None:
    shown = make_tar_environment(tmp_path, name="shown")
    with api.client("root") as root:
        assert register(root, shown, visibility="public").status_code == 201
    bob = api.client("bob")
    # bob sees the environment "shown" but has no right on n-1: only the right is missing.
    # The rights are checked first, so an unknown environment does not change the answer.
    for body in (
        {"kind": "deploy_env"},
        {"kind": "set_pxe", "profile": PROFILE},
        {"kind": "recorded_env", "environment": {"name": "shown"}, "partition": 3},
        {"kind": "recorded_env", "environment": {"name": "nowhere"}, "partition": 3},
    ):
        answer = reboot(bob, **body)
        assert answer.status_code == 403, (body, answer.text)
        assert error_of(answer)["code"] == "no_right"

    alice = api.client("alice")
    unknown = reboot(alice, kind="recorded_env", environment={"name": "nowhere"}, partition=3)
    assert (unknown.status_code, error_of(unknown)["code"]) == (404, "unknown_environment")
    private = make_tar_environment(tmp_path, name="secret")
    with api.client("root") as root:
        assert register(root, private).status_code == 201
    hidden = reboot(
        alice,
        kind="recorded_env",
        environment={"name": "secret", "user": "root"},
        partition=3,
    )
    assert (hidden.status_code, error_of(hidden)["code"]) == (404, "unknown_environment")


def test_deploy_env_and_recorded_env_answer_202_and_run_as_operations(
    api: RunningApi, tmp_path: Path
) -> None:
    alice = api.client("alice")
    answer = reboot(alice, kind="deploy_env", level="hard", nodes=["n-1", "n-2"])
    assert answer.status_code == 202, answer.text
    document = answer.json()
    assert answer.headers["Location"] == f"/v1/deployments/{document['id']}"
    assert document["options"]["operation"] == "deploy_env"
    assert document["options"]["reboot_level"] == "hard"
    final = wait_finished(alice, document["id"])
    assert final["status"] == "succeeded", final

    description = make_tar_environment(tmp_path, name="again")
    assert register(alice, description).status_code == 201
    answer = reboot(
        alice, kind="recorded_env", environment={"name": "again", "version": 1}, partition=3
    )
    assert answer.status_code == 202, answer.text
    document = answer.json()
    assert document["environment"]["name"] == "again"
    assert document["options"]["deploy_partition"] == 3
    assert wait_finished(alice, document["id"])["status"] == "succeeded"


def test_malformed_reboot_bodies_never_500(api: RunningApi) -> None:
    alice = api.client("alice")
    for body in (
        {"kind": 5},
        {"kind": "recorded_env", "environment": [], "partition": "x"},
        {"kind": "recorded_env", "environment": {"name": "../x"}, "partition": 0},
        {"kind": "recorded_env", "environment": {"name": "x"}, "partition": 10**30},
        {"kind": "set_pxe", "profile": 7},
        {"kind": "set_pxe", "profile": "x", "files": []},
        {"kind": "set_pxe", "profile": "x", "files": {"../x": "0" * 32}},
        {"kind": "set_pxe", "profile": "x", "files": {"a": "nothex"}},
        {"kind": "set_pxe", "profile": "\u0000"},
        {"kind": "set_pxe", "profile": "KERNEL \udcff"},
        {"kind": "deploy_env", "level": "gentle"},
    ):
        answer = alice.post(
            "/v1/reboots",
            content=json.dumps({"nodes": ["n-1"], **body}).encode("utf-8", "surrogatepass"),
            headers={"Content-Type": "application/json"},
        )
        assert 400 <= answer.status_code < 500, (body, answer.text)
        error_of(answer)
