"""Users' PXE files that a running deployment will name (``kadeploy -w`` with files).

A deployment with its own profile publishes its files under ``users/<user>/`` when it is
created, but writes the profile naming them only in BootNewEnv, minutes later. Meanwhile no
profile names them, so :func:`~kadeployd.pxe.user_profiles.sweep_user_files` (run by the
user's next set_pxe or deployment) would remove them: the deployment holds them here until it
ends. Then :func:`release` gives back the paths it held, and those no profile names are
removed at once (the boot files of a deployment are cleaned at its end the same way).

In-process and thread-safe: the API publishes and the PxeActor releases, in one daemon.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Iterable

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_held: dict[str, frozenset[str]] = {}
"""Holder (a request's token, then its deployment id) -> TFTP paths (``users/alice/k``)."""
_ended: deque[str] = deque(maxlen=1024)
"""The last holders released: a deployment may end before its request renames its hold."""


def hold(holder: str, paths: Iterable[str]) -> None:
    """``holder`` needs ``paths`` until it releases them."""
    with _lock:
        _held[holder] = _held.get(holder, frozenset()) | frozenset(paths)


def rename(holder: str, new: str) -> frozenset[str]:
    """What ``holder`` holds is held by ``new`` from now on (the deployment it started).
    If ``new`` already ended, nothing is held: the paths no other holder needs are returned,
    for the caller to remove as :func:`release`'s."""
    with _lock:
        paths = _held.pop(holder, frozenset())
        if new not in _ended:
            if paths:
                _held[new] = _held.get(new, frozenset()) | paths
            return frozenset()
        others = frozenset().union(*_held.values()) if _held else frozenset()
    return paths - others


def release(holder: str) -> frozenset[str]:
    """``holder`` no longer needs its paths; those no other holder needs."""
    with _lock:
        paths = _held.pop(holder, frozenset())
        _ended.append(holder)
        others = frozenset().union(*_held.values()) if _held else frozenset()
    return paths - others


def held() -> frozenset[str]:
    """Every path some holder needs."""
    with _lock:
        return frozenset().union(*_held.values()) if _held else frozenset()
