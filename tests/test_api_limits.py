"""What bad input, other local users and overload cannot do to the API: a real daemon and its
API on a Unix socket (the daemon runs in this process, so its memory is this process's), driven
with httpx and with raw sockets where httpx would not send what an attacker sends."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import logging
import os
import re
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_fixtures import (
    RunningApi,
    api_config,
    client_for,
    error_of,
    register,
    socket_dir,
    start_api,
)
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from daemon_fixtures import make_tar_environment, stop_all_actors, wait_until
from test_daemon_actors import UNTRUSTED_REBOOT, processes_with, slow

from kadeploy_cli import kapower
from kadeploy_cli.client import Client, parse_address
from kadeploy_core.errors import ConfigError
from kadeployd.api import ApiServer
from kadeployd.api.server import ApiStartError, warn_if_open

__all__ = ["socket_dir", "stop_all_actors"]
pytestmark = pytest.mark.usefixtures("stop_all_actors")

MARKER = f"kadeploy-test-limits-{os.getpid()}"
MIB = 2**20
WAIT = 30.0  # upper bound of any wait; never reached when things work


def vm_rss() -> int:
    """This process's resident memory, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@contextlib.contextmanager
def limited_api(
    base: Path, socket_dir: Path, hang_n4: bool = False, **api_settings: object
) -> Iterator[RunningApi]:
    """The daemon with its API, ``daemon.api`` extended with ``api_settings``; with
    ``hang_n4``, n-4's reboot hangs so a deployment on it stays running."""
    sock = socket_dir / "api.sock"
    overrides = {4: UNTRUSTED_REBOOT.format(command=slow(MARKER), retries=0)} if hang_n4 else None
    conf = api_config(base / "conf", sock, overrides)
    deploy_conf = conf / "deploy.conf"
    extra = "".join(f", {key}: {value}" for key, value in api_settings.items())
    text = deploy_conf.read_text()
    assert f"api: {{unix_socket: {sock}}}" in text
    deploy_conf.write_text(
        text.replace(f"api: {{unix_socket: {sock}}}", f"api: {{unix_socket: {sock}{extra}}}")
    )
    running = start_api(conf, sock)
    try:
        yield running
    finally:
        running.stop()
        if hang_n4:
            wait_until(lambda: not processes_with(MARKER), 20, "hanging reboots to be killed")


