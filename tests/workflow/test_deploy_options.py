"""Kadeploy3's deployment options on testbed nodes, through the real API on its Unix socket:
kexec (the default BootNewEnv: no PXE, no TFTP request), ``disable_kexec``, a failing kexec
falling back to classical, the reboot timeouts, ``boot_partition``, ``reformat_tmp``,
``disable_disk_partitioning`` and ``force_steps``. Each test fails if its option is ignored.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from api_fixtures import ADMIN, USERS, client_for, short_dir, upload, wait_finished
from workflow_helpers import DEPLOY_TIMEOUT, os_release, ssh_output

from kadeployd.api import ApiContext, ApiServer, create_app
from kadeployd.daemon import Daemon
from kadeployd.pxe.profiles import profile_path

pytestmark = pytest.mark.root

FIRMWARE_LOG = "firmware.log"


@dataclass
class Served:
    """A daemon of the workflow testbed with its API on a Unix socket, the make-image
    environment registered public."""

    daemon: Daemon
    socket: Path
    tokens: dict[str, str]
    environment: str = ""

    def client(self, user: str = "alice") -> httpx.Client:
        return client_for(self.socket, self.tokens[user])

    def deploy(self, nodes: tuple[str, ...], key: Path, user: str = "alice", **options: Any) -> str:
        """Start a deployment of alice's environment with ``options``; its id."""
        body = {
            "nodes": list(nodes),
            "environment": {"name": self.environment},
            "authorized_keys": key.with_suffix(".pub").read_text(),
            **options,
        }
        with self.client(user) as client:
            created = client.post("/v1/deployments", json=body)
        assert created.status_code == 201, created.text
        deployment_id: str = created.json()["id"]
        return deployment_id

    def finished(self, deployment_id: str) -> dict[str, Any]:
        """The deployment's document once it is over."""
        with self.client() as client:
            return wait_finished(client, deployment_id, DEPLOY_TIMEOUT)

    def variants(self, deployment_id: str, node: str, macrostep: str) -> list[str]:
        """The variants the node ran in ``macrostep``, in order, without repeats."""
        seen: list[str] = []
        for entry in self.daemon.reader().history(deployment_id, node):
            if entry.macrostep == macrostep and entry.variant not in seen[-1:]:
                seen.append(entry.variant or "")
        return seen

    def log(self, deployment_id: str, node: str) -> str:
        return "\n".join(line.text for line in self.daemon.reader().log(deployment_id, node))


ConfEdit = Callable[[dict[str, Any], dict[str, Any]], None]


def serve(
    start_daemon: Callable[..., Daemon], images: dict[str, Path], edit: ConfEdit | None
) -> Any:
    """Start the daemon (its configuration edited by ``edit``) and its API; alice may deploy
    every node; the tar environment is registered public."""
    sockets = short_dir()
    socket = sockets / "api.sock"

    def configure(deploy: dict[str, Any], cluster: dict[str, Any]) -> None:
        deploy["daemon"]["api"] = {"unix_socket": str(socket)}
        deploy["daemon"]["almighty_users"] = [ADMIN]
        if edit is not None:
            edit(deploy, cluster)

    daemon = start_daemon(configure)
    context = ApiContext(daemon)
    server = ApiServer(create_app(context), socket)
    server.start()
    tokens = {user: context.tokens.add(user) for user in USERS}
    api = Served(daemon, socket, tokens)
    with api.client(ADMIN) as root:
        granted = root.post("/v1/rights", json={"user": "alice", "nodes": ["*"]})
        assert granted.status_code == 201, granted.text
    with api.client(ADMIN) as root:
        description = images["tar"]
        data = yaml.safe_load(description.read_text())
        image = description.parent / data["image"]["file"]
        answer = root.post(
            "/v1/environments",
            json={
                "description": description.read_text(),
                "files": {image.name: upload(root, image)},
                "visibility": "public",
            },
        )
        assert answer.status_code == 201, answer.text
        api.environment = str(data["name"])

    def stop() -> None:
        server.stop()
        context.close()
        shutil.rmtree(sockets, ignore_errors=True)

    return api, stop


