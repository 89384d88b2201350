"""Reboots escalate on evidence, within one attempt (no retry spent, no timeout waited out).

On the testbed: a soft reboot command that fails is followed at once by a hard reboot; one
that succeeds but leaves the node running the same boot is followed by a hard reboot once
``power.soft_reboot_grace`` is over. The testbed pins its deploy env's host key, so the daemon
does not log into the prod env that goes on answering while it waits for the deploy env: the
evidence is the prod env's host key, the same as before the reboot. SetDeploymentEnv has no retry here, so the
node is deployed only if the escalation happened inside the attempt.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from workflow_helpers import deploy, os_release, variant, variants

from kadeployd.daemon import Daemon

pytestmark = pytest.mark.root


@pytest.mark.parametrize(
    ("reboot_soft", "evidence"),
    [
        (["false"], "soft reboot failed"),  # e.g. Permission denied in a user's environment
        # The command lied: nothing went down.
        (["true"], "the node still answers with the same host key"),
    ],
    ids=["soft-command-fails", "soft-command-does-nothing"],
)
def test_a_soft_reboot_without_effect_escalates_to_hard_within_the_attempt(
    bed: Any,
    nodes: tuple[str, ...],
    images: dict[str, Path],
    user_key: Path,
    start_daemon: Callable[..., Daemon],
    reboot_soft: list[str],
    evidence: str,
) -> None:
    one_attempt = variants(set_env=[variant("untrusted", retries=0, timeout=120)])

    def edit(deploy_conf: dict[str, Any], cluster: dict[str, Any]) -> None:
        one_attempt(deploy_conf, cluster)
        deploy_conf["power"]["reboot_soft"] = reboot_soft
        deploy_conf["power"]["soft_reboot_grace"] = 2

    daemon = start_daemon(edit)
    node = nodes[0]
    view = deploy(daemon, images["tar"], (node,), user_key)
    texts = [line.text for line in daemon.reader().log(view.id, node)]
    assert view.status == "succeeded", texts
    assert "ID=debian-min" in os_release(bed, node, user_key)
    escalations = [t for t in texts if "escalating to a hard reboot" in t]
    assert escalations, texts
    assert evidence in escalations[0]
    history = daemon.reader().history(view.id, node)
    assert {h.attempt for h in history if h.macrostep == "SetDeploymentEnv"} == {1}
