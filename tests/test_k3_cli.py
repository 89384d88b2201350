"""kadeploy3, kareboot3 and kapower3 as installed subprocesses against a server started with
`kadeploy-server start` (dummy macrosteps; n-4's reboot hangs until its deployment is
cancelled; n-1 has a real IPMI BMC, n-2 no power_off command)."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

from api_fixtures import api_config, register, short_dir, wait_finished
from cli_fixtures import SLOW_NODE, CliServer, cli_server, tool
from daemon_fixtures import make_tar_environment, wait_until
from test_daemon_actors import processes_with

from kadeployd import __version__
from kadeployd.api import TokenStore

__all__ = ["cli_server"]

OK = re.compile(r"^The (\w+(?: \w+)?) is successful on nodes\s*$")
KO = re.compile(r"^The (\w+(?: \w+)?) failed on nodes\s*$")


def lists(stdout: str) -> tuple[list[str], list[str]]:
    """The nodes of the final lists: bare names after the success line, ``NAME (reason)``
    lines after the failure line (asserting their form)."""
    ok: list[str] = []
    ko: list[str] = []
    current: list[str] | None = None
    for line in stdout.splitlines():
        if OK.match(line):
            current = ok
        elif KO.match(line):
            current = ko
        elif current is ok and re.fullmatch(r"[\w.-]+", line):
            ok.append(line)
        elif current is ko and (found := re.fullmatch(r"([\w.-]+) \(.*\)", line)):
            ko.append(found.group(1))
        else:
            current = None
    return ok, ko


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stdout + result.stderr


def test_kadeploy3_prints_kadeploy3s_lists_and_exits_0_with_a_failed_node(
    cli_server: CliServer,
) -> None:
    home = cli_server.home
    (home / "ok").write_text("stale\n")
    (home / "ko").write_text("stale\n")
    script = home / "script.sh"
    script.write_text(
        '#!/bin/sh\ncp "$KADEPLOY_OK_NODES" "$HOME/seen_ok"\ncp "$KADEPLOY_KO_NODES" '
        '"$HOME/seen_ko"\nprintf %s "$KADEPLOY_WID" > "$HOME/seen_wid"\n'
    )
    script.chmod(0o755)
    process = cli_server.spawn(
        "kadeploy3",
        "-m", "n-1", "-m", "n-2", "-m", SLOW_NODE, "-e", "tiny", "-k",
        "-o", "ok", "-n", "ko", "--write-workflow-id", "wid", "-s", str(script),
    )  # fmt: skip
    try:
        wait_until(lambda: processes_with(cli_server.marker), 30, f"{SLOW_NODE}'s reboot to hang")
        running = [d for d in cli_server.running_deployments() if d["node_count"] == 3]
        assert len(running) == 1, running
        ident = running[0]["id"]
        assert (home / "ok").read_text() == ""  # emptied when the command started
        with cli_server.api("alice") as alice:
            assert alice.post(f"/v1/deployments/{ident}/cancel").status_code == 202
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, out + err
    assert "Traceback" not in out + err and "\x1b" not in out
    lines = out.splitlines()
    assert lines[0] == f"Deployment #{ident} started", out
    assert f"Deployment #{ident} done" in lines
    first = lines.index("The deployment is successful on nodes")
    assert sorted(lines[first + 1 : first + 3]) == ["n-1", "n-2"], out
    assert lines[first + 3] == "The deployment failed on nodes", out
    assert re.fullmatch(rf"{SLOW_NODE} \(.+\)", lines[first + 4]), out
    assert lines[first + 5 :] == ["", f"Running {script.resolve()}", "", "Success !"], out
    assert sorted((home / "ok").read_text().splitlines()) == ["n-1", "n-2"]
    assert (home / "ko").read_text() == f"{SLOW_NODE}\n"
    assert (home / "wid").read_text() == ident
    assert (home / "seen_ok").read_text() == (home / "ok").read_text()
    assert (home / "seen_ko").read_text() == f"{SLOW_NODE}\n"
    assert (home / "seen_wid").read_text() == ident
    wait_until(lambda: not processes_with(cli_server.marker), 30, "the reboot to be killed")


def test_ctrl_c_cancels_the_deployment_and_exits_1(cli_server: CliServer) -> None:
    process = cli_server.spawn("kadeploy3", "-m", SLOW_NODE, "-e", "tiny")
    try:
        wait_until(lambda: processes_with(cli_server.marker), 30, f"{SLOW_NODE}'s reboot to hang")
        running = [d for d in cli_server.running_deployments() if d["node_count"] == 1]
        assert len(running) == 1, running
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 1, out + err
    assert "\nSIGINT trapped\n" in out
    with cli_server.api("alice") as alice:
        assert wait_finished(alice, running[0]["id"])["status"] == "aborted"
    wait_until(lambda: not processes_with(cli_server.marker), 30, "the reboot to be killed")


def test_no_wait_prints_the_workflow_id_and_its_url(cli_server: CliServer) -> None:
    result = cli_server.run(
        "kadeploy3", "-m", "n-1", "-e", "tiny", "--no-wait", "--write-workflow-id", "wid"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    ident = (cli_server.home / "wid").read_text()
    url = f"http+unix://{quote(str(cli_server.socket), safe='')}/v1/deployments/{ident}"
    assert result.stdout == f"{ident} {url}\n"
    with cli_server.api("alice") as alice:
        assert wait_finished(alice, ident)["status"] == "succeeded"
    script = cli_server.home / "true.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    detached = cli_server.run(
        "kadeploy3", "-m", "n-1", "-e", "tiny", "--no-wait", "-s", str(script)
    )
    assert detached.returncode == 0, detached.stderr
    ident, _ = detached.stdout.splitlines()[0].split()
    assert detached.stdout.splitlines()[1:] == ["", f"Running {script.resolve()}", "", "Success !"]
    with cli_server.api("alice") as alice:
        assert wait_finished(alice, ident)["status"] == "succeeded"


def test_option_errors_exit_1_with_kadeploy3s_messages(cli_server: CliServer) -> None:
    stale = cli_server.home / "stale"
    stale.write_text("n-9\n")
    not_executable = cli_server.home / "script.txt"
    not_executable.write_text("echo\n")
    cases = [
        (["-m", "n-1", "-e", "tiny", "--bogus"], "Option parsing error: No such option '--bogus'"),
        (["-m", "n-1", "-e", "tiny", "-V", "6"], "Option parsing error:"),
        (["-m", "n-1", "-o", "stale"], "You must choose an environment"),
        (["-e", "tiny"], "No node is chosen"),
        (
            ["-m", "n-1", "-e", "tiny", "-o", "x", "-n", "x"],
            "The files used for the output of the OK and the KO nodes cannot be the same",
        ),
        (
            ["-m", "n-1", "-e", "tiny", "-o", "x", "--no-wait"],
            "-o/--output-ok-nodes and/or -n/--output-ko-nodes cannot be used with --no-wait",
        ),
        (["-m", "n-1", "-e", "tiny", "-s", str(not_executable)], "must be executable"),
        (["-m", "n-1", "-e", "tiny", "--force-steps", "BootNewEnv|x:1:1"], "--force-steps"),
    ]
    for args, message in cases:
        result = cli_server.run("kadeploy3", *args)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        no_traceback(result)
    assert stale.read_text() == ""  # -o empties its file as the command starts, as Kadeploy3


def test_server_refusals_exit_with_kadeploy3s_error_numbers(cli_server: CliServer) -> None:
    unknown = cli_server.run("kadeploy3", "-m", "n-1", "-m", "n-12", "-e", "tiny")
    assert unknown.returncode == 1, unknown.stderr
    assert "The nodes n-12 does not belongs to any server" in unknown.stderr
    no_right = cli_server.run("kadeploy3", "-m", "n-1", "-e", "tiny", user="bob")
    assert no_right.returncode == 6, no_right.stderr
    assert no_right.stderr.rstrip().endswith("[Kadeploy Error #6]")
    no_env = cli_server.run("kadeploy3", "-m", "n-1", "-e", "nosuchenv")
    assert no_env.returncode == 7, no_env.stderr
    for result in (unknown, no_right, no_env):
        assert result.stdout == ""
        no_traceback(result)


def test_version_and_server_info(cli_server: CliServer) -> None:
    version = cli_server.run("kadeploy3", "-v")
    assert (version.returncode, version.stdout) == (0, f"Kadeploy version: {__version__}\n")
    traced = cli_server.run("kapower3", "-H", "-v")
    assert traced.returncode == 0, traced.stderr
    assert "-> GET http://kadeployd/v1/health" in traced.stdout.splitlines()
    assert "<- 200 OK (GET http://kadeployd/v1/health)" in traced.stdout.splitlines()
    assert cli_server.tokens["alice"] not in traced.stdout
    info = cli_server.run("kareboot3", "-I")
    assert info.returncode == 0, info.stderr
    assert info.stdout.splitlines()[0] == "Kadeploy server configuration:"
    assert "    tiny: 4 nodes" in info.stdout.splitlines()


def test_the_server_is_chosen_by_name_in_the_client_configuration(
    cli_server: CliServer, tmp_path: Path
) -> None:
    token = tmp_path / "alice.token"
    token.write_text(cli_server.tokens["alice"] + "\n")
    conf = tmp_path / "client.conf"
    conf.write_text(
        "default: faraway\nservers:\n"
        "- {name: faraway, hostname: 127.0.0.1, port: 9, secure: false}\n"
        f"- {{name: here, url: 'unix:{cli_server.socket}', token_file: '{token}'}}\n"
    )
    env = {"KADEPLOY3_CONFIG_FILE": str(conf)}
    here = cli_server.run("kadeploy3", "-S", "here", "-v", user=None, **env)
    assert (here.returncode, here.stdout) == (0, f"Kadeploy version: {__version__}\n")
    deployed = cli_server.run(
        "kadeploy3", "-S", "here", "-m", "n-3", "-e", "tiny", user=None, **env
    )
    assert deployed.returncode == 0, deployed.stderr
    assert lists(deployed.stdout) == (["n-3"], [])
    default = cli_server.run("kadeploy3", "-v", **env)
    assert default.returncode == 1 and "cannot reach" in default.stderr, default.stderr
    unknown = cli_server.run("kadeploy3", "-S", "nope", "-v", **env)
    assert unknown.returncode == 1
    assert (
        "The server 'nope' does not exist" in unknown.stderr and "faraway, here" in unknown.stderr
    )


def test_kapower3_lists_and_status(cli_server: CliServer) -> None:
    off = cli_server.run("kapower3", "-m", "n-1,n-2", "--off", "-o", "ok", "-n", "ko")
    assert off.returncode == 0, off.stdout + off.stderr
    assert lists(off.stdout) == (["n-1"], ["n-2"]), off.stdout
    assert "The power operation failed on nodes\nn-2 (node n-2: no power off command" in off.stdout
    assert ((cli_server.home / "ok").read_text(), (cli_server.home / "ko").read_text()) == (
        "n-1\n",
        "n-2\n",
    )
    status = cli_server.run("kapower3", "-m", "n-1", "--status")
    assert status.returncode == 0, status.stderr
    assert "---\nn-1: off\n---\n" in status.stdout
    assert cli_server.run("kapower3", "-m", "n-1", "--on").returncode == 0
    assert cli_server.chassis.actions[-2:] == ["off", "on"]
    none = cli_server.run("kapower3", "-m", "n-1")
    assert (none.returncode, none.stderr) == (1, "No operation is chosen\n")
    useless = cli_server.run("kapower3", "-m", "n-1", "--status", "-l", "hard")
    assert useless.returncode == 1
    assert "Specifying the level is useless with the status operation" in useless.stderr


def test_kareboot3_lists_and_refusals(cli_server: CliServer) -> None:
    hard = cli_server.run("kareboot3", "-m", "n-1", "-l", "hard")
    assert hard.returncode == 0, hard.stdout + hard.stderr
    assert lists(hard.stdout) == (["n-1"], [])
    assert cli_server.chassis.actions[-1] == "cycle"
    soft = cli_server.run("kareboot3", "-m", "n-2")  # its reboot_soft is `false`
    assert soft.returncode == 0, soft.stdout + soft.stderr
    assert lists(soft.stdout) == ([], ["n-2"])
    deploy_env = cli_server.run("kareboot3", "-m", "n-1,n-3", "-r", "deploy_env")
    assert deploy_env.returncode == 0, deploy_env.stdout + deploy_env.stderr
    assert "The reboot operation is successful on nodes\nn-1\nn-3\n" in deploy_env.stdout
    for args, message in [
        (["-r", "set_pxe"], "The set_pxe reboot must be used with the -w option"),
        (["-r", "recorded_env", "-e", "tiny"], "A partition number must be specified"),
        (["-e", "tiny"], "The -e option can be only used with the recorded_env kind"),
        (["-k"], "The -k option can be only used with the deploy_env reboot kind"),
    ]:
        result = cli_server.run("kareboot3", "-m", "n-1", *args)
        assert (result.returncode, message in result.stderr) == (1, True), (args, result.stderr)


def start_renamed_server(base: Path) -> CliServer:
    """A second server whose nodes are m-1..m-4 (the dummy config, renamed)."""
    sockets = short_dir()
    conf = api_config(base / "conf", sockets / "api.sock")
    nodes = conf / "nodes.conf"
    nodes.write_text(nodes.read_text().replace("n-", "m-").replace("127.0.9.", "127.0.8."))
    home = base / "home"
    home.mkdir(parents=True)
    server = CliServer(conf, sockets / "api.sock", home, "kadeploy-test-k3-none")
    started = server.server("start")
    assert started.returncode == 0, started.stdout + started.stderr
    store = TokenStore(server.state)
    for user in ("root", "alice"):
        server.tokens[user] = store.add(user)
    with server.api() as root:
        assert root.post("/v1/rights", json={"user": "alice", "nodes": ["*"]}).status_code == 201
        assert register(root, make_tar_environment(base), visibility="public").status_code == 201
    return server


def test_multi_server_splits_the_nodes_by_server_and_prefixes_the_lines(
    cli_server: CliServer, tmp_path: Path
) -> None:
    other = start_renamed_server(tmp_path / "other")
    try:
        tokens = {}
        for name, server in (("nancy", cli_server), ("rennes", other)):
            tokens[name] = tmp_path / f"{name}.token"
            tokens[name].write_text(server.tokens["alice"])
        conf = tmp_path / "client.conf"
        conf.write_text(
            "default: nancy\nservers:\n"
            f"- {{name: nancy, url: 'unix:{cli_server.socket}', token_file: '{tokens['nancy']}'}}\n"
            f"- {{name: rennes, url: 'unix:{other.socket}', token_file: '{tokens['rennes']}'}}\n"
            "- {name: lille, hostname: 127.0.0.1, port: 9, secure: false}\n"
        )
        env = {"KADEPLOY3_CONFIG_FILE": str(conf)}
        result = cli_server.run(
            "kadeploy3", "-M", "-m", "n-1", "-m", "m-2", "-e", "tiny", "-o", "ok", **env
        )
        assert result.returncode == 0, result.stdout + result.stderr
        lines = result.stdout.splitlines()
        assert lines[0] == "The lille server is unreachable", result.stdout
        for prefix, node in (("[nancy]   ", "n-1"), ("[rennes]  ", "m-2")):
            at = lines.index(f"{prefix}The deployment is successful on nodes")
            assert lines[at + 1] == f"{prefix}{node}", result.stdout
        assert sorted((cli_server.home / "ok").read_text().splitlines()) == ["m-2", "n-1"]
        versions = cli_server.run("kadeploy3", "-M", "-v", **env)
        assert versions.stdout.splitlines() == [
            f"({cli_server.socket}) Kadeploy version: {__version__}",
            f"({other.socket}) Kadeploy version: {__version__}",
            "The lille server is unreachable",
        ]
        nowhere = cli_server.run("kadeploy3", "-M", "-m", "x-1", "-e", "tiny", **env)
        assert nowhere.returncode == 1
        assert "The nodes x-1 does not belongs to any server" in nowhere.stderr
        # Ctrl-C while each server's thread follows its deployment: every one is cancelled.
        process = subprocess.Popen(
            [tool("kadeploy3"), "-M", "-m", SLOW_NODE, "-m", "m-1", "-e", "tiny"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=cli_server.env("alice", **env), cwd=cli_server.home,
        )  # fmt: skip
        try:
            wait_until(lambda: processes_with(cli_server.marker), 30, f"{SLOW_NODE} to hang")
            held = [d for d in cli_server.running_deployments() if d["node_count"] == 1]
            assert len(held) == 1, held
            process.send_signal(signal.SIGINT)
            out, err = process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
        assert process.returncode == 1, out + err
        assert "\nSIGINT trapped\n" in out
        with cli_server.api("alice") as alice:
            assert wait_finished(alice, held[0]["id"])["status"] == "aborted"
        wait_until(lambda: not processes_with(cli_server.marker), 30, "the reboot to be killed")
    finally:
        other.cleanup()
        shutil.rmtree(tmp_path / "other", ignore_errors=True)


def test_kareboot3_set_pxe_pattern_gives_each_node_its_value(cli_server: CliServer) -> None:
    home = cli_server.home
    (home / "profile").write_text(
        "DEFAULT k3\nLABEL k3\n  KERNEL FILES_PREFIX/vmlinuz\n  APPEND ip=NODE_SINGULARITY\n"
    )
    (home / "pattern").write_text("n-1,10.0.0.1\nn-3, 10.0.0.3\n")
    (home / "vmlinuz").write_bytes(b"\x7fkernel")
    result = cli_server.run(
        "kareboot3", "-m", "n-1,n-3", "-r", "set_pxe", "-l", "hard",
        "-w", "profile", "--set-pxe-pattern", "pattern", "-x", "vmlinuz",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert lists(result.stdout) == (["n-1"], ["n-3"])  # n-3 has no hard reboot command
    profiles = cli_server.state / "tftp" / "pxelinux.cfg"
    written = (profiles / "01-02-00-00-00-09-01").read_text()
    assert "APPEND ip=10.0.0.1" in written and "NODE_SINGULARITY" not in written
    assert "KERNEL users/alice/vmlinuz" in written
    missing = cli_server.run(
        "kareboot3", "-m", "n-1,n-2", "-r", "set_pxe", "-w", "profile",
        "--set-pxe-pattern", "pattern",
    )  # fmt: skip
    assert missing.returncode == 1
    assert "--set-pxe-pattern: no value for the nodes n-2" in missing.stderr


def no_wait(server: CliServer, *args: str) -> str:
    """``kadeploy3 ARGS --no-wait``; the deployment's id."""
    result = server.run("kadeploy3", *args, "--no-wait")
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.split()[0]