@pytest.fixture
def served_with(
    start_daemon: Callable[..., Daemon], images: dict[str, Path]
) -> Iterator[Callable[[ConfEdit | None], Served]]:
    """Start the served daemon with a configuration edit (once per test)."""
    stops: list[Callable[[], None]] = []

    def start(edit: ConfEdit | None = None) -> Served:
        api, stop = serve(start_daemon, images, edit)
        stops.append(stop)
        return api  # type: ignore[no-any-return]

    yield start
    for stop in stops:
        stop()


def firmware_lines(bed: Any, node: str) -> list[str]:
    """The node's firmware log (one line per PXE boot and per TFTP request)."""
    path = bed.layout.node_dir(node) / FIRMWARE_LOG
    return path.read_text().splitlines() if path.exists() else []


def pxe_boots(lines: list[str]) -> int:
    return sum(" PXE boot " in f" {line} " for line in lines)


def test_kexec_boots_the_deployed_env_without_pxe_and_disable_kexec_goes_classical(
    bed: Any,
    nodes: tuple[str, ...],
    served_with: Callable[[ConfEdit | None], Served],
    user_key: Path,
) -> None:
    served = served_with(None)
    kexec_nodes, classical_nodes = nodes[:2], nodes[2:]
    before = {node: len(firmware_lines(bed, node)) for node in nodes}
    kexec_id = served.deploy(kexec_nodes, user_key)
    classical_id = served.deploy(classical_nodes, user_key, disable_kexec=True)
    kexec_run, classical_run = served.finished(kexec_id), served.finished(classical_id)
    assert kexec_run["status"] == "succeeded", kexec_run
    assert classical_run["status"] == "succeeded", classical_run
    assert "disable_kexec" not in kexec_run["options"]
    assert classical_run["options"]["disable_kexec"] is True

    for node in nodes:
        assert f"ID={served.environment}" in os_release(bed, node, user_key)
        new_lines = firmware_lines(bed, node)[before[node] :]
        if node in kexec_nodes:
            # Only SetDeploymentEnv's reboot went through the firmware; BootNewEnv did not.
            assert pxe_boots(new_lines) == 1, new_lines
            assert served.variants(kexec_id, node, "BootNewEnv") == ["kexec"]
            console = (bed.layout.node_dir(node) / "console.log").read_text()
            boots = [line for line in console.splitlines() if line.startswith("--- boot ")]
            assert boots[-1] == "--- boot deployed p3 (kexec)", boots[-3:]
            cmdline = ssh_output(bed, node, "cat", "/proc/cmdline", key=user_key)
            assert "root=/dev/testbed/sda3" in cmdline
        else:
            assert pxe_boots(new_lines) == 2, new_lines
            assert served.variants(classical_id, node, "BootNewEnv") == ["classical"]
    # Shown with -s: how long BootNewEnv took each way (not asserted: no wall-clock checks).
    for deployment, group in ((kexec_id, kexec_nodes), (classical_id, classical_nodes)):
        for node in group:
            history = served.daemon.reader().history(deployment, node)
            boot = [h.at for h in history if h.macrostep == "BootNewEnv"]
            print(f"BootNewEnv of {node} in {deployment}: {history[-1].at - boot[0]:.2f} s")


def test_failing_kexec_falls_back_to_classical_within_the_kexec_timeout(
    bed: Any,
    nodes: tuple[str, ...],
    served_with: Callable[[ConfEdit | None], Served],
    user_key: Path,
) -> None:
    served = served_with(None)
    node = nodes[0]
    bed.fault(node, "nokexec")  # its kexec -e hangs it, as a kernel that cannot start
    deployment = served.deploy((node,), user_key, timeout_reboot_kexec="6 + 0 * n")
    run = served.finished(deployment)
    assert run["status"] == "succeeded", run
    assert run["options"]["timeout_reboot_kexec"] == "6 + 0 * n"
    assert served.variants(deployment, node, "BootNewEnv") == ["kexec", "classical"]
    assert "wait_deployed_env: timed out after 6 s" in served.log(deployment, node)
    assert f"ID={served.environment}" in os_release(bed, node, user_key)


