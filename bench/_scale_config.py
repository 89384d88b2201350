"""A daemon configuration of N nodes whose three macrosteps are all ``dummy``, and a tiny image.

Shared by ``bench/control_plane.py`` and ``tests/test_scale.py``: no node is ever contacted, so
a deployment measures (or exercises) only the daemon's own work. Only the standard library,
PyYAML and zstandard are used, so it works whatever the daemon's internals look like.

nodes.conf holds one range entry per block of 100 nodes (``node-[1-100]``,
``node-[101-200]``...): an address range ``10.A.B.[1-100]`` and a MAC range
``02:00:00:XX:YY:[00-99]`` (a range is decimal, so one MAC octet holds at most 100 values).
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import yaml
import zstandard

CLUSTER = "scale"
BLOCK = 100
"""Nodes per nodes.conf entry (the MAC's last octet is a decimal range 00-99)."""
MAX_NODES = BLOCK * 100 * 100
STEP_TIMEOUT = 600
"""Seconds each dummy macrostep may take: far above any run, so a slow daemon shows up as
slow, not as nodes failing on a timeout."""


def node_names(count: int) -> list[str]:
    """``node-1`` .. ``node-<count>``, the names :func:`write_dummy_config` defines."""
    return [f"node-{index}" for index in range(1, count + 1)]


def write_dummy_config(
    conf_dir: Path,
    nodes: int,
    *,
    state_dir: Path | None = None,
    log_level: str = "info",
    step_timeout: float = STEP_TIMEOUT,
    admins: tuple[str, ...] = ("root",),
) -> Path:
    """Write deploy.conf, clusters/scale.conf and nodes.conf for ``nodes`` dummy nodes.

    The daemon's state (database, socket, log) goes to ``state_dir`` (default
    ``conf_dir/state``); its TFTP server binds a free port on 127.0.0.1. ``admins`` are the
    daemon's almighty users (they may deploy on every node without rights).
    """
    if not 1 <= nodes <= MAX_NODES:
        raise ValueError(f"nodes: expected 1 to {MAX_NODES}; got {nodes}")
    state = state_dir if state_dir is not None else conf_dir / "state"
    (conf_dir / "clusters").mkdir(parents=True, exist_ok=True)
    dummy = [{"type": "dummy", "retries": 0, "timeout": step_timeout}]
    deploy = {
        "daemon": {
            "state_dir": str(state),
            "log_level": log_level,
            "almighty_users": list(admins),
            "tftp": {"listen": "127.0.0.1", "port": 0},
        },
        "power": {"reboot_soft": ["false"]},
        "boot": {"deploy_kernel": "kernels/deploy"},
        "automata": {
            "macrosteps": {
                "SetDeploymentEnv": dummy,
                "BroadcastEnv": dummy,
                "BootNewEnv": dummy,
            }
        },
    }
    (conf_dir / "deploy.conf").write_text(yaml.safe_dump(deploy, sort_keys=False))
    (conf_dir / "clusters" / f"{CLUSTER}.conf").write_text("disk: {block_device: /dev/vdz}\n")
    lines = []
    for block, first in enumerate(range(1, nodes + 1, BLOCK)):
        count = min(BLOCK, nodes - first + 1)
        last = first + count - 1
        name = f"node-[{first}-{last}]" if count > 1 else f"node-{first}"
        net = f"10.{1 + block // 256}.{block % 256}"
        mac = f"02:00:00:{block // 100:02d}:{block % 100:02d}"
        if count > 1:
            address, macs = f"{net}.[1-{count}]", f"{mac}:[00-{count - 1:02d}]"
        else:
            address, macs = f"{net}.1", f"{mac}:00"
        lines.append(f"{name}:\n  cluster: {CLUSTER}\n  address: {address}\n  mac: {macs}\n")
    (conf_dir / "nodes.conf").write_text("".join(lines))
    return conf_dir


def write_environment(directory: Path, name: str = "scale") -> Path:
    """A tar+zstd image holding a kernel, an initrd and /etc/os-release, and its description
    (``<name>.yaml``, naming ``<name>.tar.zst`` relatively); the description's path."""
    directory.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        files = {
            "etc/os-release": f"ID={name}\n".encode(),
            "boot/vmlinuz": f"KERNEL {name}".encode(),
            "boot/initrd.img": f"INITRD {name}".encode(),
        }
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    image = directory / f"{name}.tar.zst"
    image.write_bytes(zstandard.ZstdCompressor().compress(buffer.getvalue()))
    description = directory / f"{name}.yaml"
    description.write_text(
        yaml.safe_dump(
            {
                "name": name,
                "version": 1,
                "os": "linux",
                "image": {"file": image.name, "kind": "tar", "compression": "zstd"},
                "boot": {"kernel": "/boot/vmlinuz", "initrd": "/boot/initrd.img"},
                "filesystem": "ext4",
            },
            sort_keys=False,
        )
    )
    return description
