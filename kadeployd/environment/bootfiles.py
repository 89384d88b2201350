"""The kernel and initrd of a tar image, read out of the (compressed) stream.

The tar is read as a stream (``tarfile`` mode ``r|``), so it cannot seek back. Members are
matched by normalised path (``./boot/vmlinuz``, ``boot/vmlinuz`` and ``/boot/vmlinuz`` are one
path). While streaming, the first pass records every symbolic link and hard link and keeps the
content of the files it already knows it wants, following a link forward when its target comes
later; it stops as soon as both files are in hand. Only when a link points back at a member
already passed (``vmlinuz -> vmlinuz-6.1`` stored after its target, or a link through a linked
directory) does a second pass read the resolved paths.

A file's content is copied in :data:`CHUNK` pieces to where it goes: straight into the TFTP
root (:func:`publish_boot_files`, what the daemon uses: memory stays bounded whatever the
image says) or into memory for small images (:func:`read_boot_files`). Sizes are bounded
(:class:`BootFileLimits`, ``daemon.max_boot_file_mib`` and ``daemon.max_boot_files_mib``): a
member whose tar header declares more is refused before a byte of it is read, and a file left
half-written by any failure is removed. The published files of a deployment that deployed no
node are removed by :func:`remove_boot_files` when it ends; those of one that did, which its
nodes boot from, by :func:`sweep_boot_files` once no node's profile names them.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import posixpath
import re
import shutil
import tarfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, BinaryIO, Protocol

from kadeploy_core.environment.description import EnvironmentDescription, ImageKind
from kadeploy_core.errors import EnvironmentError_, ImageError, Problem
from kadeployd.environment.image import CHUNK, open_image_stream

logger = logging.getLogger(__name__)

MAX_BOOT_FILE_BYTES = 512 << 20
"""Default bound on the size of a kernel or of an initrd: 512 MiB."""
MAX_BOOT_FILES_BYTES = 768 << 20
"""Default bound on a kernel and its initrd together: 768 MiB (a distribution's kernel is
about 10 MiB, its initrd 30 to 200 MiB)."""

PROFILE_DIR = "pxelinux.cfg"
"""Under the TFTP root: the nodes' profiles (as kadeployd/pxe/profiles.py; not imported from
there: kadeployd.pxe imports this module)."""
ENVS_DIR = "envs"
"""Under the TFTP root: one directory of boot files per deployment (as kadeployd/pxe/files.py)."""
KERNEL_NAME = "vmlinuz"
INITRD_NAME = "initrd"
_KEY_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_TEMP_SUFFIX = ".tmp"
_MAX_PROFILE_READ = 64 * 1024
UNREFERENCED_GRACE = 600.0
"""Seconds boot files no profile names are kept by :func:`sweep_boot_files` after a change."""


@dataclass(frozen=True, slots=True)
class BootFileLimits:
    """How many bytes of boot files one environment may put on the TFTP server."""

    per_file: int = MAX_BOOT_FILE_BYTES
    """A kernel, or an initrd."""
    total: int = MAX_BOOT_FILES_BYTES
    """The kernel and the initrd together."""
    per_file_setting: str = "daemon.max_boot_file_mib"
    total_setting: str = "daemon.max_boot_files_mib"

    @classmethod
    def from_mib(cls, per_file_mib: int, total_mib: int) -> BootFileLimits:
        """The limits of the configuration (``daemon.max_boot_file_mib``, ``..._files_mib``)."""
        return cls(per_file=per_file_mib << 20, total=total_mib << 20)


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
    contents: set[str] = field(default_factory=set)
    """The regular files the pass was asked for and copied to the store."""

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


def read_boot_files(
    env: EnvironmentDescription,
    max_bytes: int = MAX_BOOT_FILE_BYTES,
    max_total: int = MAX_BOOT_FILES_BYTES,
) -> BootFiles:
    """Read ``boot.kernel`` and ``boot.initrd`` out of ``env``'s tar image, into memory.

    For small images and tests; the daemon uses :func:`publish_boot_files`, which never holds
    a file in memory. Raises :class:`EnvironmentError_` naming ``boot.kernel`` or
    ``boot.initrd`` when the image lacks the file (or it is a directory, a dangling link, a
    link loop, or too large), and :class:`ImageError` when the image is not a tar or is
    truncated or corrupt.
    """
    store = _MemoryStore()
    limits = BootFileLimits(per_file=max_bytes, total=max_total)
    resolved = _extract(env, store, limits)
    kernel_path = resolved["kernel"]
    initrd_path = resolved.get("initrd")
    return BootFiles(
        kernel=store.content(kernel_path),
        initrd=store.content(initrd_path) if initrd_path is not None else None,
        kernel_path=kernel_path,
        initrd_path=initrd_path,
    )


@dataclass(frozen=True, slots=True)
class PublishedBootFiles:
    """Boot files written under the TFTP root: their TFTP paths and where they came from."""

    kernel: str
    """TFTP path, ``envs/<key>/vmlinuz``."""
    initrd: str | None
    kernel_path: str
    """Path inside the image."""
    initrd_path: str | None
    size: int
    """Bytes written, both files together."""


def publish_boot_files(
    env: EnvironmentDescription,
    tftp_root: Path,
    key: str,
    limits: BootFileLimits | None = None,
) -> PublishedBootFiles:
    """Copy ``env``'s kernel and initrd out of its image to ``envs/<key>/`` under the TFTP
    root, streaming (never a whole file in memory) within ``limits``.

    The files are written to temporary names beside their final ones and renamed once both
    are whole; on any failure nothing of this call is left behind (the directory too is
    removed if this call created it). Raises like :func:`read_boot_files`, and
    :class:`ImageError` if the TFTP root cannot be written.
    """
    directory = boot_files_dir(tftp_root, key)
    created = not directory.exists()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ImageError(f"cannot create {directory}: {exc.strerror or exc}") from None
    store = _DirectoryStore(directory)
    try:
        resolved = _extract(env, store, limits or BootFileLimits())
        kernel_path = resolved["kernel"]
        initrd_path = resolved.get("initrd")
        store.publish(kernel_path, KERNEL_NAME)
        if initrd_path is not None:
            store.publish(initrd_path, INITRD_NAME)
        else:
            (directory / INITRD_NAME).unlink(missing_ok=True)
    except BaseException:
        store.discard()
        if created:
            shutil.rmtree(directory, ignore_errors=True)
        raise
    finally:
        store.close()
    prefix = f"{ENVS_DIR}/{key}"
    logger.info(
        "%s: published %s/%s (%s) and %s, %d bytes",
        env.image.file,
        prefix,
        KERNEL_NAME,
        kernel_path,
        initrd_path,
        store.written,
    )
    return PublishedBootFiles(
        kernel=f"{prefix}/{KERNEL_NAME}",
        initrd=f"{prefix}/{INITRD_NAME}" if initrd_path is not None else None,
        kernel_path=kernel_path,
        initrd_path=initrd_path,
        size=store.written,
    )


def boot_files_dir(tftp_root: Path, key: str) -> Path:
    """``<tftp_root>/envs/<key>``; ImageError if ``key`` could name another directory."""
    if not _KEY_RE.match(key) or key in (".", ".."):
        raise ImageError(
            f"boot files key {key!r}: expected 1 to 128 letters, digits, '.', '_' or '-'"
        )
    return Path(tftp_root) / ENVS_DIR / key


def remove_boot_files(tftp_root: Path, key: str) -> bool:
    """Remove the boot files :func:`publish_boot_files` wrote under ``key`` (at the end of
    the deployment that published them); False if there were none. Raises ImageError if the
    directory cannot be removed."""
    directory = boot_files_dir(tftp_root, key)
    if not directory.is_dir():
        return False
    try:
        shutil.rmtree(directory)
    except OSError as exc:
        raise ImageError(f"cannot remove {directory}: {exc.strerror or exc}") from None
    logger.info("removed the boot files %s/%s", ENVS_DIR, key)
    return True


def sweep_boot_files(
    tftp_root: Path, keep: Iterable[str] = (), grace: float = UNREFERENCED_GRACE
) -> list[str]:
    """Remove the boot files of ``envs/`` that no node's PXE profile names any more; the keys
    removed.

    A deployed node keeps booting its environment's kernel from ``envs/<key>/`` (its profile
    is left as it is), so the files of a deployment that deployed nodes must outlive it, until
    every one of those nodes was deployed again or reset. ``keep``: keys of deployments still
    running (their profiles may not be written yet); a directory changed less than ``grace``
    seconds ago is kept too.
    """
    envs = Path(tftp_root) / ENVS_DIR
    referenced = set(keep) | _named_in_profiles(Path(tftp_root))
    limit = time.time() - grace
    removed: list[str] = []
    try:
        entries = list(os.scandir(envs))
    except FileNotFoundError:
        return removed
    for entry in entries:
        if entry.name in referenced or not entry.is_dir(follow_symlinks=False):
            continue
        with contextlib.suppress(OSError):
            if entry.stat(follow_symlinks=False).st_mtime < limit:
                shutil.rmtree(entry.path)
                removed.append(entry.name)
    if removed:
        logger.info("removed the boot files no profile names any more: %s", sorted(removed))
    return removed


def _named_in_profiles(tftp_root: Path) -> set[str]:
    """Keys of ``envs/<key>/`` that some profile of ``pxelinux.cfg/`` names."""
    keys: set[str] = set()
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(tftp_root / PROFILE_DIR):
            if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                continue
            try:
                with open(entry.path, "rb") as handle:
                    text = handle.read(_MAX_PROFILE_READ).decode("utf-8", "replace")
            except OSError:
                continue
            for word in text.replace(",", " ").replace("=", " ").split():
                parts = word.lstrip("/").split("/")
                if len(parts) >= 2 and parts[0] == ENVS_DIR:
                    keys.add(parts[1])
    return keys


def _extract(env: EnvironmentDescription, store: _Store, limits: BootFileLimits) -> dict[str, str]:
    """Copy the boot files into ``store``; boot key -> resolved path inside the image."""
    if env.image.kind is not ImageKind.TAR:
        raise ImageError(
            f"image {str(env.image.file)!r} is a {env.image.kind.value} image: "
            "boot files can only be read out of tar images"
        )
    wanted = {"kernel": env.boot.kernel}
    if env.boot.initrd is not None:
        wanted["initrd"] = env.boot.initrd
    reader = _BootFileReader(env, store, limits)
    catalogue = reader.scan(wanted)
    resolved, problems = _resolve_all(env, catalogue, wanted)
    if problems:
        raise EnvironmentError_(problems)
    missing = {path: key for key, path in resolved.items() if path not in catalogue.contents}
    if missing:
        logger.debug("%s: second pass for %s", env.image.file, sorted(missing))
        found = reader.read_paths(missing)
        if any(path not in found for path in missing):
            raise ImageError(f"image {str(env.image.file)!r} changed while it was being read")
    return resolved


class _Store(Protocol):
    """Where the content of the files read goes, one file per path inside the image."""

    written: int

    def open(self, path: str) -> IO[bytes]: ...


class _MemoryStore:
    def __init__(self) -> None:
        self.written = 0
        self._files: dict[str, io.BytesIO] = {}

    def open(self, path: str) -> IO[bytes]:
        self._files[path] = io.BytesIO()
        return self._files[path]

    def content(self, path: str) -> bytes:
        return self._files[path].getvalue()


class _DirectoryStore:
    """Temporary files in the destination directory (``os.replace`` stays on one file
    system), renamed to their final names by :meth:`publish`."""

    def __init__(self, directory: Path) -> None:
        self.written = 0
        self._directory = directory
        self._temps: dict[str, Path] = {}
        self._open: list[IO[bytes]] = []
        self._published: list[Path] = []

    def open(self, path: str) -> IO[bytes]:
        digest = hashlib.sha256(path.encode()).hexdigest()[:16]
        temp = self._directory / f".{digest}{_TEMP_SUFFIX}"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        self._temps[path] = temp
        handle = os.fdopen(fd, "wb")
        self._open.append(handle)
        return handle

    def publish(self, path: str, name: str) -> None:
        """The file read from ``path`` under its final ``name`` (a copy if already published
        under another name: the kernel and the initrd may be one file of the image)."""
        source = self._temps[path]
        target = self._directory / name
        try:
            if source.name.endswith(_TEMP_SUFFIX):
                os.chmod(source, 0o644)  # read by the TFTP server, whatever the umask
                os.replace(source, target)
                self._temps[path] = target
            else:
                shutil.copyfile(source, target)
        except OSError as exc:
            raise ImageError(f"cannot write {target}: {exc.strerror or exc}") from None
        self._published.append(target)

    def close(self) -> None:
        for handle in self._open:
            with contextlib.suppress(OSError):
                handle.close()
        self._open.clear()

    def discard(self) -> None:
        """Remove every file this store wrote (a failure: nothing half-done stays)."""
        self.close()
        for leftover in (*self._temps.values(), *self._published):
            with contextlib.suppress(OSError):
                leftover.unlink()


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

    def __init__(self, env: EnvironmentDescription, store: _Store, limits: BootFileLimits) -> None:
        self._env = env
        self._path: Path = env.image.file
        self._store = store
        self._limits = limits

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
                    self._copy(tar, member, name, targets[name])
                    catalogue.contents.add(name)
                    if all(target in catalogue.contents for target in targets):
                        logger.debug("%s: boot files found, stopping early", self._path)
                        break
        return catalogue

    def read_paths(self, paths: dict[str, str]) -> set[str]:
        """Second pass: copy the regular files ``paths`` (path -> key of ``boot``)."""
        found: set[str] = set()
        for member, tar in self._members():
            name = normalise(member.name)
            if name in paths and name not in found and member.isreg():
                self._copy(tar, member, name, paths[name])
                found.add(name)
                if len(found) == len(paths):
                    break
        return found

    def _copy(self, tar: tarfile.TarFile, member: tarfile.TarInfo, name: str, key: str) -> None:
        """Copy ``member`` to the store in chunks, within the limits (checked against the
        size the tar header declares before anything is read, and against what is copied)."""
        limits = self._limits
        if member.size > limits.per_file:
            raise self._too_large(
                key, f"{name} is {member.size} bytes", limits.per_file, limits.per_file_setting
            )
        if self._store.written + member.size > limits.total:
            raise self._too_large(
                key,
                f"{name} is {member.size} bytes, after {self._store.written} bytes of boot "
                "files already",
                limits.total,
                limits.total_setting,
                together=True,
            )
        handle = tar.extractfile(member)
        if handle is None:  # pragma: no cover - isreg() members always have data
            raise ImageError(f"image {str(self._path)!r}: {name} has no data")
        out = self._store.open(name)
        copied = 0
        try:
            while True:
                chunk = handle.read(CHUNK)
                if not chunk:
                    break
                copied += len(chunk)
                if copied > member.size:  # pragma: no cover - tarfile reads member.size bytes
                    raise ImageError(f"image {str(self._path)!r}: {name} longer than declared")
                out.write(chunk)
        except tarfile.TarError as exc:
            raise self._broken(exc) from None
        except OSError as exc:  # the TFTP root's disk (decompression errors are ImageError)
            raise ImageError(f"cannot write the boot file {name}: {exc.strerror or exc}") from None
        if copied != member.size:
            raise ImageError(f"image {str(self._path)!r}: truncated inside {name}")
        out.flush()
        self._store.written += copied

    def _too_large(
        self, key: str, what: str, limit: int, setting: str, together: bool = False
    ) -> EnvironmentError_:
        bound = "the limit on boot files together" if together else "the limit"
        return EnvironmentError_(
            [
                self._env.problem(
                    ("boot", key),
                    f"{what} in {str(self._path)!r}, more than {bound} of {limit} bytes "
                    f"({setting})",
                )
            ]
        )

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
                except RecursionError:  # a chain of extended headers without end
                    raise self._broken(tarfile.HeaderError("too many extended headers")) from None
                if member is None:
                    return
                yield member, tar

    def _open_tar(self, stream: BinaryIO) -> tarfile.TarFile:
        try:
            return tarfile.open(
                fileobj=stream, mode="r|", bufsize=_TAR_BUFFER, tarinfo=_BoundedTarInfo
            )
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


class _BoundedTarInfo(tarfile.TarInfo):
    """A member header whose extended headers (pax, GNU long names), which ``tarfile`` reads
    whole into memory, are refused past :data:`MAX_EXTENDED_HEADER_BYTES`."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _EXTENDED_TYPES and self.size > MAX_EXTENDED_HEADER_BYTES:
            raise tarfile.HeaderError(
                f"an extended header of {self.size} bytes (at most {MAX_EXTENDED_HEADER_BYTES})"
            )
        member: tarfile.TarInfo = super()._proc_member(tarfile_)  # type: ignore[misc]
        return member


MAX_EXTENDED_HEADER_BYTES = 1 << 20
"""Largest pax or GNU long-name header read (real ones are a few hundred bytes)."""
_EXTENDED_TYPES = frozenset(
    {
        tarfile.XHDTYPE,
        tarfile.XGLTYPE,
        tarfile.SOLARIS_XHDTYPE,
        tarfile.GNUTYPE_LONGNAME,
        tarfile.GNUTYPE_LONGLINK,
    }
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
