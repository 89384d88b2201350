"""Every console script of the product is installed and answers --help."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TOOLS = ["kadeploy", "kareboot", "kapower", "kanodes", "kastat", "kaenv", "karights"]
K3_TOOLS = ["kanodes3", "kastat3", "kaenv3", "karights3"]
"""Kadeploy3's commands (kadeploy_cli/k3); kadeploy3d is kadeploy-server under its name."""


def installed(tool: str) -> str | None:
    """The console script installed beside this interpreter, else the one on PATH."""
    beside = Path(sys.executable).parent / tool
    return str(beside) if beside.exists() else shutil.which(tool)


@pytest.mark.parametrize(
    "tool", [*TOOLS, *K3_TOOLS, "kadeploy-server", "kadeploy3d", "kadeploy-testbed"]
)
def test_console_script_is_installed_and_has_help(tool: str) -> None:
    path = installed(tool)
    assert path is not None, f"{tool} is not on PATH: is the project installed (make test)?"
    result = subprocess.run(
        [path, "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout
