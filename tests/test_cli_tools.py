"""kaenv, karights, kastat, kanodes, kapower and kareboot as installed subprocesses against a
server started with `kadeploy-server start`; kapower drives a real IPMI BMC with ipmitool."""

from __future__ import annotations

from pathlib import Path

from cli_fixtures import SLOW_NODE, CliServer, cli_server, json_of
from daemon_fixtures import make_tar_environment, wait_until

__all__ = ["cli_server"]


def test_kaenv_add_list_print_set_visibility_delete(cli_server: CliServer, tmp_path: Path) -> None:
    description = make_tar_environment(tmp_path, name="mine")
    added = cli_server.run("kaenv", "add", str(description))
    assert added.returncode == 0, added.stderr
    assert "environment mine version 1 of alice registered (private)" in added.stdout

    second = description.read_text().replace("version: 1", "version: 2")
    description.write_text(second)
    assert cli_server.run("kaenv", "add", str(description)).returncode == 0
    again = cli_server.run("kaenv", "add", str(description))  # refused: its uploads go too
    assert again.returncode == 2, again.stdout + again.stderr
    with cli_server.api("alice") as client:
        assert client.get("/v1/uploads").json() == []

    listed = cli_server.run("kaenv", "list", "--json")
    names = {(e["name"], e["version"], e["owner"]) for e in json_of(listed)}
    assert ("mine", 2, "alice") in names
    assert ("mine", 1, "alice") not in names
    assert ("tiny", 1, "root") in names  # public
    every = cli_server.run("kaenv", "list", "--all-versions")
    assert "mine  1" in every.stdout and "mine  2" in every.stdout

    shown = cli_server.run("kaenv", "print", "mine", "--env-version", "1")
    assert shown.returncode == 0, shown.stderr
    assert "file: mine.tar.zst" in shown.stdout
    assert "version: 1" in shown.stdout

    # Bob does not see a private environment; a shared one he sees when he names alice.
    assert cli_server.run("kaenv", "print", "mine", "-u", "alice", user="bob").returncode == 2
    shared = cli_server.run("kaenv", "set-visibility", "mine", "shared")
    assert shared.returncode == 0, shared.stderr
    assert "is shared" in shared.stdout
    assert cli_server.run("kaenv", "print", "mine", "-u", "alice", user="bob").returncode == 0
    public = cli_server.run("kaenv", "set-visibility", "mine", "public")
    assert public.returncode == 2
    assert "only administrators make environments public" in public.stderr

    deployed = cli_server.run("kadeploy", "-m", "n-3", "-e", "mine", "--env-version", "1")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr

    for version in ("2", "1"):
        gone = cli_server.run("kaenv", "delete", "mine", "--env-version", version)
        assert gone.returncode == 0, gone.stderr
    assert "mine" not in cli_server.run("kaenv", "list").stdout
    missing = cli_server.run("kaenv", "delete", "mine")
    assert missing.returncode == 2
    assert "Traceback" not in missing.stderr


def test_kaenv_add_reports_a_broken_description_with_its_line(
    cli_server: CliServer, tmp_path: Path
) -> None:
    description = make_tar_environment(tmp_path, name="oops")
    description.write_text(description.read_text().replace("os: linux", "os: linux\nfoo: 1"))
    result = cli_server.run("kaenv", "add", str(description))
    assert result.returncode == 2
    assert f"{description}:4: foo: unknown key" in result.stderr


