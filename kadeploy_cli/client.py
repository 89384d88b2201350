"""The tools' HTTP client of the kadeployd REST API, over the Unix socket or TCP.

Where the server is (first found wins): ``--server``, ``$KADEPLOY_SERVER``, then the socket
of the configuration ``kadeploy-server`` uses by default (``$KADEPLOY_CONF``, else ``conf/``
if it exists), else ``/var/lib/kadeployd/kadeployd.sock``. An address is a socket path
(``/run/kadeployd.sock`` or ``unix:/run/kadeployd.sock``) or a URL (``http://host:25300``,
or ``host:25300``).

The token: ``$KADEPLOY_TOKEN``, else the file ``~/.kadeploy/token`` that ``kadeploy-server
token add USER`` writes.

An ``https://`` server is verified against the system's certificate authorities, or against
the PEM file ``$KADEPLOY_CA_FILE`` (a self-signed server certificate, or a site's own CA).
"""

from __future__ import annotations

import json
import logging
import os
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx

from kadeploy_cli.errors import ServerUnreachable, UsageProblem, api_failure
from kadeploy_core.paths import api_socket
from kadeploy_core.yamldoc import YamlLoadError, load_yaml_file

logger = logging.getLogger(__name__)

SERVER_ENV = "KADEPLOY_SERVER"
TOKEN_ENV = "KADEPLOY_TOKEN"  # noqa: S105 - the name of a variable, not a secret
CONF_ENV = "KADEPLOY_CONF"
CA_FILE_ENV = "KADEPLOY_CA_FILE"
TOKEN_FILE = Path(".kadeploy") / "token"
TIMEOUT = 30.0
LONG_TIMEOUT = 3600.0
"""Read timeout of requests that wait for commands on nodes (power, reboot) or send files."""
STREAM_READ_TIMEOUT = 60.0
"""The event stream sends a keepalive every 15 s; silence this long means a dead server."""
CHUNK = 1 << 20
MAX_EMPTY_STREAMS = 5


@dataclass(frozen=True, slots=True)
class ServerAddress:
    """A Unix socket path or a base URL."""

    socket: Path | None = None
    url: str | None = None

    def __str__(self) -> str:
        return f"unix:{self.socket}" if self.socket is not None else str(self.url)


def parse_address(text: str) -> ServerAddress:
    """``/path``, ``unix:/path``, ``http(s)://host:port`` or ``host:port``."""
    text = text.strip()
    if text.startswith("unix:"):
        text = text[len("unix:") :]
        if not text:
            raise UsageProblem("--server unix: needs a socket path, e.g. unix:/run/kadeployd.sock")
        return ServerAddress(socket=Path(text))
    if text.startswith(("/", "./", "../")):
        return ServerAddress(socket=Path(text))
    if text.startswith(("http://", "https://")):
        return ServerAddress(url=text.rstrip("/"))
    host, sep, port = text.rpartition(":")
    if sep and host and port.isdigit():
        return ServerAddress(url=f"http://{text}")
    raise UsageProblem(
        f"invalid server address {text!r}: expected a socket path (/path or unix:/path), "
        "http://HOST:PORT or HOST:PORT"
    )


def default_socket() -> Path:
    """The Unix socket of the configuration kadeploy-server uses by default."""
    conf = os.environ.get(CONF_ENV)
    conf_dir = Path(conf) if conf else Path("conf")
    deploy = conf_dir / "deploy.conf"
    if deploy.is_file():
        try:
            doc = load_yaml_file(deploy)
            section = doc.data.get("daemon") if isinstance(doc.data, dict) else None
            return api_socket(section if isinstance(section, dict) else {})
        except (YamlLoadError, ValueError, OSError) as exc:
            logger.debug("cannot read %s: %s", deploy, exc)
    return api_socket({})


def resolve_address(option: str | None) -> ServerAddress:
    """The server address: ``--server``, ``$KADEPLOY_SERVER``, else the default socket."""
    text = option or os.environ.get(SERVER_ENV)
    if text:
        return parse_address(text)
    return ServerAddress(socket=default_socket())


