"""Boot files out of a compressed image: streamed to the TFTP root within limits, never whole
in memory, nothing left behind by a refusal, removed when asked.

The images are zstd tar bombs built by streaming zero bytes through ``tarfile`` and
``zstandard`` (a few KiB on disk, hundreds of MiB once expanded), so the test itself stays
small. Publishing runs in a fresh interpreter whose peak RSS is read before and after.
"""

from __future__ import annotations

import io
import json
import lzma
import os
import subprocess
import sys
import tarfile
import textwrap
import time
import zlib
from pathlib import Path

import pytest
import zstandard

from kadeploy_core.errors import EnvironmentError_, ImageError
from kadeployd.environment import load_environment
from kadeployd.environment.bootfiles import (
    BootFileLimits,
    publish_boot_files,
    read_boot_files,
    remove_boot_files,
    sweep_boot_files,
)
from kadeployd.pxe.profiles import ChainPartition, NetworkKernel, profile_path, render_profile

MIB = 1 << 20
MAX_RSS_DELTA = 50 * MIB


class Zeros(io.RawIOBase):
    """``size`` zero bytes, produced as they are read."""

    def __init__(self, size: int) -> None:
        self._left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        count = min(len(buffer), self._left)
        buffer[:count] = b"\0" * count
        self._left -= count
        return count


def bomb(directory: Path, kernel: int, initrd: int | None) -> Path:
    """A ``.tar.zst`` image with /boot/vmlinuz and /boot/initrd.img of those sizes (zeros),
    and its description; returns the description."""
    image = directory / "bomb.tar.zst"
    with (
        image.open("wb") as raw,
        zstandard.ZstdCompressor(level=1).stream_writer(raw, closefd=False) as compressed,
        tarfile.open(fileobj=compressed, mode="w|") as tar,
    ):
        members = {"boot/vmlinuz": kernel} | ({"boot/initrd.img": initrd} if initrd else {})
        for name, size in members.items():
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, Zeros(size))
    initrd_line = ", initrd: /boot/initrd.img" if initrd else ""
    description = directory / "bomb.yaml"
    description.write_text(
        textwrap.dedent(
            f"""\
            name: bomb
            version: 1
            os: linux
            image: {{file: bomb.tar.zst, kind: tar, compression: zstd}}
            boot: {{kernel: /boot/vmlinuz{initrd_line}}}
            """
        )
    )
    return description


PROBE = """
import json, resource, sys
from pathlib import Path
from kadeploy_core.errors import KadeployError
from kadeployd.environment import load_environment
from kadeployd.environment.bootfiles import BootFileLimits, publish_boot_files
description, root, per_file, total = sys.argv[1:5]
env = load_environment(Path(description))
limits = BootFileLimits(per_file=int(per_file), total=int(total))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    published = publish_boot_files(env, Path(root), "bomb-1-abcdef01", limits)
    outcome = {"published": [published.kernel, published.initrd], "size": published.size}
except KadeployError as exc:
    outcome = {"refused": str(exc)}
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({**outcome, "delta": (after - before) * 1024}))
"""


def publish_in_subprocess(
    description: Path, root: Path, limits: BootFileLimits
) -> dict[str, object]:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            PROBE,
            str(description),
            str(root),
            str(limits.per_file),
            str(limits.total),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, object] = json.loads(done.stdout)
    return result


def leftovers(root: Path) -> list[Path]:
    return sorted((root / "envs").rglob("*")) if (root / "envs").exists() else []


def test_a_bomb_past_the_limit_on_both_files_is_refused_with_bounded_memory(tmp_path: Path) -> None:
    """96 MiB each under a 128 MiB per-file and 160 MiB total limit: the kernel is streamed to
    disk, the initrd refused by its header; nothing stays, memory never held a file."""
    description = bomb(tmp_path, 96 * MIB, 96 * MIB)
    assert (tmp_path / "bomb.tar.zst").stat().st_size < 64 * 1024
    root = tmp_path / "tftp"
    result = publish_in_subprocess(
        description, root, BootFileLimits(per_file=128 * MIB, total=160 * MIB)
    )
    refused = str(result["refused"])
    assert "boot.initrd" in refused
    assert f"/boot/initrd.img is {96 * MIB} bytes" in refused
    assert f"more than the limit on boot files together of {160 * MIB} bytes" in refused
    assert "daemon.max_boot_files_mib" in refused
    assert isinstance(result["delta"], int) and result["delta"] < MAX_RSS_DELTA, result
    assert leftovers(root) == []


