"""The REST API of kadeployd (FastAPI, served by uvicorn on a Unix socket and TCP).

::

    ApiServer (uvicorn thread) -> create_app(ApiContext) -> routes_*.py
                                       |                      |
                                       |      Daemon (actors), StoreReader (reads),
                                       |      TokenStore, UploadStore
                                       +-- errors.py: one JSON error shape

The API reaches actors only through the :class:`~kadeployd.daemon.Daemon` object.
"""

from kadeployd.api.app import create_app
from kadeployd.api.context import ApiContext, ServerStatus
from kadeployd.api.server import ApiServer, ApiStartError
from kadeployd.api.tokens import TokenStore

__all__ = ["ApiContext", "ApiServer", "ApiStartError", "ServerStatus", "TokenStore", "create_app"]
