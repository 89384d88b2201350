"""The error answers every route may give, for the OpenAPI document."""

from __future__ import annotations

import logging
from typing import Any

from kadeploy_core.schemas import ErrorResponse

logger = logging.getLogger(__name__)

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in (
        (401, "No token, or an invalid one (code unauthorized)"),
        (403, "Not allowed (codes forbidden, admin_only, no_right)"),
        (404, "Unknown deployment, node, environment or upload"),
        (409, "Conflict (node_busy, environment_exists, not_running, ...)"),
        (422, "Invalid request (invalid_request: details name each field)"),
        (503, "The daemon did not answer in time (service_unavailable)"),
    )
}
