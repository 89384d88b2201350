"""``make-image``: a small real environment (busybox root filesystem) and its kaenv description.

The root filesystem holds a static busybox (copied from Debian's ``busybox-static``) with applet
links, a ``/bin/bash`` that execs ``/bin/sh`` (sshd runs root's host login shell inside its
chroot, and busybox has no bash applet), ``/etc/os-release`` naming the environment, and
``/boot/vmlinuz`` + ``/boot/initrd.img`` whose bytes are unique to this build, so that the
testbed firmware recognises "the kernel of partition P" by byte equality. Optional random
(incompressible) padding in ``/var/padding.bin`` makes the compressed image about ``size_mb``
MiB for transfer benchmarks.

There are deliberately no ``reboot``/``poweroff``/``halt``/``init`` applet links: what those do
inside a node is the node runtime's business.

File naming: the image is ``out`` itself when it ends with the suffix of its kind and
compression (``.tar.zst``, ``.tar.gz``, ``.tar.xz``, ``.tar``, ``.ext4.zst``, ``.ext4.gz``,
``.ext4.xz``, ``.ext4``), otherwise that suffix is appended; the description is the image path
with that suffix replaced by ``.yaml`` (``images/debian-min.tar.zst`` ->
``images/debian-min.yaml``), and names the image relative to itself.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import lzma
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal, get_args

import zstandard

logger = logging.getLogger(__name__)

ImageKind = Literal["tar", "dd"]
Compression = Literal["gzip", "zstd", "xz", "none"]

BUSYBOX = Path("/bin/busybox")
KERNEL_MAGIC = b"KADEPLOY-TESTBED-KERNEL\n"
"""First bytes of every ``/boot/vmlinuz`` made here."""
INITRD_MAGIC = b"KADEPLOY-TESTBED-INITRD\n"
"""First bytes of every ``/boot/initrd.img`` made here."""
ENV_MARKER = "KADEPLOY_TESTBED_ENV=deployed"
"""The ``/etc/os-release`` line by which tests recognise a deployed testbed environment."""

APPLETS = (
    "sh",
    "cat",
    "ls",
    "echo",
    "mount",
    "umount",
    "mkdir",
    "rm",
    "cp",
    "mv",
    "sync",
    "ps",
    "grep",
    "sed",
    "uname",
    "hostname",
    "id",
    "sleep",
    "tar",
    "true",
    "false",
    "test",
    "[",
    "chmod",
    "chown",
    "ln",
    "touch",
    "head",
    "tail",
    "wc",
    "df",
    "du",
    "dd",
    "env",
    "printf",
    "readlink",
    "stat",
    "find",
    "awk",
    "gzip",
    "gunzip",
    "zcat",
    "xargs",
    "sort",
    "uniq",
    "cut",
    "tr",
    "tee",
    "kill",
    "date",
    "basename",
    "dirname",
    "pwd",
    "which",
    "whoami",
    "mktemp",
    "rmdir",
    "sha256sum",
    "md5sum",
    "free",
    "uptime",
    "dmesg",
    "mknod",
    "hexdump",
    "od",
    "expr",
    "seq",
    "vi",
    "less",
)

_SUFFIXES: dict[tuple[str, str], str] = {
    ("tar", "gzip"): ".tar.gz",
    ("tar", "zstd"): ".tar.zst",
    ("tar", "xz"): ".tar.xz",
    ("tar", "none"): ".tar",
    ("dd", "gzip"): ".ext4.gz",
    ("dd", "zstd"): ".ext4.zst",
    ("dd", "xz"): ".ext4.xz",
    ("dd", "none"): ".ext4",
}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_MIB = 1024 * 1024
_CHUNK = 4 * _MIB


class MakeImageError(Exception):
    """The image cannot be built; the message names the bad argument or the failing step."""


@dataclass(frozen=True, slots=True)
class ImageResult:
    """What ``make_image`` wrote."""

    image: Path
    description: Path
    kind: ImageKind
    compression: Compression
    size: int
    """Size of the image file in bytes."""
    kernel: bytes
    """The bytes of ``/boot/vmlinuz`` inside the image."""
    initrd: bytes
    """The bytes of ``/boot/initrd.img`` inside the image."""


def image_suffix(kind: str, compression: str) -> str:
    """``("tar", "zstd")`` -> ``".tar.zst"``."""
    return _SUFFIXES[(kind, compression)]


def is_testbed_kernel(data: bytes) -> bool:
    """True for a ``/boot/vmlinuz`` made by ``make_image``."""
    return data.startswith(KERNEL_MAGIC)


def _paths(out: Path, kind: str, compression: str) -> tuple[Path, Path]:
    suffix = image_suffix(kind, compression)
    name = out.name
    if not name.endswith(suffix):
        for other in sorted(set(_SUFFIXES.values()), key=len, reverse=True):
            if name.endswith(other):
                raise MakeImageError(
                    f"--out {out}: the suffix {other!r} does not match --kind {kind} "
                    f"--compression {compression}; use {name[: -len(other)]}{suffix} "
                    "or leave the suffix out"
                )
        name += suffix
    stem = name[: -len(suffix)]
    if not stem:
        raise MakeImageError(f"--out {out}: the file name is only a suffix")
    image = out.with_name(name)
    return image, image.with_name(stem + ".yaml")


def _check_arguments(
    name: str, *, kind: str, compression: str, size_mb: int, version: int, busybox: Path
) -> None:
    if not _NAME_RE.match(name):
        raise MakeImageError(
            f"--name {name!r}: use 1 to 64 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit"
        )
    if kind not in get_args(ImageKind):
        raise MakeImageError(f"--kind {kind!r}: expected one of {', '.join(get_args(ImageKind))}")
    if compression not in get_args(Compression):
        raise MakeImageError(
            f"--compression {compression!r}: expected one of {', '.join(get_args(Compression))}"
        )
    if size_mb < 0:
        raise MakeImageError(f"--size-mb {size_mb}: must be 0 (no padding) or more")
    if version < 1:
        raise MakeImageError(f"--version {version}: must be 1 or more")
    if not busybox.is_file():
        raise MakeImageError(f"{busybox} not found: install the Debian package busybox-static")


def _write(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    path.chmod(mode)


def _os_release(name: str, version: int) -> str:
    return (
        f'NAME="{name}"\n'
        f"ID={name.lower()}\n"
        f'VERSION_ID="{version}"\n'
        f'PRETTY_NAME="{name} {version} (kadeploy-testbed busybox environment)"\n'
        f"{ENV_MARKER}\n"
    )


def _populate(root: Path, name: str, version: int, busybox: Path) -> tuple[bytes, bytes]:
    """Write the root filesystem under ``root``; return the kernel and initrd bytes."""
    root.chmod(0o755)
    dirs = {
        "bin": 0o755,
        "sbin": 0o755,
        "usr": 0o755,
        "usr/bin": 0o755,
        "usr/sbin": 0o755,
        "etc": 0o755,
        "boot": 0o755,
        "dev": 0o755,
        "proc": 0o555,
        "sys": 0o555,
        "run": 0o755,
        "mnt": 0o755,
        "var": 0o755,
        "tmp": 0o1777,
        "root": 0o700,
        "root/.ssh": 0o700,
    }
    for directory, mode in dirs.items():
        (root / directory).mkdir()
        (root / directory).chmod(mode)
    shutil.copyfile(busybox, root / "bin/busybox")
    (root / "bin/busybox").chmod(0o755)
    for applet in APPLETS:
        (root / "bin" / applet).symlink_to("busybox")
    _write(root / "bin/bash", '#!/bin/sh\nexec /bin/sh "$@"\n', 0o755)
    _write(root / "etc/os-release", _os_release(name, version))
    _write(root / "etc/passwd", "root:x:0:0:root:/root:/bin/sh\n")
    _write(root / "etc/group", "root:x:0:\n")
    _write(root / "etc/hostname", f"{name}\n")
    nonce = os.urandom(16).hex()
    tail = f"name={name}\nversion={version}\nnonce={nonce}\n".encode()
    kernel, initrd = KERNEL_MAGIC + tail, INITRD_MAGIC + tail
    _write(root / "boot/vmlinuz", kernel)
    _write(root / "boot/initrd.img", initrd)
    return kernel, initrd


def _write_padding(path: Path, size: int) -> None:
    with path.open("wb") as out:
        left = size
        while left > 0:
            chunk = min(left, _CHUNK)
            out.write(os.urandom(chunk))
            left -= chunk
    path.chmod(0o644)


@contextlib.contextmanager
def _compressed(path: Path, compression: str) -> Iterator[BinaryIO]:
    """A writer that compresses into ``path``."""
    with path.open("wb") as raw:
        if compression == "gzip":
            with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as gz:
                yield gz  # type: ignore[misc]  # GzipFile is a BinaryIO in practice
        elif compression == "xz":
            with lzma.LZMAFile(raw, "wb", preset=1) as xz:
                yield xz  # type: ignore[misc]  # LZMAFile is a BinaryIO in practice
        elif compression == "zstd":
            # With a content checksum, as the zstd tool writes by default: the nodes'
            # decompressor then checks every byte (and the chain relays skip their digest).
            compressor = zstandard.ZstdCompressor(level=3, write_checksum=True)
            with compressor.stream_writer(raw, closefd=False) as zst:
                yield zst
        else:
            yield raw


def _tar_filter(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def _write_tar(root: Path, image: Path, compression: str) -> None:
    with (
        _compressed(image, compression) as out,
        tarfile.open(fileobj=out, mode="w|", format=tarfile.GNU_FORMAT) as tar,
    ):
        tar.add(root, arcname=".", recursive=True, filter=_tar_filter)


def _tree_bytes(root: Path) -> int:
    total = 0
    for directory, _, files in os.walk(root):
        total += 4096
        for name in files:
            total += (Path(directory) / name).lstat().st_size + 4096
    return total


def _write_ext4(root: Path, image: Path, compression: str, workdir: Path) -> None:
    """Make an ext4 filesystem image of ``root`` with ``mkfs.ext4 -d`` (no mount needed)."""
    size_mib = max(16, (_tree_bytes(root) * 115 // 100) // _MIB + 12)
    raw = workdir / "fs.ext4"
    with raw.open("wb") as sparse:
        sparse.truncate(size_mib * _MIB)
    command = ["mkfs.ext4", "-F", "-q", "-d", str(root), str(raw), f"{size_mib}M"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise MakeImageError("mkfs.ext4 not found: install the Debian package e2fsprogs") from None
    if result.returncode != 0:
        raise MakeImageError(
            f"mkfs.ext4 failed (exit {result.returncode}): {result.stderr.strip()}"
        )
    with raw.open("rb") as source, _compressed(image, compression) as out:
        shutil.copyfileobj(source, out, _CHUNK)
    raw.unlink()


def _description(name: str, version: int, image: Path, kind: str, compression: str) -> str:
    def q(text: str) -> str:
        return json.dumps(text)  # a JSON string is a valid YAML double-quoted scalar

    return (
        f"name: {q(name)}\n"
        f"version: {version}\n"
        'description: "Minimal busybox environment built by kadeploy-testbed make-image"\n'
        "author: kadeploy-testbed\n"
        "visibility: public\n"
        "destructive: false\n"
        "os: linux\n"
        f"image: {{file: {q(image.name)}, kind: {kind}, compression: {compression}}}\n"
        "postinstalls: []\n"
        'boot: {kernel: /boot/vmlinuz, initrd: /boot/initrd.img, kernel_params: "console=ttyS0"}\n'
        "filesystem: ext4\n"
        "partition_type: 0x83\n"
    )


def _build(root: Path, image: Path, kind: str, compression: str, workdir: Path) -> None:
    if kind == "tar":
        _write_tar(root, image, compression)
    else:
        _write_ext4(root, image, compression, workdir)


def make_image(
    out: Path,
    *,
    name: str = "debian-min",
    kind: ImageKind = "tar",
    compression: Compression = "zstd",
    size_mb: int = 0,
    version: int = 1,
    busybox: Path = BUSYBOX,
) -> ImageResult:
    """Build the environment image and its description next to it (see the module docstring).

    ``size_mb`` > 0 pads the image so that the compressed file is about that many MiB (never
    less than the unpadded image). Both files are written under temporary names and renamed
    into place, so a failed build leaves nothing half-written. Raises MakeImageError.
    """
    out = Path(out)
    _check_arguments(
        name, kind=kind, compression=compression, size_mb=size_mb, version=version, busybox=busybox
    )
    image, description = _paths(out, kind, compression)
    if not image.parent.is_dir():
        raise MakeImageError(f"--out {out}: directory {image.parent} does not exist")
    with tempfile.TemporaryDirectory(prefix=".make-image-", dir=image.parent) as tmp:
        work = Path(tmp)
        root = work / "root"
        root.mkdir()
        kernel, initrd = _populate(root, name, version, busybox)
        partial = work / image.name
        _build(root, partial, kind, compression, work)
        if size_mb > 0:
            padding = size_mb * _MIB - partial.stat().st_size
            if padding > 0:
                _write_padding(root / "var/padding.bin", padding)
                _build(root, partial, kind, compression, work)
        text_path = work / description.name
        text_path.write_text(_description(name, version, image, kind, compression))
        partial.chmod(0o644)
        text_path.chmod(0o644)
        os.replace(partial, image)
        os.replace(text_path, description)
    size = image.stat().st_size
    logger.info("made %s (%d bytes) and %s", image, size, description)
    return ImageResult(
        image=image,
        description=description,
        kind=kind,
        compression=compression,
        size=size,
        kernel=kernel,
        initrd=initrd,
    )
