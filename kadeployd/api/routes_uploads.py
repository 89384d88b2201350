"""``/v1/uploads``: send a file's bytes (an image, an archive, a key) as the request body.

``POST /v1/uploads?name=debian.tar.zst`` with the raw bytes (any content type, streamed to disk,
at most ``daemon.max_upload_mib``) answers the upload's id, to be named in a deployment's or
an environment's ``files``. A user keeps at most ``daemon.max_uploads_per_user`` uploads not
used yet (429 beyond) holding at most ``daemon.max_upload_storage_mib`` (413 beyond).
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from kadeploy_core.filenames import check_file_name
from kadeploy_core.schemas import UploadOut
from kadeployd.api.auth import CallerDep, Context
from kadeployd.api.errors import ApiError
from kadeployd.api.responses import ERRORS, errors
from kadeployd.api.uploads import (
    TooManyUploads,
    UploadError,
    UploadInfo,
    UploadQuota,
    UploadTooLarge,
)

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/uploads", tags=["uploads"], responses=ERRORS)


@router.post(
    "",
    status_code=201,
    response_model=UploadOut,
    responses=errors(413, 422),
    openapi_extra={
        "requestBody": {
            # An empty file is a file: a request without a body stores one.
            "required": False,
            "description": "The file's bytes (none: an empty file)",
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        }
    },
)
async def upload(
    request: Request,
    context: Context,
    caller: CallerDep,
    name: Annotated[str, Query(min_length=1, max_length=200)],
) -> UploadOut:
    """Store the request body as a file named ``name``."""
    problem = check_file_name(name)
    if problem is not None:
        raise ApiError(422, "invalid_request", f"query.name: {problem}")
    limit = context.config.daemon.max_upload_mib * 2**20
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(
            413,
            "upload_too_large",
            f"{name}: {int(declared)} bytes is more than the limit of "
            f"{limit // 2**20} MiB (daemon.max_upload_mib)",
        )
    context.uploads.sweep()
    settings = context.config.daemon
    quota = UploadQuota(settings.max_uploads_per_user, settings.max_upload_storage_mib * 2**20)
    try:
        writer = context.uploads.writer(caller.user, name, limit, quota)
    except TooManyUploads as exc:
        raise ApiError(429, exc.code, str(exc)) from None
    except UploadTooLarge as exc:
        raise ApiError(413, exc.code, str(exc)) from None
    try:
        async for chunk in request.stream():
            writer.write(chunk)
    except UploadTooLarge as exc:
        writer.discard()
        raise ApiError(413, exc.code, str(exc)) from None
    except BaseException:
        writer.discard()
        raise
    try:
        info = writer.commit()
    except UploadTooLarge as exc:
        raise ApiError(413, exc.code, str(exc)) from None
    return _out(info)


@router.get("", response_model=list[UploadOut])
def list_uploads(context: Context, caller: CallerDep) -> list[UploadOut]:
    """Your uploads not used yet."""
    return [_out(i) for i in context.uploads.uploads(caller.user)]


@router.delete("/{upload_id}", status_code=204, response_class=Response, responses=errors(404, 422))
def delete_upload(upload_id: str, context: Context, caller: CallerDep) -> Response:
    """Drop an upload."""
    try:
        context.uploads.delete(upload_id, caller.user)
    except UploadError as exc:
        raise ApiError(404, exc.code, str(exc)) from None
    return Response(status_code=204)


def _out(info: UploadInfo) -> UploadOut:
    return UploadOut(
        id=info.id, name=info.name, size=info.size, sha256=info.sha256, created_at=info.created_at
    )
