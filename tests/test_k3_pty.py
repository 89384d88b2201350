"""Issue #10's "Done when": ``kadeploy3 -k -d`` through a pseudo-terminal on 4 testbed nodes
named as Grid'5000 names them (``griffon-[1-4].nancy.grid5000.fr``), one never booting.

The command runs with stdin, stdout and stderr on a pty, as remote tools run it. It exits 0
(the workflow ran to its end), its last lines are Kadeploy3's lists, plain (no escape byte
anywhere), and ``-d`` printed the nodes' command output as ``[dbg]`` lines (no fd 3 open:
on stdout, as Kadeploy3).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest
from g5k_fixtures import G5K_NODES, g5k_api
from test_cli_live import Terminal

pytestmark = pytest.mark.root

KADEPLOY3 = str(Path(sys.executable).parent / "kadeploy3")
DEPLOY_TIMEOUT = 300
SILENT_BOOT_TIMEOUT = 40
"""Seconds the silent node is waited for (once): the testbed's nodes boot in about one."""
OK = re.compile(r"^The \w+ is successful on nodes\s*$")
KO = re.compile(r"^The \w+ failed on nodes\s*$")
PROGRESS = re.compile(
    r"\[dbg\] \[[\w.-]+\] .*|Deployment #\w+ (started|done)|Launching a deployment on \S+"
    r"|Performing a \w+ step( \(attempt \d+\))?|End of deployment( for \S+)? after \d+s"
    r"|!!! The nodes \S+ failed on step \w+|Deployment failed for \S+ after \d+s|  \S+: .*|"
)
"""Every line before the lists: Kadeploy3's progress words, -d's [dbg] lines, blank lines."""


def short_first_boot(deploy: dict[str, Any], cluster: dict[str, Any]) -> None:
    """One try of the deploy env's boot, 40 s: the silent node fails in under a minute."""
    deploy["automata"]["macrosteps"]["SetDeploymentEnv"] = [
        {"type": "untrusted", "retries": 0, "timeout": SILENT_BOOT_TIMEOUT}
    ]


def test_kadeploy3_on_a_pty_with_a_silent_node_prints_kadeploy3s_plain_lists(
    g5k_testbed: Any, g5k_image: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "authorized_keys").write_text("ssh-ed25519 AAAAC3Nza-k3 alice@k3\n")
    silent = G5K_NODES[3]
    with g5k_api(g5k_testbed, tmp_path / "api", g5k_image, short_first_boot) as api:
        api.testbed.fault(silent, "noboot")
        env = {**api.env("alice", home=home), "TERM": "xterm-256color"}
        argv = [KADEPLOY3, "-f", str(api.nodefile), "-e", "debian-min", "-k", "-d"]
        terminal = Terminal(argv, env, str(home))
        try:
            code = terminal.wait(DEPLOY_TIMEOUT)
        finally:
            terminal.kill()
    raw = terminal.raw()
    assert "\x1b" not in raw, raw
    assert "Traceback" not in raw, raw
    assert code == 0, raw
    lines = raw.replace("\r\n", "\n").rstrip("\n").split("\n")
    assert any(line.startswith("[dbg] ") for line in lines), raw
    for line in lines[:-6]:
        assert PROGRESS.fullmatch(line), line
    tail = lines[-6:]
    assert OK.match(tail[0]), raw
    assert sorted(tail[1:4]) == sorted(G5K_NODES[:3]), raw
    assert KO.match(tail[4]), raw
    assert re.fullmatch(rf"{re.escape(silent)} \(.*\)", tail[5]), raw