def resolve_token() -> str | None:
    """``$KADEPLOY_TOKEN``, else the content of ``~/.kadeploy/token``, else None."""
    token = os.environ.get(TOKEN_ENV, "").strip()
    if token:
        return token
    path = Path.home() / TOKEN_FILE
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageProblem(f"cannot read the token file {path}: {exc}") from None
    return token or None


def tls_verification() -> ssl.SSLContext | bool:
    """How an https server is verified: against ``$KADEPLOY_CA_FILE`` if set, else the
    system's authorities (True)."""
    path = os.environ.get(CA_FILE_ENV, "").strip()
    if not path:
        return True
    try:
        return ssl.create_default_context(cafile=path)
    except (OSError, ssl.SSLError) as exc:
        raise UsageProblem(
            f"${CA_FILE_ENV}: cannot read {path} as PEM certificates: {exc}"
        ) from None


@dataclass(frozen=True, slots=True)
class Event:
    """One server-sent event."""

    kind: str
    data: dict[str, Any]
    id: str | None


class Client:
    """Calls on the API; every failure becomes a :class:`~kadeploy_cli.errors.CliError`."""

    def __init__(self, address: ServerAddress, token: str | None) -> None:
        self.address = address
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.has_token = token is not None
        if address.socket is not None:
            transport = httpx.HTTPTransport(uds=str(address.socket))
            base = "http://kadeployd"
        else:
            transport = httpx.HTTPTransport(verify=tls_verification())
            base = str(address.url)
        self._http = httpx.Client(
            transport=transport, base_url=base, headers=headers, timeout=TIMEOUT
        )

    @classmethod
    def from_options(cls, server: str | None) -> Client:
        """The client for ``--server`` (or the defaults) and the user's token."""
        return cls(resolve_address(server), resolve_token())

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def trace(self, write: Callable[[str], None]) -> None:
        """Report each request and its answer's status through ``write`` (Kadeploy3's ``-H``);
        never the headers, which hold the token."""

        def sent(request: httpx.Request) -> None:
            write(f"-> {request.method} {request.url}")

        def answered(response: httpx.Response) -> None:
            request = response.request
            status = f"{response.status_code} {response.reason_phrase}"
            write(f"<- {status} ({request.method} {request.url})")

        self._http.event_hooks["request"].append(sent)
        self._http.event_hooks["response"].append(answered)

    # ------------------------------------------------------------ requests

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: dict[str, Any] | None = None,
        content: Any = None,
        headers: dict[str, str] | None = None,
        timeout: float = TIMEOUT,
    ) -> Any:
        """Send a request; the decoded JSON answer (None for 204), or ApiFailure."""
        try:
            answer = self._http.request(
                method,
                path,
                json=json_body,
                params=params,
                content=content,
                headers=headers,
                timeout=httpx.Timeout(TIMEOUT, read=timeout, write=timeout),
            )
        except httpx.TransportError as exc:
            raise self.unreachable(exc) from None
        return self._decode(answer)

    def get(self, path: str, **params: Any) -> Any:
        """GET ``path`` with query ``params`` (None values dropped)."""
        return self.request("GET", path, params=_params(params))

    def post(self, path: str, body: Any = None, timeout: float = TIMEOUT) -> Any:
        """POST a JSON body."""
        return self.request("POST", path, json_body=body, timeout=timeout)

    def patch(self, path: str, body: Any) -> Any:
        """PATCH a JSON body."""
        return self.request("PATCH", path, json_body=body)

    def delete(self, path: str, **params: Any) -> Any:
        """DELETE ``path``."""
        return self.request("DELETE", path, params=_params(params))

    def upload(self, path: Path, name: str) -> dict[str, Any]:
        """Stream a local file to ``/v1/uploads``; the upload document (its ``id``)."""
        try:
            handle = path.open("rb")
        except OSError as exc:
            raise UsageProblem(f"{path}: cannot read: {exc.strerror}") from None
        with handle:
            size = os.fstat(handle.fileno()).st_size
            result: dict[str, Any] = self.request(
                "POST",
                "/v1/uploads",
                params={"name": name},
                content=_chunks(handle),
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(size),
                },
                timeout=LONG_TIMEOUT,
            )
        return result

    def events(self, deployment_id: str, after: int = 0, logs: bool = False) -> Iterator[Event]:
        """The deployment's server-sent events from history seq ``after``, until ``end``.

        A stream cut before its end (a proxy timeout, the server stopping) is resumed from the
        last event id; when the deployment is over by then, its document is the ``end`` event.
        A server that no longer answers raises ServerUnreachable.
        """
        last = after
        empty_streams = 0
        while True:
            params = {"after": last, "logs": "true" if logs else "false"}
            timeout = httpx.Timeout(TIMEOUT, read=STREAM_READ_TIMEOUT)
            received = False
            try:
                with self._http.stream(
                    "GET",
                    f"/v1/deployments/{deployment_id}/events",
                    params=params,
                    headers={"Accept": "text/event-stream"},
                    timeout=timeout,
                ) as answer:
                    if answer.status_code != 200:
                        answer.read()
                        self._decode(answer)
                    for event in _parse_sse(answer.iter_lines()):
                        received = True
                        if event.id is not None and event.id.isdigit():
                            last = int(event.id)
                        yield event
                        if event.kind == "end":
                            return
            except httpx.ConnectError as exc:
                raise self.unreachable(exc) from None
            except httpx.TransportError as exc:
                logger.debug("event stream of %s cut (%s); resuming", deployment_id, exc)
            document = self.get(f"/v1/deployments/{deployment_id}")
            if isinstance(document, dict) and document.get("status") != "running":
                yield Event("end", document, None)
                return
            empty_streams = 0 if received else empty_streams + 1
            if empty_streams >= MAX_EMPTY_STREAMS:
                raise ServerUnreachable(
                    f"the server keeps closing the event stream of deployment {deployment_id}; "
                    f"it is still running: follow it later with kadeploy --follow {deployment_id}"
                )

    # ------------------------------------------------------------ helpers

    def unreachable(self, exc: Exception) -> ServerUnreachable:
        """The one-line error for a server that does not answer."""
        reason = str(exc) or type(exc).__name__
        if self.address.socket is not None and not self.address.socket.exists():
            reason = "no such socket"
        return ServerUnreachable(
            f"cannot reach the kadeployd server at {self.address}: {reason} "
            f"(is kadeploy-server running? set --server or {SERVER_ENV})"
        )

    def _decode(self, answer: httpx.Response) -> Any:
        if answer.status_code == 204:
            return None
        try:
            body = answer.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = None
        if answer.is_success:
            return body
        error = body.get("error") if isinstance(body, dict) else None
        if not isinstance(error, dict):
            raise api_failure(
                answer.status_code,
                "http_error",
                f"the server answered {answer.status_code} {answer.reason_phrase}",
            )
        message = str(error.get("message", "error"))
        code = str(error.get("code", "error"))
        if code == "unauthorized" and not self.has_token:
            message += f" (no token: set {TOKEN_ENV} or write it to ~/{TOKEN_FILE})"
        details = error.get("details")
        return_details = details if isinstance(details, list) else []
        raise api_failure(answer.status_code, code, message, return_details)


def _params(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None}


def _chunks(handle: IO[bytes]) -> Iterator[bytes]:
    while chunk := handle.read(CHUNK):
        yield chunk


def _parse_sse(lines: Iterator[str]) -> Iterator[Event]:
    """Server-sent events out of a stream of lines (comments and retry fields ignored)."""
    kind, event_id = "message", None
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                try:
                    decoded = json.loads("\n".join(data))
                except json.JSONDecodeError:
                    decoded = {"text": "\n".join(data)}
                yield Event(
                    kind, decoded if isinstance(decoded, dict) else {"value": decoded}, event_id
                )
            kind, data, event_id = "message", [], None
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            kind = value
        elif field == "data":
            data.append(value)
        elif field == "id":
            event_id = value
