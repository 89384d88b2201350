"""What kadeploy3, kareboot3 and kapower3 share (Kadeploy3's ``ClientWorkflow``): the
workflow options, the plain progress lines, the final node lists, the ``-o``/``-n`` files,
``--no-wait``, ``--write-workflow-id``, ``-s`` and ``-M``.

Output is plain lines on stdout, never a cursor-control sequence (scripts and remote tools
read it, often through a pty). As Kadeploy3 prints them::

    Deployment #ID started
    Launching a deployment on n-1, n-2            (-V 0 and more: as Kadeploy3's server log)
    Performing a SetDeploymentEnvUntrusted step   (-V 1 and more)
    ...
    End of deployment for n-1 after 42s
    Deployment #ID done
    <blank>
    The deployment is successful on nodes
    n-1
    The deployment failed on nodes
    n-2 (BootNewEnv: the node did not answer)

With ``-M`` every line starts with the server's name (``[nancy]   ``). ``-d`` adds the
nodes' command output as ``[dbg]`` lines, on the file descriptor 3 when the caller opened
it, else on stdout. The exit status is 0 once the workflow ran to its end, whatever its
nodes' fate: callers read the lists (or the ``-o``/``-n`` files).

``-s SCRIPT`` runs SCRIPT at the end as Kadeploy3 does (``Running SCRIPT``, then
``Success !`` or ``Fail !``); Kadeploy3 gives it nothing, we add ``KADEPLOY_OK_NODES`` and
``KADEPLOY_KO_NODES``: the paths of files listing the nodes done and not done (the ``-o`` and
``-n`` files when given), and ``KADEPLOY_WID`` (the operation ids, space-separated).

``--no-wait`` prints ``ID URL``: the operation's id and its document's URL in the API
(``http://host:port/v1/deployments/ID``; over a Unix socket, ``http+unix://`` then the socket
path percent-encoded, as requests-unixsocket and curl users write it).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar
from urllib.parse import quote

import click

from kadeploy_cli.client import Client, ServerAddress
from kadeploy_cli.errors import ApiFailure, CliError, ServerUnreachable
from kadeploy_cli.k3.common import (
    EXIT_ERROR,
    K3Error,
    Session,
    load_outputfile,
    machine_options,
)
from kadeploy_cli.output import FAILURE, SUCCESS, NodeOutcome, outcomes
from kadeploy_core.nodelist import NodeRef
from kadeploy_core.ranges import fold_names

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_VERBOSE = 3
OK_ENV = "KADEPLOY_OK_NODES"
KO_ENV = "KADEPLOY_KO_NODES"
WID_ENV = "KADEPLOY_WID"
SCRIPT_TIMEOUT = 24 * 3600.0


def workflow_options(function: F) -> F:
    """Kadeploy3's workflow options (every command that runs an operation on nodes)."""
    decorators = [
        click.option(
            "-d",
            "--debug-mode/--no-debug-mode",
            default=False,
            help="Activate the debug mode  (can be redirected to the fd #3)",
        ),
        machine_options,
        click.option(
            "-n",
            "--output-ko-nodes",
            "ko_file",
            metavar="FILENAME",
            help="File that will contain the nodes on which the operation has not been "
            "correctly performed",
        ),
        click.option(
            "-o",
            "--output-ok-nodes",
            "ok_file",
            metavar="FILENAME",
            help="File that will contain the nodes on which the operation has been correctly "
            "performed",
        ),
        click.option(
            "-s", "--script", metavar="FILE", help="Execute a script at the end of the operation"
        ),
        click.option(
            "-V",
            "--verbose-level",
            type=click.IntRange(0, 5),
            metavar="VALUE",
            default=None,
            help="Verbose level (between 0 to 5)",
        ),
        click.option(
            "--write-workflow-id",
            "wid_file",
            metavar="FILE",
            help="Write the workflow id in a file",
        ),
        click.option(
            "--wait/--no-wait",
            default=True,
            help="Wait the end of the operation, set by default",
        ),
        click.option(
            "--force/--no-force",
            default=False,
            help="Allow to deploy even on the nodes tagged as currently used (use this only "
            "if you know what you do)",
        ),
        click.option(
            "--breakpoint",
            metavar="STEP",
            help="Set a breakpoint just before lauching the given micro-step, the syntax is "
            "macrostep:microstep (use this only if you know what you do)",
        ),
        click.option(
            "--custom-steps", metavar="FILE", help="Add some custom operations defined in a file"
        ),
        click.option(
            "--hook/--no-hook",
            default=False,
            help="Launch server's hook at the end of operation (kadeployd has none: ignored)",
        ),
    ]
    for decorate in reversed(decorators):
        function = decorate(function)
    return function


