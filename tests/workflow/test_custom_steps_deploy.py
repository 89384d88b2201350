"""``--breakpoint`` and ``--custom-steps`` in real deployments on the testbed nodes (real sshd,
PXE over the daemon's TFTP, IPMI reboots): nodes left in the deploy env at a breakpoint, the
chain going on without the nodes that stopped, custom operations leaving their files in the
deployed system, a failing operation naming itself in the node's log."""

from __future__ import annotations

import shlex
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from workflow_helpers import ConfEdit, deploy, os_release, ssh_output, variant, variants

from kadeploy_core.breakpoint import parse_breakpoint
from kadeploy_core.custom_ops import CustomSteps, parse_custom_steps
from kadeploy_core.yamldoc import parse_yaml
from kadeployd.daemon import Daemon
from kadeployd.pxe.profiles import profile_path

pytestmark = pytest.mark.root


def custom_steps(
    text: str, files: dict[str, Path] | None = None, names: dict[str, str] | None = None
) -> CustomSteps:
    document = parse_yaml(textwrap.dedent(text), "steps.yaml")
    steps = parse_custom_steps(document.data, "steps.yaml", document.line_of)
    return CustomSteps(steps.entries, files or {}, names or {})


def test_breakpoint_before_the_chain_leaves_every_node_in_the_deploy_env(
    bed: Any,
    nodes: tuple[str, ...],
    images: dict[str, Path],
    user_key: Path,
    start_daemon: Callable[..., Daemon],
) -> None:
    daemon = start_daemon()
    stop = parse_breakpoint("BroadcastEnv:send_image_chain")
    view = deploy(daemon, images["tar"], nodes, user_key, breakpoint=stop)
    assert (view.status, view.reason) == ("succeeded", "4/4 nodes stopped at the breakpoint")
    assert view.options["breakpoint"] == "BroadcastEnv:send_image_chain"
    reader = daemon.reader()
    for node in nodes:
        record = reader.node(view.id, node)
        assert record.state == "breakpointed"
        history = [(h.macrostep, h.state) for h in reader.history(view.id, node)]
        assert ("BroadcastEnv", "transferring") not in history
        # Still in this deployment's deploy env, its PXE profile unchanged.
        assert (
            f"kadeploy.deployment={view.id}"
            in ssh_output(bed, node, "cat", "/proc/cmdline").split()
        )
        profile = bed.layout.tftp_root / profile_path(bed.node(node).mac)
        assert f"kadeploy.deployment={view.id}" in profile.read_text()


def _prod_for(conf_nodes: Path, names: tuple[str, ...]) -> None:
    """Give ``names`` the prod SetDeploymentEnv variant in nodes.conf."""
    data = yaml.safe_load(conf_nodes.read_text())
    for name in names:
        data[name]["automata"] = {"macrosteps": {"SetDeploymentEnv": [variant("prod")]}}
    conf_nodes.write_text(yaml.safe_dump(data))


def test_the_chain_goes_on_without_the_nodes_stopped_at_a_breakpoint(
    bed: Any,
    nodes: tuple[str, ...],
    images: dict[str, Path],
    user_key: Path,
    start_daemon: Callable[..., Daemon],
    tmp_path: Path,
) -> None:
    stopped, going = nodes[:2], nodes[2:]

    def edit(deploy_conf: dict[str, Any], cluster: dict[str, Any]) -> None:
        _prod_for(tmp_path / "conf" / "nodes.conf", stopped)  # start_daemon's copy

    daemon = start_daemon(edit)
    # Only the nodes running the prod variant reach this breakpoint; the others deploy.
    stop = parse_breakpoint("SetDeploymentEnvProd:format_deploy_partition")
    view = deploy(daemon, images["tar"], nodes, user_key, breakpoint=stop)
    assert (view.status, view.reason) == (
        "succeeded",
        "2/4 nodes stopped at the breakpoint, 2 deployed",
    )
    reader = daemon.reader()
    assert [reader.node(view.id, n).state for n in nodes] == ["breakpointed"] * 2 + ["deployed"] * 2
    for node in going:
        assert "ID=debian-min" in os_release(bed, node, user_key)
        broadcast = {
            h.variant for h in reader.history(view.id, node) if h.macrostep == "BroadcastEnv"
        }
        assert broadcast == {"chain"}
    for node in stopped:
        assert not any('"event":"done"' in line.text for line in reader.log(view.id, node))