def raw_exchange(sock_path: Path, head: bytes) -> tuple[socket.socket, int, dict[str, Any]]:
    """Send a request head (no body yet) and read the answer: the open socket, the status and
    the JSON body. Times out (failing the test) if the server waits for the body first."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(WAIT)
    conn.connect(str(sock_path))
    conn.sendall(head)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        assert chunk, data
        data += chunk
    header, _, body = data.partition(b"\r\n\r\n")
    lines = header.decode().split("\r\n")
    length = next(
        int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length")
    )
    while len(body) < length:
        chunk = conn.recv(65536)
        assert chunk
        body += chunk
    return conn, int(lines[0].split()[1]), json.loads(body)


# ------------------------------------------------------------------ bodies


def test_a_huge_body_without_a_token_is_refused_before_a_byte_of_it_is_read(
    tmp_path: Path, socket_dir: Path
) -> None:
    """Before: the 300 MiB body was read (daemon memory +1 GB) and only then was the missing
    token noticed. Now the answer comes on the head alone and the body is never read."""
    with limited_api(tmp_path, socket_dir) as api:
        size = 300 * MIB
        head = (
            f"POST /v1/deployments HTTP/1.1\r\nHost: kadeployd\r\n"
            f"Content-Type: application/json\r\nContent-Length: {size}\r\n\r\n"
        ).encode()
        before = vm_rss()
        conn, status, body = raw_exchange(api.socket, head)
        assert status == 401, body
        assert body["error"]["code"] == "unauthorized"
        # The attacker goes on sending: the server closed the connection, nothing is read.
        piece = b"[" * MIB
        sent = 0
        with contextlib.suppress(OSError), conn:
            while sent < size:
                conn.sendall(piece)
                sent += len(piece)
        assert sent < size
        grown = vm_rss() - before
        assert grown < 40 * MIB, f"RSS grew by {grown / MIB:.0f} MiB"
        assert api.client("alice").get("/v1/whoami").status_code == 200


def test_a_body_over_the_limit_gets_413_naming_the_limit(tmp_path: Path, socket_dir: Path) -> None:
    with limited_api(tmp_path, socket_dir, max_body_bytes=65536) as api:
        alice = api.client("alice")
        declared = alice.post(
            "/v1/rights", content=b" " * 70_000, headers={"Content-Type": "application/json"}
        )
        assert declared.status_code == 413, declared.text
        error = error_of(declared)
        assert error["code"] == "payload_too_large"
        assert "65536 bytes" in error["message"]
        assert "daemon.api.max_body_bytes" in error["message"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: chunked
            for _ in range(5):
                yield b" " * 16_384

        chunked = api.client("alice").post(
            "/v1/rights", content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert chunked.status_code == 413, chunked.text
        assert "65536 bytes" in error_of(chunked)["message"]
        # A body under the limit is read as before.
        small = api.client("root").post("/v1/rights", json={"user": "bob", "nodes": ["n-1"]})
        assert small.status_code == 201, small.text


def test_uploads_keep_their_own_limit_above_the_body_limit(
    tmp_path: Path, socket_dir: Path
) -> None:
    with limited_api(tmp_path, socket_dir, max_body_bytes=65536) as api:
        answer = api.client("alice").post(
            "/v1/uploads", params={"name": "image.bin"}, content=os.urandom(300_000)
        )
        assert answer.status_code == 201, answer.text
        assert answer.json()["size"] == 300_000


# ------------------------------------------------------------------ concurrency


class HeldUpload:
    """An upload whose body is held back until :meth:`release`: a request in flight."""

    def __init__(self, api: RunningApi, user: str) -> None:
        self._go = threading.Event()
        self._client = api.client(user)
        self.answer: httpx.Response | None = None
        self._thread = threading.Thread(target=self._send)
        self._thread.start()

    def _body(self) -> Iterator[bytes]:
        yield b"first"
        self._go.wait(WAIT)
        yield b"last"

    def _send(self) -> None:
        self.answer = self._client.post(
            "/v1/uploads", params={"name": "held.bin"}, content=self._body()
        )

    def release(self) -> httpx.Response:
        self._go.set()
        self._thread.join(WAIT)
        assert self.answer is not None
        return self.answer


def test_a_user_over_the_request_limit_gets_429_and_others_go_on(
    tmp_path: Path, socket_dir: Path
) -> None:
    with limited_api(tmp_path, socket_dir, max_requests_per_user=2) as api:
        held = [HeldUpload(api, "alice"), HeldUpload(api, "alice")]
        alice = api.client("alice")
        try:
            refused = wait_until(
                lambda: (a := alice.get("/v1/whoami")).status_code == 429 and a,
                WAIT,
                "alice's two uploads to be in flight",
            )
            error = error_of(refused)
            assert error["code"] == "too_many_requests"
            assert "daemon.api.max_requests_per_user" in error["message"]
            assert refused.headers["retry-after"] == "1"
            assert api.client("bob").get("/v1/whoami").json()["user"] == "bob"
        finally:
            answers = [upload.release() for upload in held]
        assert [a.status_code for a in answers] == [201, 201]
        assert alice.get("/v1/whoami").status_code == 200


def _closed_by_server(conn: socket.socket, trickle: bytes) -> bool:
    """Send ``trickle`` a byte at a time (a slow client's head) until the server closes the
    connection; whether it did within WAIT."""
    conn.settimeout(0.2)
    for attempt in range(int(WAIT / 0.2)):
        try:
            if attempt < len(trickle):
                conn.sendall(trickle[attempt : attempt + 1])
            if conn.recv(1024) == b"":
                return True
        except TimeoutError:
            continue
        except OSError:
            return True
    return False


def test_a_connection_that_sends_no_whole_head_in_time_is_closed(
    tmp_path: Path, socket_dir: Path
) -> None:
    """Before, a silent connection, or one sending a header byte now and then, held one of
    limit_concurrency's places for ever: a local user could fill them all."""
    with limited_api(tmp_path, socket_dir, timeout_keep_alive=1) as api:
        silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        slow = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with silent, slow:
            silent.connect(str(api.socket))
            slow.connect(str(api.socket))
            head = b"GET /v1/health HTTP/1.1\r\nHost: kadeployd\r\n" + b"X-Slow: " + b"a" * 500
            assert _closed_by_server(silent, b"")
            assert _closed_by_server(slow, head)
        # A connection kept alive between requests works as before.
        client = api.client("alice")
        assert [client.get("/v1/whoami").status_code for _ in range(3)] == [200, 200, 200]


def _running_deployment(api: RunningApi, base: Path) -> str:
    root = api.client("root")
    assert root.post("/v1/rights", json={"user": "alice", "nodes": ["*"]}).status_code == 201
    assert register(root, make_tar_environment(base), visibility="public").status_code == 201
    answer = api.client("alice").post(
        "/v1/deployments", json={"nodes": ["n-4"], "environment": {"name": "tiny"}}
    )
    assert answer.status_code == 201, answer.text
    deployment_id: str = answer.json()["id"]
    return deployment_id


def test_event_streams_are_capped_per_user_and_in_all(tmp_path: Path, socket_dir: Path) -> None:
    settings = {"max_streams_per_user": 2, "max_streams": 3}
    with limited_api(tmp_path, socket_dir, hang_n4=True, **settings) as api:
        url = f"/v1/deployments/{_running_deployment(api, tmp_path)}/events"
        with contextlib.ExitStack() as streams:

            def open_stream(user: str) -> httpx.Response:
                return streams.enter_context(api.client(user).stream("GET", url))

            assert [open_stream("alice").status_code for _ in range(2)] == [200, 200]
            third = open_stream("alice")
            assert third.status_code == 429
            third.read()
            assert "daemon.api.max_streams_per_user" in error_of(third)["message"]
            assert third.headers["retry-after"] == "1"
            # Streams are not requests: alice's other requests go on.
            assert api.client("alice").get("/v1/whoami").status_code == 200
            assert open_stream("bob").status_code == 200
            over_all = open_stream("root")
            assert over_all.status_code == 429
            over_all.read()
            assert "daemon.api.max_streams)" in error_of(over_all)["message"]

        def can_stream() -> bool:
            with api.client("root").stream("GET", url) as again:
                return again.status_code == 200

        wait_until(can_stream, WAIT, "closed streams to give their slots back")


# ------------------------------------------------------------------ the safety net


def test_an_unexpected_error_is_one_log_line_with_an_id_and_no_traceback_in_the_answer(
    tmp_path: Path, socket_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with limited_api(tmp_path, socket_dir) as api:

        def broken() -> None:
            raise RuntimeError("a bug in a route")

        api.server.app.add_api_route("/v1/broken", broken)
        with caplog.at_level(logging.ERROR):
            answer = api.client("alice").get("/v1/broken")
        assert answer.status_code == 500
        error = error_of(answer)
        assert error["code"] == "internal_error"
        assert "a bug in a route" not in answer.text
        found = re.match(r"internal error ([0-9a-f]{8});", error["message"])
        assert found, error["message"]
        error_id = found.group(1)
        logged = [r for r in caplog.records if r.exc_info is not None]
        assert len(logged) == 1, [r.getMessage() for r in logged]
        assert error_id in logged[0].getMessage()
        assert api.client("alice").get("/v1/whoami").status_code == 200


# ------------------------------------------------------------------ low findings


def _deployment(api: RunningApi, base: Path, node: str = "n-1") -> str:
    root = api.client("root")
    assert root.post("/v1/rights", json={"user": "alice", "nodes": ["*"]}).status_code == 201
    assert register(root, make_tar_environment(base), visibility="public").status_code == 201
    answer = api.client("alice").post(
        "/v1/deployments", json={"nodes": [node], "environment": {"name": "tiny"}}
    )
    assert answer.status_code == 201, answer.text
    deployment_id: str = answer.json()["id"]
    return deployment_id


def _tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.exc_info is not None]


def test_bad_bodies_get_a_clear_error_and_no_traceback(
    tmp_path: Path, socket_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with limited_api(tmp_path, socket_dir) as api, caplog.at_level(logging.WARNING):
        alice = api.client("alice")
        control = alice.post(
            "/v1/environments", json={"description": "name: x\x01\x02\nversion: 1\n", "files": {}}
        )
        assert control.status_code == 422, control.text
        assert "'\\x01' is not allowed" in error_of(control)["message"]
        nested = alice.post(
            "/v1/rights",
            content=b"[" * 2000 + b"]" * 2000,
            headers={"Content-Type": "application/json"},
        )
        assert nested.status_code == 400, nested.text
        assert "too deeply" in error_of(nested)["message"]
        assert _tracebacks(caplog) == []


def test_a_bad_last_event_id_gets_400_and_a_good_one_resumes(
    tmp_path: Path, socket_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with limited_api(tmp_path, socket_dir) as api, caplog.at_level(logging.WARNING):
        url = f"/v1/deployments/{_deployment(api, tmp_path)}/events"
        alice = api.client("alice")
        # b"\xb2" is read as latin-1 "²", which str.isdigit() takes for a digit.
        for value in (b"\xb2", "9" * 32, "-1", "1e3"):
            with alice.stream("GET", url, headers={"Last-Event-ID": value}) as answer:
                answer.read()
                assert answer.status_code == 400, (value, answer.text)
                error = error_of(answer)
                assert error["message"].startswith("header Last-Event-ID: expected a history seq")
        with alice.stream("GET", url, headers={"Last-Event-ID": "1"}) as resumed:
            assert resumed.status_code == 200
            assert "event: end" in resumed.read().decode()
        assert _tracebacks(caplog) == []


def _health_as(sock_path: Path, uid: int, token: str | None = None) -> dict[str, Any]:
    """GET /v1/health from a process of user ``uid`` (the kernel tells the daemon who)."""
    read_end, write_end = os.pipe()
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    request = f"GET /v1/health HTTP/1.1\r\nHost: k\r\nConnection: close\r\n{auth}\r\n".encode()
    pid = os.fork()
    if pid == 0:  # the child: only system calls, then _exit
        code = 1
        try:
            os.close(read_end)
            os.setgid(uid)
            os.setuid(uid)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.settimeout(WAIT)
                conn.connect(str(sock_path))
                conn.sendall(request)
                while chunk := conn.recv(65536):
                    os.write(write_end, chunk)
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, data
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.split()[1] == b"200", data
    answer: dict[str, Any] = json.loads(body)
    return answer


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to speak as another local user")
def test_health_shows_details_only_to_token_holders_and_root(
    tmp_path: Path, socket_dir: Path
) -> None:
    socket_dir.chmod(0o755)  # other local users reach the socket (mode 666), as in production
    nobody = 65534
    with limited_api(tmp_path, socket_dir) as api:
        api.context.status.last_reload_error = "nodes.conf: bmc_password: 'hunter2' is invalid"
        assert _health_as(api.socket, nobody) == {"status": "ok"}
        alice = _health_as(api.socket, nobody, api.tokens["alice"])
        assert alice["pid"] == os.getpid()
        assert alice["last_reload_error"] is None
        admin = _health_as(api.socket, nobody, api.tokens["root"])
        assert "hunter2" in admin["last_reload_error"]
        # kadeploy-server status, as root on the socket, needs no token.
        as_root = api.client(None).get("/v1/health").json()
        assert as_root["pid"] == os.getpid()
        assert "hunter2" in as_root["last_reload_error"]


def test_a_range_too_large_is_a_clear_error_naming_it() -> None:
    for machines, expected in (
        ("n-[1-99999999999999999999]", "is too large a number (at most 18 digits)"),
        ("n-[1-99999999999999999]", "more than the limit of 100000"),
        ("n-[1-60000],m-[1-60000]", "the node list now stands for 120000 names"),
    ):
        result = CliRunner().invoke(
            kapower.main, ["-m", machines, "--status"], env={"KADEPLOY_SERVER": "/nonexistent"}
        )
        assert result.exit_code == 2, result.output
        assert machines in result.output
        assert expected in result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)


# ------------------------------------------------------------------ TLS


def self_signed(directory: Path, name: str = "server") -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kadeployd test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def free_tcp_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def tcp_server(api: RunningApi, listen: str) -> ApiServer:
    """A second API server of ``api``'s daemon, on the Unix socket ``tcp.sock`` and on
    ``listen``, as kadeploy-server starts it (the fixtures serve the Unix socket only)."""
    return ApiServer(api.server.app, api.socket.parent / "tcp.sock", listen)


def test_tcp_listen_speaks_https_with_the_configured_certificate(
    tmp_path: Path, socket_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = self_signed(tmp_path)
    listen = f"127.0.0.1:{free_tcp_port()}"
    settings = {"tcp_listen": listen, "tls_certificate": cert, "tls_key": key}
    with limited_api(tmp_path, socket_dir, **settings) as api:
        server = tcp_server(api, listen)
        server.start()
        try:
            assert server.scheme == "https"
            url = f"https://{listen}"
            verified = ssl.create_default_context(cafile=cert)
            auth = {"Authorization": f"Bearer {api.tokens['alice']}"}
            with httpx.Client(base_url=url, verify=verified, headers=auth) as https:
                assert https.get("/v1/whoami").json()["user"] == "alice"
                assert https.get("/v1/health", headers={"Authorization": ""}).json() == {
                    "status": "ok"
                }
            with pytest.raises(httpx.HTTPError), httpx.Client(base_url=url) as unverified:
                unverified.get("/v1/health")  # the system's CAs do not know this certificate
            with pytest.raises(httpx.HTTPError), httpx.Client(base_url=f"http://{listen}") as plain:
                plain.get("/v1/health")
            # The Unix socket stays plain HTTP.
            unix = client_for(server.unix_socket, api.tokens["alice"])
            with unix:
                assert unix.get("/v1/whoami").json()["user"] == "alice"
            # The command-line tools verify the server against $KADEPLOY_CA_FILE.
            monkeypatch.setenv("KADEPLOY_CA_FILE", str(cert))
            cli = Client(parse_address(url), api.tokens["bob"])
            try:
                assert cli.get("/v1/whoami")["user"] == "bob"
            finally:
                cli.close()
        finally:
            server.stop()


def test_tls_settings_that_cannot_work_fail_the_start_with_a_clear_error(
    tmp_path: Path, socket_dir: Path
) -> None:
    cert, key = self_signed(tmp_path)
    other_cert, _ = self_signed(tmp_path, "other")
    listen = f"127.0.0.1:{free_tcp_port()}"
    only_cert = limited_api(tmp_path / "a", socket_dir, tcp_listen=listen, tls_certificate=cert)
    with pytest.raises(ConfigError, match="tls_certificate is set but tls_key is not"), only_cert:
        pass
    for changed, expected in (
        ({"tls_key": tmp_path / "missing.key"}, "daemon.api.tls_key: .* is not a readable file"),
        ({"tls_key": key, "tls_certificate": other_cert}, "cannot load .*other.crt"),
    ):
        settings = {"tcp_listen": listen, "tls_certificate": cert, **changed}
        with limited_api(tmp_path / str(len(expected)), socket_dir, **settings) as api:
            server = tcp_server(api, listen)
            with pytest.raises(ApiStartError, match=expected):
                server.start()
            assert not server.alive()


def test_plain_http_on_a_non_loopback_address_is_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        warn_if_open("127.0.0.1:25300")
        warn_if_open("[::1]:25300")
        assert caplog.records == []
        warn_if_open("192.0.2.10:25300")  # a documentation address: nothing is bound
    (record,) = caplog.records
    assert "tokens cross the network in clear" in record.getMessage()