def start_workflow_options(options: dict[str, Any]) -> None:
    """What Kadeploy3 does with the workflow options as it parses them, then checks: the
    output files emptied, the script checked, the combinations refused (exit 1)."""
    for key in ("ko_file", "ok_file", "wid_file"):
        load_outputfile(options.get(key))
    script = options.get("script")
    if script is not None:
        path = Path(script)
        if not os.access(path, os.R_OK) or not path.is_file():
            raise K3Error(f"The file {script} cannot be read")
        if not os.access(path, os.X_OK):
            raise K3Error(f"The file {script} must be executable")
        options["script"] = str(path.resolve())
    if options.get("ok_file") is not None and options.get("ok_file") == options.get("ko_file"):
        raise K3Error("The files used for the output of the OK and the KO nodes cannot be the same")
    if not options.get("wait") and (options.get("ok_file") or options.get("ko_file")):
        raise K3Error(
            "-o/--output-ok-nodes and/or -n/--output-ko-nodes cannot be used with --no-wait"
        )
    if options.get("hook"):
        click.echo("Warning: --hook is ignored: kadeployd has no server hook", err=True)
    options["debug_stream"] = debug_stream() if options.get("debug_mode") else None


def debug_stream() -> IO[str]:
    """Where ``-d`` writes: the file descriptor 3 when the caller opened it, else stdout."""
    try:
        os.fstat(3)
    except OSError:
        return sys.stdout
    return os.fdopen(3, "w", buffering=1, closefd=False)


# ------------------------------------------------------------------ printing


class Printer:
    """Lines on stdout, each prefixed with the server's name under ``-M`` (Kadeploy3's
    ``%-10s`` of ``[name] ``); one lock for every server's thread."""

    def __init__(
        self, name: str | None, lock: threading.Lock, stream: IO[str] | None = None
    ) -> None:
        self.prefix = f"{f'[{name}] ':<10}" if name else ""
        self._lock = lock
        self._stream = stream

    def line(self, text: str = "", stream: IO[str] | None = None) -> None:
        """Print ``text`` (one or more lines)."""
        out = stream or self._stream or sys.stdout
        lines = text.split("\n")
        with self._lock:
            out.write("".join(f"{self.prefix}{line}\n" for line in lines))
            out.flush()


@dataclass
class Outcome:
    """What an operation did: the nodes done, those not done with why, and its id."""

    ok: list[str] = field(default_factory=list)
    ko: list[tuple[str, str]] = field(default_factory=list)
    ident: str | None = None

    @classmethod
    def of(cls, results: Sequence[NodeOutcome], ident: str | None = None) -> Outcome:
        """From the nodes' final records."""
        return cls(
            ok=[r.node for r in results if r.deployed],
            ko=[(r.node, reason_of(r)) for r in results if not r.deployed],
            ident=ident,
        )


def reason_of(result: NodeOutcome) -> str:
    """Why a node failed, for ``NAME (reason)``: one line, whatever the message holds."""
    reason = " ".join((result.reason or result.state).split())
    return f"{result.step}: {reason}" if result.step else reason


