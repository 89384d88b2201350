"""`kadeploy` as an installed subprocess against a server started with `kadeploy-server start`
(dummy macrosteps; n-4's reboot hangs so a deployment on it stays in flight)."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

from cli_fixtures import SLOW_NODE, CliServer, cli_server, json_of, tool
from daemon_fixtures import make_tar_environment, wait_until
from test_daemon_actors import processes_with

__all__ = ["cli_server"]


def running_on(server: CliServer, node: str) -> str:
    """The id of the running deployment holding ``node`` once its reboot hangs."""
    wait_until(lambda: processes_with(server.marker), 30, f"{node}'s reboot to hang")
    found = [d for d in server.running_deployments() if d["node_count"] == 1]
    assert len(found) == 1, found
    ident: str = found[0]["id"]
    return ident


def status_of(server: CliServer, ident: str) -> str:
    with server.api() as client:
        status: str = client.get(f"/v1/deployments/{ident}").json()["status"]
        return status


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stdout + result.stderr


def test_deploy_prints_progress_and_a_summary_and_writes_the_node_files(
    cli_server: CliServer,
) -> None:
    nodefile = cli_server.home / "nodes"
    nodefile.write_text("n-1\nn-2\n# a comment\nn-3\nn-1\n")
    result = cli_server.run(
        "kadeploy", "-f", str(nodefile), "-e", "tiny", "-k", "-o", "ok", "-n", "ko"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "of tiny version 1 on 3 nodes (user alice)" in result.stdout
    assert "deployed       3/3 nodes" in result.stdout  # the step lines (not a TTY: appended)
    assert "succeeded" in result.stdout
    assert "The deployment is successful on 3 nodes:\n  n-1\n  n-2\n  n-3" in result.stdout
    assert (cli_server.home / "ok").read_text() == "n-1\nn-2\nn-3\n"
    assert (cli_server.home / "ko").read_text() == ""
    no_traceback(result)


def test_json_prints_one_document_and_nothing_else(cli_server: CliServer) -> None:
    result = cli_server.run("kadeploy", "-m", "n-1,n-2", "-e", "tiny", "--json")
    assert result.returncode == 0, result.stderr
    document = json_of(result)
    assert document["deployment"]["status"] == "succeeded"
    assert document["deployed"] == ["n-1", "n-2"]
    assert document["failed"] == []
    assert document["exit_code"] == 0


def test_anonymous_environment_files_and_key_are_uploaded(
    cli_server: CliServer, tmp_path: Path
) -> None:
    description = make_tar_environment(tmp_path, name="anon")
    key = tmp_path / "key.pub"
    key.write_text("ssh-ed25519 AAAAanon anon@test\n")
    result = cli_server.run(
        "kadeploy", "-m", "n-2", "-a", str(description), "-k", str(key), "--json"
    )
    assert result.returncode == 0, result.stderr
    document = json_of(result)
    assert document["deployment"]["environment"] == {
        "name": "anon",
        "version": 1,
        "anonymous": True,
    }


def test_a_broken_description_is_reported_with_its_line(
    cli_server: CliServer, tmp_path: Path
) -> None:
    description = make_tar_environment(tmp_path, name="broken")
    description.write_text(description.read_text().replace("version: 1", "version: one"))
    result = cli_server.run("kadeploy", "-m", "n-2", "-a", str(description))
    assert result.returncode == 2
    assert f"{description}:2: version:" in result.stderr
    no_traceback(result)


def test_cancel_with_ctrl_c_and_yes_ends_the_deployment_aborted(cli_server: CliServer) -> None:
    process = cli_server.spawn("kadeploy", "-m", SLOW_NODE, "-e", "tiny", "--yes")
    try:
        ident = running_on(cli_server, SLOW_NODE)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 4, out + err
    assert f"cancelling deployment {ident}" in err
    assert f"{SLOW_NODE} ABORTED" in out
    assert "aborted" in out
    assert status_of(cli_server, ident) == "aborted"
    wait_until(lambda: not processes_with(cli_server.marker), 30, "the reboot to be killed")


def test_no_wait_then_follow(cli_server: CliServer) -> None:
    started = cli_server.run("kadeploy", "-m", SLOW_NODE, "-e", "tiny", "--no-wait", "--json")
    assert started.returncode == 0, started.stderr
    ident = json_of(started)["deployment"]["id"]
    follower = cli_server.spawn("kadeploy", "--follow", ident, "--json")
    try:
        running_on(cli_server, SLOW_NODE)
        with cli_server.api("alice") as alice:
            assert alice.post(f"/v1/deployments/{ident}/cancel").status_code == 202
        out, err = follower.communicate(timeout=60)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.communicate()
    assert follower.returncode == 4, err
    document = json.loads(out)
    assert document["deployment"]["id"] == ident
    assert document["deployment"]["status"] == "aborted"
    assert document["failed"][0]["node"] == SLOW_NODE
    wait_until(lambda: not processes_with(cli_server.marker), 30, "the reboot to be killed")


def test_rights_refused_for_nodes_the_user_holds_no_right_on(cli_server: CliServer) -> None:
    result = cli_server.run("kadeploy", "-m", "n-1", "-e", "tiny", user="bob")
    assert result.returncode == 2
    assert "no right to deploy n-1" in result.stderr
    assert result.stderr.startswith("kadeploy: ")
    no_traceback(result)


def test_a_node_another_user_deploys_is_refused(cli_server: CliServer) -> None:
    with cli_server.api() as root:
        granted = root.post("/v1/rights", json={"user": "bob", "nodes": [SLOW_NODE]})
        assert granted.status_code == 201
    started = cli_server.run("kadeploy", "-m", SLOW_NODE, "-e", "tiny", "--no-wait", "--json")
    ident = json_of(started)["deployment"]["id"]
    try:
        refused = cli_server.run("kadeploy", "-m", SLOW_NODE, "-e", "tiny", user="bob")
        assert refused.returncode == 2
        assert f"kadeploy: {SLOW_NODE} already in a running deployment" in refused.stderr
        assert f"{SLOW_NODE} is being deployed by alice (deployment {ident}" in refused.stderr
    finally:
        with cli_server.api("alice") as alice:
            alice.post(f"/v1/deployments/{ident}/cancel")
        with cli_server.api() as root:
            root.delete("/v1/rights/bob")
        wait_until(lambda: status_of(cli_server, ident) != "running", 30, "the cancel")
        wait_until(lambda: not processes_with(cli_server.marker), 30, "the reboot to be killed")


def test_bad_token(cli_server: CliServer) -> None:
    result = cli_server.run(
        "kadeploy", "-m", "n-1", "-e", "tiny", user=None, KADEPLOY_TOKEN="not-a-token"
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "kadeploy: invalid or revoked token"


def test_no_token_at_all_says_where_to_put_one(cli_server: CliServer) -> None:
    result = cli_server.run("kadeploy", "-m", "n-1", "-e", "tiny", user=None)
    assert result.returncode == 2
    assert "KADEPLOY_TOKEN" in result.stderr
    assert ".kadeploy/token" in result.stderr


def test_unknown_environment(cli_server: CliServer) -> None:
    result = cli_server.run("kadeploy", "-m", "n-1", "-e", "tinny")
    assert result.returncode == 2
    assert "no environment 'tinny'" in result.stderr
    assert "did you mean 'tiny'" in result.stderr
    no_traceback(result)


def test_unknown_node_points_at_its_nodefile_line(cli_server: CliServer) -> None:
    nodefile = cli_server.home / "typo-nodes"
    nodefile.write_text("n-1\nn-11\n")
    result = cli_server.run("kadeploy", "-f", str(nodefile), "-e", "tiny")
    assert result.returncode == 2
    assert f"{nodefile}:2: unknown node n-11; did you mean" in result.stderr


def test_malformed_nodefile_is_a_usage_error_naming_file_and_line(cli_server: CliServer) -> None:
    nodefile = cli_server.home / "bad-nodes"
    nodefile.write_text("n-1\nn-2 n-3\n")
    result = cli_server.run("kadeploy", "-f", str(nodefile), "-e", "tiny")
    assert result.returncode == 2
    assert f"{nodefile}:2: expected one node name per line; got 'n-2 n-3'" in result.stderr
    no_traceback(result)


def test_block_device_is_sent_and_a_malformed_one_exits_2(cli_server: CliServer) -> None:
    # --breakpoint and --custom-steps: tests/test_cli_custom_steps.py
    relative = cli_server.run("kadeploy", "-m", "n-1", "-e", "tiny", "-b", "sdb")
    assert relative.returncode == 2
    assert "-b sdb: expected an absolute device path under /dev" in relative.stderr
    climbing = cli_server.run("kadeploy", "-m", "n-1", "-e", "tiny", "-b", "/dev/../etc/x")
    assert climbing.returncode == 2
    assert "block_device" in climbing.stderr
    assert "no '.', '..' or empty component" in climbing.stderr
    no_traceback(climbing)
    result = cli_server.run("kadeploy", "-m", "n-1", "-e", "tiny", "-b", "/dev/vdb", "--json")
    assert result.returncode == 0, result.stderr
    assert json_of(result)["deployment"]["options"]["block_device"] == "/dev/vdb"


def test_usage_errors_exit_2(cli_server: CliServer) -> None:
    neither = cli_server.run("kadeploy", "-m", "n-1")
    assert neither.returncode == 2
    assert "give one environment" in neither.stderr
    bad_range = cli_server.run("kadeploy", "-m", "n-[3-1]", "-e", "tiny")
    assert bad_range.returncode == 2
    assert "kadeploy: -m: in 'n-[3-1]'" in bad_range.stderr


def test_server_not_running_exits_3_with_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [tool("kadeploy"), "-m", "n-1", "-e", "tiny"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
             "KADEPLOY_SERVER": f"unix:{tmp_path}/none.sock", "KADEPLOY_TOKEN": "x"},
    )  # fmt: skip
    assert result.returncode == 3
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"kadeploy: cannot reach the kadeployd server at unix:{tmp_path}")
    assert "no such socket" in lines[0]
