"""Uploads a command made for a request that then failed: deleted, so that nothing stays on
the server (a refused request gives its uploads back to the user rather than eating them)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from kadeploy_cli.client import Client
from kadeploy_cli.errors import CliError

logger = logging.getLogger(__name__)


def discard(client: Client, upload_ids: Iterable[str]) -> None:
    """Delete the uploads ``upload_ids``; a failure is logged (the server sweeps old uploads)."""
    for upload_id in upload_ids:
        try:
            client.delete(f"/v1/uploads/{upload_id}")
        except CliError as exc:
            logger.warning("could not delete upload %s: %s", upload_id, exc.format_message())


@contextmanager
def deleted_on_failure(client: Client) -> Iterator[list[str]]:
    """A list to append the ids of uploads to; if the block raises (even Ctrl-C), they are
    deleted and the exception goes on."""
    made: list[str] = []
    try:
        yield made
    except BaseException:
        discard(client, made)
        raise
