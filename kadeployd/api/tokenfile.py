"""Writing a user's token where only that user can read it (``~USER/.kadeploy/token``).

``kadeploy-server token add`` runs as root and writes into a directory the user controls, so
it must not follow a link the user planted there: the directory is opened with O_NOFOLLOW and
checked to belong to the user (or root), the file is created under a fresh name with O_EXCL,
given to the user with mode 600, and renamed into place relative to the opened directory.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import secrets
from dataclasses import dataclass
from pathlib import Path

from kadeploy_core.errors import KadeployError

logger = logging.getLogger(__name__)

TOKEN_DIR = ".kadeploy"  # noqa: S105 - a directory name, not a secret
TOKEN_NAME = "token"  # noqa: S105 - a file name, not a secret


class TokenFileError(KadeployError):
    """The token file cannot be written safely."""


@dataclass(frozen=True, slots=True)
class Account:
    """A system user."""

    name: str
    uid: int
    gid: int
    home: Path


def account(user: str) -> Account:
    """The system account ``user``; TokenFileError if there is none."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise TokenFileError(
            f"no system user {user!r} (see /etc/passwd or getent passwd)"
        ) from None
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir))


def default_token_path(owner: Account) -> Path:
    """``~USER/.kadeploy/token``."""
    return owner.home / TOKEN_DIR / TOKEN_NAME


def write_token_file(owner: Account, token: str, path: Path | None = None) -> Path:
    """Write ``token`` to ``path`` (default ``~USER/.kadeploy/token``), mode 600, owned by
    ``owner``; the default directory is made (mode 700) if missing."""
    target = path or default_token_path(owner)
    directory = target.parent
    if path is None and not directory.exists():
        try:
            directory.mkdir(mode=0o700)
            os.chown(directory, owner.uid, owner.gid, follow_symlinks=False)
        except OSError as exc:
            raise TokenFileError(f"cannot create {directory}: {exc}") from exc
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        raise TokenFileError(f"cannot open the directory {directory}: {exc}") from exc
    try:
        st = os.fstat(dir_fd)
        if st.st_uid not in (owner.uid, 0):
            raise TokenFileError(
                f"{directory} belongs to uid {st.st_uid}, neither {owner.name} nor root: refusing"
            )
        temporary = f".{TOKEN_NAME}.{secrets.token_hex(8)}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        fd = os.open(temporary, flags, 0o600, dir_fd=dir_fd)
        try:
            os.fchown(fd, owner.uid, owner.gid)
            os.fchmod(fd, 0o600)
            os.write(fd, (token + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.rename(temporary, target.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(temporary, dir_fd=dir_fd)
            raise
    except OSError as exc:
        raise TokenFileError(f"cannot write {target}: {exc}") from exc
    finally:
        os.close(dir_fd)
    logger.info("token of %s written to %s", owner.name, target)
    return target