def test_the_options_the_server_already_had_reach_it(cli_server: CliServer, tmp_path: Path) -> None:
    steps = tmp_path / "steps.yaml"
    steps.write_text(
        "BootNewEnvDummy:\n  nothing:\n    pre-ops:\n      - {action: exec, name: hi, command: 'true'}\n"
    )
    anonymous = make_tar_environment(tmp_path, name="anon")
    with cli_server.api("alice") as alice:
        registered = wait_finished(
            alice,
            no_wait(
                cli_server, "-m", "n-1", "-e", "tiny", "-u", "root", "--env-version", "1",
                "-b", "/dev/vdz", "-p", "3", "-k", "--breakpoint", "BroadcastEnv",
                "--custom-steps", str(steps),
            ),
        )  # fmt: skip
        options = registered["options"]
        assert (options["block_device"], options["keys"]) == ("/dev/vdz", True), options
        assert "3" in str(options["deploy_partition"]) and "BroadcastEnv" in options["breakpoint"]
        assert options["custom_steps"], options
        assert registered["environment"] == {"name": "tiny", "version": 1, "anonymous": False}
        anon_id = cli_server.run(
            "kadeploy3", "-f", "-", "-a", str(anonymous), "--min-deployed-nodes", "1", "--no-wait",
            stdin="n-2\nn-3\n",
        )  # fmt: skip
        assert anon_id.returncode == 0, anon_id.stderr
        anon = wait_finished(alice, anon_id.stdout.split()[0])
        assert anon["environment"]["anonymous"] is True and anon["min_nodes"] == 1
        assert anon["node_count"] == 2