class Progress:
    """Kadeploy3's log lines out of the operation's events (see the module docstring)."""

    def __init__(
        self,
        operation: str,
        deployment: dict[str, Any],
        printer: Printer,
        verbose: int,
        debug: IO[str] | None,
    ) -> None:
        self.operation = operation
        self.name = _opname(operation)
        self._origin = float(deployment.get("created_at") or 0.0)
        self._printer = printer
        self._verbose = verbose
        self._debug = debug
        self._steps: set[tuple[str, str, int]] = set()
        self._states: dict[str, str] = {}
        self._last = 0.0

    def launching(self, nodes: Sequence[str]) -> None:
        """The first line of the server's log."""
        self._print(0, f"Launching a {self.name} on {fold_names(nodes)}")

    def state(self, event: dict[str, Any]) -> None:
        """A node entered a state."""
        node, state = str(event.get("node")), str(event.get("state"))
        at = float(event.get("at") or self._origin)
        self._last = max(self._last, at)
        previous = self._states.get(node)
        self._states[node] = state
        if previous == state:
            return
        after = f"after {max(0, round(at - self._origin))}s"
        macrostep, variant = event.get("macrostep"), event.get("variant")
        if state in SUCCESS:
            self._print(1, f"End of {self.name} for {node} {after}")
        elif state in FAILURE:
            step = _class_name(macrostep, variant) or state
            self._print(2, f"!!! The nodes {node} failed on step {step}")
            message = event.get("message")
            self._print(1, f"{self.name.capitalize()} failed for {node} {after}")
            if message:
                self._print(3, f"  {node}: {message}")
        elif macrostep:
            attempt = int(event.get("attempt") or 1)
            key = (str(macrostep), str(variant or ""), attempt)
            if key not in self._steps:
                self._steps.add(key)
                retry = f" (attempt {attempt})" if attempt > 1 else ""
                self._print(1, f"Performing a {_class_name(macrostep, variant)} step{retry}")
            self._print(4, f"  * {node}: {state}")
        else:
            self._print(4, f"  * {node}: {state}")

    def log(self, event: dict[str, Any]) -> None:
        """A piece of a node's log: ``[dbg]`` lines with ``-d``, else plain ones at ``-V 5``;
        every line of it prefixed (a command's text spans several)."""
        node = event.get("node")
        texts = str(event.get("text", "")).splitlines() or [""]
        lines = "\n".join(f"[{node}] {text}" for text in texts)
        if self._debug is not None:
            self._printer.line(
                "\n".join(f"[dbg] {line}" for line in lines.split("\n")), stream=self._debug
            )
        elif self._verbose >= 5:
            self._printer.line(lines)

    def done(self) -> None:
        """The last line of the server's log."""
        took = max(0, round(self._last - self._origin))
        self._print(0, f"End of {self.name} after {took}s")

    def _print(self, level: int, text: str) -> None:
        if level <= self._verbose:
            self._printer.line(text)


def _opname(operation: str) -> str:
    """Kadeploy3's ``opname``: ``deployment``, ``reboot``, ``power``."""
    return operation.lower().removesuffix(" operation")


def _class_name(macrostep: Any, variant: Any) -> str:
    """Kadeploy3's name of a step: ``SetDeploymentEnvUntrusted``, ``BootNewEnvClassical``."""
    if not macrostep:
        return ""
    if not variant:
        return str(macrostep)
    return str(macrostep) + "".join(part.capitalize() for part in str(variant).split("_"))


# ------------------------------------------------------------------ an operation


def operation_url(address: ServerAddress, ident: str) -> str:
    """The URL of the operation's document in the API (``--no-wait``)."""
    path = f"/v1/deployments/{ident}"
    if address.socket is not None:
        return "http+unix://" + quote(str(address.socket), safe="") + path
    return f"{address.url}{path}"


def started(
    client: Client, deployment: dict[str, Any], options: dict[str, Any], printer: Printer
) -> bool:
    """After the server accepted an operation: ``--write-workflow-id``, and ``--no-wait``'s
    ``ID URL``; whether to follow it."""
    ident = str(deployment["id"])
    wid_file = options.get("wid_file")
    if wid_file:
        try:
            Path(wid_file).write_text(ident, encoding="utf-8")
        except OSError as exc:
            raise K3Error(f"Cannot write the file '{wid_file}': {exc.strerror}") from None
    if not options.get("wait", True):
        printer.line(f"{ident} {operation_url(client.address, ident)}")
        return False
    return True


