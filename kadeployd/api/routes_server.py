"""``/v1/health`` (no token: liveness only; with a token: version, uptime, deployments in
flight), ``/v1/whoami`` and ``/v1/server/reload`` (administrators)."""

from __future__ import annotations

import logging
import os
import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from kadeploy_core.schemas import HealthOut, LivenessOut, ReloadOut, WhoAmI
from kadeployd import __version__
from kadeployd.api.auth import Caller, CallerDep, Context, require_admin
from kadeployd.api.context import ApiContext
from kadeployd.api.responses import ERRORS, errors
from kadeployd.api.server import PEER_UID
from kadeployd.api.tokens import TokenStoreError

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["server"], responses=errors(503))


@router.get(
    "/health",
    response_model=HealthOut | LivenessOut,
    responses={200: {"description": 'Without a token, only `{"status": "ok"}`'}},
)
def health(context: Context, request: Request) -> HealthOut | JSONResponse:
    """Whether the daemon answers. The details (pid, uptime, reloads: what ``kadeploy-server
    status`` prints) need a valid token or root at the other end of the Unix socket; the last
    reload error (which may quote the configuration) needs an administrator."""
    viewer = _viewer(context, request)
    if viewer is None:
        return JSONResponse({"status": "ok"})
    status = context.status
    return HealthOut(
        status="ok",
        version=__version__,
        pid=status.pid,
        started_at=status.started_at,
        uptime=max(0.0, time.time() - status.started_at),
        deployments_in_flight=len(context.reader.running()),
        reloads=status.reloads,
        reload_failures=status.reload_failures,
        last_reload_error=status.last_reload_error if viewer.admin else None,
        reloaded_at=status.reloaded_at,
    )


def _viewer(context: ApiContext, request: Request) -> Caller | None:
    """Who asks for the details: a token's user, or root (the daemon's own user) on the Unix
    socket, as the kernel says (how ``kadeploy-server start|status|reload`` ask); None for
    anyone else."""
    peer = getattr(request.state, PEER_UID, None)
    if peer is not None and peer in (0, os.geteuid()):
        return Caller("root" if peer == 0 else str(peer), admin=True)
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    try:
        user = context.tokens.user_for(token.strip())
    except TokenStoreError:
        return None
    return None if user is None else Caller(user, context.is_admin(user))


@router.get("/whoami", response_model=WhoAmI, responses=ERRORS)
def whoami(caller: CallerDep) -> WhoAmI:
    """The user your token belongs to."""
    return WhoAmI(user=caller.user, admin=caller.admin)


@router.post("/server/reload", response_model=ReloadOut, responses=ERRORS | errors(403, 422))
def reload(context: Context, caller: CallerDep) -> ReloadOut:
    """Re-read the configuration (as SIGHUP does); running deployments go on."""
    require_admin(caller, "reload the configuration")
    config = context.reload()
    return ReloadOut(nodes=len(config.nodes), clusters=list(config.clusters))