def test_the_reported_bomb_is_refused_at_the_default_limits(tmp_path: Path) -> None:
    """The image of the report (512 MiB each, 32 KiB compressed): refused by the total, the
    kernel written then removed."""
    description = bomb(tmp_path, 512 * MIB, 512 * MIB)
    root = tmp_path / "tftp"
    result = publish_in_subprocess(description, root, BootFileLimits())
    assert "daemon.max_boot_files_mib" in str(result["refused"]), result
    assert isinstance(result["delta"], int) and result["delta"] < MAX_RSS_DELTA, result
    assert leftovers(root) == []


def test_a_file_past_the_per_file_limit_is_refused_before_it_is_read(tmp_path: Path) -> None:
    description = bomb(tmp_path, 40 * MIB, None)
    env = load_environment(description)
    root = tmp_path / "tftp"
    with pytest.raises(EnvironmentError_) as caught:
        publish_boot_files(env, root, "bomb-1", BootFileLimits(per_file=32 * MIB, total=64 * MIB))
    (problem,) = caught.value.problems
    assert problem.path == "boot.kernel"
    assert problem.message.endswith(
        f"more than the limit of {32 * MIB} bytes (daemon.max_boot_file_mib)"
    )
    assert leftovers(root) == []


def test_large_boot_files_are_published_with_bounded_memory_then_removed(tmp_path: Path) -> None:
    description = bomb(tmp_path, 96 * MIB, 32 * MIB)
    root = tmp_path / "tftp"
    result = publish_in_subprocess(description, root, BootFileLimits())
    assert result["published"] == ["envs/bomb-1-abcdef01/vmlinuz", "envs/bomb-1-abcdef01/initrd"]
    assert result["size"] == 128 * MIB
    assert isinstance(result["delta"], int) and result["delta"] < MAX_RSS_DELTA, result
    directory = root / "envs" / "bomb-1-abcdef01"
    assert sorted(p.name for p in directory.iterdir()) == ["initrd", "vmlinuz"]
    assert (directory / "vmlinuz").stat().st_size == 96 * MIB
    assert (directory / "initrd").stat().st_size == 32 * MIB
    assert remove_boot_files(root, "bomb-1-abcdef01") is True
    assert leftovers(root) == []
    assert remove_boot_files(root, "bomb-1-abcdef01") is False


