"""make-image: real tar and ext4 images of a busybox environment, and their descriptions."""

from __future__ import annotations

import gzip
import lzma
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path
from typing import BinaryIO

import pytest
import yaml
import zstandard

from kadeploy_testbed.image import (
    APPLETS,
    ENV_MARKER,
    Compression,
    ImageKind,
    ImageResult,
    MakeImageError,
    is_testbed_kernel,
    make_image,
)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
MIB = 1024 * 1024


def open_decompressed(path: Path, compression: str) -> BinaryIO:
    if compression == "gzip":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if compression == "xz":
        return lzma.open(path, "rb")  # type: ignore[return-value]
    if compression == "zstd":
        return zstandard.ZstdDecompressor().stream_reader(path.open("rb"), closefd=True)
    return path.open("rb")


def tar_members(result: ImageResult) -> dict[str, tuple[tarfile.TarInfo, bytes | None]]:
    members: dict[str, tuple[tarfile.TarInfo, bytes | None]] = {}
    with (
        open_decompressed(result.image, result.compression) as raw,
        tarfile.open(fileobj=raw, mode="r|") as tar,
    ):
        for info in tar:
            data = None
            if info.isfile():
                extracted = tar.extractfile(info)
                assert extracted is not None
                data = extracted.read()
            name = info.name.removeprefix("./") or "."
            members[name] = (info, data)
    return members


def decompress_to(result: ImageResult, target: Path) -> Path:
    with open_decompressed(result.image, result.compression) as raw, target.open("wb") as out:
        shutil.copyfileobj(raw, out)
    return target


def debugfs(image: Path, request: str) -> str:
    done = subprocess.run(
        ["debugfs", "-R", request, str(image)], capture_output=True, text=True, check=True
    )
    return done.stdout


@pytest.mark.parametrize("compression", ["zstd", "gzip", "xz", "none"])
def test_tar_image_contents(tmp_path: Path, compression: Compression) -> None:
    result = make_image(tmp_path / "env", name="debian-min", compression=compression, version=3)
    suffix = {"zstd": ".tar.zst", "gzip": ".tar.gz", "xz": ".tar.xz", "none": ".tar"}[compression]
    assert result.image == tmp_path / f"env{suffix}"
    assert result.description == tmp_path / "env.yaml"
    assert result.size == result.image.stat().st_size
    members = tar_members(result)

    for info, _ in members.values():
        assert (info.uid, info.gid) == (0, 0)
    root_dir, _ = members["."]
    assert stat.S_IMODE(root_dir.mode) == 0o755
    busybox, busybox_bytes = members["bin/busybox"]
    assert busybox.isfile() and stat.S_IMODE(busybox.mode) == 0o755
    assert busybox_bytes == Path("/bin/busybox").read_bytes()
    for applet in APPLETS:
        link, _ = members[f"bin/{applet}"]
        assert link.issym() and link.linkname == "busybox", applet
    bash, bash_bytes = members["bin/bash"]
    assert stat.S_IMODE(bash.mode) == 0o755
    assert bash_bytes == b'#!/bin/sh\nexec /bin/sh "$@"\n'
    os_release = members["etc/os-release"][1]
    assert os_release is not None
    lines = os_release.decode().splitlines()
    assert {"ID=debian-min", 'VERSION_ID="3"', ENV_MARKER} <= set(lines)
    assert any(line.startswith("PRETTY_NAME=") and "debian-min" in line for line in lines)
    assert members["etc/passwd"][1] == b"root:x:0:0:root:/root:/bin/sh\n"
    assert members["etc/group"][1] == b"root:x:0:\n"
    assert stat.S_IMODE(members["root/.ssh"][0].mode) == 0o700
    assert not [name for name in members if name.startswith("root/.ssh/")]
    assert stat.S_IMODE(members["tmp"][0].mode) == 0o1777
    for directory in ("proc", "sys", "dev", "mnt", "tmp"):
        assert members[directory][0].isdir()
        assert not [name for name in members if name.startswith(f"{directory}/")]
    assert members["boot/vmlinuz"][1] == result.kernel
    assert members["boot/initrd.img"][1] == result.initrd
    assert "var/padding.bin" not in members


