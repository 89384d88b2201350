"""What kapower and kareboot share: sending the request, printing each node's outcome, the
ok/ko node files and the exit status (0 every node done, 1 some failed)."""

from __future__ import annotations

import logging
from typing import Any

import click

from kadeploy_cli.common import make_client, node_refs, print_json, where_of, write_node_file
from kadeploy_cli.errors import EXIT_OK, EXIT_SOME_FAILED, ApiFailure, UsageProblem

logger = logging.getLogger(__name__)

LONG_WAIT = 3600.0


def run(
    path: str,
    body: dict[str, Any],
    *,
    server: str | None,
    nodefile: str | None,
    machines: tuple[str, ...],
    json_output: bool,
    ok_file: str | None,
    ko_file: str | None,
) -> int:
    """POST ``body`` plus the nodes to ``path``; print the results; the exit status."""
    refs = node_refs(nodefile, machines)
    with make_client(server) as client:
        try:
            results: list[dict[str, Any]] = client.post(
                path, {**body, "nodes": [r.name for r in refs]}, timeout=LONG_WAIT
            )
        except ApiFailure as exc:
            located = [
                f"{where_of(refs, _index(d))}: {d.get('message')}"
                for d in exc.raw_details
                if _index(d) >= 0
            ]
            if located:
                raise UsageProblem(located[0], located[1:]) from None
            raise
    write_node_file(ok_file, [r["node"] for r in results if r["ok"]])
    write_node_file(ko_file, [r["node"] for r in results if not r["ok"]])
    if json_output:
        print_json(results)
    else:
        width = max((len(r["node"]) for r in results), default=0)
        for r in results:
            mark = "" if r["ok"] else "FAILED: "
            click.echo(f"{r['node']:<{width}}  {mark}{r['message']}")
    return EXIT_OK if all(r["ok"] for r in results) else EXIT_SOME_FAILED


def _index(detail: dict[str, Any]) -> int:
    path = str(detail.get("path") or "")
    if path.startswith("nodes[") and path.endswith("]") and path[6:-1].isdigit():
        return int(path[6:-1])
    return -1
