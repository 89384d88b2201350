"""The API's front door: who calls, how much they send, how much they hold, what breaks.

:class:`RequestGuard` is an ASGI middleware in front of every route. Before the application
reads a byte of the body it

1. checks the bearer token (except on :data:`PUBLIC_PATHS`): no or a bad token is answered
   ``401`` at once, and the connection is closed without reading the body;
2. refuses a ``Content-Length`` above ``daemon.api.max_body_bytes`` with ``413`` (uploads
   have their own limit, ``daemon.max_upload_mib``, checked while they stream to disk), and
   stops a body without a length (chunked) once it passes the limit;
3. takes one of the caller's slots: at most ``daemon.api.max_requests_per_user`` requests in
   flight per user, and at most ``max_streams_per_user`` event streams per user and
   ``max_streams`` over all users; over a limit, ``429`` with ``Retry-After`` (others are
   not slowed down: the slots are per user);
4. is the last safety net: an exception no handler turned into an answer is logged once,
   with its traceback and a short error id, and answered ``500`` with that id only.

Every refusal has the API's error shape (:mod:`kadeployd.api.errors`). Everything here runs
on the server's event loop thread, so the counters need no lock.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections import Counter
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.datastructures import Headers

from kadeployd.api.context import ApiContext
from kadeployd.api.errors import ApiError, error_response
from kadeployd.api.tokens import TokenStoreError
from kadeployd.config.schema import ApiSettings

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PUBLIC_PATHS = frozenset(
    {"/v1/health", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
)
"""Paths served without a token (liveness and the API's own description)."""
UPLOAD_PATH = "/v1/uploads"
"""Bodies here are files streamed to disk, bounded by ``daemon.max_upload_mib``."""
SMALL_BODY = 64 * 1024
"""An unread body up to this size is read and dropped by the server after a refusal; a larger
one makes the server close the connection instead."""
RETRY_AFTER = "1"
"""Seconds a client over a concurrency limit is told to wait."""
USER_KEY = "kadeployd.user"
"""Where the guard leaves the authenticated user in ``scope["state"]``."""

_STREAM_PATH = re.compile(r"/v1/deployments/[^/]+/events/?")
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


class BodyTooLarge(ApiError):
    """A body without a declared length went past the limit while it was read."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            413, "payload_too_large", _too_large(limit), headers={"Connection": "close"}
        )


def _too_large(limit: int) -> str:
    return (
        f"the request body is larger than the limit of {limit} bytes "
        f"(daemon.api.max_body_bytes; files go through /v1/uploads)"
    )


class _Refused(Exception):
    """A request answered by the guard itself (``close``: without reading its body)."""

    def __init__(self, error: ApiError, close: bool) -> None:
        super().__init__(error.message)
        self.error = error
        self.close = close


class Slots:
    """Requests and event streams in flight, per user and in all."""

    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()
        self.streams: Counter[str] = Counter()

    def take(self, user: str, stream: bool, settings: ApiSettings) -> None:
        """Take a slot for ``user`` or raise the 429 to answer."""
        if stream:
            if self.streams[user] >= settings.max_streams_per_user:
                raise _busy(
                    f"{user} already has {self.streams[user]} event streams open, the limit "
                    f"per user (daemon.api.max_streams_per_user); close one first"
                )
            if self.streams.total() >= settings.max_streams:
                raise _busy(
                    f"the server already serves {self.streams.total()} event streams, its "
                    f"limit (daemon.api.max_streams); try again later"
                )
            self.streams[user] += 1
        else:
            if self.requests[user] >= settings.max_requests_per_user:
                raise _busy(
                    f"{user} already has {self.requests[user]} requests in flight, the limit "
                    f"per user (daemon.api.max_requests_per_user); wait for one to end"
                )
            self.requests[user] += 1

    def give_back(self, user: str, stream: bool) -> None:
        """Release a slot taken by :meth:`take`."""
        counter = self.streams if stream else self.requests
        counter[user] -= 1
        if counter[user] <= 0:
            del counter[user]


def _busy(message: str) -> _Refused:
    return _Refused(
        ApiError(429, "too_many_requests", message, headers={"Retry-After": RETRY_AFTER}),
        close=False,
    )


class RequestGuard:
    """ASGI middleware: token before body, body size, per-user slots, the last safety net."""

    def __init__(self, app: ASGIApp, context: ApiContext) -> None:
        self.app = app
        self.context = context
        self.slots = Slots()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        settings = self.context.config.daemon.api
        try:
            user = self._authenticate(scope)
            limit = _body_limit(scope, settings)
            stream = scope["method"] == "GET" and bool(_STREAM_PATH.fullmatch(scope["path"]))
            if user is not None:
                self.slots.take(user, stream, settings)
        except _Refused as refused:
            await _answer(scope, receive, send, refused.error, refused.close)
            return
        try:
            await self._serve(scope, receive, send, limit)
        finally:
            if user is not None:
                self.slots.give_back(user, stream)

    def _authenticate(self, scope: Scope) -> str | None:
        """The token's user; None on a public path; :class:`_Refused` otherwise."""
        if scope["path"] in PUBLIC_PATHS:
            return None
        scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise _Refused(
                ApiError(
                    401,
                    "unauthorized",
                    "a bearer token is required (Authorization: Bearer <token>); "
                    "an administrator makes one with `kadeploy-server token add USER`",
                    headers=_CHALLENGE,
                ),
                close=True,
            )
        try:
            user = self.context.tokens.user_for(token)
        except TokenStoreError as exc:
            logger.error("%s", exc)
            raise _Refused(
                ApiError(503, "service_unavailable", "the tokens file cannot be read"), close=True
            ) from None
        if user is None:
            raise _Refused(
                ApiError(401, "unauthorized", "invalid or revoked token", headers=_CHALLENGE),
                close=True,
            )
        scope.setdefault("state", {})[USER_KEY] = user
        return user

    async def _serve(self, scope: Scope, receive: Receive, send: Send, limit: int | None) -> None:
        started = False
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if limit is not None and message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, watched_send)
        except Exception as exc:  # the safety net: logged once, answered 500
            error_id = secrets.token_hex(4)
            logger.error(
                "internal error %s answering %s %s",
                error_id,
                scope["method"],
                scope["path"],
                exc_info=exc,
            )
            if started:
                return  # the answer is under way: the connection ends unfinished
            error = ApiError(
                500,
                "internal_error",
                f"internal error {error_id}; the daemon's log has the details under this id",
            )
            await _answer(scope, receive, send, error, close=True)


