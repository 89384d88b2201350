"""Per-user API tokens: random secrets, stored hashed in ``<state_dir>/tokens.json``.

The daemon keeps only SHA-256 digests (the tokens are 256-bit random strings, so a plain hash
is enough: nothing to brute-force). ``kadeploy-server token add USER`` makes a token, stores its
digest here and writes the token itself to a file only USER can read
(:mod:`kadeployd.api.tokenfile`). The daemon re-reads the file when it changes, so a new token
works without a reload.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from kadeploy_core.errors import KadeployError

logger = logging.getLogger(__name__)

TOKENS_FILE = "tokens.json"
TOKEN_BYTES = 32


class TokenStoreError(KadeployError):
    """The tokens file cannot be read or written."""


@dataclass(frozen=True, slots=True)
class TokenEntry:
    """A token's owner and when it was made."""

    user: str
    created_at: float


def digest(token: str) -> str:
    """The stored form of a token."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


class TokenStore:
    """The tokens file of a state dir; safe to share between threads."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / TOKENS_FILE
        self._lock = threading.Lock()
        self._seen: tuple[int, int] | None = None
        self._entries: dict[str, TokenEntry] = {}

    def user_for(self, token: str) -> str | None:
        """The user a token belongs to, or None."""
        entries = self._current()
        entry = entries.get(digest(token))
        return entry.user if entry is not None else None

    def users(self) -> dict[str, float]:
        """User -> creation time of their token."""
        return {e.user: e.created_at for e in self._current().values()}

    def add(self, user: str) -> str:
        """Make a new token for ``user`` (replacing any previous one); returns it in clear."""
        if not user or any(c.isspace() for c in user):
            raise TokenStoreError(f"invalid user name {user!r}")
        token = secrets.token_urlsafe(TOKEN_BYTES)
        with self._lock:
            entries = {k: e for k, e in self._load().items() if e.user != user}
            entries[digest(token)] = TokenEntry(user, time.time())
            self._save(entries)
        logger.info("token made for %s", user)
        return token

    def remove(self, user: str) -> bool:
        """Revoke ``user``'s token; False if they had none."""
        with self._lock:
            entries = self._load()
            kept = {k: e for k, e in entries.items() if e.user != user}
            if len(kept) == len(entries):
                return False
            self._save(kept)
        logger.info("token of %s removed", user)
        return True

    def _current(self) -> dict[str, TokenEntry]:
        with self._lock:
            try:
                st = self.path.stat()
                seen = (st.st_mtime_ns, st.st_ino)
            except FileNotFoundError:
                self._seen, self._entries = None, {}
                return {}
            except OSError as exc:
                raise TokenStoreError(f"{self.path}: {exc}") from exc
            if seen != self._seen:
                self._entries = self._load()
                self._seen = seen
            return self._entries

    def _load(self) -> dict[str, TokenEntry]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise TokenStoreError(f"{self.path}: cannot read the tokens file: {exc}") from exc
        tokens = data.get("tokens", {}) if isinstance(data, dict) else {}
        entries: dict[str, TokenEntry] = {}
        for key, value in tokens.items():
            if isinstance(value, dict) and isinstance(value.get("user"), str):
                entries[str(key)] = TokenEntry(value["user"], float(value.get("created_at", 0)))
        return entries

    def _save(self, entries: dict[str, TokenEntry]) -> None:
        body = {
            "version": 1,
            "tokens": {k: {"user": e.user, "created_at": e.created_at} for k, e in entries.items()},
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{TOKENS_FILE}.{os.getpid()}.tmp")
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(body, out, indent=1, sort_keys=True)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise TokenStoreError(f"{self.path}: cannot write the tokens file: {exc}") from exc
