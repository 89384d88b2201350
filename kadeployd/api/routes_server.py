"""``/v1/health`` (no token: version, uptime, deployments in flight), ``/v1/whoami`` and
``/v1/server/reload`` (administrators)."""

from __future__ import annotations

import logging
import time

from fastapi import APIRouter

from kadeploy_core.schemas import HealthOut, ReloadOut, WhoAmI
from kadeployd import __version__
from kadeployd.api.auth import CallerDep, Context, require_admin
from kadeployd.api.responses import ERRORS

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["server"], responses=ERRORS)


@router.get("/health", response_model=HealthOut)
def health(context: Context) -> HealthOut:
    """Whether the daemon answers, and what ``kadeploy-server status`` prints."""
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
        last_reload_error=status.last_reload_error,
        reloaded_at=status.reloaded_at,
    )


@router.get("/whoami", response_model=WhoAmI)
def whoami(caller: CallerDep) -> WhoAmI:
    """The user your token belongs to."""
    return WhoAmI(user=caller.user, admin=caller.admin)


@router.post("/server/reload", response_model=ReloadOut)
def reload(context: Context, caller: CallerDep) -> ReloadOut:
    """Re-read the configuration (as SIGHUP does); running deployments go on."""
    require_admin(caller, "reload the configuration")
    config = context.reload()
    return ReloadOut(nodes=len(config.nodes), clusters=list(config.clusters))
