"""The error answers of the routes, for the OpenAPI document.

Every router declares :data:`ERRORS`, what any route behind a token may answer (the guard of
:mod:`kadeployd.api.guard` and the daemon's services); each route adds, with
:func:`errors`, the statuses of its own checks. A route with parameters or a body declares
422: otherwise FastAPI would document its own validation error shape, which the API never
answers (kadeployd/api/errors.py gives every error one shape).
"""

from __future__ import annotations

import logging
from typing import Any

from kadeploy_core.schemas import ErrorResponse

logger = logging.getLogger(__name__)

Responses = dict[int | str, dict[str, Any]]

DESCRIPTIONS: dict[int, str] = {
    400: "Unreadable request: a body that is no JSON text or nests too deeply, a bad header "
    "(code bad_request)",
    401: "No token, or an invalid one (code unauthorized)",
    403: "Not allowed (codes forbidden, admin_only, no_right, force_refused)",
    404: "Unknown deployment, node, cluster, environment or upload",
    409: "Conflict (node_busy, environment_exists, environment_in_use, not_running)",
    413: "The body is larger than daemon.api.max_body_bytes, or an upload than its limits",
    422: "Invalid request (invalid_request and others: details name each field)",
    429: "Too many requests, streams or uploads of this user at once (Retry-After)",
    503: "The daemon, its database or its tokens file did not answer (service_unavailable)",
}


def errors(*statuses: int) -> Responses:
    """The error answers ``statuses`` (each with the error shape), for a route's
    ``responses``."""
    return {
        status: {"model": ErrorResponse, "description": DESCRIPTIONS[status]} for status in statuses
    }


ERRORS = errors(401, 429, 503)
"""What every route behind a token may answer, whatever it does."""
BODY_ERRORS = errors(400, 413, 422)
"""What a route reading a JSON body may answer about it."""