def test_boot_partition_and_classical_timeout(
    bed: Any,
    nodes: tuple[str, ...],
    served_with: Callable[[ConfEdit | None], Served],
    user_key: Path,
) -> None:
    served = served_with(None)
    prod = served.deploy(nodes[:1], user_key, boot_partition=2)
    # Partition 1 is swap: nothing boots from it, so each classical attempt times out.
    swap = served.deploy(
        nodes[1:2], user_key, boot_partition=1, timeout_reboot_classical="7", disable_kexec=True
    )
    prod_run, swap_run = served.finished(prod), served.finished(swap)

    assert prod_run["status"] == "succeeded", prod_run
    assert prod_run["options"]["boot_partition"] == 2
    # The node booted partition 2, its prod env, not the deployed partition 3 (nor by kexec).
    release = ssh_output(bed, nodes[0], "cat", "/etc/os-release")
    assert "KADEPLOY_TESTBED_ENV=prod" in release
    assert served.variants(prod, nodes[0], "BootNewEnv") == ["classical"]
    tftp_root = served.daemon.config.daemon.tftp_root
    profile = (tftp_root / profile_path(served.daemon.config.nodes[nodes[0]].mac)).read_text()
    assert "hd0 2" in profile

    assert swap_run["status"] == "failed", swap_run
    record = served.daemon.reader().node(swap, nodes[1])
    assert record.error_step == "BootNewEnv"
    assert "timed out after 7 s" in (record.error_message or ""), record
    assert served.variants(swap, nodes[1], "BootNewEnv") == ["classical", "hard_reboot"]


PARTITIONING_SCRIPT = """#!/bin/sh
# Marks the disk: the test reads the mark from the whole disk's first bytes.
printf 'partitioned for %s\\n' "$KADEPLOY_DEPLOY_PART" |
  dd of="$KADEPLOY_BLOCK_DEVICE" bs=512 count=1 conv=notrunc,fsync 2>/dev/null
"""


def _fstype(device: str) -> str:
    found = subprocess.run(
        ["blkid", "-p", "-o", "value", "-s", "TYPE", device],
        capture_output=True,
        text=True,
        check=False,
    )
    return found.stdout.strip()


def test_reformat_tmp_and_disable_disk_partitioning(
    bed: Any,
    nodes: tuple[str, ...],
    served_with: Callable[[ConfEdit | None], Served],
    user_key: Path,
    tmp_path: Path,
) -> None:
    script = tmp_path / "partitioning.sh"
    script.write_text(PARTITIONING_SCRIPT)

    def edit(deploy: dict[str, Any], cluster: dict[str, Any]) -> None:
        cluster["disk"]["partitioning_script"] = str(script)
        steps = deploy["automata"]["macrosteps"]
        steps["BroadcastEnv"] = [{"type": "chain", "retries": 1, "timeout": 120}]
        steps["BootNewEnv"] = [{"type": "dummy", "retries": 0, "timeout": 60}]

    served = served_with(edit)
    asked, plain = nodes[0], nodes[1]
    tmp_number = served.daemon.config.nodes[asked].settings.disk.tmp_partition
    assert tmp_number is not None
    for node in (asked, plain):
        with bed.layout.disk_file(node, None).open("r+b") as disk:
            disk.write(b"\0" * 512)
        subprocess.run(
            ["mkfs.ext2", "-q", "-F", bed.partition_device(node, tmp_number)], check=True
        )

    options = {"reformat_tmp": "ext3", "disable_disk_partitioning": True}
    asked_id = served.deploy((asked,), user_key, **options)
    plain_id = served.deploy((plain,), user_key)
    asked_run, plain_run = served.finished(asked_id), served.finished(plain_id)
    assert asked_run["status"] == plain_run["status"] == "succeeded", (asked_run, plain_run)
    for name, value in options.items():
        assert asked_run["options"][name] == value

    assert _fstype(bed.partition_device(asked, tmp_number)) == "ext3"
    assert _fstype(bed.partition_device(plain, tmp_number)) == "ext2"
    assert not bed.layout.disk_file(asked, None).read_bytes()[:512].strip(b"\0")
    assert bed.layout.disk_file(plain, None).read_bytes().startswith(b"partitioned for ")
    assert "partition_disk skipped: disable_disk_partitioning" in served.log(asked_id, asked)