PROD_DIRECT: ConfEdit = variants(
    set_env=[variant("prod")], broadcast=[variant("direct", timeout=120)]
)


def test_custom_operations_leave_their_files_in_the_deployed_system(
    bed: Any,
    nodes: tuple[str, ...],
    images: dict[str, Path],
    user_key: Path,
    start_daemon: Callable[..., Daemon],
    tmp_path: Path,
) -> None:
    motd = tmp_path / "motd.txt"
    motd.write_text("hello from the user's side\n")
    tune = tmp_path / "tune.sh"
    tune.write_text(
        '#!/bin/sh\nprintf "%s|" "$@" > "$KADEPLOY_ENV_EXTRACTION_DIR/custom/run.txt"\n'
    )
    steps = custom_steps(
        """\
        BroadcastEnv:
          run_postinstalls:
            pre-ops:
              - action: exec
                name: make_dir
                command: >-
                  mkdir -p "$KADEPLOY_ENV_EXTRACTION_DIR/custom" &&
                  echo "$KADEPLOY_ENV $KADEPLOY_CLUSTER $KADEPLOY_DEPLOY_PART"
                  > "$KADEPLOY_ENV_EXTRACTION_DIR/custom/exec.txt"
              - action: send
                name: motd
                file: ./motd.txt
                destination: $KADEPLOY_ENV_EXTRACTION_DIR/custom
        BroadcastEnvDirect:
          run_postinstalls:
            post-ops:
              - action: run
                name: tune
                file: ./tune.sh
                params: "--fast 'two words'"
                timeout: 30
        """,
        {"./motd.txt": motd, "./tune.sh": tune},
        {"./motd.txt": "my motd.txt"},  # the user's own file name (kadeploy sends it)
    )
    daemon = start_daemon(PROD_DIRECT)
    chosen = nodes[:2]
    view = deploy(daemon, images["tar"], chosen, user_key, custom_steps=steps)
    assert view.status == "succeeded", daemon.reader().nodes(view.id)
    assert view.options["custom_steps"]["BroadcastEnvDirect"]["run_postinstalls"]["post-ops"] == [
        {"action": "run", "name": "tune", "file": "./tune.sh", "params": "--fast 'two words'",
         "timeout": 30}
    ]  # fmt: skip
    for node in chosen:
        files = ssh_output(
            bed,
            node,
            "cat",
            "/custom/exec.txt",
            shlex.quote("/custom/my motd.txt"),  # ssh joins the arguments for a shell
            "/custom/run.txt",
            key=user_key,
        )
        first, second, third = files.splitlines()
        assert first.startswith("debian-min testbed /dev/")
        assert second == "hello from the user's side"
        assert third == "--fast|two words|"
        log = [line.text for line in daemon.reader().log(view.id, node)]
        for name in ("'make_dir' (exec)", "'motd' (send)", "'tune' (run)"):
            assert any(name in line and "run_postinstalls" in line for line in log), name


def test_a_failing_operation_fails_the_node_and_names_itself_in_its_log(
    nodes: tuple[str, ...],
    images: dict[str, Path],
    user_key: Path,
    start_daemon: Callable[..., Daemon],
) -> None:
    steps = custom_steps(
        """\
        SetDeploymentEnv:
          format_deploy_partition:
            post-ops:
              - {action: exec, name: will_fail, command: "echo boom-on-stderr >&2; exit 3"}
        """
    )
    daemon = start_daemon(PROD_DIRECT)
    view = deploy(daemon, images["tar"], nodes[:1], user_key, custom_steps=steps)
    assert view.status == "failed"
    record = daemon.reader().node(view.id, nodes[0])
    assert (record.state, record.error_step) == ("deploy_failed", "SetDeploymentEnv")
    message = record.error_message or ""
    assert "custom post-ops 'will_fail' (exec) of format_deploy_partition" in message
    assert "exit status 3: boom-on-stderr" in message
    log = [line.text for line in daemon.reader().log(view.id, nodes[0])]
    assert any("'will_fail'" in line and "boom-on-stderr" in line for line in log)
