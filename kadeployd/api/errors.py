"""Every API error is one JSON shape, with a stable code, a readable message and the problems.

::

    {"error": {"code": "unknown_environment",
               "message": "no environment 'debian' owned by 'alice'",
               "details": [{"source": "request", "path": "environment.name",
                            "line": null, "message": "..."}]}}

Routes raise :class:`ApiError`; the handlers installed by :func:`install_error_handlers` turn
it, request validation errors, HTTP errors of the router (404, 405), the daemon's own errors,
unreadable YAML and too deep nesting into that shape. An unexpected exception reaches the
safety net of :mod:`kadeployd.api.guard`: logged once with its traceback and an error id,
answered ``500 internal_error`` with the id only. A 405 names, in ``Allow``, every method the
path serves.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import pykka
import yaml
import yaml.reader
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.applications import Starlette
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from kadeploy_core.errors import InputError, KadeployError, Problem
from kadeployd.actors.directory import ServiceUnavailable
from kadeployd.admission import AdmissionRefused, Refusal
from kadeployd.store.catalogue import EnvironmentExists, UnknownEnvironment
from kadeployd.store.errors import InvalidRecord, StoreError, UnknownDeployment, UnknownNode

logger = logging.getLogger(__name__)

SOURCE = "request"
"""The ``source`` of problems found in a request body or its parameters."""


class ApiError(Exception):
    """An error answered to the client as is."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Iterable[Problem] = (),
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = tuple(details)
        self.headers = headers


def problem_json(problem: Problem) -> dict[str, Any]:
    """A Problem as a JSON object."""
    return {
        "source": problem.source,
        "path": problem.path,
        "line": problem.line,
        "message": problem.message,
    }


def error_response(
    status: int,
    code: str,
    message: str,
    details: Sequence[Problem] = (),
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """The JSON error body with ``status``."""
    body = {
        "error": {
            "code": code,
            "message": message,
            "details": [problem_json(p) for p in details],
        }
    }
    return JSONResponse(body, status_code=status, headers=headers)


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def _location(loc: Sequence[int | str]) -> str:
    parts = [str(p) for p in loc]
    text = parts[0] if parts else ""
    for part in parts[1:]:
        text += f"[{part}]" if part.isdigit() else f".{part}"
    return text


def _validation_message(error: dict[str, Any]) -> str:
    kind = error.get("type", "")
    if kind == "json_invalid":
        ctx = error.get("ctx") or {}
        return f"the body is not valid JSON: {ctx.get('error', 'syntax error')}"
    if kind == "missing":
        return "required field missing"
    if kind == "extra_forbidden":
        return "unknown field"
    message = str(error.get("msg", "invalid value"))
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    got = error.get("input")
    if kind not in ("missing", "model_attributes_type") and isinstance(got, str | int | float):
        shown = repr(got) if not isinstance(got, str) or len(got) < 80 else repr(got[:77] + "...")
        message += f"; got {shown}"
    return message


def validation_problems(exc: RequestValidationError) -> list[Problem]:
    """One Problem per field error, located like ``body.nodes[2]`` or ``query.limit``."""
    return [
        Problem(SOURCE, _validation_message(dict(error)), _location(error.get("loc", ())))
        for error in exc.errors()
    ]


_REFUSAL_STATUS = {
    Refusal.UNKNOWN_NODE: 422,
    Refusal.INVALID_BLOCK_DEVICE: 422,
    Refusal.INCOMPATIBLE_ENVIRONMENT: 422,
    Refusal.INVALID_REQUEST: 422,
    Refusal.NO_RIGHT: 403,
    Refusal.NODE_BUSY: 409,
    Refusal.FORCE_REFUSED: 403,
}
"""The answer to each kind of admission refusal; its code is the kind's value."""


def _store_error(exc: StoreError) -> JSONResponse:
    if isinstance(exc, UnknownDeployment):
        return error_response(404, "unknown_deployment", str(exc))
    if isinstance(exc, UnknownNode):
        return error_response(404, "unknown_node", str(exc))
    if isinstance(exc, UnknownEnvironment):
        return error_response(404, "unknown_environment", str(exc))
    if isinstance(exc, EnvironmentExists):
        return error_response(409, "environment_exists", str(exc))
    if isinstance(exc, InvalidRecord):
        return error_response(422, "invalid_request", str(exc))
    logger.error("store error: %s", exc)
    return error_response(503, "store_unavailable", f"the deployment database failed: {exc}")


def _from_exception(exc: BaseException) -> JSONResponse:
    """The response for any exception a route let through."""
    match exc:
        case ApiError():
            return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)
        case RequestValidationError():
            problems = validation_problems(exc)
            summary = "; ".join(f"{p.path}: {p.message}" for p in problems[:3])
            more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            return error_response(
                422, "invalid_request", f"invalid request: {summary}{more}", problems
            )
        case StarletteHTTPException() if isinstance(exc.__cause__, ApiError | RecursionError):
            return _from_exception(exc.__cause__)  # raised while FastAPI read the body
        case StarletteHTTPException():
            code = _HTTP_CODES.get(exc.status_code, "http_error")
            headers = dict(exc.headers) if exc.headers else None
            return error_response(exc.status_code, code, str(exc.detail), (), headers)
        case AdmissionRefused():
            status = _REFUSAL_STATUS[exc.kind]
            return error_response(status, exc.kind.value, exc.message, exc.problems)
        case InputError():
            return error_response(422, "invalid_input", str(exc), exc.problems)
        case StoreError():
            return _store_error(exc)
        case ServiceUnavailable() | pykka.Timeout() | pykka.ActorDeadError():
            logger.error("daemon service unavailable: %s", exc)
            return error_response(503, "service_unavailable", f"the daemon did not answer: {exc}")
        case KadeployError():
            return error_response(422, "refused", str(exc))
        case RecursionError():
            logger.warning("refused a request nested too deeply: %s", exc)
            return error_response(
                400, "bad_request", "the request nests lists or objects too deeply to be read"
            )
        case yaml.YAMLError():
            return error_response(422, "invalid_request", _yaml_message(exc))
        case _:
            logger.error("internal error answering a request", exc_info=exc)
            return error_response(
                500, "internal_error", "internal error; the daemon's log has the details"
            )


