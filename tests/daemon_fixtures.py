"""Helpers to run the daemon's actor tree in a test: config dirs, images, waiting on the store."""

from __future__ import annotations

import io
import tarfile
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pykka
import pytest
import waiting
import zstandard

from kadeployd.daemon import Daemon
from kadeployd.environment import EnvironmentDescription, load_environment
from kadeployd.store.records import DeploymentView
from kadeployd.workflow.job import DeploymentRequest

T = TypeVar("T")


def wait_until(probe: Callable[[], T | None], timeout: float, what: str) -> T:
    """Poll ``probe`` until it returns something truthy (see :mod:`waiting`)."""
    return waiting.wait_until(probe, timeout, what)  # type: ignore[return-value]


def make_tar_environment(directory: Path, name: str = "tiny", with_kernel: bool = True) -> Path:
    """A zstd tar image holding /boot/vmlinuz and /etc/os-release, and its description."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        files = {"etc/os-release": f"ID={name}\n".encode()}
        if with_kernel:
            files["boot/vmlinuz"] = b"KERNEL " + name.encode()
            files["boot/initrd.img"] = b"INITRD " + name.encode()
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    image = directory / f"{name}.tar.zst"
    image.write_bytes(zstandard.ZstdCompressor().compress(buffer.getvalue()))
    description = directory / f"{name}.yaml"
    description.write_text(
        textwrap.dedent(
            f"""\
            name: {name}
            version: 1
            os: linux
            image: {{file: {image.name}, kind: tar, compression: zstd}}
            boot: {{kernel: /boot/vmlinuz, initrd: /boot/initrd.img}}
            filesystem: ext4
            """
        )
    )
    return description


def dummy_config(
    directory: Path, node_overrides: dict[int, str] | None = None, nodes: int = 4
) -> Path:
    """A config of ``nodes`` nodes whose macrosteps are all dummy, with per-node YAML overrides."""
    (directory / "clusters").mkdir(parents=True)
    (directory / "deploy.conf").write_text(
        textwrap.dedent(
            f"""\
            daemon:
              state_dir: {directory / "state"}
              tftp: {{listen: 127.0.0.1, port: 0}}
              reboot_window: 8
            ssh: {{connect_timeout: 1, command_timeout: 10}}
            power:
              command_timeout: 60
              reboot_soft: ["false"]
            boot: {{deploy_kernel: kernels/deploy, check_interval: 0.2}}
            automata:
              macrosteps:
                SetDeploymentEnv: [{{type: dummy, retries: 0, timeout: 60}}]
                BroadcastEnv: [{{type: dummy, retries: 0, timeout: 60}}]
                BootNewEnv: [{{type: dummy, retries: 0, timeout: 60}}]
            """
        )
    )
    (directory / "clusters" / "tiny.conf").write_text("disk: {block_device: /dev/vdz}\n")
    lines = []
    for index in range(1, nodes + 1):
        lines.append(
            f"n-{index}:\n  cluster: tiny\n  address: 127.0.9.{index}\n  mac: 02:00:00:00:09:{index:02d}\n"
        )
        if node_overrides and index in node_overrides:
            lines.append(textwrap.indent(textwrap.dedent(node_overrides[index]), "  "))
    (directory / "nodes.conf").write_text("".join(lines))
    return directory


@pytest.fixture
def stop_all_actors() -> Iterator[None]:
    """Leave no actor behind a test."""
    yield
    pykka.ActorRegistry.stop_all(timeout=10)


def request(
    environment: EnvironmentDescription | Path, nodes: int = 4, **options: object
) -> DeploymentRequest:
    """A deployment request of user 'alice' for n-1..n-<nodes>."""
    env = (
        environment
        if isinstance(environment, EnvironmentDescription)
        else load_environment(environment)
    )
    return DeploymentRequest(
        user="alice",
        environment=env,
        nodes=tuple(f"n-{i}" for i in range(1, nodes + 1)),
        **options,  # type: ignore[arg-type]
    )


def finished(daemon: Daemon, deployment_id: str, timeout: float = 60) -> DeploymentView:
    """Wait until the deployment is finished in the store; its view."""
    reader = daemon.reader()

    def done() -> DeploymentView | None:
        view = reader.deployment(deployment_id)
        return view if view.status != "running" else None

    return wait_until(done, timeout, f"deployment {deployment_id} to finish")