def test_force_takes_a_node_a_running_deployment_holds(cli_server: CliServer) -> None:
    first = no_wait(cli_server, "-m", SLOW_NODE, "-e", "tiny")
    wait_until(lambda: processes_with(cli_server.marker), 30, f"{SLOW_NODE}'s reboot to hang")
    refused = cli_server.run("kadeploy3", "-m", SLOW_NODE, "-e", "tiny")
    assert refused.returncode == 14, refused.stdout + refused.stderr
    assert refused.stderr.rstrip().endswith("[Kadeploy Error #14]")
    forced = no_wait(cli_server, "-m", SLOW_NODE, "-e", "tiny", "--force")
    with cli_server.api("alice") as alice:
        for ident in (forced, first):
            alice.post(f"/v1/deployments/{ident}/cancel")
            assert wait_finished(alice, ident)["status"] != "running"
    wait_until(lambda: not processes_with(cli_server.marker), 30, "the reboots to be killed")


def test_the_verbose_level_chooses_the_progress_lines(cli_server: CliServer) -> None:
    quiet = cli_server.run("kadeploy3", "-m", "n-3", "--env-n", "tiny", "--verbose=0")
    chatty = cli_server.run("kadeploy3", "-m", "n-3", "-e", "tiny", "-V", "4")
    for result in (quiet, chatty):
        assert result.returncode == 0, result.stderr
        assert lists(result.stdout) == (["n-3"], [])
    assert "Launching a deployment on n-3" in quiet.stdout
    assert "Performing a" not in quiet.stdout and "End of deployment for" not in quiet.stdout
    assert "Performing a SetDeploymentEnvDummy step" in chatty.stdout
    assert "End of deployment for n-3 after" in chatty.stdout
    assert "  * n-3: " in chatty.stdout