def _yaml_message(exc: yaml.YAMLError) -> str:
    """A YAML text of the request (a description, custom steps) cannot be read."""
    where = ""
    mark = getattr(exc, "problem_mark", None)
    if mark is not None:
        where = f" at line {mark.line + 1}, column {mark.column + 1}"
    reason = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    if isinstance(exc, yaml.reader.ReaderError):
        char = chr(exc.character) if isinstance(exc.character, int) else exc.character
        where = f" at character {exc.position}"
        reason = f"character {char!r} is not allowed (control characters are not)"
    return f"a YAML text of the request cannot be read{where}: {reason}"


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(app: Starlette, path: str) -> list[str]:
    """The methods some route of ``app`` serves at ``path``: the ``Allow`` of a 405 (the
    router's own names only the first route of the path, e.g. GET of ``/v1/deployments``)."""
    allowed = []
    for method in _METHODS:
        scope = {"type": "http", "path": path, "root_path": "", "method": method}
        if any(route.matches(dict(scope))[0] is Match.FULL for route in app.routes):
            allowed.append(method)
    return allowed


def _method_not_allowed(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """405 naming the method, the path and, in ``Allow``, every method the path serves."""
    path = request.scope["path"]
    allowed = allowed_methods(request.app, path)
    headers = dict(exc.headers or {})
    if allowed:
        headers["Allow"] = ", ".join(allowed)
    shown = ", ".join(allowed) or "none"
    return error_response(
        405,
        "method_not_allowed",
        f"method {request.method} is not allowed on {path}; allowed: {shown}",
        (),
        headers,
    )


async def _handle(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, StarletteHTTPException) and exc.status_code == 405:
        return _method_not_allowed(request, exc)
    return _from_exception(exc)


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error of ``app`` with the JSON error shape."""
    for kind in (
        ApiError,
        RequestValidationError,
        StarletteHTTPException,
        KadeployError,
        pykka.Timeout,
        pykka.ActorDeadError,
        RecursionError,
        yaml.YAMLError,
    ):
        app.add_exception_handler(kind, _handle)