def test_karights_admins_grant_users_list_theirs(cli_server: CliServer) -> None:
    refused = cli_server.run("karights", "add", "-u", "bob", "-m", "n-1")
    assert refused.returncode == 2
    assert "only administrators" in refused.stderr

    granted = cli_server.run(
        "karights", "add", "-u", "bob", "-m", "n-[1-2]", "-p", "2", user="root"
    )
    assert granted.returncode == 0, granted.stderr
    assert "2 rights granted to bob" in granted.stdout
    mine = cli_server.run("karights", "list", "--json", user="bob")
    assert json_of(mine) == [
        {"user": "bob", "node": "n-1", "partition": "2"},
        {"user": "bob", "node": "n-2", "partition": "2"},
    ]
    assert cli_server.run("karights", "list", "-u", "alice", user="bob").returncode == 2

    unknown = cli_server.run("karights", "add", "-u", "bob", "-m", "n-99", user="root")
    assert unknown.returncode == 2
    assert "unknown node n-99" in unknown.stderr

    removed = cli_server.run("karights", "remove", "-u", "bob", user="root")
    assert removed.returncode == 0, removed.stderr
    assert "2 rights of bob revoked" in removed.stdout
    assert json_of(cli_server.run("karights", "list", "--json", user="bob")) == []


def test_kanodes_and_kastat_after_deployments(cli_server: CliServer) -> None:
    assert cli_server.run("kadeploy", "-m", "n-1,n-2", "-e", "tiny").returncode == 0
    nodes = json_of(cli_server.run("kanodes", "-m", "n-[1-2]", "--json"))
    assert [n["name"] for n in nodes] == ["n-1", "n-2"]
    assert all(n["state"] == "deployed" and n["owner"] == "alice" for n in nodes)
    assert nodes[0]["environment"] == {"name": "tiny", "version": 1, "anonymous": False}
    table = cli_server.run("kanodes")
    assert table.returncode == 0
    assert "tiny:1" in table.stdout
    unknown = cli_server.run("kanodes", "-m", "n-7")
    assert unknown.returncode == 2
    assert "unknown node n-7" in unknown.stderr

    stats = json_of(cli_server.run("kastat", "-m", "n-1", "--json"))
    assert [s["node"] for s in stats["nodes"]] == ["n-1"]
    assert stats["nodes"][0]["deployed"] >= 1
    assert stats["nodes"][0]["success_rate"] == 1.0
    assert {"deploy_env", "transferring", "booting"} <= {d["state"] for d in stats["steps"]}
    printed = cli_server.run("kastat", "-e", "tiny", "--date-min", "2000-01-01")
    assert printed.returncode == 0, printed.stderr
    assert "n-1" in printed.stdout and "100%" in printed.stdout
    none = json_of(cli_server.run("kastat", "--date-max", "2000-01-01", "--json"))
    assert none["nodes"] == []
    bad = cli_server.run("kastat", "--date-min", "yesterday")
    assert bad.returncode == 2
    assert "cannot read the date 'yesterday'" in bad.stderr


def test_kapower_and_kareboot_through_a_real_bmc(cli_server: CliServer) -> None:
    status = cli_server.run("kapower", "-m", "n-1", "--status")
    assert (status.returncode, status.stdout.strip()) == (0, "n-1  power is on"), status.stderr
    off = cli_server.run("kapower", "-m", "n-1", "--off")
    assert off.returncode == 0, off.stdout + off.stderr
    status = json_of(cli_server.run("kapower", "-m", "n-1", "--status", "--json"))
    assert status[0]["power_state"] == "off"
    assert cli_server.run("kapower", "-m", "n-1", "--on").returncode == 0
    hard = cli_server.run("kareboot", "-m", "n-1", "-l", "hard")
    assert hard.returncode == 0, hard.stdout + hard.stderr
    assert "hard reboot succeeded" in hard.stdout
    assert cli_server.chassis.actions[-3:] == ["off", "on", "cycle"]

    # n-2 has no power_off command: it fails, n-1 succeeds; exit 1 and the node files say so.
    mixed = cli_server.run("kapower", "-m", "n-1,n-2", "--off", "-o", "ok", "-n", "ko")
    assert mixed.returncode == 1
    assert "n-2  FAILED: node n-2: no power off command is configured" in mixed.stdout
    assert (cli_server.home / "ok").read_text() == "n-1\n"
    assert (cli_server.home / "ko").read_text() == "n-2\n"
    assert cli_server.run("kapower", "-m", "n-1", "--on").returncode == 0


