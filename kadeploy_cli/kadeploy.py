"""`kadeploy`: deploy an environment onto nodes, Kadeploy3 style.

A thin client: it reads the node list and the local files, asks the server to deploy, then
follows the deployment's event stream until its end and prints a summary. Ctrl-C asks
whether to cancel the deployment (``--yes``: cancel at once) and cancels it through the API.
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path
from typing import Any

import click

from kadeploy_cli import custom_steps, envfiles
from kadeploy_cli.client import Client
from kadeploy_cli.common import (
    CONTEXT,
    SectionedCommand,
    machine_options,
    make_client,
    node_refs,
    print_json,
    server_option,
    where_of,
    write_node_file,
)
from kadeploy_cli.errors import (
    EXIT_CODES_HELP,
    ApiFailure,
    CliError,
    ServerUnreachable,
    UsageProblem,
)
from kadeploy_cli.output import (
    DEFAULT_VERBOSE,
    NodeOutcome,
    Progress,
    exit_code,
    outcomes,
    summary_lines,
)
from kadeploy_cli.uploads import deleted_on_failure
from kadeploy_core.breakpoint import parse_breakpoint
from kadeploy_core.nodelist import NodeRef
from kadeploy_core.stepnames import UnknownStep

logger = logging.getLogger(__name__)

DEFAULT_KEY = "\x00default"
"""What ``-k`` without a file stands for: the user's usual public keys."""
INTERRUPTED = 130
SERVER_GONE = "the server stopped; outcome from the nodes' last events"
_NODE_INDEX = re.compile(r"^(?:body\.)?nodes\[(\d+)\]$")

EPILOG = f"""\b
Examples:
  kadeploy -f $OAR_NODEFILE -e debian-min -k
  kadeploy -m node-[1-4] -e debian-min -u alice --env-version 2 -k ~/.ssh/id_ed25519.pub
  kadeploy -m node-1 -a myenv.yaml --no-wait --json
  kadeploy -m node-1 -e debian-min -k --breakpoint BroadcastEnv:send_image_chain
  kadeploy -m node-1 -e debian-min -k --custom-steps steps.yaml
  kadeploy --follow 8c6f0e2a...

\b
-k without a file copies ~/.ssh/authorized_keys (as Kadeploy3), else every ~/.ssh/id_*.pub.
--breakpoint MACROSTEP[:MICROSTEP] stops each node before that microstep and leaves it
as it is (e.g. in the deploy env); its final state is breakpointed (a success).
--custom-steps FILE runs operations (exec, send, run) before, after or instead of
microsteps, Kadeploy3 style; the files they name are uploaded.
-b DEV deploys on disk DEV instead of the cluster's (the deploy partition is then DEV's,
e.g. /dev/sdb3 for -b /dev/sdb): it needs a right on that path (karights -p /dev/sdb3) or *.

{EXIT_CODES_HELP}
"""

SECTIONS = {
    "General options": ["server", "verbose_level", "json_output", "yes"],
    "Node selection": ["nodefile", "machines", "ok_file", "ko_file"],
    "Deploy options": [
        "env_name",
        "env_user",
        "env_version",
        "env_file",
        "key",
        "partition",
        "block_device",
        "min_nodes",
        "wait",
        "force",
        "breakpoint",
        "custom_steps",
        "follow",
    ],
}


