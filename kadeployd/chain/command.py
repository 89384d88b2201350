"""How to run the relay on a node: its source text and its argument list.

A node starts its relay with ONE remote command, :func:`relay_launch`: ``python3 -c`` with a
short bootstrap that reads the relay's source from stdin and runs it, followed by the secret
line (:func:`relay_stdin`). No temporary file on the node, and one SSH exec instead of two: with
many nodes starting their relays at once, each exec is a round trip and a process start-up
that the broadcast waits for. Keeping the argument names here, next to the relay, means the
daemon and the relay cannot drift apart.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

RELAY_PATH = Path(__file__).with_name("relay.py")

_BOOTSTRAP = 'import sys; exec(compile(sys.stdin.buffer.read({size}), "kadeploy-relay", "exec"))'
"""Runs the first ``size`` bytes of stdin as ``__main__``; the relay then reads its secret
from the rest of stdin."""


def relay_source() -> str:
    """The relay program, as text to copy to a node."""
    return RELAY_PATH.read_text(encoding="utf-8")


def relay_launch(arguments: Sequence[str], python: Sequence[str] = ("python3",)) -> list[str]:
    """The node's command line: ``python3 -c BOOTSTRAP`` then the relay's ``arguments``
    (from :func:`relay_arguments`); feed it :func:`relay_stdin` on stdin."""
    size = len(relay_source().encode("utf-8"))
    return [*python, "-c", _BOOTSTRAP.format(size=size), *arguments]


def relay_stdin(secret: bytes) -> bytes:
    """What :func:`relay_launch`'s command reads on stdin: the source, then the secret line."""
    return relay_source().encode("utf-8") + secret + b"\n"


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
    flush: str = "",
    flush_mib: int = 64,
    digest: bool = True,
) -> list[str]:
    """The relay's command-line arguments (after ``python3 relay.py``).

    ``writer`` is an argument list (never a shell string built from data): to run a
    pipeline, pass ``["sh", "-c", script]`` where every value in ``script`` went through
    ``shlex.quote``. Without ``secret_env`` the relay reads the secret from stdin's first line.
    ``flush``: the directory or block device whose writeback the relay starts every
    ``flush_mib`` MiB, so the disk writes during the stream. ``digest`` False: the relay
    computes no SHA-256 (the writer checks the stream itself).
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
    if flush:
        args += ["--flush", flush, "--flush-mib", str(flush_mib)]
    if not digest:
        args += ["--digest", "none"]
    return args
