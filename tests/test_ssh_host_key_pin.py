"""The deploy env's host key pinned from the configuration, against a real sshd.

A host at a node's address whose host key is not the pinned one gets nothing: the connection
ends right after the key exchange, before the daemon authenticates, so no command runs (a
command that would create a marker file never does) and sshd never sees the deploy key. The
same sshd with the pinned key serves as before. The node's services pin only while the node
runs its deploy env: its prod env and the user's deployed env keep their own keys.
"""

from __future__ import annotations

import subprocess
import textwrap
import threading
from dataclasses import replace
from pathlib import Path
from typing import cast

import pytest
from sshd_fixtures import ClientKeys, SshdServer, client_keys, keygen, sshd

from kadeploy_core.errors import ConfigError
from kadeployd.actors.directory import Directory
from kadeployd.actors.node_services import NodeServicesImpl
from kadeployd.adapters.ssh import SshConnection, SshHostKeyMismatch, SshTarget, probe
from kadeployd.config import load_config
from kadeployd.config.host_keys import fingerprint
from kadeployd.workflow.job import DeploymentJob

__all__ = ["client_keys", "sshd"]  # fixtures imported for pytest, not unused


def public(key: Path) -> str:
    """``"<type> <base64>"`` of the key pair at ``key``."""
    return " ".join(key.with_name(key.name + ".pub").read_text().split()[:2])


def target_for(server: SshdServer, key: Path, host_keys: tuple[str, ...]) -> SshTarget:
    return SshTarget(
        server.address, server.port, "root", key, 10, 10, 15, host_keys=host_keys, name="n-7"
    )


def test_a_host_offering_another_key_gets_no_command(
    sshd: SshdServer, client_keys: ClientKeys, tmp_path: Path
) -> None:
    pinned = public(keygen(tmp_path / "deploy_env_host_key"))
    offered = public(sshd.host_key)
    marker = tmp_path / "marker"
    target = target_for(sshd, client_keys.good, (pinned,))
    with SshConnection(target) as connection, pytest.raises(SshHostKeyMismatch) as caught:
        connection.run(["touch", str(marker)], timeout=20)
    refused = caught.value
    assert (refused.offered, refused.expected) == (offered, (pinned,))
    assert str(refused) == (
        f"ssh {sshd.address}: n-7 offered the host key {fingerprint(offered)}, not the deploy "
        f"env's pinned {fingerprint(pinned)} (boot.deploy_host_key_file, "
        "boot.deploy_host_key): connection refused, nothing sent"
    )
    seen = probe(target, timeout=20)
    assert not seen.reachable and seen.refused_host_key == offered
    assert seen.cmdline is None
    assert not marker.exists()  # the command never ran
    assert "Accepted publickey" not in sshd.log.read_text()  # nor did the key log in

    # The same server, pinned to its own key (among others): served.
    with SshConnection(replace(target, host_keys=(pinned, offered))) as connection:
        assert connection.run(["touch", str(marker)], timeout=20).ok
    assert marker.exists()
    assert probe(replace(target, host_keys=(offered,)), timeout=20).reachable


def test_a_pinned_key_of_another_type_refuses_the_server_key(
    sshd: SshdServer, client_keys: ClientKeys, tmp_path: Path
) -> None:
    rsa = tmp_path / "rsa_host_key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", str(rsa)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    marker = tmp_path / "marker"
    target = target_for(sshd, client_keys.good, (public(rsa),))
    with SshConnection(target) as connection, pytest.raises(SshHostKeyMismatch) as caught:
        connection.run(["touch", str(marker)], timeout=20)
    assert caught.value.offered == public(sshd.host_key)
    assert not marker.exists()


def test_fingerprints_read_as_openssh_prints_them(sshd: SshdServer) -> None:
    listed = subprocess.run(
        ["ssh-keygen", "-lf", f"{sshd.host_key}.pub"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert fingerprint(public(sshd.host_key)) == f"ssh-ed25519 {listed[1]}"


def node_config(directory: Path, server: SshdServer, key: Path, boot: str) -> Path:
    (directory / "clusters").mkdir(parents=True)
    (directory / "deploy.conf").write_text(
        textwrap.dedent(
            f"""\
            daemon: {{state_dir: {directory / "state"}}}
            ssh: {{user: root, port: {server.port}, identity_file: {key}}}
            boot: {{deploy_kernel: k, {boot}}}
            automata:
              macrosteps:
                SetDeploymentEnv: [{{type: untrusted, retries: 1, timeout: 100}}]
                BroadcastEnv: [{{type: direct, retries: 1, timeout: 100}}]
                BootNewEnv: [{{type: classical, retries: 1, timeout: 100}}]
            """
        )
    )
    (directory / "clusters" / "alpha.conf").write_text("")
    (directory / "nodes.conf").write_text(
        f"n-7: {{cluster: alpha, address: {server.address}, mac: '02:00:00:00:00:07'}}\n"
    )
    return directory


def test_a_node_pins_its_deploy_env_only(
    sshd: SshdServer, client_keys: ClientKeys, tmp_path: Path
) -> None:
    """The node's services: unpinned in its prod env, pinned from the moment the workflow
    saw its deploy env until it reboots (then its next env, e.g. the user's, has its own)."""
    pinned = public(keygen(tmp_path / "deploy_env_host_key"))
    conf = node_config(tmp_path / "conf", sshd, client_keys.good, f"deploy_host_key: '{pinned}'")
    node = load_config(conf).nodes["n-7"]
    assert node.settings.boot.deploy_host_keys() == (pinned,)
    services = NodeServicesImpl(
        cast(DeploymentJob, None), node, cast(Directory, None), threading.Semaphore(1), None
    )
    marker = tmp_path / "marker"
    try:
        assert services.shell().run(["true"], timeout=20).ok  # the prod env: its own key
        refused = services.probe(deploy_env=True)  # a look for the deploy env: not it
        assert not refused.reachable and refused.refused_key == public(sshd.host_key)
        services.deploy_env_reached()
        with pytest.raises(SshHostKeyMismatch, match="n-7 offered the host key"):
            services.shell().run(["touch", str(marker)], timeout=20)
        assert not marker.exists()
        services.reset_shell()  # the node reboots: into the user's env, its own keys
        assert services.shell().run(["touch", str(marker)], timeout=20).ok
        assert marker.exists()
    finally:
        services.close()


@pytest.mark.parametrize(
    ("boot", "complaint"),
    [
        ("deploy_host_key_file: /nonexistent/key.pub", "cannot read /nonexistent/key.pub"),
        ("deploy_host_key: 'ssh-ed25519 AAAA'", "line 1: not an OpenSSH public key"),
        ("deploy_host_key: 'ssh-ed25519'", "expected '<type> <base64> [comment]'"),
    ],
)
def test_a_bad_pinned_key_is_a_configuration_error(
    sshd: SshdServer, client_keys: ClientKeys, tmp_path: Path, boot: str, complaint: str
) -> None:
    conf = node_config(tmp_path / "conf", sshd, client_keys.good, boot)
    with pytest.raises(ConfigError) as caught:
        load_config(conf)
    text = str(caught.value)
    assert "boot.deploy_host_key" in text and complaint in text, text