@click.command(
    "kadeploy",
    cls=SectionedCommand,
    sections=SECTIONS,
    context_settings=CONTEXT,
    epilog=EPILOG,
    no_args_is_help=True,
)
@server_option
@click.option(
    "-V",
    "--verbose-level",
    type=click.IntRange(0, 5),
    metavar="0-5",
    default=DEFAULT_VERBOSE,
    show_default=True,
    help="0 errors only, 1 summary, 2 failures as they happen, 3 steps, 4 every node's "
    "state, 5 the nodes' logs.",
)
@click.option(
    "--json",
    "json_output",
    is_flag=True,
    help="Print one JSON document at the end, nothing else on stdout (progress on stderr).",
)
@click.option("-y", "--yes", is_flag=True, help="On Ctrl-C, cancel the deployment without asking.")
@machine_options
@click.option(
    "-o",
    "--output-ok-nodes",
    "ok_file",
    metavar="FILE",
    help="Write the nodes deployed to FILE.",
)
@click.option(
    "-n",
    "--output-ko-nodes",
    "ko_file",
    metavar="FILE",
    help="Write the nodes not deployed to FILE.",
)
@click.option("-e", "--env-name", metavar="ENVNAME", help="A registered environment (see kaenv).")
@click.option("-u", "--env-user", metavar="USER", help="The owner of the environment.")
@click.option(
    "--env-version", type=click.IntRange(min=1), metavar="N", help="Its version (default: latest)."
)
@click.option(
    "-a",
    "--env-file",
    metavar="ENVFILE",
    type=click.Path(path_type=Path, dir_okay=False),
    help="An environment description file (anonymous environment); its files are uploaded.",
)
@click.option(
    "-k",
    "--key",
    is_flag=False,
    flag_value=DEFAULT_KEY,
    metavar="[KEYFILE]",
    help="Public key(s) to put in root's authorized_keys on the nodes "
    "(no KEYFILE: ~/.ssh/authorized_keys, else ~/.ssh/id_*.pub).",
)
@click.option(
    "-p",
    "--partition-number",
    "partition",
    type=click.IntRange(1, 128),
    metavar="N",
    help="The partition to deploy (default: the cluster's deploy partition).",
)
@click.option(
    "-b",
    "--block-device",
    metavar="DEV",
    help="Deploy on the disk DEV (a path under /dev) instead of the cluster's "
    "disk.block_device; needs a right on the deploy partition's path on DEV, or *.",
)
@click.option(
    "--min-nodes",
    "--min-deployed-nodes",
    "min_nodes",
    type=click.IntRange(min=1),
    metavar="N",
    help="Succeed as soon as N nodes are deployed (stragglers are stopped).",
)
@click.option(
    "--wait/--no-wait",
    default=True,
    show_default=True,
    help="Follow the deployment to its end; --no-wait prints its id and returns.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Deploy even nodes that another running deployment holds.",
)
@click.option(
    "--breakpoint",
    metavar="MACROSTEP[:MICROSTEP]",
    help="Stop each node before that microstep (e.g. BroadcastEnv:send_image_chain), "
    "leaving it as it is.",
)
@click.option(
    "--custom-steps",
    metavar="FILE",
    type=click.Path(path_type=Path, dir_okay=False),
    help="A YAML file of operations to run before, after or instead of microsteps.",
)
@click.option(
    "--follow",
    metavar="DEPLOYMENT_ID",
    help="Follow a deployment already started (e.g. with --no-wait) to its end.",
)
def main(**options: Any) -> None:
    """Deploy an environment onto nodes.

    Give the nodes (-f NODEFILE or -m NODE...) and one environment: a registered one
    (-e ENVNAME, from kaenv) or a description file (-a ENVFILE). The server is found with
    --server, $KADEPLOY_SERVER, or the socket of the default configuration; the token in
    $KADEPLOY_TOKEN or ~/.kadeploy/token.
    """
    if options["follow"]:
        _refuse_with_follow(options)
        with make_client(options["server"]) as client:
            sys.exit(_follow_existing(client, options))
    refs = node_refs(options["nodefile"], options["machines"])
    _check_environment_options(options)
    key_file = key_file_of(options["key"])
    _check_breakpoint(options["breakpoint"])
    _check_block_device(options["block_device"])
    steps = custom_steps.load(options["custom_steps"]) if options["custom_steps"] else None
    with make_client(options["server"]) as client:
        deployment = _create(client, options, refs, key_file, steps)
        if not options["wait"]:
            _announce(deployment, options["json_output"])
            return
        sys.exit(_follow(client, deployment, [r.name for r in refs], options))


# ------------------------------------------------------------------ checks


def _refuse_with_follow(options: dict[str, Any]) -> None:
    given = [
        flag
        for name, flag in (
            ("nodefile", "-f"),
            ("machines", "-m"),
            ("env_name", "-e"),
            ("env_file", "-a"),
            ("key", "-k"),
            ("block_device", "-b"),
            ("breakpoint", "--breakpoint"),
            ("custom_steps", "--custom-steps"),
        )
        if options[name]
    ]
    if given:
        raise UsageProblem(f"--follow attaches to a deployment; it takes no {', '.join(given)}")


def _check_environment_options(options: dict[str, Any]) -> None:
    if bool(options["env_name"]) == bool(options["env_file"]):
        raise UsageProblem(
            "give one environment: -e ENVNAME (registered, see kaenv list) or -a ENVFILE"
        )
    if options["env_file"] and (options["env_user"] or options["env_version"]):
        raise UsageProblem("-u and --env-version name a registered environment; not with -a")


def _check_breakpoint(text: str | None) -> None:
    """The breakpoint names a macrostep (and microstep) that exists, else exit 2."""
    if text is None:
        return
    try:
        parse_breakpoint(text)
    except (UnknownStep, ValueError) as exc:
        raise UsageProblem(f"--breakpoint {text}: {exc}") from None


def _check_block_device(device: str | None) -> None:
    """Refuse at once (before any upload) a DEV that is not under /dev; the server checks the
    rest of its form."""
    if device is not None and not device.startswith("/dev/"):
        raise UsageProblem(
            f"-b {device}: expected an absolute device path under /dev, such as /dev/sdb"
        )


