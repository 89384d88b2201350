"""kanodes3 as an installed subprocess against a server started with `kadeploy-server start`:
the nodes' states as Kadeploy3's YAML (-s, -m/-f) and the running deployments and reboot
operations (-d, -r, -p, -a, -w) as its list of workflow statuses."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from cli_fixtures import SLOW_NODE, CliServer, cli_server
from daemon_fixtures import wait_until

__all__ = ["cli_server"]


def deployed_state(name: str) -> str:
    return (
        f"{name}:\n  state: deployed\n  user: alice\n  environment:\n"
        "    name: tiny\n    version: 1\n    user: root\n"
    )


@contextmanager
def running(server: CliServer, path: str, body: dict[str, Any]) -> Iterator[str]:
    """Alice's operation on the hanging node, cancelled (and over) on the way out."""
    with server.api("alice") as client:
        started = client.post(path, json=body)
        assert started.status_code in (201, 202), started.text
        wid = str(started.json()["id"])
        try:
            yield wid
        finally:
            client.post(f"/v1/deployments/{wid}/cancel", json={})

            def over() -> bool:
                return bool(client.get(f"/v1/deployments/{wid}").json()["status"] != "running")

            wait_until(over, 60, "the cancelled operation to end")


def yaml_of(result: Any) -> Any:
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("---")
    return yaml.safe_load(result.stdout)


def test_kanodes3_nodes_states_as_kadeploy3_yaml(cli_server: CliServer, tmp_path: Path) -> None:
    deployed = cli_server.run("kadeploy", "-m", "n-2,n-1", "-e", "tiny")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr

    every = cli_server.run("kanodes3", "-s")
    assert every.returncode == 0, every.stderr
    assert every.stdout == "---\n" + deployed_state("n-1") + deployed_state("n-2") + "n-3:\nn-4:\n"
    chosen = cli_server.run("kanodes3", "--get-nodes-state", "-m", "n-2")
    assert chosen.stdout == "---\n" + deployed_state("n-2")
    nodefile = tmp_path / "nodes"
    nodefile.write_text("n-3\nn-1\n")
    from_file = cli_server.run("kanodes3", "-s", "-f", str(nodefile))
    assert from_file.stdout == "---\n" + deployed_state("n-1") + "n-3:\n"

    unknown = cli_server.run("kanodes3", "-s", "-m", "n-9")
    assert unknown.returncode == 1
    assert "n-9" in unknown.stderr and "Traceback" not in unknown.stderr
    useless = cli_server.run("kanodes3", "-s", "-w", "abc")
    assert (useless.returncode, useless.stderr.strip()) == (
        1,
        "Workflow ID is useless when gathering node's deployment states",
    )
    nothing = cli_server.run("kanodes3")
    assert (nothing.returncode, nothing.stderr.strip()) == (1, "You must choose an operation")


def test_kanodes3_running_deployments_and_reboots(cli_server: CliServer) -> None:
    assert cli_server.run("kanodes3", "-d").stdout == "--- []\n"
    deployment = {"nodes": [SLOW_NODE], "environment": {"name": "tiny"}}
    with running(cli_server, "/v1/deployments", deployment) as wid:
        wait_until(
            lambda: "deploying" in cli_server.run("kanodes3", "-s", "-m", SLOW_NODE).stdout,
            30,
            "the node to be held",
        )
        statuses = yaml_of(cli_server.run("kanodes3", "-d"))
        assert [s[":wid"] for s in statuses] == [wid]
        status = statuses[0]
        assert (status[":user"], status[":done"], status[":error"]) == ("alice", False, False)
        assert isinstance(status[":start_time"], int)
        assert status[":environment"] == {":user": "root", ":name": "tiny", ":version": 1}
        assert status[":nodes"] == {":ok": [], ":ko": [], ":processing": [SLOW_NODE]}
        assert cli_server.run("kanodes3", "-d").stdout.startswith(f"---\n- :wid: {wid}\n")

        assert yaml_of(cli_server.run("kanodes3", "-d", "-w", wid))[":wid"] == wid
        assert yaml_of(cli_server.run("kanodes3", "-r")) == []
        assert yaml_of(cli_server.run("kanodes3", "-p")) == []
        assert [s[":wid"] for s in yaml_of(cli_server.run("kanodes3", "-a"))] == [wid]
        others = yaml_of(cli_server.run("kanodes3", "-d", user="bob"))[0]
        assert others[":nodes"] == [SLOW_NODE]  # another user sees the node list only
        assert ":environment" not in others

        wrong_kind = cli_server.run("kanodes3", "-r", "-w", wid)
        assert wrong_kind.returncode == 1
        assert "Invalid workflow ID" in wrong_kind.stderr
        with_nodes = cli_server.run("kanodes3", "-d", "-m", "n-1")
        assert (with_nodes.returncode, with_nodes.stderr.strip()) == (
            1,
            "Node list is useless when gathering deployment statuses",
        )

    aborted = yaml_of(cli_server.run("kanodes3", "-s", "-m", SLOW_NODE))
    assert aborted[SLOW_NODE]["state"] == "aborted"
    done = yaml_of(cli_server.run("kanodes3", "-d", "-w", wid))
    assert (done[":done"], done[":nodes"]) == (True, {":ok": [], ":ko": [SLOW_NODE]})
    assert yaml_of(cli_server.run("kanodes3", "-d")) == []

    reboot = {"nodes": [SLOW_NODE], "kind": "deploy_env", "level": "soft"}
    with running(cli_server, "/v1/reboots", reboot) as rid:
        assert [s[":wid"] for s in yaml_of(cli_server.run("kanodes3", "-r"))] == [rid]
        assert yaml_of(cli_server.run("kanodes3", "-d")) == []
        assert [s[":wid"] for s in yaml_of(cli_server.run("kanodes3", "-a"))] == [rid]
        state = yaml_of(cli_server.run("kanodes3", "-s", "-m", SLOW_NODE))[SLOW_NODE]["state"]
        assert state == "rebooting"
    unknown = cli_server.run("kanodes3", "-d", "-w", "0" * 32)
    assert unknown.returncode == 1
    assert "Invalid workflow ID" in unknown.stderr
