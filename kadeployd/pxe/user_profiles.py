"""A user's own PXE profile (kareboot ``-r set_pxe -w FILE``) and the files it boots (``-x``).

The profile text is sent with the request (never read from a path on the server). It is
checked before anything is written: at most :data:`MAX_PROFILE_BYTES`, text without control
characters, and every file it names (``KERNEL``, ``INITRD``, ``COM32``..., ``initrd=`` on an
``APPEND`` line, and the configuration files of ``INCLUDE`` and ``MENU INCLUDE``, which
pxelinux also fetches over TFTP) must be a clean path of the TFTP root: no ``.``/``..`` or
empty component, no other server. One rule confines it, written absolute (``/x``) or relative
(``x``): a path under ``users/`` must be inside the user's own directory ``users/<user>/``
(another user's files are theirs), and an absolute path must be inside it too.

The user's files are published under ``users/<user>/`` of the TFTP root. As in Kadeploy3, the
profile may write ``FILES_PREFIX`` for that directory: ``KERNEL FILES_PREFIX/vmlinuz`` (or
Kadeploy3's ``FILES_PREFIX--vmlinuz``) becomes ``KERNEL users/alice/vmlinuz``.

Files are written like the PxeActor writes its own (:func:`atomic_write`): a node's firmware
reading at any moment sees a whole file.

They do not stay forever: a file of ``users/<user>/`` that no node's profile names any more
(its node was deployed since, or given another profile) is removed by :func:`sweep_user_files`,
run before each publication (a file published less than :data:`UNREFERENCED_GRACE` seconds ago
is kept: its profiles may be on their way). What a user keeps there is bounded
(``max_bytes`` of :func:`publish_files`, ``daemon.max_set_pxe_files_mib``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from kadeploy_core.errors import InputError, Problem
from kadeploy_core.filenames import check_file_name
from kadeployd.pxe import held_files
from kadeployd.pxe.errors import PxeError
from kadeployd.pxe.files import atomic_write
from kadeployd.pxe.profiles import PROFILE_DIR, profile_path, validate_tftp_path

logger = logging.getLogger(__name__)

MAX_PROFILE_BYTES = 64 * 1024
"""Largest profile accepted (pxelinux profiles are a few hundred bytes)."""
MAX_FILES = 16
"""Most ``-x`` files in one request."""
USERS_DIR = "users"
FILES_PREFIX = "FILES_PREFIX"
MAX_USER_FILES_BYTES = 1 << 30
"""Default bound on the bytes of one user's published files (``daemon.max_set_pxe_files_mib``)."""
UNREFERENCED_GRACE = 600.0
"""Seconds a published file no profile names is kept (its profiles are being written)."""

_USER_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,62}\$?$")
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_FILE_KEYWORDS = frozenset(
    {"KERNEL", "LINUX", "INITRD", "COM32", "CONFIG", "FONT", "KBDMAP", "UI", "FDT", "FDTDIR"}
)
"""pxelinux keywords whose argument is a file fetched over TFTP."""
_MENU_FILE_KEYWORDS = frozenset({"INCLUDE", "BACKGROUND"})
"""``MENU`` keywords whose argument is a file fetched over TFTP (``MENU INCLUDE file``)."""


@dataclass(frozen=True, slots=True)
class UserProfile:
    """A checked profile, ``FILES_PREFIX`` substituted, ready to be written."""

    user: str
    text: str


def user_dir(user: str) -> str:
    """TFTP path of ``user``'s directory: ``users/<user>``."""
    if not _USER_RE.match(user) or user in (".", ".."):
        raise PxeError(f"user name {user!r} cannot name a TFTP directory")
    return f"{USERS_DIR}/{user}"