def _body_limit(scope: Scope, settings: ApiSettings) -> int | None:
    """The body limit of this request (None: uploads, bounded by their own), or 413."""
    if scope["method"] == "POST" and scope["path"].rstrip("/") == UPLOAD_PATH:
        return None
    limit = settings.max_body_bytes
    declared = _declared_length(scope)
    if declared is not None and declared > limit:
        raise _Refused(
            ApiError(
                413,
                "payload_too_large",
                f"the request body of {declared} bytes is larger than the limit of {limit} "
                f"bytes (daemon.api.max_body_bytes; files go through /v1/uploads)",
            ),
            close=True,
        )
    return limit


def _declared_length(scope: Scope) -> int | None:
    """The ``Content-Length`` (h11 has checked it is a number), None without one."""
    declared = Headers(scope=scope).get("content-length", "").strip()
    return int(declared) if declared.isascii() and declared.isdigit() else None


def _unread_body_is_large(scope: Scope) -> bool:
    """Whether the body the guard does not read may be large (chunked, or over 64 KiB):
    then the connection is closed after the answer rather than the body read and dropped."""
    if "transfer-encoding" in Headers(scope=scope):
        return True
    declared = _declared_length(scope)
    return declared is not None and declared > SMALL_BODY


async def _answer(scope: Scope, receive: Receive, send: Send, error: ApiError, close: bool) -> None:
    """Send ``error``; with ``close`` and a large body not read, ask the server to close the
    connection after it, so the body is never read."""
    headers = dict(error.headers or {})
    if close and _unread_body_is_large(scope):
        headers["Connection"] = "close"
    response = error_response(error.status, error.code, error.message, error.details, headers)
    await response(scope, receive, send)