def key_file_of(key: str | None) -> Path | None:
    """The file of ``-k``: the one given, or the user's usual keys."""
    if key is None:
        return None
    if key != DEFAULT_KEY:
        path = Path(key).expanduser()
        if not path.is_file():
            raise UsageProblem(f"-k {key}: no such file")
        return path
    ssh = Path.home() / ".ssh"
    authorized = ssh / "authorized_keys"
    if authorized.is_file():
        return authorized
    public = sorted(ssh.glob("id_*.pub"))
    if not public:
        raise UsageProblem(
            f"-k: no public key found ({authorized} and {ssh}/id_*.pub are missing); "
            "give one with -k KEYFILE"
        )
    return _joined_keys(public)


def _joined_keys(files: list[Path]) -> Path:
    """Several public key files as one temporary authorized_keys file."""
    import tempfile  # noqa: PLC0415 - only needed in this rare case

    handle = tempfile.NamedTemporaryFile(  # noqa: SIM115 - removed at exit below
        "w", prefix="kadeploy-keys-", suffix=".pub", delete=False, encoding="utf-8"
    )
    with handle:
        for path in files:
            try:
                handle.write(path.read_text(encoding="utf-8").rstrip("\n") + "\n")
            except (OSError, UnicodeDecodeError) as exc:
                raise UsageProblem(f"{path}: cannot read the key: {exc}") from None
    joined = Path(handle.name)
    click.get_current_context().call_on_close(lambda: joined.unlink(missing_ok=True))
    return joined


# ------------------------------------------------------------------ the request


def _create(
    client: Client,
    options: dict[str, Any],
    refs: list[NodeRef],
    key_file: Path | None,
    steps: custom_steps.LocalSteps | None = None,
) -> dict[str, Any]:
    with deleted_on_failure(client) as made:  # a refused request leaves no upload behind
        body = request_body(client, options, refs, key_file, steps, made=made)
        try:
            deployment: dict[str, Any] = client.post("/v1/deployments", body)
        except ApiFailure as exc:
            raise located_failure(exc, refs) from None
    return deployment


def request_body(
    client: Client,
    options: dict[str, Any],
    refs: list[NodeRef],
    key_file: Path | None,
    steps: custom_steps.LocalSteps | None,
    *,
    made: list[str],
) -> dict[str, Any]:
    """The request, its files uploaded (their ids appended to ``made``)."""
    body: dict[str, Any] = {"nodes": [r.name for r in refs], "force": options["force"]}
    if steps is not None:  # before the image: a custom file refused costs no image upload
        body["custom_steps"] = custom_steps.upload(steps, client)
        made += custom_steps.upload_ids(body["custom_steps"])
    if options["env_name"]:
        body["environment"] = {
            "name": options["env_name"],
            "version": options["env_version"],
            "user": options["env_user"],
        }
    else:
        prepared = envfiles.prepare(options["env_file"], client)
        made += prepared.files.values()
        body["anonymous_environment"] = prepared.body()
    if key_file is not None:
        body["authorized_keys_upload"] = client.upload(key_file, "authorized_keys")["id"]
        made.append(str(body["authorized_keys_upload"]))
    if options["min_nodes"] is not None:
        body["min_nodes"] = options["min_nodes"]
    if options["partition"] is not None:
        body["partition"] = options["partition"]
    if options["block_device"] is not None:
        body["block_device"] = options["block_device"]
    if options["breakpoint"]:
        body["breakpoint"] = options["breakpoint"]
    return body


def located_failure(exc: ApiFailure, refs: list[NodeRef]) -> CliError:
    """The server's error, each node problem pointing at the nodefile line or -m it came from."""
    located = []
    for detail in exc.raw_details:
        match = _NODE_INDEX.match(str(detail.get("path") or ""))
        where = where_of(refs, int(match.group(1))) if match else ""
        message = str(detail.get("message", ""))
        located.append(f"{where}: {message}" if where else message)
    if not any(_NODE_INDEX.match(str(d.get("path") or "")) for d in exc.raw_details):
        return exc
    kind = type(exc)
    failure = kind(exc.status, exc.code, located[0], [])
    failure.details = located[1:]
    return failure


def _announce(deployment: dict[str, Any], json_output: bool) -> None:
    if json_output:
        print_json({"deployment": deployment})
        return
    ident = deployment["id"]
    click.echo(f"Deployment {ident} started on {deployment['node_count']} nodes")
    click.echo(f"Follow it with: kadeploy --follow {ident}")


# ------------------------------------------------------------------ following


