"""A real OpenSSH sshd for tests, with its own config, keys and address.

``SshdServer`` writes a throwaway sshd_config (own host key, own authorized_keys, own pid
file, ``UsePAM no``, ``StrictModes no``) into a temporary directory, starts ``sshd -D -e`` on
``127.0.1.N:PORT`` with a free port, and waits for the SSH banner with a deadline.
``restart()`` kills the server and every session it forked, then starts it again on the same
address and port with a newly generated host key, as a rebooted deploy env would.

A test module uses the fixtures by importing them (pytest puts tests/ on sys.path):
``from sshd_fixtures import ClientKeys, SshdServer, client_keys, sshd``, with the two fixture
names listed in the module's ``__all__`` so linters know the import is used.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import waiting

SSHD = "/usr/sbin/sshd"
START_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class ClientKeys:
    """Key pairs a test client may offer: ``good`` is authorized, ``wrong`` is not."""

    good: Path
    wrong: Path


def keygen(path: Path) -> Path:
    """A new passphrase-less ed25519 key pair at ``path`` (and ``path.pub``)."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return path


def free_port(address: str) -> int:
    """A TCP port nobody listens on at ``address`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        port: int = sock.getsockname()[1]
        return port


def loopback_address() -> str:
    """A loopback address of 127.0.1.0/24 that differs between concurrent pytest processes."""
    return f"127.0.1.{10 + os.getpid() % 240}"


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (sshd's per-connection processes call setsid)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may contain spaces: split after it.
        fields = stat[stat.rfind(")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for its reaper counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


class SshdServer:
    """One sshd process serving ``root`` with the keys in ``authorized_keys``."""

    def __init__(self, workdir: Path, authorized: list[Path], address: str | None = None) -> None:
        self.workdir = workdir
        self.address = address or loopback_address()
        self.port = free_port(self.address)
        self.host_key = workdir / "host_ed25519"
        self.authorized_keys = workdir / "authorized_keys"
        self.config = workdir / "sshd_config"
        self.log = workdir / "sshd.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.authorized_keys.write_text(
            "".join(key.with_name(key.name + ".pub").read_text() for key in authorized)
        )
        self.config.write_text(
            f"ListenAddress {self.address}:{self.port}\n"
            f"HostKey {self.host_key}\n"
            f"AuthorizedKeysFile {self.authorized_keys}\n"
            f"PidFile {workdir / 'sshd.pid'}\n"
            "UsePAM no\n"
            "StrictModes no\n"
            "PermitRootLogin prohibit-password\n"
            "PubkeyAuthentication yes\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "MaxStartups 50\n"
            "LogLevel VERBOSE\n"
        )

    def start(self) -> None:
        """Start sshd with a new host key and return once it sends its banner."""
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self.host_key.unlink(missing_ok=True)
        self.host_key.with_name(self.host_key.name + ".pub").unlink(missing_ok=True)
        keygen(self.host_key)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        self._wait_for_banner()

    def _wait_for_banner(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT
        last_error = ""
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"sshd exited with {self.process.returncode}: {self.log.read_text()[-2000:]}"
                )
            try:
                with socket.create_connection((self.address, self.port), timeout=1) as sock:
                    sock.settimeout(2)
                    if sock.recv(64).startswith(b"SSH-"):
                        return
            except OSError as exc:
                last_error = str(exc)
            time.sleep(0.05)  # polling the port with a deadline, as the brief asks
        self.stop()
        raise RuntimeError(f"sshd did not answer on {self.address}:{self.port}: {last_error}")

    def stop(self) -> None:
        """Kill sshd and every session process it forked; wait for them to go."""
        if self.process is None:
            return
        process, self.process = self.process, None
        pids = [process.pid, *descendants(process.pid)]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        process.wait(timeout=10)
        waiting.wait_until(
            lambda: not any(alive(pid) for pid in pids[1:]), 10, f"sshd sessions {pids[1:]} to end"
        )

    def restart(self) -> None:
        """Kill everything, then start again on the same port with a NEW host key."""
        self.stop()
        self.start()

    def session_pids(self) -> list[int]:
        """Processes forked by sshd (one or more per open connection)."""
        if self.process is None:
            return []
        return [pid for pid in descendants(self.process.pid) if alive(pid)]


@pytest.fixture(scope="session")
def client_keys(tmp_path_factory: pytest.TempPathFactory) -> ClientKeys:
    directory = tmp_path_factory.mktemp("client-keys")
    return ClientKeys(good=keygen(directory / "id_good"), wrong=keygen(directory / "id_wrong"))


@pytest.fixture
def sshd(tmp_path: Path, client_keys: ClientKeys) -> Iterator[SshdServer]:
    """A running sshd accepting ``client_keys.good`` for root; killed in teardown."""
    workdir = tmp_path / "sshd"
    workdir.mkdir()
    server = SshdServer(workdir, [client_keys.good])
    server.start()
    try:
        yield server
    finally:
        server.stop()