def test_force_steps_replace_the_automata_for_an_administrator(
    bed: Any,
    nodes: tuple[str, ...],
    served_with: Callable[[ConfEdit | None], Served],
    user_key: Path,
) -> None:
    served = served_with(None)
    forced = (
        "SetDeploymentEnv|SetDeploymentEnvProd:0:120"
        "&BroadcastEnv|BroadcastEnvDirect:0:120"
        "&BootNewEnv|BootNewEnvHardReboot:0:120"
    )
    with served.client() as alice:
        refused = alice.post(
            "/v1/deployments",
            json={"nodes": [nodes[0]], "environment": {"name": served.environment},
                  "force_steps": forced},
        )  # fmt: skip
    assert refused.status_code == 403, refused.text
    assert "force_steps" in refused.json()["error"]["message"]

    deployment = served.deploy(nodes[:1], user_key, user=ADMIN, force_steps=forced)
    run = served.finished(deployment)
    assert run["status"] == "succeeded", run
    assert run["options"]["force_steps"] == forced
    node = nodes[0]
    assert served.variants(deployment, node, "SetDeploymentEnv") == ["prod"]
    assert served.variants(deployment, node, "BroadcastEnv") == ["direct"]
    assert served.variants(deployment, node, "BootNewEnv") == ["hard_reboot"]
    assert f"ID={served.environment}" in os_release(bed, node, user_key)


def _image_kernel(images: dict[str, Path]) -> bytes:
    """The bytes of /boot/vmlinuz inside the tar environment's image."""
    import io  # noqa: PLC0415
    import tarfile  # noqa: PLC0415

    import zstandard  # noqa: PLC0415

    description = images["tar"]
    data = yaml.safe_load(description.read_text())
    raw = (description.parent / data["image"]["file"]).read_bytes()
    stream = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw))
    with stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            if member.name.lstrip("./") == "boot/vmlinuz":
                extracted = tar.extractfile(member)
                assert extracted is not None
                return extracted.read()
    raise AssertionError("no /boot/vmlinuz in the image")


PROFILE = """DEFAULT mine
LABEL mine
  KERNEL FILES_PREFIX/mykernel
  APPEND own=NODE_SINGULARITY root=/dev/testbed/sda3
"""


def test_pxe_profile_with_singularities_and_files(
    bed: Any,
    nodes: tuple[str, ...],
    served_with: Callable[[ConfEdit | None], Served],
    images: dict[str, Path],
    user_key: Path,
    tmp_path: Path,
) -> None:
    served = served_with(None)
    kernel = tmp_path / "mykernel"
    kernel.write_bytes(_image_kernel(images))
    with served.client() as alice:
        kernel_id = upload(alice, kernel)
    pxe = {
        "profile": PROFILE,
        "singularities": {nodes[0]: "s-first"},
        "files": {"mykernel": kernel_id},
    }
    before = {node: len(firmware_lines(bed, node)) for node in nodes[:2]}
    deployment = served.deploy(nodes[:2], user_key, pxe=pxe)
    run = served.finished(deployment)
    assert run["status"] == "succeeded", run
    shown = run["options"]["pxe"]
    assert shown["singularities"] == {nodes[0]: "s-first"}
    assert shown["files"] == ["mykernel"]
    tftp_root = served.daemon.config.daemon.tftp_root
    assert (tftp_root / "users/alice/mykernel").read_bytes() == kernel.read_bytes()
    for node, value in ((nodes[0], "s-first"), (nodes[1], "")):
        # The node fetched the user's profile (its singularity in it) and the user's kernel,
        # which its firmware booted (no kexec: only a firmware boot reads a profile).
        mac = served.daemon.config.nodes[node].mac
        profile = (tftp_root / profile_path(mac)).read_text()
        assert "KERNEL users/alice/mykernel" in profile
        assert f"APPEND own={value} root=" in profile
        assert "NODE_SINGULARITY" not in profile
        new_lines = firmware_lines(bed, node)[before[node] :]
        assert "TFTP users/alice/mykernel" in " ".join(new_lines), new_lines
        assert served.variants(deployment, node, "BootNewEnv") == ["classical"]
        cmdline = ssh_output(bed, node, "cat", "/proc/cmdline", key=user_key).split()
        assert f"own={value}" in cmdline
        assert f"ID={served.environment}" in os_release(bed, node, user_key)
    # Another user sees that a profile was given, not what it is.
    with served.client("bob") as bob:
        hidden = bob.get(f"/v1/deployments/{deployment}").json()["options"]["pxe"]
    assert "mykernel" not in str(hidden)


