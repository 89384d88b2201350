"""``--breakpoint`` through the real actor tree (dummy macrosteps, real TFTP server and store):
nodes stop before the microstep, end ``breakpointed``, keep their PXE profile."""

from __future__ import annotations

from pathlib import Path

import pytest
from daemon_fixtures import (
    dummy_config,
    finished,
    make_tar_environment,
    request,
    stop_all_actors,
)

from kadeploy_core.breakpoint import parse_breakpoint
from kadeployd.daemon import Daemon

__all__ = ["stop_all_actors"]
pytestmark = pytest.mark.usefixtures("stop_all_actors")

# n-1 runs the untrusted variant: it switches its PXE profile to the deploy kernel first.
UNTRUSTED = """\
power: {reboot_soft: null, reboot_hard: ["true"], reboot_very_hard: ["true"]}
automata:
  macrosteps:
    SetDeploymentEnv: [{type: untrusted, retries: 0, timeout: 60}]
"""


def test_every_node_stops_before_the_macrostep_and_the_deployment_succeeds(
    tmp_path: Path,
) -> None:
    daemon = Daemon.start(dummy_config(tmp_path / "conf"))
    try:
        stop = parse_breakpoint("BroadcastEnv")
        ident = daemon.deploy(request(make_tar_environment(tmp_path), breakpoint=stop))
        view = finished(daemon, ident)
        assert (view.status, view.reason) == ("succeeded", "4/4 nodes stopped at the breakpoint")
        assert view.options["breakpoint"] == "BroadcastEnv"
        reader = daemon.reader()
        for node in reader.nodes(ident):
            assert (node.state, node.error_message) == ("breakpointed", None)
            states = [h.state for h in reader.history(ident, node.node)]
            assert "transferring" not in states
            assert states[-1] == "breakpointed"
        lines = [line.text for line in reader.log(ident, "n-1")]
        assert "stopped at breakpoint BroadcastEnv, before nothing; node left as it is" in lines
    finally:
        daemon.stop()


def test_a_node_stops_with_its_deploy_env_pxe_profile_and_the_others_go_on(
    tmp_path: Path,
) -> None:
    daemon = Daemon.start(dummy_config(tmp_path / "conf", {1: UNTRUSTED}))
    try:
        stop = parse_breakpoint("SetDeploymentEnv:reboot_escalating")
        ident = daemon.deploy(request(make_tar_environment(tmp_path), breakpoint=stop))
        view = finished(daemon, ident)
        assert (view.status, view.reason) == (
            "succeeded",
            "1/4 nodes stopped at the breakpoint, 3 deployed",
        )
        states = {n.node: n.state for n in daemon.reader().nodes(ident)}
        assert states == {"n-1": "breakpointed", "n-2": "deployed", "n-3": "deployed",
                          "n-4": "deployed"}  # fmt: skip
        # Stopped before its reboot: the profile still boots the deploy env of this deployment.
        profile = tmp_path / "conf" / "state" / "tftp" / "pxelinux.cfg" / "01-02-00-00-00-09-01"
        assert f"kadeploy.deployment={ident}" in profile.read_text()
        history = [h.state for h in daemon.reader().history(ident, "n-1")]
        assert history[-2:] == ["rebooting", "breakpointed"]
    finally:
        daemon.stop()