def check_profile(
    text: str, user: str, source: str = "profile", path: str = "profile"
) -> UserProfile:
    """The profile ``text`` of ``user``, checked and with ``FILES_PREFIX`` substituted.

    Raises InputError with one Problem per mistake (``source``, ``path``, line number).
    """
    problems: list[Problem] = []
    size = len(text.encode("utf-8"))
    if size > MAX_PROFILE_BYTES:
        raise InputError(
            [Problem(source, f"{size} bytes; a profile may have at most {MAX_PROFILE_BYTES}", path)]
        )
    if not text.strip():
        raise InputError([Problem(source, "empty profile; expected pxelinux lines", path)])
    prefix = user_dir(user)
    lines = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if _CONTROL_RE.search(raw):
            problems.append(
                Problem(source, "control character; a profile is plain text lines", path, number)
            )
            continue
        line = _substitute(raw, prefix)
        problems.extend(
            Problem(source, message, path, number) for message in _line_problems(line, prefix)
        )
        lines.append(line)
    if problems:
        raise InputError(problems)
    return UserProfile(user, "\n".join(lines) + "\n")


def _substitute(line: str, prefix: str) -> str:
    line = line.replace(f"{FILES_PREFIX}--", f"{prefix}/").replace(f"{FILES_PREFIX}/", f"{prefix}/")
    return line.replace(FILES_PREFIX, prefix)


def _line_problems(line: str, prefix: str) -> list[str]:
    words = line.split()
    if not words or words[0].startswith("#"):
        return []
    keyword = words[0].upper()
    label = f"{keyword} "
    if keyword in _FILE_KEYWORDS and len(words) >= 2:
        names = words[1].split(",") if keyword == "INITRD" else [words[1]]
    elif keyword == "INCLUDE" and len(words) >= 2:  # INCLUDE file [tag]
        names = [words[1]]
    elif keyword == "MENU" and len(words) >= 3 and words[1].upper() in _MENU_FILE_KEYWORDS:
        names = [words[2]]
        label = f"MENU {words[1].upper()} "
    elif keyword == "APPEND":
        names = [n for w in words[1:] if w.startswith("initrd=") for n in w[7:].split(",")]
        label = "APPEND initrd="
    else:
        return []
    return [
        f"{label}{name}: {message}" for name in names if (message := _path_problem(name, prefix))
    ]


def _path_problem(name: str, prefix: str) -> str | None:
    """None if the firmware may fetch ``name``, else why not. ``name`` is read as the TFTP
    server reads it (leading ``/`` dropped) and must be clean (so ``users/./bob``,
    ``x/../users/bob`` or ``/users/me/../bob`` cannot dodge the directory rule)."""
    if "::" in name or "://" in name:
        return "names another server; files come from this TFTP server"
    relative = name.lstrip("/")
    inside = relative.startswith(f"{prefix}/")
    if name.startswith("/") and not inside:
        return f"absolute paths must stay inside your directory /{prefix}/"
    try:
        validate_tftp_path(relative, "path")
    except PxeError as exc:
        return str(exc).removeprefix("path: ")
    if relative.split("/")[0] == USERS_DIR and not inside:
        return f"paths under {USERS_DIR}/ must stay inside your directory {prefix}/"
    return None


def write_profiles(root: Path, macs: Sequence[str], profile: UserProfile) -> list[str]:
    """Write ``profile`` as the PXE profile of each MAC; their TFTP paths."""
    written = []
    for mac in macs:
        target = profile_path(mac)
        atomic_write(Path(root) / target, profile.text.encode("utf-8"))
        written.append(target)
    logger.info("profile of %s written for %d node(s)", profile.user, len(written))
    return written


def publish_files(
    root: Path,
    user: str,
    files: Mapping[str, Path],
    max_bytes: int = MAX_USER_FILES_BYTES,
    *,
    setting: str = "daemon.max_set_pxe_files_mib",
) -> list[str]:
    """Copy each ``name -> local file`` to ``users/<user>/name`` under the TFTP root
    (replacing a file of the same name); their TFTP paths. Raises PxeError.

    The user's files no profile names any more are removed first; then InputError (nothing
    copied) if the user's remaining files and the new ones would pass ``max_bytes``.
    """
    directory = Path(root) / user_dir(user)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PxeError(f"cannot create {directory}: {err.strerror or err}") from None
    for name in files:
        problem = check_file_name(name)
        if problem is not None:
            raise PxeError(f"file name: {problem}")
    sweep_user_files(root, [user])
    _check_room(directory, user, files, max_bytes, setting)
    published = []
    for name, source in files.items():
        _copy_atomically(source, directory / name)
        published.append(f"{user_dir(user)}/{name}")
    return published


