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
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from kadeploy_core.errors import InputError, Problem
from kadeploy_core.filenames import check_file_name
from kadeployd.pxe.errors import PxeError
from kadeployd.pxe.files import atomic_write
from kadeployd.pxe.profiles import profile_path, validate_tftp_path

logger = logging.getLogger(__name__)

MAX_PROFILE_BYTES = 64 * 1024
"""Largest profile accepted (pxelinux profiles are a few hundred bytes)."""
MAX_FILES = 16
"""Most ``-x`` files in one request."""
USERS_DIR = "users"
FILES_PREFIX = "FILES_PREFIX"

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


def publish_files(root: Path, user: str, files: Mapping[str, Path]) -> list[str]:
    """Copy each ``name -> local file`` to ``users/<user>/name`` under the TFTP root
    (replacing a file of the same name); their TFTP paths. Raises PxeError."""
    directory = Path(root) / user_dir(user)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PxeError(f"cannot create {directory}: {err.strerror or err}") from None
    published = []
    for name, source in files.items():
        problem = check_file_name(name)
        if problem is not None:
            raise PxeError(f"file name: {problem}")
        _copy_atomically(source, directory / name)
        published.append(f"{user_dir(user)}/{name}")
    return published


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
