"""kareboot's Kadeploy3 options on ``POST /v1/reboots`` (a real daemon and API, dummy
macrosteps): ``vlan``, ``block_device`` and ``timeout_reboot_classical`` of a deploy_env or
recorded_env operation, under the deployment's names, checked as a deployment's (the same
validators and admission checks), recorded in the operation's options and acted on: the
site's switch command runs once the node rebooted (Kadeploy3's reboots end with set_vlan);
the classical timeout is the reboot's (a pure check of the variant lists next to it).
simple and set_pxe, which only run the power commands here, refuse them with a 422 naming
the field.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_fixtures import ADMIN, RunningApi, error_of, serving_api, wait_finished
from daemon_fixtures import stop_all_actors
from test_vlan import overrides

from kadeploy_core.plans import Macrostep, Operation
from kadeployd.config import Macrosteps
from kadeployd.config.timeouts import Timeout
from kadeployd.workflow.automata import job_macrosteps
from kadeployd.workflow.job import DeploymentRequest, NoEnvironment

__all__ = ["stop_all_actors"]
pytestmark = pytest.mark.usefixtures("stop_all_actors")

RECORDED = {"kind": "recorded_env", "environment": {"name": "tiny"}, "partition": 3}


@pytest.fixture
def api(tmp_path: Path) -> Iterator[RunningApi]:
    """n-1 and n-2 switch VLANs by recording their arguments in ``switched``; n-4 cannot."""
    with serving_api(tmp_path, overrides=overrides(tmp_path / "switched")) as running:
        yield running


def reboot(client: httpx.Client, nodes: list[str], **body: Any) -> httpx.Response:
    return client.post("/v1/reboots", json={"nodes": nodes, **body})


def paths(answer: httpx.Response) -> list[str]:
    return [str(d["path"]) for d in error_of(answer)["details"]]


def history(client: httpx.Client, deployment_id: str, node: str) -> list[tuple[str, str]]:
    detail = client.get(f"/v1/deployments/{deployment_id}/nodes/{node}").json()
    return [(h["macrostep"], h["message"]) for h in detail["history"]]


def test_deploy_env_and_recorded_env_switch_the_vlan_once_rebooted(
    api: RunningApi, tmp_path: Path
) -> None:
    alice = api.client("alice")
    answer = reboot(alice, ["n-1", "n-2"], kind="deploy_env", vlan="0100")
    assert answer.status_code == 202, answer.text
    done = wait_finished(alice, answer.json()["id"])
    assert done["status"] == "succeeded", done
    assert done["options"]["vlan"] == "100"
    switched = tmp_path / "switched"
    assert sorted(switched.read_text().splitlines()) == ["n-1 100 alice", "n-2 100 alice"]
    assert ("SetDeploymentEnv", "set_vlan") in history(alice, done["id"], "n-1")

    switched.unlink()
    answer = reboot(alice, ["n-2"], **RECORDED, vlan="7")
    assert answer.status_code == 202, answer.text
    done = wait_finished(alice, answer.json()["id"])
    assert done["status"] == "succeeded" and done["options"]["vlan"] == "7", done
    assert switched.read_text().splitlines() == ["n-2 7 alice"]
    assert ("BootNewEnv", "set_vlan") in history(alice, done["id"], "n-2")

    switched.unlink()
    answer = reboot(alice, ["n-1"], kind="deploy_env")
    done = wait_finished(alice, answer.json()["id"])
    assert done["status"] == "succeeded" and "vlan" not in done["options"], done
    assert not switched.exists()


def test_options_are_checked_as_a_deployments_and_recorded(api: RunningApi) -> None:
    alice = api.client("alice")
    refused = reboot(alice, ["n-1", "n-4"], kind="deploy_env", vlan="100")
    assert refused.status_code == 422, refused.text
    assert paths(refused) == ["vlan"]
    assert "n-4 cannot change VLAN (no vlan.switch command" in error_of(refused)["message"]
    for body, path in (
        ({"vlan": "5000"}, "body.vlan"),
        ({"block_device": "sdb"}, "body.block_device"),
        ({"timeout_reboot_classical": "n+"}, "body.timeout_reboot_classical"),
    ):
        answer = reboot(alice, ["n-1"], kind="deploy_env", **body)
        assert answer.status_code == 422, (body, answer.text)
        assert paths(answer) == [path], (body, answer.text)
    timeout = reboot(alice, ["n-1"], kind="deploy_env", timeout_reboot_classical="n+")
    assert error_of(timeout)["code"] == "invalid_timeout"
    assert alice.get("/v1/deployments").json()[-1:] == []  # nothing started

    answer = reboot(
        alice, ["n-1"], **RECORDED, block_device="/dev/sdb", timeout_reboot_classical="100+n*2"
    )
    assert answer.status_code == 202, answer.text
    done = wait_finished(alice, answer.json()["id"])
    assert done["status"] == "succeeded", done
    options = done["options"]
    assert options["block_device"] == "/dev/sdb"
    assert options["timeout_reboot_classical"] == "100+n*2"


@pytest.mark.parametrize("kind", ["simple", "set_pxe"])
def test_power_only_kinds_refuse_them_naming_the_field(api: RunningApi, kind: str) -> None:
    alice = api.client("alice")
    extra = {"profile": "DEFAULT local\n"} if kind == "set_pxe" else {}
    for field, value in (
        ("vlan", "100"),
        ("block_device", "/dev/sdb"),
        ("timeout_reboot_classical", "100"),
    ):
        answer = reboot(alice, ["n-1"], kind=kind, **extra, **{field: value})
        assert answer.status_code == 422, answer.text
        assert error_of(answer)["details"][0] == {
            **error_of(answer)["details"][0],
            "path": field,
            "message": f"only with kind deploy_env or recorded_env, not {kind}",
        }


def test_the_classical_timeout_is_the_reboots() -> None:
    configured = Macrosteps.model_validate(
        {
            "SetDeploymentEnv": [{"type": "untrusted", "timeout": "200"}],
            "BroadcastEnv": [{"type": "chain", "timeout": "300"}],
            "BootNewEnv": [
                {"type": "kexec", "timeout": "60"},
                {"type": "classical", "timeout": "400"},
            ],
        }
    )
    timeout = Timeout.parse("30+n")
    for operation, macrostep in (
        (Operation.DEPLOY_ENV, Macrostep.SET_DEPLOYMENT_ENV),
        (Operation.RECORDED_ENV, Macrostep.BOOT_NEW_ENV),
    ):
        request = DeploymentRequest(
            user="alice",
            environment=NoEnvironment(name="deploy_env"),
            nodes=("n-1",),
            operation=operation,
            timeout_reboot_classical=timeout,
        )
        variants = getattr(job_macrosteps(configured, request), macrostep.value)
        assert [str(v.timeout) for v in variants] == ["30+n"], (operation, variants)
        plain = DeploymentRequest(
            user="alice",
            environment=NoEnvironment(name="deploy_env"),
            nodes=("n-1",),
            operation=operation,
        )
        kept = getattr(job_macrosteps(configured, plain), macrostep.value)
        assert "30+n" not in [str(v.timeout) for v in kept], (operation, kept)


def test_check_destructive_refuses_nodes_last_deployed_with_a_destructive_environment(
    api: RunningApi,
) -> None:
    alice, root = api.client("alice"), api.client(ADMIN)
    deployed = alice.post(
        "/v1/deployments", json={"nodes": ["n-1"], "environment": {"name": "tiny"}}
    )
    assert deployed.status_code == 201, deployed.text
    assert wait_finished(alice, deployed.json()["id"])["status"] == "succeeded"
    checked = {**RECORDED, "check_destructive": True}
    answer = reboot(alice, ["n-1"], **checked)
    assert answer.status_code == 202, answer.text  # tiny is not destructive
    wait_finished(alice, answer.json()["id"])

    owner = root.get("/v1/environments", params={"name": "tiny"}).json()[0]["owner"]
    tagged = root.patch(f"/v1/environments/{owner}/tiny/1", json={"toggle_destructive": True})
    assert tagged.status_code == 200, tagged.text
    refused = reboot(alice, ["n-1", "n-2"], **checked)
    assert refused.status_code == 409, refused.text
    error = error_of(refused)
    assert error["code"] == "destructive_environment"
    assert error["message"] == (
        "Cannot reboot since the last deployed environment was destructive: n-1 (tiny v1)"
    )
    assert paths(refused) == ["check_destructive"]
    unchecked = reboot(alice, ["n-1"], **RECORDED)
    assert unchecked.status_code == 202, unchecked.text
    wait_finished(alice, unchecked.json()["id"])
    other = reboot(alice, ["n-1"], kind="deploy_env", check_destructive=True)
    assert (other.status_code, paths(other)) == (422, ["check_destructive"])
