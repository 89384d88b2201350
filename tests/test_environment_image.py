"""Reading images: decompression streams, SHA-256, and boot files out of real tar images."""

from __future__ import annotations

import gzip
import hashlib
import logging
import lzma
import os
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard

from kadeploy_core.errors import EnvironmentError_, ImageError
from kadeployd.environment import (
    BootFiles,
    Compression,
    EnvironmentDescription,
    decompressed_sha256,
    image_sha256,
    load_environment,
    open_image_stream,
    read_boot_files,
    sniff_compression,
)
from kadeployd.environment.image import checks_itself
from kadeployd.environment.zstdframes import FrameTracker, ZstdFrameError

KERNEL = b"\x7fKERNEL" + os.urandom(300_000)  # several tar blocks, incompressible
INITRD = b"INITRD" + os.urandom(70_000)
SECOND_PASS = "second pass"

ALL_COMPRESSIONS = list(Compression)
SUFFIX = {
    Compression.GZIP: ".tar.gz",
    Compression.ZSTD: ".tar.zst",
    Compression.XZ: ".tar.xz",
    Compression.NONE: ".tar",
}


def compress(data: bytes, compression: Compression) -> bytes:
    if compression is Compression.GZIP:
        return gzip.compress(data)
    if compression is Compression.XZ:
        return lzma.compress(data)
    if compression is Compression.ZSTD:
        return zstandard.ZstdCompressor().compress(data)
    return data


def make_rootfs(root: Path) -> Path:
    """A small Debian-like root: boot/vmlinuz -> vmlinuz-6.1, /vmlinuz -> boot/vmlinuz-6.1."""
    (root / "boot").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "boot" / "vmlinuz-6.1").write_bytes(KERNEL)
    (root / "boot" / "initrd.img-6.1").write_bytes(INITRD)
    (root / "boot" / "vmlinuz").symlink_to("vmlinuz-6.1")
    (root / "boot" / "initrd.img").symlink_to("initrd.img-6.1")
    (root / "vmlinuz").symlink_to("boot/vmlinuz-6.1")
    (root / "initrd.img").symlink_to("/boot/initrd.img-6.1")
    (root / "etc" / "os-release").write_text('PRETTY_NAME="test"\n')
    return root


def make_tar(root: Path, order: list[str], prefix: str = "./") -> bytes:
    """A tar of ``root``'s paths in exactly this ``order`` (no recursion), names ``prefix``ed."""
    out = root.parent / f"{root.name}.tar"
    with tarfile.open(out, "w", format=tarfile.GNU_FORMAT) as tar:
        for name in order:
            tar.add(root / name, arcname=prefix + name, recursive=False)
    return out.read_bytes()


def write_image(directory: Path, tar_bytes: bytes, compression: Compression) -> Path:
    image = directory / ("image" + SUFFIX[compression])
    image.write_bytes(compress(tar_bytes, compression))
    return image


def describe(
    image: Path,
    compression: Compression,
    kernel: str = "/boot/vmlinuz",
    initrd: str | None = "/boot/initrd.img",
    kind: str = "tar",
) -> EnvironmentDescription:
    """Write a description of ``image`` beside it and load it."""
    lines = [
        "name: test-env",
        "version: 1",
        "os: linux",
        f"image: {{file: {image.name}, kind: {kind}, compression: {compression.value}}}",
        "boot:",
        f"  kernel: {kernel}",
    ]
    if initrd is not None:
        lines.append(f"  initrd: {initrd}")
    lines.append("filesystem: ext4")
    path = image.parent / "env.yaml"
    path.write_text("\n".join(lines) + "\n")
    return load_environment(path)


ImageFactory = Callable[..., EnvironmentDescription]


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    return make_rootfs(tmp_path / "rootfs")


SORTED = [
    "boot",
    "boot/initrd.img",
    "boot/initrd.img-6.1",
    "boot/vmlinuz",
    "boot/vmlinuz-6.1",
    "etc",
    "etc/os-release",
    "initrd.img",
    "vmlinuz",
]