def test_kapower_and_kareboot_refusals(cli_server: CliServer) -> None:
    no_right = cli_server.run("kapower", "-m", "n-1", "--status", user="bob")
    assert no_right.returncode == 2
    assert "no right to power status n-1" in no_right.stderr
    kind = cli_server.run("kareboot", "-m", "n-1", "-r", "recorded_env", "-e", "tiny")
    assert kind.returncode == 2
    assert "-r recorded_env needs -p PART" in kind.stderr
    what = cli_server.run("kapower", "-m", "n-1")
    assert what.returncode == 2
    assert "--on, --off or --status" in what.stderr
    unknown = cli_server.run("kareboot", "-m", "n-1,n-12")
    assert unknown.returncode == 2
    assert "-m: unknown node n-12" in unknown.stderr


def test_kapower_refuses_a_node_in_a_running_deployment_unless_forced(
    cli_server: CliServer,
) -> None:
    started = json_of(
        cli_server.run("kadeploy", "-m", SLOW_NODE, "-e", "tiny", "--no-wait", "--json")
    )
    ident = started["deployment"]["id"]
    try:
        busy = cli_server.run("kareboot", "-m", SLOW_NODE)
        assert busy.returncode == 2
        assert f"{SLOW_NODE} in a running deployment; use force" in busy.stderr
    finally:
        with cli_server.api("alice") as alice:
            alice.post(f"/v1/deployments/{ident}/cancel")
        wait_until(
            lambda: not cli_server.running_deployments(), 30, "the deployment to be cancelled"
        )


# ------------------------------------------------------------------ kaenv3 options, kareboot kinds


def test_kaenv_kadeploy3_options_add_list_print_delete(
    cli_server: CliServer, tmp_path: Path
) -> None:
    description = make_tar_environment(tmp_path, name="old-style")
    added = cli_server.run("kaenv", "-a", str(description), "--json")
    assert added.returncode == 0, added.stderr
    assert json_of(added)["name"] == "old-style"
    listed = cli_server.run("kaenv", "-l", "--json")
    assert ("old-style", "alice") in {(e["name"], e["owner"]) for e in json_of(listed)}
    shown = cli_server.run("kaenv", "-p", "old-style", "-u", "alice", "--env-version", "1")
    assert shown.returncode == 0, shown.stderr
    assert "name: old-style" in shown.stdout
    listed_for = cli_server.run("kaenv", "-u", "alice", "-l")
    assert "old-style" in listed_for.stdout, listed_for.stderr
    gone = cli_server.run("kaenv", "--delete=old-style", "--env-version", "1")
    assert gone.returncode == 0, gone.stderr
    assert "environment old-style version 1 of alice deleted" in gone.stdout
    # The subcommands still work beside the options.
    assert "old-style" not in cli_server.run("kaenv", "list").stdout