def test_description_file(tmp_path: Path) -> None:
    result = make_image(tmp_path / "debian-min.tar.zst", name="debian-min", version=2)
    assert result.description == tmp_path / "debian-min.yaml"
    text = result.description.read_text()
    assert "partition_type: 0x83\n" in text
    assert yaml.safe_load(text) == {
        "name": "debian-min",
        "version": 2,
        "description": "Minimal busybox environment built by kadeploy-testbed make-image",
        "author": "kadeploy-testbed",
        "visibility": "public",
        "destructive": False,
        "os": "linux",
        "image": {"file": "debian-min.tar.zst", "kind": "tar", "compression": "zstd"},
        "postinstalls": [],
        "boot": {
            "kernel": "/boot/vmlinuz",
            "initrd": "/boot/initrd.img",
            "kernel_params": "console=ttyS0",
        },
        "filesystem": "ext4",
        "partition_type": 0x83,
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["debian-min.tar.zst", "debian-min.yaml"]


def test_kernels_are_unique_per_build(tmp_path: Path) -> None:
    first = make_image(tmp_path / "a", name="same")
    second = make_image(tmp_path / "b", name="same")
    assert is_testbed_kernel(first.kernel) and is_testbed_kernel(second.kernel)
    assert first.kernel != second.kernel and first.initrd != second.initrd
    assert first.kernel != first.initrd
    assert b"name=same\nversion=1\n" in first.kernel


@pytest.mark.parametrize(("kind", "compression"), [("tar", "zstd"), ("dd", "gzip")])
def test_padding_makes_the_image_about_the_requested_size(
    tmp_path: Path, kind: ImageKind, compression: Compression
) -> None:
    result = make_image(tmp_path / "big", kind=kind, compression=compression, size_mb=6)
    assert 5.9 * MIB <= result.size <= 6.1 * MIB


@pytest.mark.parametrize("compression", ["zstd", "gzip", "xz", "none"])
def test_dd_image_is_an_ext4_filesystem(tmp_path: Path, compression: Compression) -> None:
    result = make_image(tmp_path / "env", kind="dd", compression=compression, name="ddenv")
    suffix = {"zstd": ".ext4.zst", "gzip": ".ext4.gz", "xz": ".ext4.xz", "none": ".ext4"}
    assert result.image.name == "env" + suffix[compression]
    assert yaml.safe_load(result.description.read_text())["image"] == {
        "file": result.image.name,
        "kind": "dd",
        "compression": compression,
    }
    raw = decompress_to(result, tmp_path / "raw.ext4")
    assert "ID=ddenv" in debugfs(raw, "cat /etc/os-release").splitlines()
    assert 'Fast link dest: "busybox"' in debugfs(raw, "stat /bin/sh")
    assert debugfs(raw, "cat /boot/vmlinuz").encode() == result.kernel


@pytest.mark.root
@needs_root
def test_dd_image_loop_mounts_in_a_private_namespace(tmp_path: Path) -> None:
    result = make_image(tmp_path / "env", kind="dd", compression="zstd")
    raw = decompress_to(result, tmp_path / "raw.ext4")
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    # Mount, read and unmount in a private mount namespace: nothing outlives the command, and
    # mount's loop device is released (autoclear) when it is unmounted.
    script = 'mount -o loop,ro "$1" "$2" && cat "$2/etc/os-release" && ls -l "$2/bin/sh"; s=$?; umount "$2"; exit $s'
    done = subprocess.run(
        [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
            str(raw),
            str(mountpoint),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert ENV_MARKER in done.stdout
    assert "/bin/sh -> busybox" in done.stdout
    leftover = subprocess.run(
        ["losetup", "-j", str(raw)], capture_output=True, text=True, check=True
    )
    assert leftover.stdout == ""


@pytest.mark.root
@needs_root
def test_extracted_tar_runs_in_a_chroot(tmp_path: Path) -> None:
    result = make_image(tmp_path / "env", compression="zstd")
    root = tmp_path / "root"
    root.mkdir()
    subprocess.run(["tar", "-x", "-f", str(result.image), "-C", str(root)], check=True)
    for shell in ("/bin/sh", "/bin/bash"):
        done = subprocess.run(
            ["chroot", str(root), shell, "-c", "cat /etc/os-release; id -u; ls /root/.ssh | wc -l"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert ENV_MARKER in lines and lines[-2:] == ["0", "0"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "bad name"}, "--name 'bad name'"),
        ({"name": "-x"}, "--name '-x'"),
        ({"kind": "iso"}, "--kind 'iso': expected one of tar, dd"),
        ({"compression": "bzip2"}, "--compression 'bzip2': expected one of gzip, zstd, xz, none"),
        ({"size_mb": -1}, "--size-mb -1"),
        ({"version": 0}, "--version 0"),
        ({"busybox": Path("/nonexistent/busybox")}, "install the Debian package busybox-static"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(MakeImageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make_image(tmp_path / "env", **kwargs)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_mismatched_suffix_and_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(
        MakeImageError,
        match=r"suffix '.tar.gz' does not match --kind tar --compression zstd; use .*env.tar.zst",
    ):
        make_image(tmp_path / "env.tar.gz", compression="zstd")
    with pytest.raises(MakeImageError, match="does not exist"):
        make_image(tmp_path / "missing" / "env")
    assert list(tmp_path.iterdir()) == []
