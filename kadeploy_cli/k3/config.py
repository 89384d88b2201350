"""Kadeploy3's client configuration file: which servers exist and which one is the default.

The file is Kadeploy3's ``client.conf`` (YAML)::

    default: nancy
    servers:
    - name: nancy
      hostname: kadeploy.nancy.grid5000.fr
      port: 25300
      secure: true          # https (Kadeploy3's default); false: http
    - name: lab
      url: unix:/run/kadeployd/kadeployd.sock   # kadeployd: any --server address
      token_file: ~/.kadeploy/lab.token        # kadeployd: this server's token

``hostname``/``port``/``secure`` are Kadeploy3's keys; ``url`` (a socket path, ``unix:/path``
or ``http(s)://host:port``, as the native tools' ``--server``) and ``token_file`` (the token
for that server, when it is not ``$KADEPLOY_TOKEN`` or ``~/.kadeploy/token``) are ours.

Where it is read (first that exists): ``$KADEPLOY3_CONFIG_FILE``;
``$KADEPLOY3_CONFIG_DIR/client.conf`` (Kadeploy3's variable, default ``/etc/kadeploy3``,
also ``client_conf.yml`` there); ``~/.kadeploy3/client.conf``; ``/etc/kadeploy3/client.conf``.
Without any file there is one server, ``default``: the native tools' (``$KADEPLOY_SERVER``,
else the socket of the default configuration), so the ``*3`` commands work out of the box.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kadeploy_cli.client import ServerAddress, parse_address, resolve_address
from kadeploy_cli.errors import UsageProblem
from kadeploy_core.yamldoc import YamlLimits, YamlLoadError, load_yaml_file

logger = logging.getLogger(__name__)

FILE_ENV = "KADEPLOY3_CONFIG_FILE"
DIR_ENV = "KADEPLOY3_CONFIG_DIR"
SYSTEM_DIR = Path("/etc/kadeploy3")
USER_FILE = Path(".kadeploy3") / "client.conf"
DEFAULT = "default"
LIMITS = YamlLimits(max_aliases=100, max_expanded_nodes=100_000)
MAX_SERVERS = 1000


@dataclass(frozen=True, slots=True)
class ServerEntry:
    """One server of the configuration."""

    name: str
    address: ServerAddress
    token_file: Path | None = None


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """The servers, in file order, and the default one's name."""

    servers: tuple[ServerEntry, ...]
    default: str
    source: str
    implicit: bool = False
    """No file: the one server of the native tools' defaults (or of an address ``-S``)."""

    def server(self, name: str | None) -> ServerEntry:
        """The server ``name`` (None: the default); UsageProblem naming the valid ones."""
        wanted = name or self.default
        for entry in self.servers:
            if entry.name == wanted:
                return entry
        valid = ", ".join(e.name for e in self.servers)
        raise UsageProblem(
            f"The server '{wanted}' does not exist in {self.source}: {valid} values are allowed"
        )


def config_path() -> Path | None:
    """The configuration file to read, or None when there is none."""
    explicit = os.environ.get(FILE_ENV, "").strip()
    if explicit:
        return Path(explicit).expanduser()
    directory = os.environ.get(DIR_ENV, "").strip()
    candidates: list[Path] = []
    if directory:
        candidates += [Path(directory) / "client.conf", Path(directory) / "client_conf.yml"]
    candidates += [Path.home() / USER_FILE, SYSTEM_DIR / "client.conf"]
    return next((path for path in candidates if path.is_file()), None)


def load_client_config(server_option: str | None = None) -> ClientConfig:
    """The configuration; without a file, the one server the native tools would use.

    Without a file, ``-S`` may also be a server address (``unix:/path``, ``host:port``)."""
    path = config_path()
    if path is None:
        address = resolve_address(server_option if _is_address(server_option) else None)
        return ClientConfig((ServerEntry(DEFAULT, address),), DEFAULT, "the defaults", True)
    return parse_client_config(path)


def parse_client_config(path: Path) -> ClientConfig:
    """Read ``path``; UsageProblem naming the file and what is wrong in it."""
    if not path.is_file():
        raise UsageProblem(f"File not found '{path}'")
    try:
        document = load_yaml_file(path, limits=LIMITS)
    except YamlLoadError as exc:
        raise UsageProblem(f"Invalid YAML file '{path}'", [str(p) for p in exc.problems]) from None
    data = document.data
    if not isinstance(data, dict):
        raise UsageProblem(f"Error({path}) expected a mapping with 'servers' and 'default'")
    raw = data.get("servers")
    if not isinstance(raw, list) or not raw:
        raise UsageProblem(f"Error({path}) 'servers': expected a non-empty list of servers")
    if len(raw) > MAX_SERVERS:
        raise UsageProblem(f"Error({path}) 'servers': at most {MAX_SERVERS} servers")
    servers = [_entry(path, index, item) for index, item in enumerate(raw)]
    names = [s.name for s in servers]
    default = data.get("default", names[0])
    if not isinstance(default, str) or default not in names:
        raise UsageProblem(
            f"Error({path}) 'default': {default!r} is not a server of the file; "
            f"expected one of {', '.join(names)}"
        )
    if len(set(names)) != len(names):
        raise UsageProblem(f"Error({path}) 'servers': two servers have the same name")
    return ClientConfig(tuple(servers), default, str(path))


def _entry(path: Path, index: int, item: Any) -> ServerEntry:
    where = f"Error({path}) 'servers[{index}]'"
    if not isinstance(item, dict):
        raise UsageProblem(f"{where}: expected a mapping with name, hostname and port")
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise UsageProblem(f"{where}.name: expected the server's name (a string)")
    token = item.get("token_file")
    if token is not None and not isinstance(token, str):
        raise UsageProblem(f"{where}.token_file: expected a file path")
    token_file = Path(token).expanduser() if token else None
    url = item.get("url")
    if url is not None:
        if not isinstance(url, str):
            raise UsageProblem(f"{where}.url: expected unix:/path or http(s)://host:port")
        try:
            return ServerEntry(name, parse_address(url), token_file)
        except UsageProblem as exc:
            raise UsageProblem(f"{where}.url: {exc.format_message()}") from None
    host, port, secure = item.get("hostname"), item.get("port"), item.get("secure", True)
    if not isinstance(host, str) or not host:
        raise UsageProblem(f"{where}.hostname: expected a host name (or give url)")
    if host.startswith(("/", "unix:")):
        return ServerEntry(name, parse_address(host), token_file)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise UsageProblem(f"{where}.port: expected a TCP port (1-65535), got {port!r}")
    if not isinstance(secure, bool):
        raise UsageProblem(f"{where}.secure: expected true or false")
    scheme = "https" if secure else "http"
    return ServerEntry(name, ServerAddress(url=f"{scheme}://{host}:{port}"), token_file)


def _is_address(text: str | None) -> bool:
    return bool(text) and any(mark in str(text) for mark in ("/", ":"))