@pytest.mark.parametrize("compression", ALL_COMPRESSIONS)
def test_boot_files_through_symlinks_in_every_compression(
    rootfs: Path, compression: Compression, caplog: pytest.LogCaptureFixture
) -> None:
    image = write_image(rootfs.parent, make_tar(rootfs, SORTED), compression)
    env = describe(image, compression)
    with caplog.at_level(logging.DEBUG, logger="kadeployd.environment.bootfiles"):
        boot = read_boot_files(env)
    assert boot == BootFiles(KERNEL, INITRD, "/boot/vmlinuz-6.1", "/boot/initrd.img-6.1")
    # The links come before their targets in this archive: followed forward, one pass.
    assert SECOND_PASS not in caplog.text


@pytest.mark.parametrize("prefix", ["./", "", "/"])
def test_member_names_match_whatever_their_prefix(rootfs: Path, prefix: str) -> None:
    order = ["boot", "boot/vmlinuz-6.1", "boot/initrd.img-6.1"]
    image = write_image(rootfs.parent, make_tar(rootfs, order, prefix), Compression.GZIP)
    env = describe(image, Compression.GZIP, "/boot/vmlinuz-6.1", "/boot/initrd.img-6.1")
    assert read_boot_files(env) == BootFiles(
        KERNEL, INITRD, "/boot/vmlinuz-6.1", "/boot/initrd.img-6.1"
    )


