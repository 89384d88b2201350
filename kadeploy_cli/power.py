"""What kapower and kareboot share: sending the request, printing each node's outcome, the
ok/ko node files and the exit status (0 every node done, 1 some failed).

A kareboot ``deploy_env`` or ``recorded_env`` is an operation the server runs like a
deployment: :func:`run_operation` starts it, follows its events to the end (Ctrl-C cancels
it) and prints the same one line per node.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from kadeploy_cli.client import TIMEOUT, Client
from kadeploy_cli.common import make_client, node_refs, print_json, where_of, write_node_file
from kadeploy_cli.errors import (
    EXIT_OK,
    EXIT_SOME_FAILED,
    ApiFailure,
    CliError,
    ServerUnreachable,
    UsageProblem,
)
from kadeploy_cli.output import outcomes
from kadeploy_cli.uploads import deleted_on_failure
from kadeploy_core.nodelist import NodeRef

logger = logging.getLogger(__name__)

LONG_WAIT = 3600.0
F = TypeVar("F", bound=Callable[..., Any])


def result_options(ok_help: str, ko_help: str) -> Callable[[F], F]:
    """``-o FILE`` (the nodes that succeeded), ``-n FILE`` (the others) and ``--json``, the
    options kapower and kareboot take for their results; ``ok_help``/``ko_help`` say what
    success means for the command."""

    def decorate(function: F) -> F:
        function = click.option(
            "--json", "json_output", is_flag=True, help="Print JSON: one result per node."
        )(function)
        function = click.option("-n", "--output-ko-nodes", "ko_file", metavar="FILE", help=ko_help)(
            function
        )
        return click.option("-o", "--output-ok-nodes", "ok_file", metavar="FILE", help=ok_help)(
            function
        )

    return decorate


@dataclass(frozen=True, slots=True)
class Targets:
    """The options kapower and kareboot share: the server, the nodes (``-f``/``-m``) and
    where their results go (``--json``, ``-o``, ``-n``)."""

    server: str | None
    nodefile: str | None
    machines: tuple[str, ...]
    json_output: bool
    ok_file: str | None
    ko_file: str | None


def run(
    path: str,
    body: dict[str, Any],
    targets: Targets,
    *,
    uploads: Mapping[str, Path] | None = None,
    profile_file: Path | None = None,
) -> int:
    """POST ``body`` plus the nodes (and the ``uploads``' ids as ``files``) to ``path``;
    print the results; the exit status. ``profile_file`` names the file of ``body["profile"]``
    in errors about it. The uploads are deleted if the request fails."""
    refs = node_refs(targets.nodefile, targets.machines)
    with make_client(targets.server) as client, deleted_on_failure(client) as made:
        if uploads:
            files: dict[str, str] = {}
            for name, local in uploads.items():
                files[name] = str(client.upload(local, name)["id"])
                made.append(files[name])
            body = {**body, "files": files}
        results: list[dict[str, Any]] = _post(
            client, path, body, refs, profile_file=profile_file, timeout=LONG_WAIT
        )
    _report(targets, results)
    return EXIT_OK if all(r["ok"] for r in results) else EXIT_SOME_FAILED


def run_operation(body: dict[str, Any], targets: Targets) -> int:
    """Start a reboot operation (deploy_env, recorded_env), follow it to its end, print one
    result per node; the exit status."""
    kind = body["kind"]
    refs = node_refs(targets.nodefile, targets.machines)
    with make_client(targets.server) as client:
        started: dict[str, Any] = _post(client, "/v1/reboots", body, refs)
        ident = str(started["id"])
        if not targets.json_output:
            click.echo(f"{kind} {ident}: {len(refs)} node(s)", err=True)
        final = _wait_end(client, ident)
        nodes = outcomes(client.get(f"/v1/deployments/{ident}/nodes"))
    results = [
        {
            "node": n.node,
            "ok": n.deployed,
            "state": n.state,
            "message": _message(kind, n.deployed, n.step, n.reason, n.state),
            "operation_id": ident,
        }
        for n in nodes
    ]
    _report(targets, results)
    if not targets.json_output and final.get("status") == "aborted":
        click.echo(f"{kind} {ident} aborted: {final.get('reason', '')}", err=True)
    return EXIT_OK if results and all(r["ok"] for r in results) else EXIT_SOME_FAILED


def _post(
    client: Client,
    path: str,
    body: dict[str, Any],
    refs: list[NodeRef],
    *,
    profile_file: Path | None = None,
    timeout: float = TIMEOUT,
) -> Any:
    """POST ``body`` for the nodes ``refs``; an API error names the nodefile line or file."""
    try:
        return client.post(path, {**body, "nodes": [r.name for r in refs]}, timeout=timeout)
    except ApiFailure as exc:
        raise _located(exc, refs, profile_file) from None


def _report(targets: Targets, results: list[dict[str, Any]]) -> None:
    """Write the ok/ko node files and print ``results`` (JSON, or one line per node)."""
    write_node_file(targets.ok_file, [r["node"] for r in results if r["ok"]])
    write_node_file(targets.ko_file, [r["node"] for r in results if not r["ok"]])
    if targets.json_output:
        print_json(results)
    else:
        _print_lines([(r["node"], r["ok"], r["message"]) for r in results])


def _wait_end(client: Client, ident: str) -> dict[str, Any]:
    """The operation's document once it ended; Ctrl-C cancels it and waits for the end."""
    cancelled = False
    while True:
        try:
            for event in client.events(ident):
                if event.kind == "end":
                    return event.data
            raise ServerUnreachable(f"the event stream of {ident} ended before the operation")
        except KeyboardInterrupt:
            if cancelled:
                raise CliError(f"interrupted; {ident} is still being cancelled") from None
            cancelled = True
            click.echo(f"cancelling {ident}...", err=True)
            try:
                client.post(f"/v1/deployments/{ident}/cancel", {"reason": "kareboot interrupted"})
            except ApiFailure as exc:
                if exc.code != "not_running":
                    raise


def _message(kind: str, ok: bool, step: str | None, reason: str | None, state: str) -> str:
    if ok:
        return "deploy env reached" if kind == "deploy_env" else "environment booted"
    if reason:
        return f"{step}: {reason}" if step else reason
    return state


def _print_lines(rows: list[tuple[str, bool, str]]) -> None:
    width = max((len(node) for node, _, _ in rows), default=0)
    for node, ok, message in rows:
        mark = "" if ok else "FAILED: "
        click.echo(f"{node:<{width}}  {mark}{message}")
    sys.stdout.flush()


def _located(exc: ApiFailure, refs: list[NodeRef], profile_file: Path | None) -> CliError:
    """An API error about ``nodes[i]`` names its nodefile line or ``-m``; one about the
    profile names the ``-w`` file and line."""
    located = [
        f"{where_of(refs, _index(d))}: {d.get('message')}"
        for d in exc.raw_details
        if _index(d) >= 0
    ]
    if not located and profile_file is not None:
        located = [
            f"{profile_file}:{d['line']}: {d.get('message')}"
            if d.get("line") is not None
            else f"{profile_file}: {d.get('message')}"
            for d in exc.raw_details
            if d.get("path") == "profile"
        ]
    if located:
        return UsageProblem(located[0], located[1:])
    return exc


def _index(detail: dict[str, Any]) -> int:
    path = str(detail.get("path") or "")
    if path.startswith("nodes[") and path.endswith("]") and path[6:-1].isdigit():
        return int(path[6:-1])
    return -1
