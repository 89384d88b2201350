"""Where a daemon keeps its state and its API socket, by default: what both the daemon's
configuration and the command-line tools (finding the server) need to agree on."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

DEFAULT_STATE_DIR = Path("/var/lib/kadeployd")
SOCKET_NAME = "kadeployd.sock"


def api_socket(daemon_section: Mapping[str, Any]) -> Path:
    """The API's Unix socket named by the ``daemon`` section of a deploy.conf:
    ``api.unix_socket``, else ``<state_dir>/kadeployd.sock``. Raises ValueError for a section
    whose values are not paths."""
    api = daemon_section.get("api") or {}
    if not isinstance(api, Mapping):
        raise ValueError("daemon.api must be a mapping")
    socket = api.get("unix_socket")
    if socket is not None:
        if not isinstance(socket, str) or not socket:
            raise ValueError("daemon.api.unix_socket must be a path")
        return Path(socket)
    state_dir = daemon_section.get("state_dir", str(DEFAULT_STATE_DIR))
    if not isinstance(state_dir, str) or not state_dir:
        raise ValueError("daemon.state_dir must be a path")
    return Path(state_dir) / SOCKET_NAME
