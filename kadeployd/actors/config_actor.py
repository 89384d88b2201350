"""ConfigActor: holds the configuration snapshot in force; reload swaps it atomically."""

from __future__ import annotations

import logging
from pathlib import Path

from kadeployd.config import Config, load_config
from kadeployd.supervision import SupervisedActor

logger = logging.getLogger(__name__)


class ConfigActor(SupervisedActor):
    """The current :class:`Config`; a restart reloads it from its directory."""

    def __init__(self, directory: Path) -> None:
        super().__init__()
        self._directory = directory
        self._config: Config | None = None

    def on_start(self) -> None:
        """Load the configuration (the daemon validated it before starting the tree)."""
        self._config = load_config(self._directory)

    def snapshot(self) -> Config:
        """The configuration in force: frozen, safe to share between threads."""
        assert self._config is not None
        return self._config

    def reload(self) -> Config:
        """Re-read the directory; on error (ConfigError to the caller) the old one stays."""
        config = load_config(self._directory)
        self._config = config
        logger.info("configuration reloaded from %s: %d nodes", self._directory, len(config.nodes))
        return config
