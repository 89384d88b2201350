"""Every console script of the product is installed and answers."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PENDING = ["kadeploy", "kareboot", "kapower", "kanodes", "kastat", "kaenv", "karights"]


def installed(tool: str) -> str | None:
    """The console script installed beside this interpreter, else the one on PATH."""
    beside = Path(sys.executable).parent / tool
    return str(beside) if beside.exists() else shutil.which(tool)


@pytest.mark.parametrize("tool", [*PENDING, "kadeploy-server", "kadeploy-testbed"])
def test_console_script_is_installed_and_has_help(tool: str) -> None:
    path = installed(tool)
    assert path is not None, f"{tool} is not on PATH: is the project installed (make test)?"
    result = subprocess.run(
        [path, "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout


@pytest.mark.parametrize("tool", PENDING)
def test_pending_tool_says_it_is_not_implemented_yet(tool: str) -> None:
    path = installed(tool)
    assert path is not None
    result = subprocess.run(
        [path, "-f", "nodes"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 1
    assert f"{tool} is not implemented yet" in result.stderr
    assert "Traceback" not in result.stderr
