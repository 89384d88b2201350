"""What every Kadeploy3 command shares: the generic options of Kadeploy3's client, the client
configuration (``-S NAME``), errors and exit codes as Kadeploy3 has them.

For the authors of the other ``*3`` commands (kanodes3, kastat3, kaenv3, karights3), reuse:

- :class:`K3Command` as ``cls=`` of the ``click.command``: option errors print
  ``Option parsing error: ...`` and exit 1, every native :class:`~kadeploy_cli.errors.CliError`
  (API errors, unreachable server...) is printed and exits with Kadeploy3's code
  (:func:`k3_error`), the callback may return the exit status;
- :func:`generic_options`: Kadeploy3's "Generic options" (``-v/--version``,
  ``-I/--server-info``, ``-M/--multi-server``, ``-H/--[no-]debug-http``, ``-S/--server NAME``,
  ``--[no-]dry-run``, ``--password``); then ``session = Session.open(options)`` and
  ``session.answer_generic()`` (prints and exits for ``-v``/``-I``, as Kadeploy3 does before
  anything else); ``session.client()`` is the API client of the chosen server,
  ``session.clients()`` one per server of the configuration for ``-M``;
- :func:`machine_options` (``-m``, ``-f``) and :func:`nodes_of` (the nodes, ranges expanded;
  "No node is chosen" when required);
- :class:`K3Error` for an error of your own (message on stderr, exit code);
- :func:`load_outputfile` to truncate an output file when the command starts.

Exit codes (Kadeploy3's client): 0 the command ran to its end (a workflow with failed nodes
too: callers read the node lists), 1 an error of the client (options, files, server
unreachable, unknown resource), 2 an HTTP error answer, 3 a server failure (5xx), and for an
error the server names, Kadeploy3's error number (:data:`ERRNO`: 2 invalid node list,
4 invalid option, 6 rights, 7 environment, 8 custom operations, 9 VLAN, 14 nothing done).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

import click

from kadeploy_cli.client import Client, ServerAddress, resolve_token
from kadeploy_cli.common import node_refs
from kadeploy_cli.errors import ApiFailure, CliError, ServerFailure, ServerUnreachable
from kadeploy_cli.k3.config import ClientConfig, ServerEntry, load_client_config
from kadeploy_core.nodelist import NodeRef

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
CONTACT = "Contact: kadeploy3-users@lists.gforge.inria.fr"

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_HTTP = 2
EXIT_SERVER = 3

INVALID_NODELIST = 2
INVALID_OPTION = 4
INVALID_RIGHTS = 6
INVALID_ENVIRONMENT = 7
INVALID_CUSTOMOP = 8
INVALID_VLAN = 9
NOTHING_MODIFIED = 14
DESTRUCTIVE_ENVIRONMENT = 30
ERRNO = {
    "unknown_node": INVALID_NODELIST,
    "invalid_block_device": INVALID_OPTION,
    "deployment_refused": INVALID_OPTION,
    "invalid_request": INVALID_OPTION,
    "invalid_input": INVALID_OPTION,
    "refused": INVALID_OPTION,
    "bad_request": INVALID_OPTION,
    "invalid_breakpoint": INVALID_OPTION,
    "invalid_profile": INVALID_OPTION,
    "no_tmp_partition": INVALID_OPTION,
    "invalid_timeout": INVALID_OPTION,
    "invalid_force_steps": INVALID_OPTION,
    "no_right": INVALID_RIGHTS,
    "forbidden": INVALID_RIGHTS,
    "force_refused": INVALID_RIGHTS,
    "unknown_environment": INVALID_ENVIRONMENT,
    "destructive_environment": DESTRUCTIVE_ENVIRONMENT,
    "invalid_environment": INVALID_ENVIRONMENT,
    "incompatible_environment": INVALID_ENVIRONMENT,
    "invalid_custom_steps": INVALID_CUSTOMOP,
    "node_busy": NOTHING_MODIFIED,
}
"""Our API's error codes as Kadeploy3's error numbers (``[Kadeploy Error #N]``, the exit
status); a 422 about the ``vlan`` field is :data:`INVALID_VLAN`."""


class K3Error(click.ClickException):
    """An error shown as Kadeploy3 shows it: the message alone on stderr, then exit ``code``."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code
        """The exit status (click's ``exit_code`` is a class variable)."""

    def show(self, file: IO[Any] | None = None) -> None:
        """The message, without click's "Error:" prefix."""
        click.echo(self.format_message(), err=True, file=file)


def k3_error(exc: CliError) -> K3Error:
    """A native tool error as Kadeploy3 would report it (message and exit status)."""
    lines = [exc.format_message(), *(f"  {d}" for d in exc.details)]
    if isinstance(exc, ServerFailure):
        return K3Error("[Internal Server Error]\n" + "\n".join(lines), EXIT_SERVER)
    if isinstance(exc, ApiFailure):
        errno = ERRNO.get(exc.code)
        if exc.status == 422 and any("vlan" in str(d.get("path")) for d in exc.raw_details):
            errno = INVALID_VLAN
        if errno is not None:
            return K3Error("\n".join([*lines, f"[Kadeploy Error #{errno}]"]), errno)
        if exc.status == 404:
            return K3Error("\n".join(lines), EXIT_ERROR)
        return K3Error("\n".join([*lines, f"[HTTP Error #{exc.status}]"]), EXIT_HTTP)
    if isinstance(exc, ServerUnreachable):
        return K3Error("\n".join(lines), EXIT_ERROR)
    return K3Error("\n".join(lines), EXIT_ERROR)


class K3Command(click.Command):
    """A Kadeploy3 command: Kadeploy3's messages and exit statuses for every error, and the
    callback's return value (an int) as the exit status."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """Long options may be abbreviated to any unambiguous prefix (``--env-n``,
        ``--verbose``), as Ruby's OptionParser lets Kadeploy3's users write them."""
        return super().parse_args(ctx, expand_prefixes(args, self._long_names(ctx)))

    def _long_names(self, ctx: click.Context) -> list[str]:
        names = []
        for param in self.get_params(ctx):
            if isinstance(param, click.Option):
                names += [n for n in (*param.opts, *param.secondary_opts) if n.startswith("--")]
        return names

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            code = super().main(*args, **kwargs)
        except click.UsageError as exc:
            click.echo(f"Option parsing error: {exc.format_message()}", err=True)
            sys.exit(EXIT_ERROR)
        except CliError as exc:
            error = k3_error(exc)
            error.show()
            sys.exit(error.code)
        except K3Error as exc:
            exc.show()
            sys.exit(exc.code)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code if exc.exit_code else EXIT_ERROR)
        except click.Abort:
            sys.exit(EXIT_ERROR)
        sys.exit(code if isinstance(code, int) else EXIT_OK)


def expand_prefixes(args: Sequence[str], names: Sequence[str]) -> list[str]:
    """``args`` with each long option written as an unambiguous prefix of one of ``names``
    completed (``--env-n=x`` -> ``--env-name=x``); an ambiguous or unknown one is left for
    the parser to refuse. Nothing after ``--`` is touched."""
    known = set(names)
    expanded: list[str] = []
    for index, arg in enumerate(args):
        if arg == "--":
            return expanded + list(args[index:])
        name, equals, value = arg.partition("=")
        matches = [n for n in known if n.startswith(name)]
        if name.startswith("--") and name not in known and len(matches) == 1:
            expanded.append(matches[0] + equals + value)
        else:
            expanded.append(arg)
    return expanded


# ------------------------------------------------------------------ options


def generic_options(function: F) -> F:
    """Kadeploy3's "Generic options", shared by every ``*3`` command."""
    decorators = [
        click.option(
            "-v", "--version", "get_version", is_flag=True, help="Get the server's version"
        ),
        click.option(
            "-I",
            "--server-info",
            "server_info",
            is_flag=True,
            help="Get information about the server's configuration",
        ),
        click.option("-M", "--multi-server", is_flag=True, help="Activate the multi-server mode"),
        click.option(
            "-H",
            "--debug-http/--no-debug-http",
            default=False,
            help="Debug HTTP communications with the server (can be redirected to the fd #4)",
        ),
        click.option(
            "-S",
            "--server",
            metavar="STRING",
            help="Specify the Kadeploy server to use (a name of the client configuration)",
        ),
        click.option("--dry-run/--no-dry-run", default=False, help="Perform a dry run"),
        click.option(
            "--password",
            is_flag=False,
            flag_value="",
            metavar="[PASSWORD]",
            help="Accepted for Kadeploy3 scripts; kadeployd authenticates with tokens",
        ),
    ]
    for decorate in reversed(decorators):
        function = decorate(function)
    return function


def machine_options(function: F) -> F:
    """``-f/--file MACHINELIST`` and ``-m/--machine MACHINE`` as Kadeploy3 names them."""
    function = click.option(
        "-m",
        "--machine",
        "machines",
        multiple=True,
        metavar="MACHINE",
        help="The node to run on (repeatable; a range node-[1-4] is expanded)",
    )(function)
    return click.option(
        "-f",
        "--file",
        "nodefile",
        metavar="MACHINELIST",
        help="A file containing a list of nodes (- means stdin)",
    )(function)


def nodes_of(options: dict[str, Any], required: bool = True) -> list[NodeRef]:
    """The nodes of ``-f`` and ``-m``; "No node is chosen" (exit 1) when none and
    ``required``."""
    if required and options.get("nodefile") is None and not options.get("machines"):
        raise K3Error("No node is chosen")
    return node_refs(options.get("nodefile"), options.get("machines") or (), required)


def load_outputfile(path: str | None) -> None:
    """Create or empty an output file when the command starts (``-o``, ``-n``,
    ``--write-workflow-id``), as Kadeploy3 does: a stale list never survives a run."""
    if path is None:
        return
    try:
        Path(path).write_bytes(b"")
    except OSError:
        raise K3Error(f"Cannot create the file '{path}'") from None


# ------------------------------------------------------------------ servers


def http_trace_stream() -> IO[str]:
    """Where ``-H`` writes: the file descriptor 4 when the caller opened it, else stdout."""
    try:
        os.fstat(4)
    except OSError:
        return sys.stdout
    return os.fdopen(4, "w", buffering=1, closefd=False)


@dataclass
class Session:
    """The generic options resolved: the configuration and the chosen server."""

    config: ClientConfig
    chosen: ServerEntry
    multi: bool
    debug_http: bool
    _trace: IO[str] | None = None

    @classmethod
    def open(cls, options: dict[str, Any]) -> Session:
        """Read the configuration; the server of ``-S`` (or the default)."""
        if options.get("password") is not None:
            click.echo(
                "Warning: --password is ignored: kadeployd authenticates with tokens "
                "($KADEPLOY_TOKEN or ~/.kadeploy/token)",
                err=True,
            )
        try:
            config = load_client_config(options.get("server"))
            name = options.get("server")
            chosen = config.server(None if config.implicit else name)
        except CliError as exc:
            raise K3Error("\n".join([exc.format_message(), *exc.details])) from None
        return cls(config, chosen, bool(options.get("multi_server")), options["debug_http"])

    def client(self, entry: ServerEntry | None = None) -> Client:
        """The API client of ``entry`` (default: the chosen server)."""
        entry = entry or self.chosen
        client = Client(entry.address, _token(entry))
        if self.debug_http:
            if self._trace is None:
                self._trace = http_trace_stream()
            trace = self._trace
            client.trace(lambda line: print(line, file=trace, flush=True))
        return client

    def servers(self) -> Sequence[ServerEntry]:
        """The servers a command talks to: every one with ``-M``, else the chosen one."""
        return self.config.servers if self.multi else (self.chosen,)

    def answer_generic(self, options: dict[str, Any]) -> None:
        """``-v`` and ``-I``: print the answer and exit 0, as Kadeploy3 does before any other
        check; nothing otherwise."""
        if options.get("get_version"):
            fixed = os.environ.get("KADEPLOY3_VERSION")
            if fixed:
                click.echo(fixed)
                sys.exit(EXIT_OK)
            self._each_server(lambda client, _: [f"Kadeploy version: {server_version(client)}"])
            sys.exit(EXIT_OK)
        if options.get("server_info"):
            self._each_server(server_info)
            sys.exit(EXIT_OK)

    def _each_server(self, lines_of: Callable[[Client, ServerEntry], list[str]]) -> None:
        """Print ``lines_of`` each server; with ``-M`` prefixed by its address, an unreachable
        one skipped with a line saying so (as Kadeploy3 leaves it out)."""
        for entry in self.servers():
            prefix = f"({_host(entry.address)}) " if self.multi else ""
            with self.client(entry) as client:
                try:
                    lines = lines_of(client, entry)
                except ServerUnreachable:
                    if not self.multi:
                        raise
                    click.echo(f"The {entry.name} server is unreachable")
                    continue
            for line in lines:
                click.echo(f"{prefix}{line}")


def _token(entry: ServerEntry) -> str | None:
    if entry.token_file is None:
        return resolve_token()
    try:
        return entry.token_file.read_text(encoding="utf-8").strip() or None
    except OSError as exc:
        raise K3Error(f"Cannot read the token file '{entry.token_file}': {exc.strerror}") from None


def _host(address: ServerAddress) -> str:
    return str(address.socket) if address.socket is not None else str(address.url)


def server_version(client: Client) -> str:
    """The server's version: from ``/v1/health`` (with a token), else the API document."""
    health = client.get("/v1/health")
    if isinstance(health, dict) and health.get("version"):
        return str(health["version"])
    document = client.get("/openapi.json")
    return str(((document or {}).get("info") or {}).get("version", "unknown"))


def server_info(client: Client, entry: ServerEntry) -> list[str]:
    """Kadeploy3's ``-I`` block, with what kadeployd's API tells: the version, the clusters
    and their nodes, the deployments running."""
    health = client.get("/v1/health")
    nodes = client.get("/v1/nodes")
    clusters: dict[str, list[str]] = {}
    for node in nodes if isinstance(nodes, list) else []:
        clusters.setdefault(str(node.get("cluster")), []).append(str(node.get("name")))
    lines = [
        "Kadeploy server configuration:",
        f"  Server: {entry.name} ({entry.address})",
        f"  Version: {server_version(client)}",
    ]
    if isinstance(health, dict) and "deployments_in_flight" in health:
        lines.append(f"  Operations running: {health['deployments_in_flight']}")
    lines.append("  Clusters:")
    for cluster, names in sorted(clusters.items()):
        lines.append(f"    {cluster}: {len(names)} nodes")
    return lines
