"""Files users send to the daemon: images, postinstall archives, SSH keys.

The daemon never opens a user's files with its own rights: the client reads them and uploads
their bytes. An upload is stored as ``<uploads>/<id>.data`` plus ``<id>.json`` (owner, name,
size, SHA-256); a deployment or an environment that references it *takes* it (the file is moved
into the environment's directory), so an upload is used once. Uploads nobody took are swept
after :data:`UPLOAD_TTL` seconds.

What one user keeps stored is bounded (:class:`UploadQuota`: a number of uploads and their
bytes, those being received included), so one user cannot fill the daemon's disk for all.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

from kadeploy_core.errors import KadeployError

logger = logging.getLogger(__name__)

UPLOAD_TTL = 24 * 3600.0
_ID = re.compile(r"^[0-9a-f]{32}$")


class UploadError(KadeployError):
    """An upload is unknown, someone else's, or cannot be stored."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class UploadTooLarge(UploadError):
    """More bytes than ``daemon.max_upload_mib``, or than the user's quota."""


class TooManyUploads(UploadError):
    """The user already keeps ``daemon.max_uploads_per_user`` uploads."""


@dataclass(frozen=True, slots=True)
class UploadQuota:
    """What one user may keep stored at once (uploads being received count too)."""

    max_count: int
    max_bytes: int
    count_setting: str = "daemon.max_uploads_per_user"
    bytes_setting: str = "daemon.max_upload_storage_mib"


@dataclass(frozen=True, slots=True)
class UploadInfo:
    """One stored upload."""

    id: str
    user: str
    name: str
    size: int
    sha256: str
    created_at: float


class UploadWriter:
    """Receives one upload's bytes; :meth:`commit` records it, :meth:`discard` drops it."""

    def __init__(
        self,
        store: UploadStore,
        user: str,
        name: str,
        limit: int,
        *,
        quota: UploadQuota | None = None,
        stored: int = 0,
    ) -> None:
        self._store = store
        self.id = uuid.uuid4().hex
        self.user = user
        self.name = name
        self.limit = limit
        self.quota = quota
        self.stored = stored
        """Bytes of the user's committed uploads when this one started."""
        self.size = 0
        self._hash = hashlib.sha256()
        self._path = store.data_path(self.id)
        fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        self._file: IO[bytes] = os.fdopen(fd, "wb")

    def write(self, chunk: bytes) -> None:
        """Append ``chunk``; UploadTooLarge past the limit."""
        self.size += len(chunk)
        if self.size > self.limit:
            raise UploadTooLarge(
                "upload_too_large",
                f"upload {self.name!r} is larger than the limit of {self.limit // 2**20} MiB "
                f"(daemon.max_upload_mib)",
            )
        self._store.check_quota(self)
        self._hash.update(chunk)
        self._file.write(chunk)

    def commit(self) -> UploadInfo:
        """Close the file and record the upload (UploadTooLarge, and nothing kept, if the
        user's stored uploads grew past the quota meanwhile)."""
        self._file.close()
        info = UploadInfo(
            self.id, self.user, self.name, self.size, self._hash.hexdigest(), time.time()
        )
        try:
            self._store.commit(self, info)
        except UploadError:
            self.discard()
            raise
        logger.info("upload %s (%s, %d bytes) from %s", info.id, info.name, info.size, self.user)
        return info

    def discard(self) -> None:
        """Drop the partial file."""
        self._file.close()
        self._store.finished(self)
        with contextlib.suppress(OSError):
            self._path.unlink()


