"""The kernel and initrd of a tar image, read out of the (compressed) stream, nothing extracted.

The tar is read as a stream (``tarfile`` mode ``r|``), so it cannot seek back. Members are
matched by normalised path (``./boot/vmlinuz``, ``boot/vmlinuz`` and ``/boot/vmlinuz`` are one
path). While streaming, the first pass records every symbolic link and hard link and keeps the
content of the files it already knows it wants, following a link forward when its target comes
later; it stops as soon as both files are in hand. Only when a link points back at a member
already passed (``vmlinuz -> vmlinuz-6.1`` stored after its target, or a link through a linked
directory) does a second pass read the resolved paths.

The content read into memory is bounded (``max_bytes`` per file): a kernel or initrd larger
than that is refused rather than filling the daemon's memory.
"""

from __future__ import annotations

import logging
import posixpath
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from kadeploy_core.environment.description import EnvironmentDescription, ImageKind
from kadeploy_core.errors import EnvironmentError_, ImageError, Problem
from kadeployd.environment.image import open_image_stream

logger = logging.getLogger(__name__)

MAX_BOOT_FILE_BYTES = 512 << 20
"""Default bound on the size of a kernel or an initrd read into memory: 512 MiB."""

_TAR_BUFFER = 1 << 20
_MAX_LINK_HOPS = 40
"""As Linux's limit on symbolic links followed in one lookup (ELOOP)."""


@dataclass(frozen=True, slots=True)
class BootFiles:
    """The boot files of an image, and the paths inside the image they were read from."""

    kernel: bytes
    initrd: bytes | None
    kernel_path: str = ""
    initrd_path: str | None = None


class _LinkLoop(Exception):
    """A chain of symbolic links inside the image does not end."""


def normalise(name: str) -> str:
    """A member name or an in-image path as an absolute normal path: ``./a//b`` -> ``/a/b``."""
    return posixpath.normpath("/" + name.lstrip("/")) if name.strip("/.") else "/"


@dataclass(slots=True)
class _Catalogue:
    """What one streaming pass learned about the image's members."""

    symlinks: dict[str, str] = field(default_factory=dict)
    """Link path -> absolute target, normalised (``..`` above the root stays at the root)."""
    hardlinks: dict[str, str] = field(default_factory=dict)
    """Link path -> the path of the earlier member it shares data with."""
    files: set[str] = field(default_factory=set)
    """Regular files seen."""
    dirs: set[str] = field(default_factory=set)
    contents: dict[str, bytes] = field(default_factory=dict)
    """Content of the regular files the pass was asked for."""

    def resolve(self, path: str) -> str:
        """``path`` with every symbolic link (of any component) and hard link followed."""
        hops = 0
        parts = [part for part in path.split("/") if part]
        done = "/"
        while parts:
            candidate = posixpath.join(done, parts.pop(0))
            target = self.symlinks.get(candidate)
            if target is None:
                done = candidate
                continue
            hops += 1
            if hops > _MAX_LINK_HOPS:
                raise _LinkLoop(path)
            parts = [part for part in target.split("/") if part] + parts
            done = "/"
        return self.hardlinks.get(done, done)


def read_boot_files(env: EnvironmentDescription, max_bytes: int = MAX_BOOT_FILE_BYTES) -> BootFiles:
    """Read ``boot.kernel`` and ``boot.initrd`` out of ``env``'s tar image.

    Raises :class:`EnvironmentError_` naming ``boot.kernel`` or ``boot.initrd`` when the image
    lacks the file (or it is a directory, a dangling link, a link loop, or too large), and
    :class:`ImageError` when the image is not a tar or is truncated or corrupt.
    """
    if env.image.kind is not ImageKind.TAR:
        raise ImageError(
            f"image {str(env.image.file)!r} is a {env.image.kind.value} image: "
            "boot files can only be read out of tar images"
        )
    wanted = {"kernel": env.boot.kernel}
    if env.boot.initrd is not None:
        wanted["initrd"] = env.boot.initrd
    reader = _BootFileReader(env, max_bytes)
    catalogue = reader.scan(wanted)
    resolved, problems = _resolve_all(env, catalogue, wanted)
    if problems:
        raise EnvironmentError_(problems)
    missing = {path: key for key, path in resolved.items() if path not in catalogue.contents}
    if missing:
        logger.debug("%s: second pass for %s", env.image.file, sorted(missing))
        catalogue.contents.update(reader.read_paths(missing))
        if any(path not in catalogue.contents for path in missing):
            raise ImageError(f"image {str(env.image.file)!r} changed while it was being read")
    kernel_path = resolved["kernel"]
    initrd_path = resolved.get("initrd")
    logger.info(
        "%s: kernel %s (%d bytes), initrd %s",
        env.image.file,
        kernel_path,
        len(catalogue.contents[kernel_path]),
        initrd_path,
    )
    return BootFiles(
        kernel=catalogue.contents[kernel_path],
        initrd=catalogue.contents[initrd_path] if initrd_path is not None else None,
        kernel_path=kernel_path,
        initrd_path=initrd_path,
    )