def _follow_existing(client: Client, options: dict[str, Any]) -> int:
    ident = options["follow"]
    deployment: dict[str, Any] = client.get(f"/v1/deployments/{ident}")
    nodes = [n["node"] for n in client.get(f"/v1/deployments/{ident}/nodes")]
    return _follow(client, deployment, nodes, options)


def _follow(
    client: Client, deployment: dict[str, Any], nodes: list[str], options: dict[str, Any]
) -> int:
    """Show the progress until the end; the summary, the node files, the exit status."""
    json_output = options["json_output"]
    verbose = options["verbose_level"]
    stream = sys.stderr if json_output else sys.stdout
    progress = Progress(deployment, nodes, verbose, stream)
    progress.header(deployment)
    ident = deployment["id"]
    try:
        final = _watch(client, ident, progress, options["yes"], verbose)
    finally:
        progress.close()  # on a terminal, stops the live view (also on an error)
    if final is None:
        return INTERRUPTED
    results = _results(client, ident, final, progress)
    code = exit_code(final, results)
    write_node_file(options["ok_file"], [r.node for r in results if r.deployed])
    write_node_file(options["ko_file"], [r.node for r in results if not r.deployed])
    if json_output:
        print_json(
            {
                "deployment": final,
                "deployed": [r.node for r in results if r.deployed],
                "failed": [
                    {"node": r.node, "state": r.state, "step": r.step, "reason": r.reason}
                    for r in results
                    if not r.deployed
                ],
                "exit_code": code,
            }
        )
    elif verbose >= 1:
        for line in summary_lines(final, results):
            click.echo(line)
    return code


def _watch(
    client: Client, ident: str, progress: Progress, yes: bool, verbose: int
) -> dict[str, Any] | None:
    """Feed the events to ``progress`` until the end (its document); None when the user
    stopped following without cancelling."""
    last = 0
    cancelled = False
    logs = verbose >= 5
    while True:
        try:
            for event in client.events(ident, after=last, logs=logs):
                if event.kind == "state":
                    last = max(last, int(event.data.get("seq") or 0))
                    progress.state(event.data)
                elif event.kind == "log":
                    progress.log(event.data)
                elif event.kind == "progress":
                    progress.transfer(event.data)
                elif event.kind == "end":
                    return event.data
            return None
        except ServerUnreachable:
            if not progress.all_final():
                raise
            # The server stopped right after the deployment ended, before sending its end:
            # every node's outcome is known from the events.
            progress.close()
            click.echo(f"kadeploy: the server stopped after deployment {ident} ended", err=True)
            return _ended_from_events(ident, progress)
        except KeyboardInterrupt:
            progress.pause()  # the live view off the screen's bottom while we talk
            if cancelled:
                _detached(ident, "still cancelling")
                return None
            if not _want_cancel(ident, yes):
                if not sys.stdin.isatty():
                    _detached(ident, "still running")
                    return None
                progress.resume()
                continue
            cancelled = True
            _cancel(client, ident)
            progress.resume()


def _results(
    client: Client, ident: str, final: dict[str, Any], progress: Progress
) -> list[NodeOutcome]:
    """The nodes' final records; from the events when the server stopped meanwhile."""
    if final.get("reason") == SERVER_GONE:
        return progress.outcomes()
    try:
        return outcomes(client.get(f"/v1/deployments/{ident}/nodes"))
    except ServerUnreachable:
        if not progress.all_final():
            raise
        click.echo(f"kadeploy: the server stopped after deployment {ident} ended", err=True)
        return progress.outcomes()


def _ended_from_events(ident: str, progress: Progress) -> dict[str, Any]:
    results = progress.outcomes()
    if all(r.deployed for r in results):
        status = "succeeded"
    else:
        status = "aborted" if any(r.state == "aborted" for r in results) else "failed"
    return {"id": ident, "status": status, "reason": SERVER_GONE, "finished_at": None}


def _want_cancel(ident: str, yes: bool) -> bool:
    if yes:
        return True
    if not sys.stdin.isatty():
        return False
    click.echo("", err=True)
    try:
        return click.confirm(f"cancel the deployment {ident}?", default=False, err=True)
    except click.Abort:
        return False


def _cancel(client: Client, ident: str) -> None:
    click.echo(f"kadeploy: cancelling deployment {ident}...", err=True)
    try:
        client.post(f"/v1/deployments/{ident}/cancel", {"reason": "cancelled by user (Ctrl-C)"})
    except ApiFailure as exc:
        if exc.code != "not_running":
            raise


def _detached(ident: str, state: str) -> None:
    click.echo(
        f"kadeploy: interrupted; deployment {ident} is {state} on the server "
        f"(kadeploy --follow {ident} to watch it, --yes to cancel on Ctrl-C)",
        err=True,
    )
