"""What the root daemon does to itself at start so that other local users read nothing of it.

The state dir holds the database (every deployment, node log, private environment and right),
the log, the pidfile and the users' uploads. At start the daemon

- sets its umask to 0077, so everything it creates afterwards (SQLite's database, WAL and
  shared-memory files, logs, environment files) is private to root;
- makes the state dir 0700 and every entry directly in it private (directories 0700, files
  0600), repairing the modes of an existing install. One exception: when the API's Unix
  socket lives in the state dir (the default, ``<state_dir>/kadeployd.sock``), the dir is
  0711, so that users can reach the socket by its name (every request needs a token) while
  still listing and reading nothing;
- creates the API socket's directory 0755 if it is elsewhere and missing (the umask would
  make it 0700, and users could not reach the socket);
- raises its open-files soft limit to the hard limit: each API connection and each TFTP
  session is a file descriptor, and the usual soft limit (1024) would otherwise be reached by
  a few hundred idle clients.
"""

from __future__ import annotations

import logging
import os
import resource
import stat
from pathlib import Path

logger = logging.getLogger(__name__)

UMASK = 0o077
PRIVATE_DIR = 0o700
SOCKET_DIR = 0o711
"""A private state dir that users may still traverse, to reach the API socket in it."""
PRIVATE_FILE = 0o600


def restrict_umask() -> int:
    """Set the process umask to 0077; the previous one."""
    return os.umask(UMASK)


def raise_open_files_limit() -> tuple[int, int]:
    """Raise RLIMIT_NOFILE's soft limit to its hard limit (bounded by the kernel's
    ``fs.nr_open`` when the hard limit is unlimited); the (soft, hard) limits afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        try:
            target = int(Path("/proc/sys/fs/nr_open").read_text())
        except (OSError, ValueError):
            target = 1 << 20
    if soft != resource.RLIM_INFINITY and soft >= target:
        return soft, hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError) as err:
        logger.warning("cannot raise the open-files limit from %d to %d: %s", soft, target, err)
        return soft, hard
    logger.debug("open-files limit raised from %d to %d", soft, target)
    return target, hard


def state_dir_mode(state_dir: Path, unix_socket: Path) -> int:
    """0711 if the API socket is directly in ``state_dir``, 0700 otherwise."""
    inside = os.path.abspath(unix_socket.parent) == os.path.abspath(state_dir)
    return SOCKET_DIR if inside else PRIVATE_DIR


def secure_state_dir(state_dir: Path, unix_socket: Path) -> None:
    """Create ``state_dir`` if needed and make it and its entries private (see the module
    docstring). Symlinks and sockets are left alone; entries owned by another user too (only
    logged): the daemon does not take over files it did not make."""
    state_dir.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    _chmod(state_dir, state_dir_mode(state_dir, unix_socket))
    with os.scandir(state_dir) as entries:
        for entry in entries:
            path = Path(entry.path)
            if entry.is_dir(follow_symlinks=False):
                _chmod(path, PRIVATE_DIR)
            elif entry.is_file(follow_symlinks=False):
                _chmod(path, PRIVATE_FILE)


SHARED_DIR = 0o755


def prepare_socket_dir(state_dir: Path, unix_socket: Path) -> None:
    """Create the API socket's directory, if it is not the state dir and does not exist yet,
    reachable by every user (0755, whatever the umask): users connect to the socket, each
    request needs a token. An existing directory is the administrator's: left as it is."""
    parent = Path(os.path.abspath(unix_socket.parent))
    if parent == Path(os.path.abspath(state_dir)) or parent.exists():
        return
    missing = [parent, *[p for p in parent.parents if not p.exists()]]
    parent.mkdir(parents=True)
    for directory in missing:
        os.chmod(directory, SHARED_DIR)


def _chmod(path: Path, mode: int) -> None:
    try:
        info = os.lstat(path)
        if stat.S_IMODE(info.st_mode) == mode:
            return
        if info.st_uid != os.geteuid():
            logger.warning(
                "%s is mode %o and owned by uid %d, not this daemon: left as it is",
                path,
                stat.S_IMODE(info.st_mode),
                info.st_uid,
            )
            return
        os.chmod(path, mode, follow_symlinks=False)
    except NotImplementedError:  # chmod without following symlinks; lstat said not a link
        os.chmod(path, mode)
    except OSError as err:
        logger.warning("cannot make %s mode %o: %s", path, mode, err)
        return
    logger.info("%s was mode %o, now %o", path, stat.S_IMODE(info.st_mode), mode)
