"""PxeActor: owns the TFTP server thread and the profiles under its root.

The behaviour lives in ``PxeFiles`` (files.py, plain and testable without threads) and
``TftpService`` (tftp.py, the server thread); the actor serialises calls to them and ties the
server's life to its own: started in ``on_start``, stopped in ``on_stop`` or ``on_failure``.
State lives in files, so a restarted PxeActor serves the profiles its predecessor wrote.

If the TFTP thread dies on its own, it tells the actor, which then fails (``on_failure`` runs)
so that its supervisor restarts it with a fresh server.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import pykka

from kadeployd.environment.bootfiles import sweep_boot_files
from kadeployd.pxe import held_files, user_profiles
from kadeployd.pxe.errors import PxeError
from kadeployd.pxe.files import ENVS_DIR, PxeFiles
from kadeployd.pxe.profiles import BootTarget
from kadeployd.pxe.tftp import ServedFile, TftpService
from kadeployd.pxe.user_profiles import UserProfile
from kadeployd.supervision import SupervisedActor

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _ServerCrashed:
    """Told by the TFTP thread when the server stopped without being asked to."""

    message: str


class PxeActor(SupervisedActor):
    """PXE profiles per node and the TFTP server that serves them.

    Start with ``PxeActor.start(root=..., listen=..., port=...)``; ``port=0`` picks a free port
    (ask ``port()``). A failure to bind (port taken, permission denied) makes ``on_start`` raise
    a PxeError, so the actor dies at start, with the message in the log.
    """

    def __init__(self, root: Path, listen: str, port: int, *, tftp_timeout: float = 5.0) -> None:
        super().__init__()
        self._files = PxeFiles(Path(root))
        self._service = TftpService(
            Path(root), listen, port, timeout=tftp_timeout, on_crash=self._report_crash
        )

    # -- lifecycle -------------------------------------------------------------------------

    def on_start(self) -> None:
        self._files.prepare()
        self._service.start()
        logger.info(
            "PxeActor ready: %d profile(s) under %s",
            len(self._files.profiles()),
            self._files.root,
        )

    def on_stop(self) -> None:
        self._service.stop()
        super().on_stop()

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            self._service.stop()
        except PxeError as err:
            logger.error("PxeActor failed and its TFTP server did not stop: %s", err)
        super().on_failure(exception_type, exception_value, traceback)

    def on_receive(self, message: Any) -> Any:
        match message:
            case _ServerCrashed(message=text):
                raise PxeError(text)
            case _:
                return super().on_receive(message)

    def _report_crash(self, message: str) -> None:
        """Called in the TFTP thread: hand the failure to the actor's own thread."""
        try:
            self.actor_ref.tell(_ServerCrashed(message))
        except pykka.ActorDeadError:
            logger.debug("TFTP server crash reported after the PxeActor stopped")

    # -- message API -----------------------------------------------------------------------

    def set_profile(self, mac: str, target: BootTarget) -> str:
        """Point the node with this MAC at ``target`` (atomic); returns the profile's TFTP path."""
        return self._files.set_profile(mac, target)

    def set_user_profile(self, macs: Sequence[str], profile: UserProfile) -> list[str]:
        """kareboot set_pxe: write a user's checked ``profile`` for each MAC (atomic); the
        profiles' TFTP paths."""
        return user_profiles.write_profiles(self._files.root, macs, profile)

    def remove_profile(self, mac: str) -> bool:
        """Remove the node's profile; False if it had none."""
        return self._files.remove_profile(mac)

    def profile(self, mac: str) -> str | None:
        """The node's current profile text, or None."""
        return self._files.profile(mac)

    def profiles(self) -> list[str]:
        """MACs (``aa:bb:...``) of the nodes that have a profile."""
        return self._files.profiles()

    def remove_boot_files(self, key: str) -> bool:
        """Remove ``envs/<key>/``; False if it did not exist."""
        return self._files.remove_boot_files(key)

    def clean_boot_files(self, ended: str, deployed_any: bool, running: Collection[str]) -> None:
        """A deployment ended: remove its boot files now if it deployed no node (nothing boots
        them), and sweep those no profile names any more, keeping the running deployments'.

        Boot file keys end with ``-`` and the first 8 characters of their deployment's id
        (DeploymentManager._publish_boot_files)."""
        if not deployed_any:
            for key in self._keys_of([ended]):
                try:
                    self._files.remove_boot_files(key)
                except PxeError as err:
                    logger.warning("deployment %s: %s", ended, err)
        sweep_boot_files(self._files.root, keep=self._keys_of(running))
        # Its own PXE files (kadeploy -w), unless a node's profile still names them.
        user_profiles.remove_unreferenced(self._files.root, held_files.release(ended))

    def _keys_of(self, deployment_ids: Collection[str]) -> list[str]:
        suffixes = tuple(f"-{ident[:8]}" for ident in deployment_ids)
        try:
            entries = os.listdir(self._files.root / ENVS_DIR)
        except OSError:
            return []
        return [key for key in entries if suffixes and key.endswith(suffixes)]

    def port(self) -> int:
        """The UDP port the TFTP server listens on."""
        return self._service.port

    def served(self) -> list[ServedFile]:
        """The files served most recently (name, client address), oldest first."""
        return self._service.served()