def follow(
    client: Client,
    operation: str,
    deployment: dict[str, Any],
    nodes: Sequence[str],
    *,
    options: dict[str, Any],
    printer: Printer,
) -> Outcome:
    """Print the operation's progress to its end; its outcome. Ctrl-C cancels it and exits 1
    (Kadeploy3's "SIGINT trapped")."""
    ident = str(deployment["id"])
    RUNNING.add(client, ident)
    verbose = options.get("verbose_level")
    verbose = DEFAULT_VERBOSE if verbose is None else int(verbose)
    debug = options.get("debug_stream")
    progress = Progress(operation, deployment, printer, verbose, debug)
    printer.line(f"{operation} #{ident} started")
    progress.launching(nodes)
    final: dict[str, Any] | None = None
    try:
        for event in client.events(ident, logs=debug is not None or verbose >= 5):
            if event.kind == "state":
                progress.state(event.data)
            elif event.kind == "log":
                progress.log(event.data)
            elif event.kind == "end":
                final = event.data
                break
    except KeyboardInterrupt:
        interrupted(printer)
    RUNNING.discard(client, ident)
    if final is None:
        raise K3Error(f"The server ended the event stream of {ident} before its end")
    results = outcomes(client.get(f"/v1/deployments/{ident}/nodes"))
    progress.done()
    printer.line(f"{operation} #{ident} done\n")
    return Outcome.of(results, ident)


class Running:
    """The operations being followed, to cancel on Ctrl-C (with ``-M``, the main thread gets
    the interrupt while other threads follow them)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._operations: list[tuple[Client, str]] = []

    def add(self, client: Client, ident: str) -> None:
        """``ident`` is being followed through ``client``."""
        with self._lock:
            self._operations.append((client, ident))

    def discard(self, client: Client, ident: str) -> None:
        """``ident`` ended."""
        with self._lock:
            if (client, ident) in self._operations:
                self._operations.remove((client, ident))

    def cancel_all(self) -> None:
        """Cancel every operation still followed (errors only logged: we are leaving)."""
        with self._lock:
            operations, self._operations = self._operations, []
        for client, ident in operations:
            try:
                client.post(f"/v1/deployments/{ident}/cancel", {"reason": "cancelled by user"})
            except CliError as exc:
                logger.debug("cancel of %s: %s", ident, exc.format_message())


RUNNING = Running()


def interrupted(printer: Printer) -> None:
    """Ctrl-C: cancel the operations followed and exit 1, as Kadeploy3's SIGINT trap."""
    printer.line("\nSIGINT trapped")
    RUNNING.cancel_all()
    sys.exit(EXIT_ERROR)


def print_result(
    operation: str, outcome: Outcome, options: dict[str, Any], printer: Printer
) -> None:
    """The node lists as Kadeploy3 prints them, appended to the ``-o``/``-n`` files."""
    name = operation.lower()
    if outcome.ok:
        printer.line(f"The {name} is successful on nodes")
        printer.line("\n".join(outcome.ok))
        _append(options.get("ok_file"), outcome.ok, printer)
    if outcome.ko:
        printer.line(f"The {name} failed on nodes")
        printer.line("\n".join(f"{node} ({reason})" for node, reason in outcome.ko))
        _append(options.get("ko_file"), [node for node, _ in outcome.ko], printer)


_FILES_LOCK = threading.Lock()


def _append(path: str | None, nodes: Sequence[str], printer: Printer) -> None:
    if path is None:
        return
    with _FILES_LOCK:
        try:
            with Path(path).open("a", encoding="utf-8") as handle:
                handle.write("".join(f"{n}\n" for n in nodes))
        except OSError as exc:
            printer.line(f"Cannot write the file '{path}': {exc.strerror}", stream=sys.stderr)


# ------------------------------------------------------------------ servers and the end

RunOne = Callable[[Client, list[NodeRef], Printer], Outcome | None]
"""Run the operation with one server on its nodes; its outcome (None: not waited for)."""


def known_names(client: Client) -> list[str]:
    """The node names the server knows."""
    nodes = client.get("/v1/nodes")
    return [str(n.get("name")) for n in nodes] if isinstance(nodes, list) else []