def test_link_after_its_target_needs_a_second_pass(
    rootfs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    order = ["boot", "boot/vmlinuz-6.1", "boot/initrd.img-6.1", "boot/vmlinuz", "etc"]
    image = write_image(rootfs.parent, make_tar(rootfs, order), Compression.ZSTD)
    env = describe(image, Compression.ZSTD, initrd="/boot/initrd.img-6.1")
    with caplog.at_level(logging.DEBUG, logger="kadeployd.environment.bootfiles"):
        boot = read_boot_files(env)
    assert boot.kernel == KERNEL
    assert boot.initrd == INITRD
    assert boot.kernel_path == "/boot/vmlinuz-6.1"
    assert SECOND_PASS in caplog.text


def test_root_links_relative_and_absolute(rootfs: Path) -> None:
    # Debian's /vmlinuz -> boot/vmlinuz-6.1 and an absolute link /initrd.img -> /boot/...
    image = write_image(rootfs.parent, make_tar(rootfs, SORTED), Compression.XZ)
    env = describe(image, Compression.XZ, "/vmlinuz", "/initrd.img")
    assert read_boot_files(env) == BootFiles(
        KERNEL, INITRD, "/boot/vmlinuz-6.1", "/boot/initrd.img-6.1"
    )


def test_link_through_a_linked_directory(rootfs: Path) -> None:
    (rootfs / "kernels").symlink_to("boot")
    order = ["boot", "boot/vmlinuz-6.1", "kernels"]
    image = write_image(rootfs.parent, make_tar(rootfs, order), Compression.GZIP)
    env = describe(image, Compression.GZIP, "/kernels/vmlinuz-6.1", initrd=None)
    assert read_boot_files(env) == BootFiles(KERNEL, None, "/boot/vmlinuz-6.1", None)


def test_hard_linked_kernel(rootfs: Path) -> None:
    os.link(rootfs / "boot" / "vmlinuz-6.1", rootfs / "boot" / "vmlinuz-hard")
    order = ["boot", "boot/vmlinuz-6.1", "boot/vmlinuz-hard"]
    tar_bytes = make_tar(rootfs, order)
    with tarfile.open(fileobj=__import__("io").BytesIO(tar_bytes)) as tar:
        assert tar.getmember("./boot/vmlinuz-hard").islnk()
    image = write_image(rootfs.parent, tar_bytes, Compression.NONE)
    env = describe(image, Compression.NONE, "/boot/vmlinuz-hard", initrd=None)
    assert read_boot_files(env).kernel == KERNEL


def test_stops_reading_once_both_files_are_found(rootfs: Path) -> None:
    # Everything after the boot files is garbage: only an early stop can succeed.
    order = ["boot", "boot/vmlinuz-6.1", "boot/initrd.img-6.1"]
    tar_bytes = make_tar(rootfs, order)
    body = tar_bytes[: len(tar_bytes) - 1024]  # without the end-of-archive blocks
    image = write_image(rootfs.parent, body + os.urandom(64 * 1024), Compression.GZIP)
    env = describe(image, Compression.GZIP, "/boot/vmlinuz-6.1", "/boot/initrd.img-6.1")
    assert read_boot_files(env).kernel == KERNEL


def test_tar_without_the_declared_kernel(rootfs: Path) -> None:
    image = write_image(
        rootfs.parent, make_tar(rootfs, ["etc", "etc/os-release"]), Compression.GZIP
    )
    env = describe(image, Compression.GZIP)
    with pytest.raises(EnvironmentError_) as caught:
        read_boot_files(env)
    kernel, initrd = caught.value.problems
    assert kernel.path == "boot.kernel"
    assert kernel.source == str(image.parent / "env.yaml")
    assert kernel.line == 6
    assert kernel.message == f"/boot/vmlinuz not found in image '{image}'"
    assert initrd.path == "boot.initrd"
    assert initrd.message == f"/boot/initrd.img not found in image '{image}'"


def test_dangling_kernel_link(rootfs: Path) -> None:
    image = write_image(rootfs.parent, make_tar(rootfs, ["boot", "boot/vmlinuz"]), Compression.ZSTD)
    env = describe(image, Compression.ZSTD, initrd=None)
    with pytest.raises(EnvironmentError_) as caught:
        read_boot_files(env)
    (problem,) = caught.value.problems
    assert problem.path == "boot.kernel"
    assert problem.message == (
        f"/boot/vmlinuz is a link to /boot/vmlinuz-6.1, which is not in '{image}'"
    )


def test_kernel_link_loop(tmp_path: Path) -> None:
    root = tmp_path / "loop"
    (root / "boot").mkdir(parents=True)
    (root / "boot" / "a").symlink_to("b")
    (root / "boot" / "b").symlink_to("a")
    image = write_image(tmp_path, make_tar(root, ["boot", "boot/a", "boot/b"]), Compression.NONE)
    env = describe(image, Compression.NONE, "/boot/a", initrd=None)
    with pytest.raises(EnvironmentError_, match="loop of symbolic links"):
        read_boot_files(env)


def test_kernel_that_is_a_directory(rootfs: Path) -> None:
    image = write_image(rootfs.parent, make_tar(rootfs, ["boot"]), Compression.NONE)
    env = describe(image, Compression.NONE, "/boot", initrd=None)
    with pytest.raises(EnvironmentError_, match="/boot is a directory"):
        read_boot_files(env)


def test_size_bound(rootfs: Path) -> None:
    image = write_image(rootfs.parent, make_tar(rootfs, SORTED), Compression.GZIP)
    env = describe(image, Compression.GZIP)
    with pytest.raises(EnvironmentError_) as caught:
        read_boot_files(env, max_bytes=100_000)
    (problem,) = caught.value.problems
    assert problem.path == "boot.kernel"
    assert f"is {len(KERNEL)} bytes" in problem.message
    assert "more than the limit of 100000 bytes" in problem.message
    assert read_boot_files(env, max_bytes=len(KERNEL)).kernel == KERNEL


@pytest.mark.parametrize("compression", ALL_COMPRESSIONS)
def test_truncated_image(rootfs: Path, compression: Compression) -> None:
    whole = compress(make_tar(rootfs, SORTED), compression)
    image = rootfs.parent / ("cut" + SUFFIX[compression])
    image.write_bytes(whole[: len(whole) // 2])
    env = describe(image, compression)
    with pytest.raises(ImageError, match="truncated") as caught:
        read_boot_files(env)
    assert str(image) in str(caught.value)


def test_wrong_compression_declared(rootfs: Path) -> None:
    image = write_image(rootfs.parent, make_tar(rootfs, SORTED), Compression.ZSTD)
    env = describe(image, Compression.GZIP)
    with pytest.raises(ImageError) as caught:
        read_boot_files(env)
    message = str(caught.value)
    assert "corrupt gzip data" in message
    assert "the file looks like zstd data but compression says gzip" in message


@pytest.mark.parametrize("compression", ALL_COMPRESSIONS)
def test_not_a_tar_archive(tmp_path: Path, compression: Compression) -> None:
    image = write_image(tmp_path, b"this is no tar archive\n" * 100, compression)
    env = describe(image, compression)
    with pytest.raises(ImageError, match="not a valid tar archive"):
        read_boot_files(env)


def test_corrupt_zstd_frame(rootfs: Path) -> None:
    data = bytearray(compress(make_tar(rootfs, SORTED), Compression.ZSTD))
    data[4:16] = b"\xff" * 12  # the frame header, after the magic number
    image = rootfs.parent / "bad.tar.zst"
    image.write_bytes(bytes(data))
    with pytest.raises(ImageError, match="corrupt zstd data"):
        read_boot_files(describe(image, Compression.ZSTD))


def test_boot_files_of_a_dd_image_are_refused(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(4096))
    env = describe(image, Compression.NONE, kind="dd")
    with pytest.raises(ImageError, match="is a dd image: boot files can only be read out of tar"):
        read_boot_files(env)


@pytest.mark.parametrize("compression", ALL_COMPRESSIONS)
def test_open_image_stream_round_trip(tmp_path: Path, compression: Compression) -> None:
    payload = os.urandom(3 << 20) + b"end"
    image = tmp_path / "blob"
    image.write_bytes(compress(payload, compression))
    with open_image_stream(image, compression) as stream:
        first = stream.read(10)
        rest = stream.read()
    assert first + rest == payload


def test_zstd_stream_across_frames(tmp_path: Path) -> None:
    image = tmp_path / "frames.zst"
    image.write_bytes(compress(b"one ", Compression.ZSTD) + compress(b"two", Compression.ZSTD))
    with open_image_stream(image, Compression.ZSTD) as stream:
        assert stream.read() == b"one two"


def test_open_missing_image(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="cannot open: No such file or directory"):
        open_image_stream(tmp_path / "nope", Compression.GZIP)


def test_sha256_of_the_stored_file(tmp_path: Path) -> None:
    data = os.urandom((2 << 20) + 12345)  # not a multiple of the chunk size
    image = tmp_path / "image.tar.zst"
    image.write_bytes(data)
    assert image_sha256(image) == hashlib.sha256(data).hexdigest()
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert image_sha256(empty) == hashlib.sha256(b"").hexdigest()
    with pytest.raises(ImageError, match="cannot read"):
        image_sha256(tmp_path / "nope")


@pytest.mark.parametrize("compression", ALL_COMPRESSIONS)
def test_sha256_of_the_decompressed_stream(tmp_path: Path, compression: Compression) -> None:
    payload = os.urandom((1 << 20) + 7)
    image = tmp_path / "blob"
    image.write_bytes(compress(payload, compression))
    digest = decompressed_sha256(image, compression)
    assert digest.sha256 == hashlib.sha256(payload).hexdigest()
    assert digest.size == len(payload)


def test_sha256_of_a_truncated_stream(tmp_path: Path) -> None:
    image = tmp_path / "blob.xz"
    whole = compress(os.urandom(100_000), Compression.XZ)
    image.write_bytes(whole[:-100])
    with pytest.raises(ImageError, match="truncated"):
        decompressed_sha256(image, Compression.XZ)


@pytest.mark.parametrize("compression", [Compression.GZIP, Compression.ZSTD, Compression.XZ])
def test_sniff_compression(tmp_path: Path, compression: Compression) -> None:
    image = tmp_path / "blob"
    image.write_bytes(compress(b"data", compression))
    assert sniff_compression(image) is compression
    image.write_bytes(b"plain")
    assert sniff_compression(image) is None
    assert sniff_compression(tmp_path / "nope") is None


def zstd_cli(data: bytes, *options: str) -> bytes:
    """Compress with the zstd command (Debian package zstd), as image builders do."""
    return subprocess.run(
        ["zstd", "-q", "-c", *options], input=data, capture_output=True, check=True
    ).stdout


SKIPPABLE = b"\x50\x2a\x4d\x18" + (5).to_bytes(4, "little") + b"notes"


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(zstd_cli, id="cli"),
        pytest.param(lambda p: zstd_cli(p, "--no-check", "-T2", "--long=27"), id="cli-T2-long"),
        pytest.param(lambda p: zstandard.ZstdCompressor(write_checksum=True).compress(p), id="py"),
        pytest.param(
            lambda p: compress(p[:1000], Compression.ZSTD) + SKIPPABLE + zstd_cli(p[1000:]),
            id="frames-and-skippable",
        ),
    ],
)
def test_every_cut_of_a_zstd_stream_is_noticed(make: Callable[[bytes], bytes]) -> None:
    # zstandard's stream reader ends a cut frame silently; the frame tracker must not.
    payload = bytes(200_000) + os.urandom(50_000) + b"".join(b"%d\n" % i for i in range(9000))
    data = make(payload)
    tracker = FrameTracker()
    tracker.feed(data)
    tracker.check_end()
    first_frame = len(compress(payload[:1000], Compression.ZSTD))
    # A cut between two frames is a shorter, valid stream: not a truncation.
    boundaries = (
        {first_frame, first_frame + len(SKIPPABLE)}
        if data[first_frame:].startswith(SKIPPABLE)
        else set()
    )
    for cut in range(0, len(data), max(1, len(data) // 500)):
        if cut in boundaries:
            continue
        tracker = FrameTracker()
        tracker.feed(data[:cut])
        with pytest.raises(EOFError):
            tracker.check_end()


def test_garbage_is_not_a_zstd_frame() -> None:
    with pytest.raises(ZstdFrameError, match="expected a zstd frame"):
        FrameTracker().feed(b"PK\x03\x04 zip data")


def test_truncated_zstd_stream_is_an_error_not_a_short_stream(tmp_path: Path) -> None:
    whole = zstd_cli(os.urandom(500_000))
    image = tmp_path / "cut.zst"
    image.write_bytes(whole[: len(whole) - 5000])
    with pytest.raises(ImageError, match=r"truncated.*ends inside a zstd frame"):
        decompressed_sha256(image, Compression.ZSTD)
    image.write_bytes(b"")
    with pytest.raises(ImageError, match="the file is empty"):
        decompressed_sha256(image, Compression.ZSTD)


def test_small_truncated_tar_zst(rootfs: Path) -> None:
    # A tiny image cut in half: the stream ends before even one tar header.
    whole = zstd_cli(make_tar(rootfs, ["etc", "etc/os-release"]))
    image = rootfs.parent / "cut.tar.zst"
    image.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ImageError, match="truncated"):
        read_boot_files(describe(image, Compression.ZSTD))


@pytest.mark.parametrize("compression", ["zstd", "gzip"])
def test_boot_files_of_a_testbed_image(tmp_path: Path, compression: str) -> None:
    from kadeploy_testbed.image import make_image  # noqa: PLC0415 - only this test needs it

    made = make_image(tmp_path / "debian-min", kind="tar", compression=compression)  # type: ignore[arg-type]
    env = load_environment(made.description)
    assert env.image.file == made.image
    boot = read_boot_files(env)
    assert (boot.kernel, boot.initrd) == (made.kernel, made.initrd)
    assert image_sha256(made.image) == hashlib.sha256(made.image.read_bytes()).hexdigest()


def test_images_that_check_themselves_are_told_apart(tmp_path: Path) -> None:
    """The chain relays skip their SHA-256 only where the nodes' decompressor checks every
    byte anyway (kadeployd/environment/image.py ``checks_itself``)."""
    data = os.urandom(4096)
    cases = {
        "gz": (gzip.compress(data), Compression.GZIP, True),
        "xz": (lzma.compress(data), Compression.XZ, True),  # CRC-64 by default
        "xz-none": (lzma.compress(data, check=lzma.CHECK_NONE), Compression.XZ, False),
        "zst": (
            zstandard.ZstdCompressor(write_checksum=True).compress(data),
            Compression.ZSTD,
            True,
        ),
        "zst-none": (zstandard.ZstdCompressor().compress(data), Compression.ZSTD, False),
        "raw": (data, Compression.NONE, False),
    }
    # A skippable frame first (as some tools write metadata) does not hide the data frame.
    skippable = (0x184D2A5A).to_bytes(4, "little") + (3).to_bytes(4, "little") + b"abc"
    checked = zstandard.ZstdCompressor(write_checksum=True).compress(data)
    cases["zst-skippable"] = (skippable + checked, Compression.ZSTD, True)
    cases["zst-truncated"] = (checked[:3], Compression.ZSTD, False)
    for name, (content, compression, expected) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        assert checks_itself(path, compression) is expected, name
    assert checks_itself(tmp_path / "missing", Compression.ZSTD) is False
