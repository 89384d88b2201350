"""``vlan`` (kadeploy --vlan, KaVLAN) through the API of a real daemon (dummy macrosteps).

Once a node booted its new env, BootNewEnv ends with ``set_vlan``: the node's ``vlan.switch``
argument list runs with ``{vlan}`` and ``{user}`` (here a shell script recording its
arguments). The request's VLAN is validated (1..4094, a 422 naming ``vlan``), refused for
nodes that have no switch command, recorded in the deployment's options; a failing switch
is a node failure quoting its stderr, secrets masked. The real switch, on the testbed's
bridge, is in tests/test_vlan_testbed.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_fixtures import RunningApi, error_of, serving_api, wait_finished
from daemon_fixtures import stop_all_actors

from kadeploy_core.plans import SET_VLAN, Macrostep, Operation, microsteps
from kadeployd.config import load_config
from kadeployd.workflow.vlan import switch_command

__all__ = ["stop_all_actors"]
pytestmark = pytest.mark.usefixtures("stop_all_actors")

SECRET = "s3cret-kavlan"


def overrides(record: Path) -> dict[int, str]:
    """n-1 and n-2 switch by appending their arguments to ``record``; n-3's switch is
    refused, quoting its secret password; n-4 has no switch."""
    recording = (
        "vlan:\n"
        f"  switch: [sh, -c, 'echo \"$@\" >> {record}', sh, '{{node}}', '{{vlan}}', '{{user}}']\n"
    )
    refused = (
        f"vars: {{kavlan_password: {SECRET}}}\n"
        "vlan:\n"
        "  switch: [sh, -c, 'echo \"kavlan: access denied to $1 with $2\" >&2; exit 3',\n"
        "           sh, '{vlan}', '{kavlan_password}']\n"
    )
    return {1: recording, 2: recording, 3: refused}


@pytest.fixture
def api(tmp_path: Path) -> Iterator[RunningApi]:
    with serving_api(tmp_path, overrides=overrides(tmp_path / "switched")) as running:
        yield running


def deploy(client: httpx.Client, nodes: list[str], **body: Any) -> httpx.Response:
    return client.post(
        "/v1/deployments", json={"nodes": nodes, "environment": {"name": "tiny"}, **body}
    )


def test_bad_vlan_ids_are_422_naming_the_field(api: RunningApi) -> None:
    alice = api.client("alice")
    for value in ["0", "4095", "-1", "1e3", "abc", "", " 12", "١٢", "9" * 5000, 100, None, []]:
        body = {"vlan": value}
        answer = deploy(alice, ["n-1"], **body)
        if value is None:  # null is no VLAN
            assert answer.status_code == 201, answer.text
            wait_finished(alice, answer.json()["id"])
            continue
        assert answer.status_code == 422, (value, answer.text)
        error = error_of(answer)
        assert {d["path"] for d in error["details"]} == {"body.vlan"}, (value, error)
        if isinstance(value, str):
            assert "expected a VLAN id from 1 to 4094" in error["message"], error
            assert len(error["message"]) < 300


def test_a_node_without_a_switch_command_is_refused_at_creation(api: RunningApi) -> None:
    alice = api.client("alice")
    answer = deploy(alice, ["n-1", "n-4"], vlan="100")
    assert answer.status_code == 422, answer.text
    error = error_of(answer)
    assert [d["path"] for d in error["details"]] == ["vlan"], error
    assert "n-4 cannot change VLAN (no vlan.switch command" in error["message"]
    assert "n-1" not in error["message"]
    assert alice.get("/v1/deployments").json() == []  # nothing started


def test_the_switch_runs_after_boot_new_env_and_is_recorded(
    api: RunningApi, tmp_path: Path
) -> None:
    alice = api.client("alice")
    answer = deploy(alice, ["n-1", "n-2"], vlan="0100")
    assert answer.status_code == 201, answer.text
    done = wait_finished(alice, answer.json()["id"])
    assert done["status"] == "succeeded", done
    assert done["options"]["vlan"] == "100"
    lines = sorted((tmp_path / "switched").read_text().splitlines())
    assert lines == ["n-1 100 alice", "n-2 100 alice"]
    detail = alice.get(f"/v1/deployments/{done['id']}/nodes/n-1").json()
    steps = [(h["macrostep"], h["message"]) for h in detail["history"]]
    booted = steps.index(("BootNewEnv", "nothing"))
    assert steps.index(("BootNewEnv", "set_vlan")) == booted + 1, steps
    log = alice.get(f"/v1/deployments/{done['id']}/nodes/n-1/log").json()
    assert any(line["stream"] == "info" and "moved onto VLAN 100" in line["text"] for line in log)


def test_without_vlan_nothing_switches(api: RunningApi, tmp_path: Path) -> None:
    alice = api.client("alice")
    answer = deploy(alice, ["n-1", "n-4"])
    assert answer.status_code == 201, answer.text
    done = wait_finished(alice, answer.json()["id"])
    assert done["status"] == "succeeded" and "vlan" not in done["options"], done
    assert not (tmp_path / "switched").exists()
    detail = alice.get(f"/v1/deployments/{done['id']}/nodes/n-1").json()
    assert "set_vlan" not in [h["message"] for h in detail["history"]]


def test_a_failed_switch_fails_the_node_with_its_stderr_secret_masked(api: RunningApi) -> None:
    alice = api.client("alice")
    answer = deploy(alice, ["n-1", "n-3"], vlan="42")
    assert answer.status_code == 201, answer.text
    done = wait_finished(alice, answer.json()["id"])
    nodes = {n["node"]: n for n in alice.get(f"/v1/deployments/{done['id']}/nodes").json()}
    assert nodes["n-1"]["state"] == "deployed"
    failed = nodes["n-3"]
    assert failed["state"] == "deploy_failed", failed
    assert failed["error_step"] == "BootNewEnv"
    message = failed["error_message"]
    assert message.startswith("set_vlan: VLAN 42 switch exited with status 3"), message
    assert "kavlan: access denied to 42 with ***" in message
    everything = str(alice.get(f"/v1/deployments/{done['id']}/log").json()) + str(failed)
    assert SECRET not in everything
    assert "sh -c" in everything and "***" in everything  # the command line, shown masked


def test_the_plan_ends_boot_new_env_with_set_vlan_only_when_asked() -> None:
    for variant in ("classical", "hard_reboot", "dummy"):
        plain = microsteps(Operation.DEPLOY, Macrostep.BOOT_NEW_ENV, variant)
        with_vlan = microsteps(Operation.DEPLOY, Macrostep.BOOT_NEW_ENV, variant, vlan=True)
        assert with_vlan == (*plain, SET_VLAN)
        assert SET_VLAN not in plain
    broadcast = microsteps(Operation.DEPLOY, Macrostep.BROADCAST_ENV, "chain", vlan=True)
    assert SET_VLAN not in broadcast


def test_switch_templates_are_checked_when_the_config_loads(tmp_path: Path) -> None:
    from daemon_fixtures import dummy_config  # noqa: PLC0415

    from kadeploy_core.errors import ConfigError  # noqa: PLC0415

    bad = {1: "vlan:\n  switch: [kavlan, '{vlanid}', '{node}']\n"}
    with pytest.raises(ConfigError) as caught:
        load_config(dummy_config(tmp_path / "bad", bad))
    text = str(caught.value)
    assert "unknown placeholder {vlanid}; did you mean {vlan}?" in text or "{vlanid}" in text
    assert "vlan.switch" in text
    good = {1: "vlan:\n  switch: [kavlan, -s, -i, '{vlan}', -m, '{node}', -u, '{user}']\n"}
    config = load_config(dummy_config(tmp_path / "good", good))
    command = switch_command(config.nodes["n-1"], "7", "bob")
    assert command is not None and command.argv == (
        "kavlan", "-s", "-i", "7", "-m", "n-1", "-u", "bob",
    )  # fmt: skip
    assert switch_command(config.nodes["n-2"], "7", "bob") is None
