"""How to run the relay on a node: its source text and its argument list.

The ChainTransfer actor sends :func:`relay_source` over SSH (e.g. to a temporary file) and
runs ``python3 FILE`` followed by :func:`relay_arguments`, then writes the secret as the first
line of the relay's stdin. Keeping the argument names here, next to the relay, means the
daemon and the relay cannot drift apart.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

RELAY_PATH = Path(__file__).with_name("relay.py")


def relay_source() -> str:
    """The relay program, as text to copy to a node."""
    return RELAY_PATH.read_text(encoding="utf-8")


def relay_arguments(
    writer: Sequence[str],
    *,
    listen: str = "0.0.0.0:0",
    stall_timeout: float = 10.0,
    idle_timeout: float = 300.0,
    ring_mib: int = 64,
    chunk_kib: int = 1024,
    progress_interval: float = 1.0,
    secret_env: str = "",
) -> list[str]:
    """The relay's command-line arguments (after ``python3 relay.py``).

    ``writer`` is an argument list (never a shell string built from data): to run a
    pipeline, pass ``["sh", "-c", script]`` where every value in ``script`` went through
    ``shlex.quote``. Without ``secret_env`` the relay reads the secret from stdin's first line.
    """
    if not writer or not all(isinstance(item, str) for item in writer):
        raise ValueError("the writer must be a non-empty list of strings")
    args = [
        "--writer",
        json.dumps(list(writer)),
        "--listen",
        listen,
        "--stall-timeout",
        f"{stall_timeout:g}",
        "--idle-timeout",
        f"{idle_timeout:g}",
        "--ring-mib",
        str(ring_mib),
        "--chunk-kib",
        str(chunk_kib),
        "--progress-interval",
        f"{progress_interval:g}",
    ]
    if secret_env:
        args += ["--secret-env", secret_env]
    return args