def test_published_content_and_a_shared_kernel_initrd(tmp_path: Path) -> None:
    """Small real content round-trips; an initrd that is the kernel's file is copied."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in (("boot/vmlinuz-6.1", b"KERNEL" * 1000), ("boot/initrd.img", b"INITRD")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("boot/vmlinuz")
        link.type = tarfile.SYMTYPE
        link.linkname = "vmlinuz-6.1"
        tar.addfile(link)
    (tmp_path / "img.tar.zst").write_bytes(zstandard.ZstdCompressor().compress(buffer.getvalue()))
    (tmp_path / "env.yaml").write_text(
        "name: e\nversion: 1\nos: linux\nimage: {file: img.tar.zst, kind: tar, compression: zstd}\n"
        "boot: {kernel: /boot/vmlinuz, initrd: /boot/vmlinuz-6.1}\n"
    )
    env = load_environment(tmp_path / "env.yaml")
    root = tmp_path / "tftp"
    published = publish_boot_files(env, root, "e-1")
    assert (published.kernel, published.initrd) == ("envs/e-1/vmlinuz", "envs/e-1/initrd")
    assert (root / published.kernel).read_bytes() == b"KERNEL" * 1000
    assert (root / "envs/e-1/initrd").read_bytes() == b"KERNEL" * 1000
    assert sorted(p.name for p in (root / "envs/e-1").iterdir()) == ["initrd", "vmlinuz"]
    assert read_boot_files(env).kernel == b"KERNEL" * 1000


def test_a_bad_key_names_no_other_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="boot files key"):
        remove_boot_files(tmp_path, "../etc")


def test_boot_files_stay_while_a_profile_names_them(tmp_path: Path) -> None:
    """A deployed node boots its environment's kernel from envs/<key>/: those files are swept
    only once no profile names them (the node deployed again or reset)."""
    description = bomb(tmp_path, 4 * MIB, MIB)
    env = load_environment(description)
    root = tmp_path / "tftp"
    deployed = publish_boot_files(env, root, "bomb-1-deployed")
    publish_boot_files(env, root, "bomb-1-aborted")
    publish_boot_files(env, root, "bomb-1-running")
    profile = root / profile_path("02:00:00:00:09:01")
    profile.parent.mkdir(parents=True)
    profile.write_text(render_profile(NetworkKernel(deployed.kernel, deployed.initrd, "quiet")))
    assert sweep_boot_files(root, keep=["bomb-1-running"]) == []  # all younger than the grace
    for key in ("bomb-1-deployed", "bomb-1-aborted", "bomb-1-running"):
        age(root / "envs" / key)
    assert sweep_boot_files(root, keep=["bomb-1-running"]) == ["bomb-1-aborted"]
    assert sorted(p.name for p in (root / "envs").iterdir()) == [
        "bomb-1-deployed",
        "bomb-1-running",
    ]
    profile.write_text(render_profile(ChainPartition(0, 2)))  # the node was reset
    assert sorted(sweep_boot_files(root)) == ["bomb-1-deployed", "bomb-1-running"]
    assert leftovers(root) == []


def age(path: Path, seconds: float = 3600) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def pax_bomb(directory: Path, header_bytes: int) -> Path:
    """A ``.tar.zst`` whose first member is a pax extended header of ``header_bytes``
    (tarfile reads such a header whole), then a kernel; returns its description."""
    image = directory / "bomb.tar.zst"
    header = tarfile.TarInfo("././@PaxHeader")
    header.type = tarfile.XHDTYPE
    header.size = header_bytes
    kernel = tarfile.TarInfo("boot/vmlinuz")
    kernel.size = 6
    with (
        image.open("wb") as raw,
        zstandard.ZstdCompressor(level=1).stream_writer(raw, closefd=False) as compressed,
    ):
        compressed.write(header.tobuf(format=tarfile.USTAR_FORMAT))
        zeros = Zeros(header_bytes + (-header_bytes % tarfile.BLOCKSIZE))
        while chunk := zeros.read(MIB):
            compressed.write(chunk)
        compressed.write(kernel.tobuf(format=tarfile.USTAR_FORMAT) + b"KERNEL".ljust(512, b"\0"))
        compressed.write(b"\0" * 1024)
    (directory / "bomb.yaml").write_text(
        "name: bomb\nversion: 1\nos: linux\n"
        "image: {file: bomb.tar.zst, kind: tar, compression: zstd}\nboot: {kernel: /boot/vmlinuz}\n"
    )
    return directory / "bomb.yaml"


def test_a_huge_extended_header_is_refused_with_bounded_memory(tmp_path: Path) -> None:
    description = pax_bomb(tmp_path, 200 * MIB)
    assert (tmp_path / "bomb.tar.zst").stat().st_size < 64 * 1024
    root = tmp_path / "tftp"
    result = publish_in_subprocess(description, root, BootFileLimits())
    refused = str(result["refused"])
    assert (
        "not a valid tar archive" in refused and f"extended header of {200 * MIB} bytes" in refused
    )
    assert isinstance(result["delta"], int) and result["delta"] < MAX_RSS_DELTA, result
    assert leftovers(root) == []


def xz_declaring_a_huge_dictionary(data: bytes) -> bytes:
    """``data`` as xz whose block header declares a 1 GiB LZMA2 dictionary (written with a
    small one, then the property byte and the header's CRC32 changed: encoding with a real
    1 GiB dictionary would cost the test a GiB)."""
    xz = bytearray(lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32))
    start = 12  # after the stream header
    size = (xz[start] + 1) * 4
    assert xz[start + 1] == 0 and xz[start + 2] == 0x21 and xz[start + 3] == 1  # one LZMA2 filter
    xz[start + 4] = 36  # dictionary 2 << (36 // 2 + 11) = 1 GiB
    crc = zlib.crc32(bytes(xz[start : start + size - 4]))
    xz[start + size - 4 : start + size] = crc.to_bytes(4, "little")
    return bytes(xz)


def test_an_xz_image_declaring_a_huge_dictionary_is_refused(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("boot/vmlinuz")
        info.size = 6
        tar.addfile(info, io.BytesIO(b"KERNEL"))
    (tmp_path / "img.tar.xz").write_bytes(xz_declaring_a_huge_dictionary(buffer.getvalue()))
    (tmp_path / "env.yaml").write_text(
        "name: e\nversion: 1\nos: linux\nimage: {file: img.tar.xz, kind: tar, compression: xz}\n"
        "boot: {kernel: /boot/vmlinuz}\n"
    )
    env = load_environment(tmp_path / "env.yaml")
    with pytest.raises(ImageError, match="larger than the 128 MiB kadeployd accepts"):
        publish_boot_files(env, tmp_path / "tftp", "e-1")
    assert leftovers(tmp_path / "tftp") == []
    # The same image with its real (small) dictionary is read.
    (tmp_path / "img.tar.xz").write_bytes(lzma.compress(buffer.getvalue(), format=lzma.FORMAT_XZ))
    assert read_boot_files(env).kernel == b"KERNEL"
