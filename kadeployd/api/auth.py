"""Who is calling: a bearer token, looked up in the tokens file. No token, no access: being
able to reach the Unix socket proves nothing about who you are."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from kadeployd.api.context import ApiContext
from kadeployd.api.errors import ApiError
from kadeployd.api.guard import USER_KEY
from kadeployd.api.tokens import TokenStoreError

logger = logging.getLogger(__name__)

_bearer = HTTPBearer(
    auto_error=False,
    description="A token made by `kadeploy-server token add USER` (in ~USER/.kadeploy/token).",
)


@dataclass(frozen=True, slots=True)
class Caller:
    """The authenticated user."""

    user: str
    admin: bool


def get_context(request: Request) -> ApiContext:
    """The shared context of the app."""
    context: ApiContext = request.app.state.context
    return context


Context = Annotated[ApiContext, Depends(get_context)]


def get_caller(
    request: Request,
    context: Context,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    """The caller, or 401. The guard (:mod:`kadeployd.api.guard`) has already checked the
    token before the body was read and says whose it is; the check here stands for an app
    served without it."""
    user = getattr(request.state, USER_KEY, None)
    if isinstance(user, str):
        return Caller(user, context.is_admin(user))
    challenge = {"WWW-Authenticate": "Bearer"}
    if credentials is None or not credentials.credentials:
        raise ApiError(
            401,
            "unauthorized",
            "a bearer token is required (Authorization: Bearer <token>); "
            "an administrator makes one with `kadeploy-server token add USER`",
            headers=challenge,
        )
    try:
        user = context.tokens.user_for(credentials.credentials)
    except TokenStoreError as exc:
        logger.error("%s", exc)
        raise ApiError(503, "service_unavailable", "the tokens file cannot be read") from None
    if user is None:
        raise ApiError(401, "unauthorized", "invalid or revoked token", headers=challenge)
    return Caller(user, context.is_admin(user))


CallerDep = Annotated[Caller, Depends(get_caller)]


def require_admin(caller: Caller, what: str) -> None:
    """403 unless ``caller`` is an administrator."""
    if not caller.admin:
        raise ApiError(
            403,
            "admin_only",
            f"only administrators (daemon.almighty_users) may {what}; you are {caller.user}",
        )