def _check_room(
    directory: Path, user: str, files: Mapping[str, Path], max_bytes: int, setting: str
) -> None:
    kept = sum(size for name, size in _sizes(directory).items() if name not in files)
    try:
        incoming = sum(source.stat().st_size for source in files.values())
    except OSError as err:
        raise PxeError(f"cannot read a file to publish: {err.strerror or err}") from None
    if kept + incoming > max_bytes:
        raise InputError(
            [
                Problem(
                    "request",
                    f"{user}'s PXE files would take {kept + incoming} bytes under "
                    f"{user_dir(user)}/ ({kept} kept for profiles still set, {incoming} new), "
                    f"more than the limit of {max_bytes} bytes ({setting}); deploy or reset "
                    "the nodes still using your other files, or send smaller ones",
                    "files",
                )
            ]
        )


def _sizes(directory: Path) -> dict[str, int]:
    sizes: dict[str, int] = {}
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(directory):
            with contextlib.suppress(OSError):
                if entry.is_file(follow_symlinks=False):
                    sizes[entry.name] = entry.stat(follow_symlinks=False).st_size
    return sizes


def referenced_files(root: Path) -> set[str]:
    """TFTP paths under ``users/`` that some node's profile names (any word of it)."""
    names: set[str] = set()
    profiles = Path(root) / PROFILE_DIR
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(profiles):
            if not entry.is_file(follow_symlinks=False) or entry.name.startswith("."):
                continue
            try:
                with open(entry.path, encoding="utf-8", errors="replace") as handle:
                    text = handle.read(MAX_PROFILE_BYTES + 1)
            except OSError:
                continue
            for word in text.replace(",", " ").replace("=", " ").split():
                relative = word.lstrip("/")
                if relative.startswith(f"{USERS_DIR}/"):
                    names.add(relative)
    return names


def sweep_user_files(
    root: Path, users: Iterable[str] | None = None, grace: float = UNREFERENCED_GRACE
) -> int:
    """Remove the files under ``users/<user>/`` (every user's if ``users`` is None) that no
    node's profile names and that were published more than ``grace`` seconds ago; how many.

    To call when profiles change hands: before a publication (done by :func:`publish_files`)
    and after a deployment rewrote its nodes' profiles."""
    base = Path(root) / USERS_DIR
    if users is None:
        try:
            users = [entry.name for entry in os.scandir(base) if entry.is_dir()]
        except FileNotFoundError:
            return 0
    referenced = referenced_files(root) | held_files.held()
    limit = time.time() - grace
    removed = 0
    for user in users:
        prefix = user_dir(user)
        directory = Path(root) / prefix
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            continue
        for entry in entries:
            if f"{prefix}/{entry.name}" in referenced:
                continue
            with contextlib.suppress(OSError):
                if entry.stat(follow_symlinks=False).st_mtime < limit:
                    os.unlink(entry.path)
                    removed += 1
    if removed:
        logger.info("removed %d PXE file(s) of users that no profile names any more", removed)
    return removed


def remove_unreferenced(root: Path, paths: Iterable[str]) -> int:
    """Remove those of ``paths`` (``users/<user>/<name>``) that no node's profile names and
    no running deployment holds, whatever their age (a deployment that held them ended);
    how many."""
    keep = referenced_files(root) | held_files.held()
    removed = 0
    for path in paths:
        if path in keep or not path.startswith(f"{USERS_DIR}/"):
            continue
        with contextlib.suppress(OSError):
            os.unlink(Path(root) / path)
            removed += 1
    if removed:
        logger.info("removed %d PXE file(s) of an ended deployment", removed)
    return removed


def _copy_atomically(source: Path, target: Path) -> None:
    fd, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out, source.open("rb") as data:
            shutil.copyfileobj(data, out, 1024 * 1024)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temp_name, 0o644)
        os.replace(temp_name, target)
    except OSError as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise PxeError(f"cannot publish {target.name}: {err.strerror or err}") from None
