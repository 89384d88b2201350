"""The deploy env's host key, pinned: on the testbed, whose deploy envs all boot with one key
(kadeploy_testbed/nodefiles.py) that the configuration it writes pins.

Every other test of this directory deploys with that pinning on. Here the daemon expects
another key, as if something else answered at the node's address in its deploy env: the
daemon never logs in there, so no command runs (no partitioning, no image, no user key), and
the node fails its SetDeploymentEnv with a message naming it, the key it offered and the one
expected.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from workflow_helpers import deploy, variant, variants

from kadeployd.config import load_config
from kadeployd.config.host_keys import fingerprint
from kadeployd.daemon import Daemon

pytestmark = pytest.mark.root


def public(path: Path) -> str:
    return " ".join(path.read_text().split()[:2])


def test_the_generated_configuration_pins_the_testbed_deploy_env_key(bed: Any) -> None:
    pinned = public(bed.layout.deploy_host_pubkey)
    config = load_config(bed.layout.conf_dir)
    assert {n.settings.boot.deploy_host_keys() for n in config.nodes.values()} == {(pinned,)}


def test_a_deploy_env_offering_another_key_gets_nothing(
    bed: Any,
    nodes: tuple[str, ...],
    images: dict[str, Path],
    user_key: Path,
    start_daemon: Callable[..., Daemon],
    tmp_path: Path,
) -> None:
    other = tmp_path / "expected_host_key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)],
        check=True,
        capture_output=True,
    )
    expected = public(other.with_name(other.name + ".pub"))
    offered = public(bed.layout.deploy_host_pubkey)
    one_short_attempt = variants(set_env=[variant("untrusted", retries=0, timeout=25)])

    def edit(deploy_conf: dict[str, Any], cluster: dict[str, Any]) -> None:
        one_short_attempt(deploy_conf, cluster)
        del deploy_conf["boot"]["deploy_host_key_file"]
        deploy_conf["boot"]["deploy_host_key"] = expected

    daemon = start_daemon(edit)
    node = nodes[0]
    view = deploy(daemon, images["tar"], (node,), user_key)
    assert view.status == "failed"
    failed = daemon.reader().node(view.id, node)
    message = failed.error_message or ""
    assert (failed.state, failed.error_step) == ("deploy_failed", "SetDeploymentEnv")
    assert message.startswith("wait_deploy_env: timed out after 25 s"), message
    assert f"{node} offered the host key {fingerprint(offered)}" in message, message
    assert f"not the deploy env's pinned {fingerprint(expected)}" in message, message
    log = daemon.reader().log(view.id, node)
    assert not [line.text for line in log if line.stream == "cmd"]  # no command was sent
    assert "partitioning" not in [h.state for h in daemon.reader().history(view.id, node)]