def test_kaenv_kadeploy3_options_usage_errors(cli_server: CliServer) -> None:
    for args, message in (
        (("-p",), "-p needs NAME"),
        (("-a",), "-a needs FILE"),
        (("-l", "-d", "x"), "-l and -d are two commands"),
        (("list", "-p", "x"), "-p and list are two commands"),
        (("-l=yes",), "-l takes no value"),
    ):
        result = cli_server.run("kaenv", *args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert message in result.stderr
        assert "Traceback" not in result.stderr


def test_kareboot_deploy_env_on_a_dummy_variant_follows_the_operation(
    cli_server: CliServer,
) -> None:
    result = cli_server.run("kareboot", "-m", "n-1,n-2", "-r", "deploy_env", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = json_of(result)
    assert [(r["node"], r["ok"], r["state"]) for r in rows] == [
        ("n-1", True, "deployed"),
        ("n-2", True, "deployed"),
    ]
    with cli_server.api("alice") as alice:
        operation = alice.get(f"/v1/deployments/{rows[0]['operation_id']}").json()
    assert operation["options"]["operation"] == "deploy_env"
    assert operation["environment"]["name"] == "deploy_env"


def test_kareboot_block_device_and_keys_reach_the_operation(
    cli_server: CliServer, tmp_path: Path
) -> None:
    key = tmp_path / "key.pub"
    key.write_text(
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl a@b\n"
    )
    result = cli_server.run(
        "kareboot", "-m", "n-1", "-r", "deploy_env", "--json", "-b", "/dev/vdz", "-k", str(key)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    [row] = json_of(result)
    with cli_server.api("alice") as alice:
        operation = alice.get(f"/v1/deployments/{row['operation_id']}").json()
    assert (operation["options"]["block_device"], operation["options"]["keys"]) == (
        "/dev/vdz",
        True,
    )


def test_kareboot_usage_errors(cli_server: CliServer, tmp_path: Path) -> None:
    binary = tmp_path / "profile.bin"
    binary.write_bytes(b"\xff\xfe\x00")
    big = tmp_path / "big"
    big.write_text("# x\n" * 20_000)
    for args, message in (
        (("-r", "set_pxe"), "-r set_pxe needs -w FILE"),
        (("-r", "recorded_env", "-p", "3"), "-r recorded_env needs -e ENV"),
        (("-r", "deploy_env", "-p", "3"), "-p goes with -r recorded_env, not -r deploy_env"),
        (("-w", str(big)), "-w goes with -r set_pxe, not -r simple"),
        (("-b", "/dev/sdb"), "-b goes with -r deploy_env or recorded_env, not -r simple"),
        (("-r", "recorded_env", "-e", "x", "-p", "3", "-k"), "-k goes with -r deploy_env, not"),
        (("-r", "set_pxe", "-w", str(binary)), "not a text file"),
        (("-r", "set_pxe", "-w", str(big)), "a PXE profile may have at most 65536"),
        (("-r", "set_pxe", "-w", str(tmp_path / "none")), "cannot read the PXE profile"),
        (
            (
                "-r",
                "no_such_kind",
            ),
            "'no_such_kind' is not one of",
        ),
    ):
        result = cli_server.run("kareboot", "-m", "n-1", *args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
    # A profile naming a file outside the user's TFTP directory: the file and line.
    profile = tmp_path / "profile"
    profile.write_text("DEFAULT x\nLABEL x\n  KERNEL /envs/../../etc/shadow\n")
    refused = cli_server.run("kareboot", "-m", "n-1", "-r", "set_pxe", "-w", str(profile))
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert f"{profile}:3: KERNEL /envs/../../etc/shadow: absolute paths must stay" in (
        refused.stderr
    )


def test_kareboot_set_pxe_files_are_checked_first_and_deleted_when_refused(
    cli_server: CliServer, tmp_path: Path
) -> None:
    profile = tmp_path / "profile"
    profile.write_text("DEFAULT x\nLABEL x\n  KERNEL FILES_PREFIX/vmlinuz\n")
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"KERNEL\n")
    hidden = tmp_path / ".vmlinuz"
    hidden.write_bytes(b"KERNEL\n")
    bad = cli_server.run(
        "kareboot", "-m", "n-1", "-r", "set_pxe", "-w", str(profile), "-x", f"{kernel},{hidden}"
    )
    assert bad.returncode == 2, bad.stdout + bad.stderr
    assert f"kareboot: -x {hidden}: expected a plain file name" in bad.stderr
    refused = cli_server.run(
        "kareboot", "-m", "n-1", "-r", "set_pxe", "-w", str(profile), "-x", str(kernel), user="bob"
    )
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "no right" in refused.stderr
    for user in ("alice", "bob"):
        with cli_server.api(user) as client:
            assert client.get("/v1/uploads").json() == [], user
