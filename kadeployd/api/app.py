"""The FastAPI application: routers, error handlers, the OpenAPI document (``/openapi.json``,
browsable at ``/docs``)."""

from __future__ import annotations

import logging

from fastapi import FastAPI

from kadeployd import __version__
from kadeployd.api import (
    routes_deployments,
    routes_environments,
    routes_events,
    routes_nodes,
    routes_power,
    routes_rights,
    routes_server,
    routes_stats,
    routes_uploads,
)
from kadeployd.api.context import ApiContext
from kadeployd.api.errors import install_error_handlers
from kadeployd.api.guard import RequestGuard

logger = logging.getLogger(__name__)

DESCRIPTION = """\
The kadeployd REST API: deployments, nodes, power and reboots, environments, rights,
statistics, uploads.

Every request but `/v1/health` needs `Authorization: Bearer <token>`
(`kadeploy-server token add USER` writes USER's token to `~USER/.kadeploy/token`); it is
checked before the body is read. A body is at most `daemon.api.max_body_bytes` (413; uploads
have their own limit); a user has at most `daemon.api.max_requests_per_user` requests and
`daemon.api.max_streams_per_user` event streams in flight (429 with `Retry-After`).
Every error is `{"error": {"code", "message", "details": [{"source", "path", "line",
"message"}]}}` with a stable `code`.
"""


def create_app(context: ApiContext) -> FastAPI:
    """The application serving ``context``."""
    app = FastAPI(
        title="kadeployd",
        version=__version__,
        description=DESCRIPTION,
        openapi_url="/openapi.json",
    )
    app.state.context = context
    for module in (
        routes_server,
        routes_deployments,
        routes_events,
        routes_nodes,
        routes_power,
        routes_environments,
        routes_uploads,
        routes_rights,
        routes_stats,
    ):
        app.include_router(module.router)
    install_error_handlers(app)
    app.add_middleware(RequestGuard, context=context)
    return app
