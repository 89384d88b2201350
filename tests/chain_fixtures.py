"""Real chain relays on loopback for the chain tests.

``RelayProcess`` runs the relay the way a node does (``relay_launch``: its source and the secret
on stdin) with the system ``python3 -I -S`` (no site-packages: the relay must need nothing but
the standard library), and collects its JSON reports from a reader thread. Every relay runs in its own
session so teardown can kill it together with its writer.

A test module uses the fixture by importing it:
``from chain_fixtures import RelayProcess, relays`` with ``relays`` in the module's ``__all__``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
import waiting

from kadeployd.chain import (
    Hop,
    RelayEvent,
    parse_report,
    relay_arguments,
    relay_launch,
    relay_stdin,
)

WAIT = 60.0
"""Upper bound for any wait in these tests; never reached when things work."""

PYTHON = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT, what: str = "") -> None:
    """Poll ``predicate`` until it is true (see :mod:`waiting`)."""
    waiting.wait_until(predicate, timeout, what)


def vm_rss_kib(pid: int) -> int:
    """Resident memory of ``pid`` in KiB, from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


class RelayProcess:
    """One relay process and the events it printed."""

    def __init__(
        self,
        workdir: Path,
        writer: Sequence[str],
        secret: bytes,
        **options: object,
    ) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        args = relay_arguments(writer, listen="127.0.0.1:0", **options)  # type: ignore[arg-type]
        self.stderr_path = workdir / "stderr.txt"
        self._stderr = self.stderr_path.open("wb")
        self.proc = subprocess.Popen(
            relay_launch(args, python=(PYTHON, "-I", "-S")),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            cwd=workdir,
            start_new_session=True,
        )
        assert self.proc.stdin is not None
        self.proc.stdin.write(relay_stdin(secret))
        self.proc.stdin.close()
        self.events: list[RelayEvent] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.port = 0

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            event = parse_report(line)
            with self._lock:
                self.events.append(event)

    def of_kind(self, kind: str) -> list[RelayEvent]:
        with self._lock:
            return [event for event in self.events if event.kind == kind]

    def wait_listening(self) -> Hop:
        wait_until(
            lambda: bool(self.of_kind("listening")) or self.proc.poll() is not None,
            what="relay listening",
        )
        listening = self.of_kind("listening")
        assert listening, f"relay exited: {self.stderr_path.read_text()}"
        self.port = listening[0].port
        return Hop("127.0.0.1", self.port)

    def progress(self) -> int:
        events = self.of_kind("progress")
        return events[-1].bytes if events else 0

    def wait_exit(self, timeout: float = WAIT) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(timeout)
        return code

    def signal(self, signum: int) -> None:
        os.kill(self.proc.pid, signum)

    def stop(self) -> None:
        """Kill the relay and its writer (its whole session) and release everything."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGCONT)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(WAIT)
        self._reader.join(WAIT)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        self._stderr.close()


class RelayFactory:
    """Starts relays for a test; teardown stops them all."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[RelayProcess] = []

    def start(
        self, name: str, writer: Sequence[str], secret: bytes, **options: object
    ) -> RelayProcess:
        relay = RelayProcess(self.tmp_path / name, writer, secret, **options)
        self.started.append(relay)
        return relay

    def stop_all(self) -> None:
        for relay in self.started:
            relay.stop()


@pytest.fixture
def relays(tmp_path: Path) -> Iterator[RelayFactory]:
    factory = RelayFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.stop_all()


def raw_writer(target: Path) -> list[str]:
    """A writer that stores the stream as it is: ``cat > target`` without a shell string."""
    return ["sh", "-c", 'exec cat > "$1"', "sh", str(target)]


def tar_writer(directory: Path) -> list[str]:
    """A writer that unpacks a zstd tar into ``directory``."""
    return ["sh", "-c", 'zstd -dc | tar -x -C "$1"', "sh", str(directory)]


def slow_writer(target: Path, block: int = 65536, pause: float = 0.002) -> list[str]:
    """A writer like a slow disk: it takes ``block`` bytes, then waits ``pause`` seconds."""
    script = (
        "import sys, time\n"
        "src = sys.stdin.buffer\n"
        "with open(sys.argv[1], 'wb') as out:\n"
        f"    while data := src.read1({block}):\n"
        "        out.write(data)\n"
        f"        time.sleep({pause})\n"
    )
    return [PYTHON, "-I", "-S", "-c", script, str(target)]