def run_everywhere(
    session: Session,
    refs: list[NodeRef],
    operation: str,
    options: dict[str, Any],
    run_one: RunOne,
) -> int:
    """Run on the chosen server, or with ``-M`` on each server for the nodes it knows (in
    parallel, lines prefixed with its name); print each result, run ``-s``; exit status."""
    lock = threading.Lock()
    if not session.multi:
        with session.client() as client:
            _check_known(client, refs)
            printer = Printer(None, lock)
            outcome = run_one(client, refs, printer)
            if outcome is not None:
                print_result(operation, outcome, options, printer)
        return _script(options, [outcome] if outcome is not None else [])
    plan = _split_by_server(session, refs, lock)
    results: list[Outcome] = []
    errors: list[BaseException] = []

    def worker(entry_name: str, client: Client, nodes: list[NodeRef]) -> None:
        printer = Printer(entry_name, lock)
        try:
            with client:
                outcome = run_one(client, nodes, printer)
                if outcome is not None:
                    print_result(operation, outcome, options, printer)
                    results.append(outcome)
        except BaseException as exc:  # reported below, once every server ended
            errors.append(exc)

    threads = [
        threading.Thread(target=worker, args=item, name=f"k3-{item[0]}", daemon=True)
        for item in plan
    ]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            thread.join()
    except KeyboardInterrupt:
        interrupted(Printer(None, lock))
    if errors:
        raise errors[0]  # the first server's error decides the exit status, as in Kadeploy3
    return _script(options, results)


def _check_known(client: Client, refs: list[NodeRef]) -> None:
    """Kadeploy3's lazy check: a name must be part of a node name the server knows."""
    try:
        names = known_names(client)
    except ApiFailure:
        return  # the request will say what is wrong
    unknown = [r.name for r in refs if not any(r.name in n for n in names)]
    if unknown:
        raise K3Error(f"The nodes {', '.join(unknown)} does not belongs to any server")


def _split_by_server(
    session: Session, refs: list[NodeRef], lock: threading.Lock
) -> list[tuple[str, Client, list[NodeRef]]]:
    """Each reachable server with the nodes it knows (exactly); K3Error when some node
    belongs to none."""
    plan: list[tuple[str, Client, list[NodeRef]]] = []
    treated: set[str] = set()
    for entry in session.servers():
        client = session.client(entry)
        try:
            names = set(known_names(client))
        except ServerUnreachable:
            Printer(None, lock).line(f"The {entry.name} server is unreachable")
            client.close()
            continue
        mine = [r for r in refs if r.name in names and r.name not in treated]
        if not mine:
            client.close()
            continue
        treated.update(r.name for r in mine)
        plan.append((entry.name, client, mine))
    missing = [r.name for r in refs if r.name not in treated]
    if missing:
        for _, client, _ in plan:
            client.close()
        raise K3Error(f"The nodes {', '.join(missing)} does not belongs to any server")
    return plan


def _script(options: dict[str, Any], results: Sequence[Outcome]) -> int:
    """``-s``: run the script with the node files in its environment; the exit status (0:
    Kadeploy3 reports the script's failure, it does not exit with it)."""
    script = options.get("script")
    if not script:
        return 0
    ok = [n for r in results for n in r.ok]
    ko = [n for r in results for n, _ in r.ko]
    with tempfile.TemporaryDirectory(prefix="kadeploy3-script-") as scratch:
        env = dict(os.environ)
        env[OK_ENV] = _node_file(options.get("ok_file"), Path(scratch) / "ok_nodes", ok)
        env[KO_ENV] = _node_file(options.get("ko_file"), Path(scratch) / "ko_nodes", ko)
        env[WID_ENV] = " ".join(r.ident for r in results if r.ident)
        click.echo(f"\nRunning {script}")
        sys.stdout.flush()
        try:
            code = subprocess.run([script], env=env, check=False, timeout=SCRIPT_TIMEOUT).returncode
        except (OSError, subprocess.TimeoutExpired) as exc:
            logger.debug("script %s: %s", script, exc)
            code = -1
        click.echo("\nSuccess !" if code == 0 else "\nFail !")
    return 0


def _node_file(given: str | None, scratch: Path, nodes: Sequence[str]) -> str:
    """The ``-o``/``-n`` file when given (already written), else a scratch file listing
    ``nodes``."""
    if given:
        return str(Path(given).resolve())
    scratch.write_text("".join(f"{n}\n" for n in nodes), encoding="utf-8")
    return str(scratch)
