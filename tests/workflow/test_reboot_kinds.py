"""kareboot's kinds on testbed nodes, through the installed tool and the real API: deploy_env
(the node answers in the deploy env booted for the operation), set_pxe (the user's profile and
files served over real TFTP, the node boots what they say), recorded_env (after a deployment
and a boot into prod, the deployed environment boots again), and refusals."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from api_fixtures import ADMIN, USERS, client_for, short_dir, upload, wait_finished
from daemon_fixtures import wait_until
from workflow_helpers import DEPLOY_TIMEOUT, os_release, ssh_output, ssh_run

from kadeployd.api import ApiContext, ApiServer, create_app
from kadeployd.daemon import Daemon
from kadeployd.pxe.profiles import profile_path

pytestmark = pytest.mark.root

KAREBOOT = str(Path(sys.executable).parent / "kareboot")


@dataclass
class Served:
    """A daemon of the workflow testbed with its API on a Unix socket."""

    daemon: Daemon
    socket: Path
    tokens: dict[str, str]

    def kareboot(self, *args: str, user: str = "alice") -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KADEPLOY_")}
        env.update(KADEPLOY_SERVER=f"unix:{self.socket}", KADEPLOY_TOKEN=self.tokens[user])
        return subprocess.run(
            [KAREBOOT, *args],
            capture_output=True,
            text=True,
            timeout=DEPLOY_TIMEOUT,
            check=False,
            env=env,
        )

    def client(self, user: str = "alice") -> httpx.Client:
        return client_for(self.socket, self.tokens[user])


@pytest.fixture
def served(start_daemon: Callable[..., Daemon]) -> Iterator[Served]:
    """The daemon, its API, tokens; alice holds rights on every node, bob on none."""
    sockets = short_dir()
    socket = sockets / "api.sock"

    def edit(deploy: dict[str, Any], cluster: dict[str, Any]) -> None:
        deploy["daemon"]["api"] = {"unix_socket": str(socket)}
        deploy["daemon"]["almighty_users"] = [ADMIN]

    daemon = start_daemon(edit)
    context = ApiContext(daemon)
    server = ApiServer(create_app(context), socket)
    server.start()
    try:
        tokens = {user: context.tokens.add(user) for user in USERS}
        api = Served(daemon, socket, tokens)
        with api.client(ADMIN) as root:
            granted = root.post("/v1/rights", json={"user": "alice", "nodes": ["*"]})
            assert granted.status_code == 201, granted.text
        yield api
    finally:
        server.stop()
        context.close()
        shutil.rmtree(sockets, ignore_errors=True)


def cmdline(bed: Any, node: str, key: Path | None = None) -> str:
    return ssh_output(bed, node, "cat", "/proc/cmdline", key=key).strip()


def test_deploy_env_then_set_pxe_with_the_users_kernel(
    bed: Any, nodes: tuple[str, ...], served: Served, tmp_path: Path
) -> None:
    from kadeploy_testbed.tftpfetch import fetch  # noqa: PLC0415

    node = nodes[0]
    done = served.kareboot("-m", node, "-r", "deploy_env", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    [row] = json.loads(done.stdout)
    assert (row["node"], row["ok"], row["state"]) == (node, True, "deployed")
    assert f"kadeploy.deployment={row['operation_id']}" in cmdline(bed, node).split()
    history = [h.state for h in served.daemon.reader().history(row["operation_id"], node)]
    assert history[-3:] == ["rebooting", "booting", "deployed"]

    # set_pxe: the user's profile boots the user's kernel (here a copy of the deploy kernel,
    # which the testbed firmware recognises) with the user's command line.
    settings = served.daemon.config.nodes[node].settings
    tftp_root = served.daemon.config.daemon.tftp_root
    kernel = tmp_path / "mykernel"
    shutil.copyfile(tftp_root / settings.boot.deploy_kernel, kernel)
    profile = tmp_path / "pxe-profile"
    profile.write_text(
        "DEFAULT mine\nLABEL mine\n  KERNEL FILES_PREFIX/mykernel\n  APPEND own=42\n"
    )
    rebooted = served.kareboot(
        "-m", node, "-r", "set_pxe", "-w", str(profile), "-x", str(kernel), "-l", "hard"
    )
    assert rebooted.returncode == 0, rebooted.stdout + rebooted.stderr
    port = served.daemon.config.daemon.tftp.port
    mac = served.daemon.config.nodes[node].mac
    text = fetch("127.0.0.1", port, profile_path(mac), 5.0)
    assert text is not None and "KERNEL users/alice/mykernel" in text.decode()
    assert fetch("127.0.0.1", port, "users/alice/mykernel", 5.0) == kernel.read_bytes()
    wait_until(lambda: _cmdline_or_none(bed, node) == "own=42", DEPLOY_TIMEOUT, "the user's boot")

    # Another user's nodes: refused, nothing done.
    refused = served.kareboot("-m", node, "-r", "deploy_env", user="bob")
    assert refused.returncode == 2
    assert f"no right to reboot {node}" in refused.stderr
    assert "Traceback" not in refused.stderr


def _cmdline_or_none(bed: Any, node: str) -> str | None:
    result = ssh_run(bed, node, "cat", "/proc/cmdline")
    return result.stdout.strip() if result.returncode == 0 else None


def register_any(client: httpx.Client, description: Path) -> str:
    """Register a make-image environment (tar or dd) as private; its name."""
    data = yaml.safe_load(description.read_text())
    image = description.parent / data["image"]["file"]
    files = {image.name: upload(client, image)}
    answer = client.post(
        "/v1/environments",
        json={"description": description.read_text(), "files": files, "visibility": "private"},
    )
    assert answer.status_code == 201, answer.text
    return str(data["name"])


@pytest.mark.parametrize("kind", ["tar", "dd"])
def test_recorded_env_boots_the_deployed_environment_again(
    bed: Any,
    nodes: tuple[str, ...],
    served: Served,
    images: dict[str, Path],
    user_key: Path,
    tmp_path: Path,
    kind: str,
) -> None:
    node = nodes[0]
    with served.client() as alice:
        name = register_any(alice, images[kind])
        created = alice.post(
            "/v1/deployments",
            json={
                "nodes": [node],
                "environment": {"name": name},
                "authorized_keys": user_key.with_suffix(".pub").read_text(),
            },
        )
        assert created.status_code == 201, created.text
        final = wait_finished(alice, created.json()["id"], DEPLOY_TIMEOUT)
        assert final["status"] == "succeeded", final
    assert f"ID={name}" in os_release(bed, node, user_key)

    # Back to the prod env with the user's own profile (local boot).
    profile = tmp_path / "local"
    profile.write_text("DEFAULT local\nLABEL local\n  LOCALBOOT 0\n")
    back = served.kareboot("-m", node, "-r", "set_pxe", "-w", str(profile), "-l", "hard")
    assert back.returncode == 0, back.stdout + back.stderr
    bed.wait_env([node], "prod", DEPLOY_TIMEOUT)

    partition = served.daemon.config.nodes[node].settings.disk.deploy_partition
    again = served.kareboot("-m", node, "-r", "recorded_env", "-e", name, "-p", str(partition))
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"{node}  environment booted" in again.stdout
    assert f"ID={name}" in os_release(bed, node, user_key)

    # bob has no right on the node: refused for that (checked before the environment).
    started = len(served.daemon.reader().deployments(limit=1000))
    args = ("-m", node, "-r", "recorded_env", "-e", name, "-u", "alice", "-p", "3")
    no_right = served.kareboot(*args, user="bob")
    assert no_right.returncode == 2
    assert f"no right to reboot {node}" in no_right.stderr
    # With a right, bob still cannot see alice's private environment: refused for that.
    with served.client(ADMIN) as root:
        granted = root.post("/v1/rights", json={"user": "bob", "nodes": [node]})
        assert granted.status_code == 201, granted.text
    hidden = served.kareboot(*args, user="bob")
    assert hidden.returncode == 2
    assert f"no environment {name!r} owned by 'alice'" in hidden.stderr
    assert "Traceback" not in no_right.stderr + hidden.stderr
    # Nothing was started.
    assert len(served.daemon.reader().deployments(limit=1000)) == started
