"""kadeploy3's deployment options on testbed nodes named as Grid'5000 names them (D's ``g5k``
fixture: a daemon and its API on griffon-[1-4].nancy.grid5000.fr): what the nodes went
through, as kadeploy3's own progress lines tell it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from g5k_fixtures import G5K_NODES

pytestmark = pytest.mark.root

KADEPLOY3 = str(Path(sys.executable).parent / "kadeploy3")


def kadeploy3(g5k: Any, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [KADEPLOY3, *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=g5k.env("alice", home=home),
        cwd=home,
    )


def test_no_kexec_boots_the_new_env_the_classical_way(g5k: Any, tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "authorized_keys").write_text("ssh-ed25519 AAAAC3Nza-k3 alice@k3\n")
    node = G5K_NODES[0]
    result = kadeploy3(
        g5k, home, "-m", node, "-e", "debian-min", "-k", "--no-kexec",
        "--reboot-classical-timeout", "90 + n", "-o", "ok",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Performing a BootNewEnvClassical step" in result.stdout, result.stdout
    assert "BootNewEnvKexec" not in result.stdout, result.stdout
    assert result.stdout.endswith(f"The deployment is successful on nodes\n{node}\n")
    assert (home / "ok").read_text() == f"{node}\n"