class UploadStore:
    """The uploads directory (mode 700)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._receiving: dict[str, UploadWriter] = {}
        """Uploads being received, by id: they count in their user's quota."""

    def data_path(self, upload_id: str) -> Path:
        """Where an upload's bytes are."""
        return self.directory / f"{upload_id}.data"

    def _meta_path(self, upload_id: str) -> Path:
        return self.directory / f"{upload_id}.json"

    def writer(
        self, user: str, name: str, limit: int, quota: UploadQuota | None = None
    ) -> UploadWriter:
        """Start receiving an upload; TooManyUploads if ``user`` keeps ``quota.max_count``
        uploads already (counting those being received), UploadTooLarge if their bytes
        reach ``quota.max_bytes``."""
        with self._lock:
            stored = self.uploads(user)
            stored_bytes = sum(info.size for info in stored)
            if quota is not None:
                receiving = [w for w in self._receiving.values() if w.user == user]
                if len(stored) + len(receiving) >= quota.max_count:
                    raise TooManyUploads(
                        "too_many_uploads",
                        f"{user} keeps {len(stored) + len(receiving)} uploads not used yet, "
                        f"the limit is {quota.max_count} ({quota.count_setting}); use or "
                        "delete some (kaenv, kadeploy, or DELETE /v1/uploads/<id>)",
                    )
                used = stored_bytes + sum(w.size for w in receiving)
                if used >= quota.max_bytes:
                    raise UploadTooLarge("upload_quota_exceeded", _over_quota(user, name, quota))
            writer = UploadWriter(self, user, name, limit, quota=quota, stored=stored_bytes)
            self._receiving[writer.id] = writer
            return writer

    def check_quota(self, writer: UploadWriter) -> None:
        """UploadTooLarge if ``writer``'s user, with what it received so far, passes the
        quota on bytes (its committed uploads as when it started, plus every upload of the
        user being received)."""
        quota = writer.quota
        if quota is None:
            return
        with self._lock:
            receiving = sum(w.size for w in self._receiving.values() if w.user == writer.user)
        if writer.stored + receiving > quota.max_bytes:
            raise UploadTooLarge(
                "upload_quota_exceeded", _over_quota(writer.user, writer.name, quota)
            )

    def commit(self, writer: UploadWriter, info: UploadInfo) -> None:
        """Record ``info`` if the user's stored bytes, counted again now, stay in the quota."""
        with self._lock:
            try:
                if writer.quota is not None:
                    stored = sum(i.size for i in self.uploads(writer.user))
                    others = sum(
                        w.size
                        for w in self._receiving.values()
                        if w.user == writer.user and w is not writer
                    )
                    if stored + others + info.size > writer.quota.max_bytes:
                        raise UploadTooLarge(
                            "upload_quota_exceeded",
                            _over_quota(writer.user, writer.name, writer.quota),
                        )
                self.record(info)
            finally:
                self._receiving.pop(writer.id, None)

    def finished(self, writer: UploadWriter) -> None:
        """``writer`` is no longer receiving (discarded)."""
        with self._lock:
            self._receiving.pop(writer.id, None)

    def record(self, info: UploadInfo) -> None:
        """Write an upload's metadata."""
        self._meta_path(info.id).write_text(json.dumps(asdict(info)))

    def get(self, upload_id: str, user: str) -> UploadInfo:
        """The upload ``upload_id`` of ``user``; UploadError if unknown or someone else's."""
        unknown = UploadError("unknown_upload", f"no upload {upload_id!r} of {user}")
        if not _ID.match(upload_id):
            raise unknown
        try:
            data = json.loads(self._meta_path(upload_id).read_text())
            info = UploadInfo(**data)
        except (OSError, ValueError, TypeError):
            raise unknown from None
        if info.user != user:
            raise unknown
        return info

    def uploads(self, user: str) -> list[UploadInfo]:
        """``user``'s uploads, oldest first."""
        found = []
        for meta in self.directory.glob("*.json"):
            with contextlib.suppress(UploadError):
                found.append(self.get(meta.stem, user))
        return sorted(found, key=lambda i: i.created_at)

    def take(self, upload_id: str, user: str, destination: Path) -> UploadInfo:
        """Move an upload's file to ``destination``; the upload is gone afterwards."""
        info = self.get(upload_id, user)
        os.replace(self.data_path(upload_id), destination)
        self._meta_path(upload_id).unlink(missing_ok=True)
        return info

    def restore(self, info: UploadInfo, path: Path) -> None:
        """Put back an upload taken by :meth:`take`."""
        os.replace(path, self.data_path(info.id))
        self.record(info)

    def read_text(self, upload_id: str, user: str, limit: int) -> str:
        """A small upload's content as text (an SSH public key), consumed."""
        info = self.get(upload_id, user)
        if info.size > limit:
            raise UploadError("upload_too_large", f"upload {info.name!r} exceeds {limit} bytes")
        data = self.data_path(upload_id).read_bytes()
        self.delete(upload_id, user)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise UploadError("invalid_upload", f"upload {info.name!r} is not UTF-8 text") from None

    def delete(self, upload_id: str, user: str) -> None:
        """Remove an upload."""
        self.get(upload_id, user)
        self.data_path(upload_id).unlink(missing_ok=True)
        self._meta_path(upload_id).unlink(missing_ok=True)

    def sweep(self, max_age: float = UPLOAD_TTL, now: float | None = None) -> int:
        """Remove uploads (and partial files) older than ``max_age``; how many."""
        limit = (time.time() if now is None else now) - max_age
        removed = 0
        for path in self.directory.iterdir():
            with contextlib.suppress(OSError):
                if path.stat().st_mtime < limit:
                    path.unlink()
                    removed += 1
        return removed


def _over_quota(user: str, name: str, quota: UploadQuota) -> str:
    return (
        f"upload {name!r}: {user}'s uploads not used yet would pass {quota.max_bytes // 2**20} "
        f"MiB ({quota.bytes_setting}); use or delete some first "
        "(kaenv, kadeploy, or DELETE /v1/uploads/<id>)"
    )