def test_debug_mode_writes_on_fd_3_when_the_caller_opened_it(cli_server: CliServer) -> None:
    debug = cli_server.home / "debug.log"
    # sh opens fd 3 on the file, then becomes kadeploy3 (arguments passed as they are).
    result = subprocess.run(
        ["sh", "-c", 'exec 3>"$1"; shift; exec "$@"', "sh", str(debug),
         str(Path(sys.executable).parent / "kadeploy3"), "-m", "n-3", "-e", "tiny", "-d"],
        capture_output=True, text=True, timeout=120, check=False,
        env=cli_server.env("alice"), cwd=cli_server.home,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[dbg]" not in result.stdout
    assert lists(result.stdout) == (["n-3"], [])
    lines = debug.read_text().splitlines()
    assert lines and all(line.startswith("[dbg] [n-3] ") for line in lines), lines
    on_stdout = cli_server.run("kadeploy3", "-m", "n-3", "-e", "tiny", "-d")
    assert "[dbg] [n-3] " in on_stdout.stdout


def test_kareboot3_block_device_vlan_classical_timeout_and_keys_reach_the_reboot(
    cli_server: CliServer, tmp_path: Path
) -> None:
    key = tmp_path / "key.pub"
    key.write_text(
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl a@b\n"
    )
    result = cli_server.run(
        "kareboot3", "-m", "n-3", "-r", "deploy_env", "--no-wait",
        "-b", "/dev/vdz", "--reboot-classical-timeout", "100+n*2", "-k", str(key),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    with cli_server.api("alice") as alice:
        options = wait_finished(alice, result.stdout.split()[0])["options"]
    assert options["block_device"] == "/dev/vdz"
    assert options["timeout_reboot_classical"] == "100+n*2"
    assert options["keys"] is True
    vlan = cli_server.run("kareboot3", "-m", "n-3", "-r", "deploy_env", "--vlan", "3")
    assert vlan.returncode != 0 and "cannot change VLAN" in vlan.stderr, vlan.stderr
    ignored = cli_server.run("kareboot3", "-m", "n-3", "-b", "/dev/vdz")  # as Kadeploy3
    assert ignored.returncode == 0, ignored.stdout + ignored.stderr
    simple = cli_server.run("kareboot3", "-m", "n-3", "--reboot-classical-timeout", "100")
    assert simple.returncode != 0, simple.stdout
    assert "timeout_reboot_classical: only with kind deploy_env or recorded_env" in simple.stderr


def test_kareboot3_check_destructive_tag_refuses_a_destructive_last_deployment(
    cli_server: CliServer, tmp_path: Path
) -> None:
    description = make_tar_environment(tmp_path, name="wreck")
    description.write_text(description.read_text() + "destructive: true\n")
    with cli_server.api("alice") as alice:
        assert register(alice, description).status_code == 201
    deployed = cli_server.run("kadeploy3", "-m", "n-3", "-e", "wreck")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    recorded = ("-m", "n-3", "-r", "recorded_env", "-e", "wreck", "-p", "3")
    refused = cli_server.run("kareboot3", *recorded, "-c")
    assert refused.returncode == 30, refused.stdout + refused.stderr
    assert "Cannot reboot since the last deployed environment was destructive" in refused.stderr
    plain = cli_server.run("kareboot3", *recorded)
    assert plain.returncode == 0, plain.stdout + plain.stderr
    simple = cli_server.run("kareboot3", "-m", "n-3", "-c")  # Kadeploy3 checks recorded_env only
    assert simple.returncode == 0, simple.stdout + simple.stderr


def test_kareboot3_deploy_env_no_wait_prints_its_id_and_url(cli_server: CliServer) -> None:
    result = cli_server.run("kareboot3", "-m", "n-3", "-r", "deploy_env", "--no-wait")
    assert result.returncode == 0, result.stdout + result.stderr
    ident, url = result.stdout.split()
    assert url.endswith(f"/v1/deployments/{ident}") and url.startswith("http+unix://")
    with cli_server.api("alice") as alice:
        assert wait_finished(alice, ident)["options"]["operation"] == "deploy_env"
    simple = cli_server.run("kareboot3", "-m", "n-3", "--no-wait")
    assert simple.returncode == 1 and "--no-wait" in simple.stderr


def test_debug_http_writes_on_fd_4_when_the_caller_opened_it(cli_server: CliServer) -> None:
    trace = cli_server.home / "http.log"
    result = subprocess.run(
        ["sh", "-c", 'exec 4>"$1"; shift; exec "$@"', "sh", str(trace),
         str(Path(sys.executable).parent / "kapower3"), "-m", "n-1", "--status", "-H"],
        capture_output=True, text=True, timeout=120, check=False,
        env=cli_server.env("alice"), cwd=cli_server.home,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "-> " not in result.stdout and "\nn-1\n" in result.stdout
    assert "-> POST http://kadeployd/v1/power" in trace.read_text().splitlines()