BOOTLOADER_SCRIPT = """#!/bin/sh
# The testbed's boot loader: the disk's first sector names the partition LOCALBOOT boots.
printf 'KDTB-BOOT %s\\n' "$KADEPLOY_DEPLOY_PART_NUM" |
  dd of="$KADEPLOY_BLOCK_DEVICE" bs=512 count=1 conv=notrunc,fsync 2>/dev/null
"""


def test_boot_partition_0_boots_the_installed_boot_loader_unless_disabled(
    bed: Any,
    nodes: tuple[str, ...],
    served_with: Callable[[ConfEdit | None], Served],
    user_key: Path,
    tmp_path: Path,
) -> None:
    script = tmp_path / "bootloader.sh"
    script.write_text(BOOTLOADER_SCRIPT)

    def edit(deploy: dict[str, Any], cluster: dict[str, Any]) -> None:
        cluster["disk"]["bootloader_script"] = str(script)

    def clear_boot_records() -> None:
        for node in nodes[:2]:
            with bed.layout.disk_file(node, None).open("r+b") as disk:
                disk.write(b"\0" * 512)

    served = served_with(edit)
    clear_boot_records()
    try:
        installed = served.deploy(nodes[:1], user_key, boot_partition=0)
        skipped = served.deploy(
            nodes[1:2], user_key, boot_partition=0, disable_bootloader_install=True
        )
        installed_run, skipped_run = served.finished(installed), served.finished(skipped)
        assert installed_run["status"] == "succeeded", installed_run
        assert skipped_run["status"] == "succeeded", skipped_run
        assert skipped_run["options"]["disable_bootloader_install"] is True
        # The firmware read the boot record the boot loader script wrote: partition 3.
        assert bed.layout.disk_file(nodes[0], None).read_bytes().startswith(b"KDTB-BOOT 3\n")
        assert f"ID={served.environment}" in os_release(bed, nodes[0], user_key)
        # Without a boot loader, the disk boots what it booted before: the prod env.
        assert not bed.layout.disk_file(nodes[1], None).read_bytes()[:512].strip(b"\0")
        release = ssh_output(bed, nodes[1], "cat", "/etc/os-release")
        assert "KADEPLOY_TESTBED_ENV=prod" in release
        log = served.log(skipped, nodes[1])
        assert "install_bootloader skipped: disable_bootloader_install" in log
    finally:
        clear_boot_records()  # LOCALBOOT means the prod env for the other tests


def test_a_kexec_that_does_not_take_falls_back_to_classical_at_once(
    bed: Any,
    nodes: tuple[str, ...],
    served_with: Callable[[ConfEdit | None], Served],
    user_key: Path,
) -> None:
    def edit(deploy: dict[str, Any], cluster: dict[str, Any]) -> None:
        deploy["power"]["soft_reboot_grace"] = 3

    served = served_with(edit)
    node = nodes[0]
    # A deploy env whose kexec does nothing (as one without kexec support in its kernel).
    broken = {
        "BootNewEnvKexec": {
            "kexec_deployed_env": {
                "pre-ops": [
                    {
                        "action": "exec",
                        "name": "no_kexec",
                        "command": 'mount --bind /bin/true "$(command -v kexec)"',
                    }
                ]
            }
        }
    }
    deployment = served.deploy((node,), user_key, custom_steps={"steps": broken})
    run = served.finished(deployment)
    assert run["status"] == "succeeded", run
    assert served.variants(deployment, node, "BootNewEnv") == ["kexec", "classical"]
    log = served.log(deployment, node)
    # Seen still in its deploy env after power.soft_reboot_grace: not the 60 s timeout.
    assert "kexec -e: the node still runs its deploy env" in log, log[-2000:]
    assert "timed out" not in log
    assert f"ID={served.environment}" in os_release(bed, node, user_key)
