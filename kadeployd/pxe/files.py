"""The TFTP root on disk: per-node profiles and published boot files, written atomically.

All state lives in files, so a restarted PxeActor (or daemon) finds every profile where the
previous one left it. Writes go to a temporary file in the same directory, are synced, then
renamed over the target with ``os.replace``: a node's firmware reading at any moment sees the
old complete file or the new complete file, never a partial one.

Layout under the root::

    pxelinux.cfg/01-aa-bb-cc-dd-ee-ff     one profile per node
    envs/<key>/vmlinuz, envs/<key>/initrd  kernels extracted from environment images
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

from kadeployd.pxe.errors import PxeError
from kadeployd.pxe.profiles import (
    PROFILE_DIR,
    BootTarget,
    mac_of_profile_name,
    profile_path,
    render_profile,
)

logger = logging.getLogger(__name__)

ENVS_DIR = "envs"
KERNEL_NAME = "vmlinuz"
INITRD_NAME = "initrd"
_KEY_RE = re.compile(r"^[A-Za-z0-9._-]+$")
_KEY_MAX = 128
_TEMP_SUFFIX = ".tmp"


def validate_key(key: str) -> str:
    """Return ``key`` if it can name a directory under ``envs/``, else raise PxeError."""
    if (
        not isinstance(key, str)
        or not _KEY_RE.match(key)
        or key in (".", "..")
        or len(key) > _KEY_MAX
    ):
        raise PxeError(
            f"boot files key {key!r}: expected 1 to {_KEY_MAX} characters among letters, "
            "digits, '.', '_' and '-' (not '.' or '..'), e.g. debian-min-3"
        )
    return key


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new file, never a part.

    The temporary file is created in the same directory (``os.replace`` is atomic only within
    one file system), synced before the rename, and removed if anything fails.
    """
    try:
        fd, temp_name = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}.", suffix=_TEMP_SUFFIX
        )
    except OSError as err:
        raise PxeError(f"cannot write {path}: {err.strerror or err}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp_name, mode)
        os.replace(temp_name, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        if isinstance(err, OSError):
            raise PxeError(f"cannot write {path}: {err.strerror or err}") from None
        raise
    _sync_directory(path.parent)


def _sync_directory(directory: Path) -> None:
    """Make a rename durable (best effort: some file systems refuse fsync on directories)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as err:
        logger.debug("fsync of directory %s: %s", directory, err)
    finally:
        os.close(fd)


class PxeFiles:
    """Profiles and boot files under one TFTP root (plain logic, no threads)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @property
    def profile_dir(self) -> Path:
        return self.root / PROFILE_DIR

    def prepare(self) -> None:
        """Create the root and its directories, and remove temporary files a crash left."""
        try:
            self.profile_dir.mkdir(parents=True, exist_ok=True)
            (self.root / ENVS_DIR).mkdir(exist_ok=True)
        except OSError as err:
            raise PxeError(f"cannot create TFTP root {self.root}: {err.strerror or err}") from None
        leftovers = [
            *self.profile_dir.glob(f".*{_TEMP_SUFFIX}"),
            *(self.root / ENVS_DIR).glob(f"*/.*{_TEMP_SUFFIX}"),
        ]
        for leftover in leftovers:
            logger.info("removing %s, left by an interrupted write", leftover)
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()

    def _profile_file(self, mac: str) -> Path:
        return self.root / profile_path(mac)

    def set_profile(self, mac: str, target: BootTarget) -> str:
        """Point the node with this MAC at ``target``; returns the profile's TFTP path."""
        text = render_profile(target)
        path = self._profile_file(mac)
        atomic_write(path, text.encode("ascii"))
        logger.debug("profile %s -> %r", path.name, target)
        return profile_path(mac)

    def remove_profile(self, mac: str) -> bool:
        """Remove the node's profile (its firmware then falls back to ``default``)."""
        path = self._profile_file(mac)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        except OSError as err:
            raise PxeError(f"cannot remove {path}: {err.strerror or err}") from None
        logger.debug("profile %s removed", path.name)
        return True

    def profile(self, mac: str) -> str | None:
        """The node's current profile text, or None if it has none."""
        path = self._profile_file(mac)
        try:
            return path.read_text(encoding="ascii", errors="replace")
        except FileNotFoundError:
            return None
        except OSError as err:
            raise PxeError(f"cannot read {path}: {err.strerror or err}") from None

    def profiles(self) -> list[str]:
        """MACs (``aa:bb:...``) of every node that has a profile, sorted."""
        try:
            names = [entry.name for entry in self.profile_dir.iterdir() if entry.is_file()]
        except FileNotFoundError:
            return []
        return sorted(mac for mac in map(mac_of_profile_name, names) if mac is not None)

    def publish_boot_files(
        self, key: str, kernel: bytes, initrd: bytes | None
    ) -> tuple[str, str | None]:
        """Write a kernel (and initrd) under ``envs/<key>/``; returns their TFTP paths.

        Publishing again under the same key replaces the files atomically; publishing without
        an initrd removes a stale one, so the paths returned are exactly what exists.
        """
        validate_key(key)
        if not isinstance(kernel, bytes | bytearray) or not kernel:
            raise PxeError(f"boot files {key!r}: the kernel must be non-empty bytes")
        if initrd is not None and not isinstance(initrd, bytes | bytearray):
            raise PxeError(f"boot files {key!r}: the initrd must be bytes or None")
        directory = self.root / ENVS_DIR / key
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise PxeError(f"cannot create {directory}: {err.strerror or err}") from None
        kernel_path = f"{ENVS_DIR}/{key}/{KERNEL_NAME}"
        initrd_path = f"{ENVS_DIR}/{key}/{INITRD_NAME}"
        atomic_write(self.root / kernel_path, bytes(kernel))
        if initrd is None:
            with contextlib.suppress(FileNotFoundError):
                (self.root / initrd_path).unlink()
            logger.info("published %s (%d bytes, no initrd)", kernel_path, len(kernel))
            return kernel_path, None
        atomic_write(self.root / initrd_path, bytes(initrd))
        logger.info(
            "published %s (%d bytes) and %s (%d bytes)",
            kernel_path,
            len(kernel),
            initrd_path,
            len(initrd),
        )
        return kernel_path, initrd_path

    def remove_boot_files(self, key: str) -> bool:
        """Remove ``envs/<key>/``; False if it did not exist."""
        directory = self.root / ENVS_DIR / validate_key(key)
        if not directory.is_dir():
            return False
        try:
            shutil.rmtree(directory)
        except OSError as err:
            raise PxeError(f"cannot remove {directory}: {err.strerror or err}") from None
        return True
