"""kadeploy3's deployment options reach the server under Kadeploy3's API names: each one
given is recorded in the deployment's ``options`` (a server started with ``kadeploy-server
start``, dummy macrosteps: the deployments run at once)."""

from __future__ import annotations

from typing import Any

from api_fixtures import wait_finished
from cli_fixtures import CliServer, cli_server

__all__ = ["cli_server"]

DUMMY_STEPS = (
    "SetDeploymentEnv|SetDeploymentEnvDummy:0:30&BroadcastEnv|BroadcastEnvDummy:0:30"
    "&BootNewEnv|BootNewEnvDummy:0:30"
)


def started(server: CliServer, *args: str, user: str = "alice") -> dict[str, Any]:
    """Run ``kadeploy3 ARGS --no-wait``; the deployment's document once it ended."""
    result = server.run("kadeploy3", *args, "--no-wait", user=user)
    assert result.returncode == 0, result.stdout + result.stderr
    ident = result.stdout.split()[0]
    with server.api(user) as client:
        return wait_finished(client, ident)


def test_deployment_options_are_sent_and_recorded(cli_server: CliServer) -> None:
    home = cli_server.home
    (home / "profile").write_text(
        "DEFAULT k3\nLABEL k3\nKERNEL FILES_PREFIX/vmlinuz\nAPPEND ip=NODE_SINGULARITY\n"
    )
    (home / "pattern").write_text("# node,value\nn-1,10.0.0.1\n")
    (home / "vmlinuz").write_bytes(b"\x7fkernel")
    deployment = started(
        cli_server,
        "-m", "n-1", "-e", "tiny", "-c", "0", "--no-kexec", "--disable-bootloader-install",
        "--disable-disk-partitioning", "--reboot-classical-timeout", "100 + n",
        "--reboot-kexec-timeout", "50", "-w", "profile", "--set-pxe-pattern", "pattern",
        "-x", "vmlinuz",
    )  # fmt: skip
    options = deployment["options"]
    assert options["boot_partition"] == 0
    assert options["disable_kexec"] is True
    assert options["disable_bootloader_install"] is True
    assert options["disable_disk_partitioning"] is True
    assert "100" in str(options["timeout_reboot_classical"])
    assert "50" in str(options["timeout_reboot_kexec"])
    pxe = options["pxe"]
    assert pxe["singularities"] == {"n-1": "10.0.0.1"}
    assert "NODE_SINGULARITY" in pxe["profile"] and "KERNEL" in pxe["profile"]
    assert list(pxe["files"]) == ["vmlinuz"]


def test_force_steps_text_is_sent_as_is(cli_server: CliServer) -> None:
    deployment = started(
        cli_server, "-m", "n-2", "-e", "tiny", "--force-steps", DUMMY_STEPS, user="root"
    )
    assert "SetDeploymentEnvDummy:0:30" in str(deployment["options"]["force_steps"])


def test_options_the_nodes_cannot_honour_are_refused_naming_them(cli_server: CliServer) -> None:
    tmp = cli_server.run("kadeploy3", "-m", "n-1", "-e", "tiny", "-r", "ext4")
    assert tmp.returncode == 4, tmp.stderr
    assert "tmp" in tmp.stderr and tmp.stderr.rstrip().endswith("[Kadeploy Error #4]")
    bad_fs = cli_server.run("kadeploy3", "-m", "n-1", "-e", "tiny", "-r", "EXT4;rm")
    assert bad_fs.returncode == 4 and "reformat_tmp" in bad_fs.stderr, bad_fs.stderr
    vlan = cli_server.run("kadeploy3", "-m", "n-1", "-e", "tiny", "--vlan", "5000")
    assert vlan.returncode == 9, vlan.stderr
    assert "vlan" in vlan.stderr


def test_a_vlan_on_nodes_without_a_switch_command_is_refused_naming_it(
    cli_server: CliServer,
) -> None:
    result = cli_server.run("kadeploy3", "-m", "n-1", "-e", "tiny", "--vlan", "12")
    assert result.returncode == 9, result.stdout + result.stderr  # Kadeploy3's INVALID_VLAN
    assert "no vlan.switch command" in result.stderr and "Traceback" not in result.stderr
