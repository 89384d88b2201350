"""What the API's routes share: the Daemon (the only way to the actors), a store reader, the
event hub (what the store commits, pushed), the tokens, the uploads, and the server's own
status (uptime, reloads)."""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from kadeploy_core.errors import ConfigError
from kadeployd.api.tokens import TokenStore
from kadeployd.api.uploads import UploadStore
from kadeployd.config import Config
from kadeployd.daemon import Daemon
from kadeployd.store.reader import StoreReader

logger = logging.getLogger(__name__)

ENVIRONMENTS_DIR = "environments"
"""Under the state dir: the files of registered environments, ``<owner>/<name>/<version>/``."""
ANONYMOUS_DIR = "anonymous"
"""Under the state dir: the files of anonymous environments, one directory per request."""


@dataclass
class ServerStatus:
    """What ``kadeploy-server status`` shows; updated by the process's main loop."""

    started_at: float = field(default_factory=time.time)
    pid: int = field(default_factory=os.getpid)
    reloads: int = 0
    reload_failures: int = 0
    last_reload_error: str | None = None
    reloaded_at: float | None = None


class ApiContext:
    """Everything a request handler may use."""

    def __init__(self, daemon: Daemon, status: ServerStatus | None = None) -> None:
        self.daemon = daemon
        self.status = status or ServerStatus()
        state_dir = daemon.config.daemon.state_dir
        self.state_dir = state_dir
        self.reader = StoreReader(daemon.database)
        self.events = daemon.events
        """The daemon's EventHub: event streams subscribe to it instead of polling the store."""
        self.tokens = TokenStore(state_dir)
        self.uploads = UploadStore(state_dir / "uploads")
        self.environments_dir = state_dir / ENVIRONMENTS_DIR
        self.anonymous_dir = state_dir / ANONYMOUS_DIR
        for directory in (self.environments_dir, self.anonymous_dir):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.stopping = threading.Event()
        """Set when the server stops: event streams end."""

    @property
    def config(self) -> Config:
        """The configuration in force (updated by reloads)."""
        return self.daemon.config

    def is_admin(self, user: str) -> bool:
        """Whether ``user`` is one of ``daemon.almighty_users``."""
        return user in self.config.daemon.almighty_users

    def environment_dir(self, owner: str, name: str, version: int) -> Path:
        """Where a registered environment's files live."""
        return self.environments_dir / owner / name / str(version)

    def reload(self) -> Config:
        """Re-read the configuration through the Daemon (SIGHUP, ``POST /v1/server/reload``);
        the outcome is recorded for ``kadeploy-server status``. ConfigError keeps the old one."""
        try:
            config = self.daemon.reload()
        except ConfigError as exc:
            self.status.last_reload_error = str(exc)
            self.status.reload_failures += 1
            logger.error("reload refused, the configuration in force stays:\n%s", exc)
            raise
        self.status.reloads += 1
        self.status.last_reload_error = None
        self.status.reloaded_at = time.time()
        return config

    def close(self) -> None:
        """End the event streams, release the store reader."""
        self.stopping.set()
        self.events.close()
        self.reader.close()
