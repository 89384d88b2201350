"""The SSH adapter against a real OpenSSH sshd on loopback (tests/sshd_fixtures.py)."""

from __future__ import annotations

import hashlib
import io
import shlex
import socket
import subprocess
import tarfile
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pykka
import pytest
import waiting
from sshd_fixtures import ClientKeys, SshdServer, client_keys, sshd

from kadeployd.adapters.commands import CommandResult
from kadeployd.adapters.ssh import (
    SshAuthFailed,
    SshCancelled,
    SshCommandFailed,
    SshCommandTimeout,
    SshConnection,
    SshConnectionLost,
    SshError,
    SshKeyError,
    SshTarget,
    SshUnreachable,
    parse_os_release,
    probe,
)
from kadeployd.config import load_config

__all__ = ["client_keys", "sshd"]  # fixtures imported for pytest, not unused

MIB = 1024 * 1024


@pytest.fixture(autouse=True)
def _stop_actors() -> Iterator[None]:
    yield
    pykka.ActorRegistry.stop_all(timeout=10)


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``predicate`` until it holds (see :mod:`waiting`)."""
    waiting.wait_until(predicate, timeout)


def remote_processes(server: SshdServer, marker: str) -> list[int]:
    """Processes started through ``server`` whose command line contains ``marker``."""
    found = []
    for pid in server.session_pids():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if marker.encode() in cmdline:
            found.append(pid)
    return found


def target_for(server: SshdServer, key: Path, **changes: float) -> SshTarget:
    values: dict[str, float] = {"connect_timeout": 10, "auth_timeout": 10, "keepalive": 15}
    values.update(changes)
    return SshTarget(
        address=server.address,
        port=server.port,
        user="root",
        key_file=key,
        connect_timeout=values["connect_timeout"],
        auth_timeout=values["auth_timeout"],
        keepalive=values["keepalive"],
    )


@pytest.fixture
def connection(sshd: SshdServer, client_keys: ClientKeys) -> Iterator[SshConnection]:
    with SshConnection(target_for(sshd, client_keys.good)) as conn:
        yield conn


# ---------------------------------------------------------------- running commands


def test_argv_is_quoted_and_output_comes_back(connection: SshConnection) -> None:
    tricky = ["it's", "two words", "$HOME", "a;b", "*", ""]
    result = connection.run(["printf", "[%s]\\n", *tricky], timeout=20)
    assert result.ok
    assert result.stdout.splitlines() == [f"[{word}]" for word in tricky]
    assert result.argv == ("printf", "[%s]\\n", *tricky)


def test_exit_codes_stderr_and_on_output(connection: SshConnection) -> None:
    seen: list[tuple[str, str]] = []
    result = connection.run(
        script="echo out1; echo err1 >&2; printf 'partial'; exit 3",
        timeout=20,
        on_output=lambda stream, text: seen.append((stream, text)),
    )
    assert (result.returncode, result.ok, result.timed_out) == (3, False, False)
    assert result.stdout == "out1\npartial"
    assert result.stderr == "err1\n"
    assert "".join(t for s, t in seen if s == "stdout") == "out1\npartial"
    assert "".join(t for s, t in seen if s == "stderr") == "err1\n"
    assert connection.run(["true"], timeout=20).returncode == 0
    assert connection.run(script="sh -c 'kill -KILL $$'", timeout=20).returncode == 137


def test_check_raises_with_the_stderr_tail(connection: SshConnection) -> None:
    with pytest.raises(SshCommandFailed) as caught:
        connection.run(script="echo 'disk on fire' >&2; exit 2", timeout=20, check=True)
    assert "exit status 2" in str(caught.value)
    assert "disk on fire" in str(caught.value)
    assert caught.value.address == connection.target.address
    assert caught.value.result.returncode == 2


def test_argv_or_script_not_both(connection: SshConnection) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        connection.run(["true"], script="true", timeout=5)
    with pytest.raises(ValueError, match="exactly one"):
        connection.run(timeout=5)


def test_large_stdout_and_stderr_at_once_do_not_deadlock(
    sshd: SshdServer, client_keys: ClientKeys
) -> None:
    size = 27 * MIB  # a whole number of 9-byte lines
    received = {"stdout": 0, "stderr": 0}

    def count(stream: str, text: str) -> None:
        received[stream] += len(text)

    script = f"yes out-line | head -c {size} & yes err-line | head -c {size} >&2; wait"
    with SshConnection(target_for(sshd, client_keys.good), output_limit=64 * 1024) as conn:
        result = conn.run(script=script, timeout=120, on_output=count)
    assert result.ok, result.stderr[-500:]
    assert received == {"stdout": size, "stderr": size}
    # Only the tail is kept, cut at the limit.
    assert len(result.stdout) == len(result.stderr) == 64 * 1024
    assert result.stdout.endswith("out-line\n")
    assert result.stderr.endswith("err-line\n")


def test_stdin_streams_50_mib_from_a_file(connection: SshConnection, tmp_path: Path) -> None:
    data = tmp_path / "image.bin"
    with data.open("wb") as out:
        for i in range(50):
            out.write(hashlib.sha512(str(i).encode()).digest() * (MIB // 64))
    expected = hashlib.sha256(data.read_bytes()).hexdigest()
    with data.open("rb") as source:
        result = connection.run(["sha256sum"], stdin=source, timeout=300)
    assert result.ok, result.stderr
    assert result.stdout.split()[0] == expected


def test_stdin_from_bytes_and_from_an_iterator(connection: SshConnection) -> None:
    blob = bytes(range(256)) * 12345
    result = connection.run(["sha256sum"], stdin=blob, timeout=60)
    assert result.stdout.split()[0] == hashlib.sha256(blob).hexdigest()
    pieces = [b"abc" * 1000, b"", b"x" * (3 * MIB + 7)]
    result = connection.run(["wc", "-c"], stdin=iter(pieces), timeout=60)
    assert int(result.stdout) == sum(map(len, pieces))


def test_image_pipeline_zstd_tar_fed_by_a_file(connection: SshConnection, tmp_path: Path) -> None:
    """The way BroadcastEnv direct sends an image: a tar.zst file into zstd -dc | tar -x."""
    tree = tmp_path / "rootfs"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "os-release").write_text('ID=kadeploy-test\nNAME="Kadeploy Test"\n')
    (tree / "big").write_bytes(b"\x01\x02" * MIB)
    tar = tmp_path / "image.tar"
    with tarfile.open(tar, "w") as archive:
        archive.add(tree, arcname=".")
    subprocess.run(["zstd", "-q", "-f", str(tar), "-o", str(tar) + ".zst"], check=True, timeout=60)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with open(str(tar) + ".zst", "rb") as image:
        connection.run(
            script=f"zstd -dc | tar -x -C {shlex.quote(str(mnt))}",
            stdin=image,
            timeout=120,
            check=True,
        )
    assert parse_os_release((mnt / "etc" / "os-release").read_text())["ID"] == "kadeploy-test"
    assert (mnt / "big").read_bytes() == (tree / "big").read_bytes()


def test_a_failing_data_source_is_an_ssh_error(connection: SshConnection, sshd: SshdServer) -> None:
    def source() -> Iterator[bytes]:
        yield b"some bytes"
        raise OSError("disk read error")

    with pytest.raises(SshError, match="disk read error"):
        connection.run(script="cat > /dev/null; sleep 3603", stdin=source(), timeout=30)
    wait_until(lambda: not remote_processes(sshd, "3603"))


def test_a_raising_on_output_leaves_nothing_running(
    connection: SshConnection, sshd: SshdServer
) -> None:
    def explode(stream: str, text: str) -> None:
        raise RuntimeError(f"log full: {text.strip()}")

    with pytest.raises(RuntimeError, match="log full: first"):
        connection.run(script="echo first; sleep 3606", timeout=60, on_output=explode)
    wait_until(lambda: not remote_processes(sshd, "3606"))


# ---------------------------------------------------------------- timeouts and cancel


def test_timeout_kills_the_remote_command(connection: SshConnection, sshd: SshdServer) -> None:
    result = connection.run(script="sleep 3601 | cat; echo never", timeout=1)
    assert result.timed_out and result.returncode is None and not result.ok
    assert result.stdout == ""
    wait_until(lambda: not remote_processes(sshd, "3601"))
    # The connection is still usable after a timeout.
    assert connection.run(["echo", "alive"], timeout=20).stdout == "alive\n"
    with pytest.raises(SshCommandTimeout, match=r"timed out after 0\.5s") as caught:
        connection.run(["sleep", "3601"], timeout=0.5, check=True)
    assert caught.value.result.timed_out


def test_cancel_from_another_thread(connection: SshConnection, sshd: SshdServer) -> None:
    results: list[CommandResult] = []
    runner = threading.Thread(
        target=lambda: results.append(connection.run(["sleep", "3602"], timeout=600))
    )
    runner.start()
    wait_until(lambda: bool(remote_processes(sshd, "3602")))
    connection.cancel()
    runner.join(timeout=20)
    assert not runner.is_alive()
    assert results[0].cancelled and results[0].returncode is None and not results[0].timed_out
    wait_until(lambda: not remote_processes(sshd, "3602"))
    # Cancelled for good: later commands do not run.
    assert connection.run(["true"], timeout=5).cancelled
    with pytest.raises(SshCancelled):
        connection.run(["true"], timeout=5, check=True)
    assert connection.transport is None


def test_cancel_while_streaming_stdin(connection: SshConnection, sshd: SshdServer) -> None:
    started = threading.Event()

    def endless() -> Iterator[bytes]:
        while True:
            started.set()
            yield b"\0" * MIB

    results: list[CommandResult] = []
    runner = threading.Thread(
        target=lambda: results.append(
            connection.run(script="sleep 3604 | cat > /dev/null", stdin=endless(), timeout=600)
        )
    )
    runner.start()
    assert started.wait(timeout=20)
    wait_until(lambda: bool(remote_processes(sshd, "3604")))
    connection.cancel()
    runner.join(timeout=20)
    assert not runner.is_alive()
    assert results[0].cancelled
    wait_until(lambda: not remote_processes(sshd, "3604"))


def test_server_dying_mid_command_is_connection_lost(
    connection: SshConnection, sshd: SshdServer
) -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            connection.run(["sleep", "3605"], timeout=600)
        except SshError as exc:
            errors.append(exc)

    runner = threading.Thread(target=run)
    runner.start()
    wait_until(lambda: bool(remote_processes(sshd, "3605")))
    sshd.stop()
    runner.join(timeout=20)
    assert not runner.is_alive()
    assert isinstance(errors[0], SshConnectionLost), errors


# ---------------------------------------------------------------- connecting


def test_one_connection_serves_several_commands(connection: SshConnection) -> None:
    assert connection.transport is None  # lazy
    connection.run(["true"], timeout=20)
    first = connection.transport
    connection.run(["true"], timeout=20)
    assert connection.transport is first
    assert connection.connections_made == 1


def test_reconnects_after_the_server_restarted_with_a_new_host_key(
    connection: SshConnection, sshd: SshdServer
) -> None:
    connection.run(["true"], timeout=20)
    old = connection.transport
    assert old is not None
    old_key = old.get_remote_server_key().get_base64()
    sshd.restart()
    result = connection.run(["echo", "back"], timeout=20)
    assert result.stdout == "back\n"
    new = connection.transport
    assert new is not None and new is not old
    assert new.get_remote_server_key().get_base64() != old_key
    assert connection.connections_made == 2


def test_close_then_run_connects_again(connection: SshConnection) -> None:
    connection.run(["true"], timeout=20)
    connection.close()
    connection.close()
    assert connection.transport is None
    assert connection.run(["true"], timeout=20).ok
    assert connection.connections_made == 2


def test_wrong_key_is_auth_failed(sshd: SshdServer, client_keys: ClientKeys) -> None:
    with (
        SshConnection(target_for(sshd, client_keys.wrong)) as conn,
        pytest.raises(SshAuthFailed) as caught,
    ):
        conn.run(["true"], timeout=20)
    assert caught.value.address == sshd.address
    assert str(client_keys.wrong) in str(caught.value)


def test_missing_or_bad_key_file_is_a_key_error(sshd: SshdServer, tmp_path: Path) -> None:
    with (
        SshConnection(target_for(sshd, tmp_path / "nope")) as conn,
        pytest.raises(SshKeyError, match="does not exist"),
    ):
        conn.run(["true"], timeout=20)
    garbage = tmp_path / "garbage"
    garbage.write_text("not a key\n")
    with (
        SshConnection(target_for(sshd, garbage)) as conn,
        pytest.raises(SshKeyError, match="not a usable private key"),
    ):
        conn.run(["true"], timeout=20)


def test_nothing_listening_is_unreachable_without_waiting(client_keys: ClientKeys) -> None:
    address = "127.0.1.254"
    with socket.socket() as sock:
        sock.bind((address, 0))
        port = sock.getsockname()[1]
    target = SshTarget(address, port, "root", client_keys.good, 600, 600, 15)
    # A 600 s connect timeout: the refusal must be reported, not waited out.
    with (
        SshConnection(target) as conn,
        pytest.raises(SshUnreachable, match="connection refused") as caught,
    ):
        conn.run(["true"], timeout=600)
    assert caught.value.address == address


def test_silent_server_is_unreachable_after_the_banner_timeout(client_keys: ClientKeys) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.1.253", 0))
        listener.listen()
        address, port = listener.getsockname()
        target = SshTarget(address, port, "root", client_keys.good, 0.5, 0.5, 15)
        with SshConnection(target) as conn, pytest.raises(SshUnreachable, match="handshake"):
            conn.run(["true"], timeout=30)


def test_target_from_node_settings(tmp_path: Path) -> None:
    (tmp_path / "clusters").mkdir()
    (tmp_path / "deploy.conf").write_text(
        textwrap.dedent(
            """\
            daemon: {state_dir: /tmp/kadeployd-test}
            ssh: {user: deploy, port: 2222, identity_file: /etc/k/id, connect_timeout: 4,
                  command_timeout: 99, keepalive_interval: 7}
            boot: {deploy_kernel: k}
            automata:
              macrosteps:
                SetDeploymentEnv: [{type: untrusted, retries: 1, timeout: 100}]
                BroadcastEnv: [{type: direct, retries: 1, timeout: 100}]
                BootNewEnv: [{type: classical, retries: 1, timeout: 100}]
            """
        )
    )
    (tmp_path / "clusters" / "alpha.conf").write_text("ssh: {port: 2200}\n")
    (tmp_path / "nodes.conf").write_text(
        "n-1: {cluster: alpha, address: 127.0.2.1, mac: '02:00:00:00:00:01'}\n"
    )
    node = load_config(tmp_path).nodes["n-1"]
    assert SshTarget.from_node(node) == SshTarget(
        address="127.0.2.1",
        port=2200,
        user="deploy",
        key_file=Path("/etc/k/id"),
        connect_timeout=4,
        auth_timeout=4,
        keepalive=7,
        command_timeout=99,
        name="n-1",
    )


# ---------------------------------------------------------------- probe


def test_probe_reads_os_release_and_cmdline(sshd: SshdServer, client_keys: ClientKeys) -> None:
    found = probe(target_for(sshd, client_keys.good), timeout=20)
    assert found.reachable and found.error is None
    assert found.os_release == parse_os_release(Path("/etc/os-release").read_text())
    assert found.os_release is not None and found.os_release["ID"]
    assert found.cmdline == Path("/proc/cmdline").read_text().rstrip("\n")
    wait_until(lambda: not sshd.session_pids())  # probe closed its connection


def test_probe_of_a_silent_node_says_why(client_keys: ClientKeys) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.1.254", 0))
        port = sock.getsockname()[1]
    found = probe(SshTarget("127.0.1.254", port, "root", client_keys.good, 10, 10, 15), timeout=5)
    assert not found.reachable
    assert found.os_release is None and found.cmdline is None
    assert found.error is not None and "connection refused" in found.error


def test_probe_with_the_wrong_key(sshd: SshdServer, client_keys: ClientKeys) -> None:
    found = probe(target_for(sshd, client_keys.wrong), timeout=20)
    assert not found.reachable
    assert found.error is not None and "refused with the key" in found.error


def test_parse_os_release_quotes_comments_and_escapes() -> None:
    text = """\
# a comment
NAME="Kadeploy Test"
ID=kadeploy
VERSION_ID='1.0'
PRETTY_NAME="Say \\"hi\\" \\$now"

broken line without equals
"""
    assert parse_os_release(text) == {
        "NAME": "Kadeploy Test",
        "ID": "kadeploy",
        "VERSION_ID": "1.0",
        "PRETTY_NAME": 'Say "hi" $now',
    }


def test_io_bytesio_is_a_binary_file(connection: SshConnection) -> None:
    result = connection.run(["cat"], stdin=io.BytesIO(b"hello\nworld\n"), timeout=20)
    assert result.stdout == "hello\nworld\n"