def _resolve_all(
    env: EnvironmentDescription, catalogue: _Catalogue, wanted: dict[str, str]
) -> tuple[dict[str, str], list[Problem]]:
    resolved: dict[str, str] = {}
    problems: list[Problem] = []
    image = str(env.image.file)
    for key, path in wanted.items():
        where = ("boot", key)
        try:
            target = catalogue.resolve(path)
        except _LinkLoop:
            problems.append(env.problem(where, f"{path} is a loop of symbolic links in {image!r}"))
            continue
        via = f" (a link to {target})" if target != path else ""
        if target in catalogue.files:
            resolved[key] = target
        elif target in catalogue.dirs:
            problems.append(env.problem(where, f"{path}{via} is a directory in {image!r}"))
        elif via:
            problems.append(
                env.problem(where, f"{path} is a link to {target}, which is not in {image!r}")
            )
        else:
            problems.append(env.problem(where, f"{path} not found in image {image!r}"))
    return resolved, problems


class _BootFileReader:
    """Streaming passes over one tar image."""

    def __init__(self, env: EnvironmentDescription, max_bytes: int) -> None:
        self._env = env
        self._path: Path = env.image.file
        self._max_bytes = max_bytes

    def scan(self, wanted: dict[str, str]) -> _Catalogue:
        """First pass: catalogue links, keep the ``wanted`` files, following links forward.

        ``wanted`` maps a key of ``boot`` (kernel, initrd) to its path in the image.
        """
        catalogue = _Catalogue()
        targets = _try_resolve(catalogue, wanted)
        for member, tar in self._members():
            name = normalise(member.name)
            if member.issym():
                base = posixpath.dirname(name)
                catalogue.symlinks[name] = normalise(posixpath.join(base, member.linkname))
                targets = _try_resolve(catalogue, wanted)
            elif member.islnk():
                catalogue.hardlinks[name] = normalise(member.linkname)
                targets = _try_resolve(catalogue, wanted)
            elif member.isdir():
                catalogue.dirs.add(name)
            elif member.isreg():
                catalogue.files.add(name)
                if name in targets and name not in catalogue.contents:
                    catalogue.contents[name] = self._read(tar, member, name, targets[name])
                    if all(target in catalogue.contents for target in targets):
                        logger.debug("%s: boot files found, stopping early", self._path)
                        break
        return catalogue

    def read_paths(self, paths: dict[str, str]) -> dict[str, bytes]:
        """Second pass: the content of regular files ``paths`` (path -> key of ``boot``)."""
        found: dict[str, bytes] = {}
        for member, tar in self._members():
            name = normalise(member.name)
            if name in paths and name not in found and member.isreg():
                found[name] = self._read(tar, member, name, paths[name])
                if len(found) == len(paths):
                    break
        return found

    def _read(self, tar: tarfile.TarFile, member: tarfile.TarInfo, name: str, key: str) -> bytes:
        if member.size > self._max_bytes:
            raise EnvironmentError_(
                [
                    self._env.problem(
                        ("boot", key),
                        f"{name} is {member.size} bytes in {str(self._path)!r}, "
                        f"more than the limit of {self._max_bytes} bytes",
                    )
                ]
            )
        handle = tar.extractfile(member)
        if handle is None:  # pragma: no cover - isreg() members always have data
            raise ImageError(f"image {str(self._path)!r}: {name} has no data")
        try:
            data = handle.read()
        except tarfile.TarError as exc:
            raise self._broken(exc) from None
        if len(data) != member.size:
            raise ImageError(f"image {str(self._path)!r}: truncated inside {name}")
        return data

    def _members(self) -> Iterator[tuple[tarfile.TarInfo, tarfile.TarFile]]:
        """Each member of the image with the open tar, translating every error."""
        with (
            open_image_stream(self._path, self._env.image.compression) as stream,
            self._open_tar(stream) as tar,
        ):
            while True:
                try:
                    member = tar.next()
                except tarfile.TarError as exc:
                    raise self._broken(exc) from None
                if member is None:
                    return
                yield member, tar

    def _open_tar(self, stream: BinaryIO) -> tarfile.TarFile:
        try:
            return tarfile.open(fileobj=stream, mode="r|", bufsize=_TAR_BUFFER)
        except tarfile.TarError as exc:
            raise self._broken(exc) from None

    def _broken(self, exc: tarfile.TarError) -> ImageError:
        if "unexpected end of data" in str(exc):
            what = "truncated: the tar archive ends in the middle of a member"
        else:
            what = f"not a valid tar archive ({exc})"
        return ImageError(
            f"image {str(self._path)!r}: {what} "
            f"(declared kind tar, compression {self._env.image.compression.value})"
        )


def _try_resolve(catalogue: _Catalogue, wanted: dict[str, str]) -> dict[str, str]:
    """Resolved path -> key, with the links known so far (a loop is reported later)."""
    targets: dict[str, str] = {}
    for key, path in wanted.items():
        try:
            targets.setdefault(catalogue.resolve(path), key)
        except _LinkLoop:
            continue
    return targets
