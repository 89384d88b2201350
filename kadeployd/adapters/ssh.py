"""SSH to the nodes' deploy and deployed envs (paramiko).

One :class:`SshConnection` per node holds one paramiko client, connected lazily at the first
command and reused by the next ones; a transport found dead is replaced once, transparently,
before a command starts (never in the middle of one: commands are not assumed idempotent).
Every phase has a bound: TCP connect, SSH banner and authentication use the target's timeouts,
every command has its own ``timeout``, and keepalives run on the transport.

Host keys: a target with ``host_keys`` (the deploy env's, pinned by ``boot.deploy_host_key_file``
or ``boot.deploy_host_key``: kadeployd/config/host_keys.py) accepts only those: any other key
ends the connection with :class:`SshHostKeyMismatch` right after the key exchange, before the
daemon authenticates or sends anything, so a host impersonating a node's address gets no
command, no image and no user key. A target without (a prod or deployed env, whose keys are
the user's, or a deploy env whose keys are not configured) accepts any key without storing
it: a known_hosts file would only ever hold stale keys of envs that change at every
deployment. The fingerprint seen is logged at debug level. Only the configured key is
offered: no SSH agent, no ``~/.ssh`` keys.

Killing a remote command: closing an SSH channel does not stop the process behind it (sshd
keeps a non-PTY session's command running), and sshd refuses the "signal" channel request for
root logins (no post-auth privilege separation). So every command is started as
``printf '%s\\n' "$$"`` followed by the command: sshd starts the login shell with ``setsid``, so
that PID is also the process group of everything the command spawns. The first stdout line is
consumed here (never shown to callers), and on timeout or :meth:`SshConnection.cancel` a second
channel runs ``kill -s KILL -- -PGID`` before the channel is closed, so no process is left
behind on the node.

Errors::

    KadeployError
    └── SshError                 anything about SSH to one node; the message names the address
        ├── SshUnreachable       nothing answers: refused, timed out, no banner, handshake failed
        ├── SshHostKeyMismatch   the server's host key is not one of the target's pinned keys
        ├── SshAuthFailed        the node does not accept the deploy key
        ├── SshKeyError          the deploy key file cannot be read (missing, not a key)
        ├── SshConnectionLost    the connection died while a command was running
        ├── SshCommandTimeout    a command ran past its timeout (``run(check=True)``)
        ├── SshCommandFailed     a command exited non-zero (``run(check=True)``)
        └── SshCancelled         the connection was cancelled (``run(check=True)``)

Without ``check``, a timed-out, cancelled or failed command is a CommandResult (the one of
kadeployd.adapters.commands, so local and remote commands answer alike), not an exception.
"""

from __future__ import annotations

import base64
import codecs
import contextlib
import logging
import re
import select
import shlex
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO

import paramiko

from kadeploy_core.errors import KadeployError
from kadeployd.adapters.commands import CommandResult
from kadeployd.config import Node
from kadeployd.config.host_keys import fingerprint, fingerprints

logger = logging.getLogger(__name__)

CHUNK = 1024 * 1024
"""Size of the pieces stdin is sent in and output is received in."""
DEFAULT_OUTPUT_LIMIT = 1024 * 1024
"""Bytes of stdout and of stderr kept in a CommandResult (the tail; the rest is dropped)."""
KILL_TIMEOUT = 2.0
"""Longest wait for the remote kill of a timed-out or cancelled command."""
JOIN_TIMEOUT = 5.0
"""Longest wait for the stdin writer thread once its channel is closed."""

OutputCallback = Callable[[str, str], None]
"""``on_output(stream, text)``: stream is "stdout" or "stderr", text is whole lines."""
Stdin = bytes | BinaryIO | Iterator[bytes] | Iterable[bytes]


# ---------------------------------------------------------------- errors


class SshError(KadeployError):
    """SSH to one node failed; ``address`` says which node, ``cause`` says why, briefly."""

    def __init__(self, address: str, cause: str) -> None:
        self.address = address
        self.cause = cause
        super().__init__(f"ssh {address}: {cause}")


class SshUnreachable(SshError):
    """Nothing usable answers: connection refused or timed out, no banner, handshake failed."""


class SshHostKeyMismatch(SshError):
    """The server offered a host key that is not one of the target's pinned keys; nothing was
    sent to it (no authentication, no command)."""

    def __init__(self, target: SshTarget, offered: str) -> None:
        self.offered = offered
        """The key offered, ``"<type> <base64>"``."""
        self.expected = target.host_keys
        who = target.name or target.address
        super().__init__(
            target.address,
            f"{who} offered the host key {fingerprint(offered)}, not the deploy env's pinned "
            f"{fingerprints(target.host_keys)} (boot.deploy_host_key_file, "
            "boot.deploy_host_key): connection refused, nothing sent",
        )


class SshAuthFailed(SshError):
    """The node refused the deploy key."""


class SshKeyError(SshError):
    """The deploy key file is missing, unreadable, encrypted or not a private key."""


class SshConnectionLost(SshError):
    """The connection died while a command was running (the command's fate is unknown)."""


class SshCommandTimeout(SshError):
    """A command did not finish within its timeout; it was killed on the node."""

    def __init__(self, address: str, cause: str, result: CommandResult) -> None:
        super().__init__(address, cause)
        self.result = result


class SshCommandFailed(SshError):
    """A command exited with a non-zero status; ``result`` holds its output."""

    def __init__(self, address: str, cause: str, result: CommandResult) -> None:
        super().__init__(address, cause)
        self.result = result


class SshCancelled(SshError):
    """The connection was cancelled with :meth:`SshConnection.cancel`."""


# ---------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class SshTarget:
    """Where and how to reach one node over SSH."""

    address: str
    port: int
    user: str
    key_file: Path
    connect_timeout: float
    """Seconds for the TCP connection and for the SSH banner."""
    auth_timeout: float
    keepalive: float
    """Seconds of silence after which a keepalive is sent (0: none)."""
    command_timeout: float = 600.0
    """The node's default command timeout (``ssh.command_timeout``), for callers' convenience."""
    host_keys: tuple[str, ...] = ()
    """The only host keys accepted (``"<type> <base64>"``); empty: any (see the module's
    docstring)."""
    name: str = ""
    """The node's name, for messages."""

    @classmethod
    def from_node(cls, node: Node) -> SshTarget:
        """The target described by a node's effective ``ssh`` settings."""
        ssh = node.settings.ssh
        return cls(
            address=node.address,
            port=ssh.port,
            user=ssh.user,
            key_file=ssh.identity_file,
            connect_timeout=ssh.connect_timeout,
            auth_timeout=ssh.connect_timeout,
            keepalive=ssh.keepalive_interval,
            command_timeout=ssh.command_timeout,
            name=node.name,
        )

    def pinned(self, host_keys: tuple[str, ...]) -> SshTarget:
        """This target accepting only ``host_keys`` (none: any key)."""
        return replace(self, host_keys=host_keys)


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What a quick look at a node found; tells deploy env, prod env and deployed env apart."""

    reachable: bool
    """The node accepted an SSH connection with the deploy key."""
    os_release: dict[str, str] | None
    """/etc/os-release as a dict (quotes removed), None if unreachable or unreadable."""
    cmdline: str | None
    """/proc/cmdline without its newline, None if unreachable or unreadable."""
    error: str | None
    """Why something is missing, None when everything was read."""
    boot_id: str | None = None
    """The kernel's id of this boot (a new one at every boot), None if unreadable."""
    refused_host_key: str | None = None
    """The host key the node offered when it was not one of the target's pinned keys (then
    nothing was sent, and ``reachable`` is False)."""


# ---------------------------------------------------------------- helpers


class _AcceptHostKey(paramiko.MissingHostKeyPolicy):
    """Accept any host key without storing it (see the module docstring for why)."""

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        logger.debug("ssh %s: host key %s accepted unchecked", hostname, key.fingerprint)


class _RefuseHostKey(paramiko.MissingHostKeyPolicy):
    """A pinned target's answer to a key of a type none of its pinned keys has."""

    def __init__(self, target: SshTarget) -> None:
        self._target = target

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        raise SshHostKeyMismatch(self._target, _key_text(key))


def _key_text(key: paramiko.PKey) -> str:
    return f"{key.get_name()} {key.get_base64()}"


def _tcp_connect(target: SshTarget) -> socket.socket:
    """The TCP connection to ``target``'s SSH port; SshUnreachable if none."""
    where, port = target.address, target.port
    try:
        return socket.create_connection((target.address, target.port), target.connect_timeout)
    except ConnectionRefusedError:
        raise SshUnreachable(where, f"connection refused on port {port}") from None
    except TimeoutError:
        raise SshUnreachable(
            where, f"no TCP connection to port {port} within {target.connect_timeout:g}s"
        ) from None
    except OSError as exc:
        raise SshUnreachable(where, f"port {port}: {exc.strerror or exc}") from None


def _pin(client: paramiko.SSHClient, target: SshTarget) -> None:
    """Make ``client`` accept only ``target.host_keys``: paramiko compares the server's key
    with them (and asks the server for the type of the first) right after the key exchange,
    before authenticating; a key of another type goes to :class:`_RefuseHostKey`."""
    name = target.address if target.port == 22 else f"[{target.address}]:{target.port}"
    known = client.get_host_keys()
    for text in target.host_keys:
        kind, _, encoded = text.partition(" ")
        try:
            key = paramiko.PKey.from_type_string(kind, base64.b64decode(encoded))
        except (ValueError, TypeError, paramiko.SSHException) as exc:
            raise SshError(
                target.address, f"pinned host key {fingerprint(text)} is unusable: {exc}"
            ) from None
        known.add(name, kind, key)
    client.set_missing_host_key_policy(_RefuseHostKey(target))


@dataclass(slots=True, eq=False)  # compared and hashed by identity
class _Running:
    """A command in flight: its channel and, once known, its remote process group."""

    channel: paramiko.Channel
    pgid: int | None = None
    pgid_known: threading.Event = field(default_factory=threading.Event)
    """Set once the PID line was read, or once it is known that it never will be."""
    killed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Stream:
    """One output stream: its tail (bounded) and its lines, decoded, for ``on_output``."""

    def __init__(self, name: str, limit: int, callback: OutputCallback | None) -> None:
        self.name = name
        self.limit = limit
        self.callback = callback
        self.tail = bytearray()
        self.dropped = 0
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.pending = ""

    def add(self, chunk: bytes) -> None:
        self.tail += chunk
        excess = len(self.tail) - self.limit
        if excess > 0:
            del self.tail[:excess]
            self.dropped += excess
        if self.callback is not None:
            text = self.pending + self.decoder.decode(chunk)
            cut = text.rfind("\n") + 1
            self.pending = text[cut:]
            if cut:
                self.callback(self.name, text[:cut])

    def close(self) -> str:
        """Hand the last partial line to ``on_output``; return the kept tail as text."""
        if self.callback is not None:
            text = self.pending + self.decoder.decode(b"", final=True)
            self.pending = ""
            if text:
                self.callback(self.name, text)
        if self.dropped:
            logger.debug("%s capped: first %d bytes dropped", self.name, self.dropped)
        return self.tail.decode("utf-8", errors="replace")


class _Capture:
    """Both output streams of one command; takes the PID line off the front of stdout."""

    def __init__(self, running: _Running, limit: int, callback: OutputCallback | None) -> None:
        self.running = running
        self.stdout = _Stream("stdout", limit, callback)
        self.stderr = _Stream("stderr", limit, callback)
        self.head: bytearray | None = bytearray()
        """stdout received before the PID line was complete; None once it was."""

    def read_available(self) -> None:
        """Take whatever the channel holds right now, without blocking."""
        channel = self.running.channel
        while channel.recv_ready():
            self._stdout(channel.recv(CHUNK))
        while channel.recv_stderr_ready():
            self.stderr.add(channel.recv_stderr(CHUNK))

    def _stdout(self, chunk: bytes) -> None:
        if self.head is not None:
            self.head += chunk
            if b"\n" not in self.head:
                return
            line, _, chunk = bytes(self.head).partition(b"\n")
            self.head = None
            if line.isdigit():
                self.running.pgid = int(line)
            self.running.pgid_known.set()
            if self.running.pgid is None:  # not our PID line after all: it is output
                chunk = line + b"\n" + chunk
        self.stdout.add(chunk)

    def close(self) -> tuple[str, str]:
        if self.head:
            self.stdout.add(bytes(self.head))
        return self.stdout.close(), self.stderr.close()


def _chunks(stdin: Stdin) -> Iterator[bytes]:
    """The data to send, in pieces of at most CHUNK bytes for bytes and files."""
    if isinstance(stdin, bytes | bytearray | memoryview):
        view = memoryview(stdin)
        for start in range(0, len(view), CHUNK):
            yield bytes(view[start : start + CHUNK])
        return
    read = getattr(stdin, "read", None)
    if read is not None:
        while chunk := read(CHUNK):
            yield chunk
        return
    yield from stdin


def _wrap(command: str) -> str:
    """The command line sent to sshd: PID line first, the command in a subshell.

    The subshell makes the outer shell report the command's status (128+N when a signal
    killed it) instead of being replaced by it and dying without an exit status.
    """
    return f"printf '%s\\n' \"$$\"\n(\n{command}\n)\nexit $?"


_ESCAPED = re.compile(r"\\(.)")


def parse_os_release(text: str) -> dict[str, str]:
    """``KEY=value`` lines of os-release(5) as a dict, quotes and backslash escapes removed."""
    values: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        key, sep, value = line.partition("=")
        if not sep or line.startswith("#") or not key.strip():
            continue
        if len(value) >= 2 and value[0] == value[-1] == "'":
            value = value[1:-1]
        elif len(value) >= 2 and value[0] == value[-1] == '"':
            value = _ESCAPED.sub(r"\1", value[1:-1])
        else:
            value = _ESCAPED.sub(r"\1", value)
        values[key.strip()] = value
    return values


# ---------------------------------------------------------------- the connection


class SshConnection:
    """A reusable SSH connection to one node; thread-safe; see the module docstring."""

    def __init__(self, target: SshTarget, output_limit: int = DEFAULT_OUTPUT_LIMIT) -> None:
        self.target = target
        self.output_limit = output_limit
        self._connect_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._client: paramiko.SSHClient | None = None
        self._connecting: socket.socket | None = None
        self._key: paramiko.PKey | None = None
        self._running: set[_Running] = set()
        self._cancelled = False
        self.connections_made = 0
        """How many SSH connections this object opened (tests and logs use it)."""

    def __enter__(self) -> SshConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ public API

    @property
    def transport(self) -> paramiko.Transport | None:
        """The current transport, None before the first command or after close."""
        client = self._client
        return None if client is None else client.get_transport()

    def connect(self) -> paramiko.Transport:
        """Connect now if not connected (or the transport died); return the live transport."""
        with self._connect_lock:
            self._check_cancelled()
            transport = self.transport
            if transport is not None and transport.is_active():
                return transport
            self._drop_client()
            client = self._open_client()
            with self._state_lock:
                if self._cancelled:
                    client.close()
                    raise SshCancelled(self.target.address, "cancelled")
                self._client = client
            transport = client.get_transport()
            assert transport is not None
            return transport

    def run(
        self,
        argv: list[str] | None = None,
        script: str | None = None,
        *,
        timeout: float,
        stdin: Stdin | None = None,
        on_output: OutputCallback | None = None,
        check: bool = False,
    ) -> CommandResult:
        """Run ``argv`` (quoted with shlex.join) or a shell ``script`` on the node.

        ``stdin`` (bytes, a binary file or an iterator of bytes) is streamed to the command in
        1 MiB pieces while stdout and stderr are read; each stream's tail is kept in the result
        and every line is passed to ``on_output(stream, text)`` as it arrives. After
        ``timeout`` seconds (connecting included) the command is killed on the node and the
        result says ``timed_out``; after :meth:`cancel` it says ``cancelled``. ``returncode``
        is None then, or when the node's shell ended without an exit status (killed).

        With ``check=True``, a result that is not ``ok`` raises instead: SshCommandTimeout,
        SshCancelled or SshCommandFailed, each carrying the result. Always raised:
        SshUnreachable, SshAuthFailed, SshKeyError, SshConnectionLost.
        """
        if (argv is None) == (script is None):
            raise ValueError("run() takes exactly one of argv and script")
        if argv is not None:
            command = shlex.join(argv)
            shown: tuple[str, ...] = tuple(argv)
        else:
            assert script is not None
            command = script
            shown = ("sh", "-c", script)
        started = time.monotonic()
        logger.debug("ssh %s: run %s", self.target.address, shlex.join(shown)[:500])
        try:
            running = self._start(_wrap(command))
        except SshCancelled:
            result = CommandResult(shown, None, "", "cancelled", False, 0.0, cancelled=True)
        else:
            try:
                result = self._communicate(
                    running,
                    shown=shown,
                    started=started,
                    timeout=timeout,
                    stdin=stdin,
                    on_output=on_output,
                )
            finally:
                with self._state_lock:
                    self._running.discard(running)
                running.channel.close()
        logger.debug(
            "ssh %s: exit %s%s%s after %.2fs",
            self.target.address,
            result.returncode,
            " (timed out)" if result.timed_out else "",
            " (cancelled)" if result.cancelled else "",
            result.duration,
        )
        if check:
            self._check(result, timeout)
        return result

    def _check(self, result: CommandResult, timeout: float) -> None:
        what = shlex.join(result.argv)[:200]
        if result.cancelled:
            raise SshCancelled(self.target.address, f"{what}: cancelled")
        if result.timed_out:
            raise SshCommandTimeout(
                self.target.address, f"{what}: timed out after {timeout:g}s", result
            )
        if result.returncode != 0:
            tail = result.stderr_tail(5)
            status = "no exit status" if result.returncode is None else "exit status"
            raise SshCommandFailed(
                self.target.address,
                f"{what}: {status} {result.returncode}" + (f": {tail}" if tail else ""),
                result,
            )

    def cancel(self) -> None:
        """Abort from any thread: kill running commands on the node, close the connection.

        Returns within about KILL_TIMEOUT seconds even if the node hangs. The connection stays
        cancelled: running and later ``run`` calls return results marked ``cancelled``.
        """
        with self._state_lock:
            self._cancelled = True
            running = list(self._running)
            connecting = self._connecting
        if connecting is not None:
            with contextlib.suppress(OSError):
                connecting.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                connecting.close()
        for command in running:
            # A command started a moment ago may not have sent its PID line yet. Killing it
            # first makes the node end the channel, which wakes the thread in run() at once.
            command.pgid_known.wait(KILL_TIMEOUT)
            self._kill_remote(command)
            command.channel.close()
        logger.info("ssh %s: cancelled (%d running command(s))", self.target.address, len(running))
        self._drop_client()

    def close(self) -> None:
        """Close the connection (idempotent); a later ``run`` connects again."""
        self._drop_client()

    # ------------------------------------------------------------ connecting

    def _check_cancelled(self) -> None:
        if self._cancelled:
            raise SshCancelled(self.target.address, "cancelled")

    def _load_key(self) -> paramiko.PKey:
        if self._key is None:
            path = self.target.key_file
            try:
                self._key = paramiko.PKey.from_path(path)
            except FileNotFoundError:
                raise SshKeyError(self.target.address, f"key file {path} does not exist") from None
            except OSError as exc:
                raise SshKeyError(
                    self.target.address, f"key file {path}: {exc.strerror or exc}"
                ) from None
            except (ValueError, TypeError, paramiko.SSHException) as exc:
                raise SshKeyError(
                    self.target.address,
                    f"key file {path} is not a usable private key "
                    f"(an unencrypted OpenSSH or PEM RSA/ECDSA/Ed25519 key): {exc}",
                ) from None
        return self._key

    def _open_client(self) -> paramiko.SSHClient:
        target = self.target
        where = target.address
        port = target.port
        key = self._load_key()
        sock = _tcp_connect(target)
        with self._state_lock:
            self._connecting = sock
        client = paramiko.SSHClient()
        try:
            if target.host_keys:
                _pin(client, target)
            else:
                client.set_missing_host_key_policy(_AcceptHostKey())
            client.connect(
                target.address,
                port=target.port,
                username=target.user,
                pkey=key,
                sock=sock,
                timeout=target.connect_timeout,
                banner_timeout=target.connect_timeout,
                auth_timeout=target.auth_timeout,
                channel_timeout=target.connect_timeout,
                look_for_keys=False,
                allow_agent=False,
            )
        except (paramiko.BadHostKeyException, SshError) as exc:  # nothing was sent
            client.close()
            sock.close()
            self._check_cancelled()
            if isinstance(exc, paramiko.BadHostKeyException):
                exc = SshHostKeyMismatch(target, _key_text(exc.key))
            logger.warning("%s", exc)
            raise exc from None
        except paramiko.AuthenticationException as exc:
            client.close()
            self._check_cancelled()
            raise SshAuthFailed(
                where, f"user {target.user} was refused with the key {target.key_file} ({exc})"
            ) from None
        except (paramiko.SSHException, EOFError, OSError) as exc:
            client.close()
            self._check_cancelled()
            raise SshUnreachable(
                where, f"SSH handshake on port {port} failed: {str(exc) or type(exc).__name__}"
            ) from None
        finally:
            with self._state_lock:
                self._connecting = None
        transport = client.get_transport()
        assert transport is not None
        if target.keepalive > 0:
            transport.set_keepalive(max(1, round(target.keepalive)))
        self.connections_made += 1
        logger.debug("ssh %s:%d: connected as %s", where, port, target.user)
        return client

    def _drop_client(self) -> None:
        with self._state_lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    # ------------------------------------------------------------ running

    def _start(self, command: str) -> _Running:
        """Open a channel and start ``command``, reconnecting once if the transport died."""
        for attempt in (1, 2):
            previous = self.transport
            transport = self.connect()
            try:
                channel = transport.open_session(timeout=self.target.connect_timeout)
                running = _Running(channel)
                with self._state_lock:
                    if self._cancelled:
                        channel.close()
                        raise SshCancelled(self.target.address, "cancelled")
                    self._running.add(running)
                try:
                    channel.exec_command(command)
                except BaseException:
                    with self._state_lock:
                        self._running.discard(running)
                    channel.close()
                    raise
                return running
            except (paramiko.SSHException, EOFError, OSError) as exc:
                self._check_cancelled()
                if transport.is_active():
                    raise SshError(self.target.address, f"cannot start a command: {exc}") from None
                self._drop_client()
                if transport is not previous or attempt == 2:
                    raise SshConnectionLost(
                        self.target.address, f"connection lost before the command started: {exc}"
                    ) from None
                logger.info(
                    "ssh %s: connection found dead (%s); reconnecting", self.target.address, exc
                )
        raise AssertionError("unreachable")

    def _communicate(
        self,
        running: _Running,
        *,
        shown: tuple[str, ...],
        started: float,
        timeout: float,
        stdin: Stdin | None,
        on_output: OutputCallback | None,
    ) -> CommandResult:
        channel = running.channel
        capture = _Capture(running, self.output_limit, on_output)
        source_error: list[Exception] = []
        writer = threading.Thread(
            target=self._feed,
            args=(channel, stdin, source_error),
            name=f"ssh-stdin-{self.target.address}",
            daemon=True,
        )
        writer.start()
        try:
            timed_out = not self._wait(capture, started + timeout)
            if timed_out or source_error:
                self._kill_remote(running)
        except BaseException:  # e.g. on_output raised: leave nothing running on the node
            self._kill_remote(running)
            raise
        finally:
            channel.close()
            running.pgid_known.set()
            writer.join(JOIN_TIMEOUT)
            if writer.is_alive():
                logger.warning("ssh %s: stdin writer still busy after close", self.target.address)
        stdout, stderr = capture.close()
        duration = time.monotonic() - started
        if self._cancelled:
            return CommandResult(shown, None, stdout, stderr, False, duration, cancelled=True)
        if source_error:
            raise SshError(
                self.target.address, f"reading the data to send failed: {source_error[0]}"
            ) from source_error[0]
        returncode: int | None = None
        if not timed_out and channel.exit_status != -1:
            returncode = channel.exit_status
        elif not timed_out:
            transport = self.transport
            if transport is None or not transport.is_active():
                raise SshConnectionLost(
                    self.target.address,
                    f"{shlex.join(shown)[:200]}: connection lost after {duration:.1f}s",
                )
            # sshd sent exit-signal (paramiko ignores it) instead of exit-status: the node's
            # shell itself was killed, by someone else than us.
            stderr += "[kadeployd: the remote shell was killed before it could exit]\n"
        return CommandResult(shown, returncode, stdout, stderr, timed_out, duration)

    @staticmethod
    def _wait(capture: _Capture, deadline: float) -> bool:
        """Read output until the command ended (True) or the deadline passed (False)."""
        channel = capture.running.channel
        # The channel's fd is readable while either stream has data, and once it is closed.
        # poll(), not select(): a daemon talking to hundreds of nodes has fds above 1024.
        poller = select.poll()
        poller.register(channel.fileno(), select.POLLIN)
        while True:
            capture.read_available()
            if channel.eof_received or channel.closed:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            events = poller.poll(max(1, min(int(remaining * 1000), 1000)))
            if any(flags & select.POLLNVAL for _, flags in events):
                # Another thread (cancel, or the writer whose data source failed) is closing
                # the channel and closed the pipe behind the fd first; the close sets the status.
                break
        # Both streams are at EOF; the exit status follows (or the channel closes).
        remaining = deadline - time.monotonic()
        return remaining > 0 and channel.status_event.wait(remaining)

    def _feed(
        self, channel: paramiko.Channel, stdin: Stdin | None, source_error: list[Exception]
    ) -> None:
        """Writer thread: send stdin in chunks, then EOF; stops when the channel closes."""
        try:
            if stdin is not None:
                pieces = _chunks(stdin)
                while True:
                    try:
                        chunk = next(pieces)
                    except StopIteration:
                        break
                    except Exception as exc:  # the caller's data source failed
                        source_error.append(exc)
                        channel.close()
                        return
                    channel.sendall(chunk)
            channel.shutdown_write()
        except (OSError, EOFError, paramiko.SSHException) as exc:
            # The command exited, timed out or was cancelled before reading everything.
            logger.debug("ssh %s: stdin not fully sent: %s", self.target.address, exc)

    def _kill_remote(self, running: _Running) -> None:
        """Kill the command's process group on the node over a second channel (best effort)."""
        with running.lock:
            if running.killed or running.pgid is None:
                return
            running.killed = True
        pgid = running.pgid
        transport = self.transport
        if transport is None or not transport.is_active():
            return
        timeout = min(KILL_TIMEOUT, self.target.connect_timeout)
        try:
            channel = transport.open_session(timeout=timeout)
            try:
                channel.exec_command(
                    f"kill -s KILL -- -{pgid} 2>/dev/null || kill -s KILL {pgid} 2>/dev/null"
                )
                channel.shutdown_write()
                channel.status_event.wait(timeout)
            finally:
                channel.close()
            logger.debug("ssh %s: killed remote process group %d", self.target.address, pgid)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            logger.debug(
                "ssh %s: could not kill process group %d: %s", self.target.address, pgid, exc
            )


# ---------------------------------------------------------------- probe


BOOT_ID = "/proc/sys/kernel/random/boot_id"
"""Linux's id of the running boot: it changes at every boot, whatever the system."""


def probe(target: SshTarget, timeout: float) -> ProbeResult:
    """Connect once, read /etc/os-release and /proc/cmdline, and close; never raises SshError.

    This is how the daemon tells a node's deploy env, prod env and deployed env apart.
    """
    deadline = time.monotonic() + timeout
    quick = replace(
        target,
        connect_timeout=min(target.connect_timeout, timeout),
        auth_timeout=min(target.auth_timeout, timeout),
        keepalive=0,
    )
    errors: list[str] = []
    with SshConnection(quick, output_limit=256 * 1024) as connection:
        try:
            release = connection.run(
                script="cat /etc/os-release 2>/dev/null || cat /usr/lib/os-release",
                timeout=max(deadline - time.monotonic(), 0.1),
            )
            cmdline = connection.run(
                ["cat", "/proc/cmdline", BOOT_ID], timeout=max(deadline - time.monotonic(), 0.1)
            )
        except SshHostKeyMismatch as exc:
            return ProbeResult(
                reachable=False,
                os_release=None,
                cmdline=None,
                error=str(exc),
                refused_host_key=exc.offered,
            )
        except SshError as exc:
            return ProbeResult(reachable=False, os_release=None, cmdline=None, error=str(exc))
    os_release: dict[str, str] | None = None
    if release.ok:
        os_release = parse_os_release(release.stdout)
    else:
        errors.append(f"os-release: {_failure(release)}")
    kernel_cmdline: str | None = None
    boot_id: str | None = None
    lines = cmdline.stdout.splitlines()
    if lines and (cmdline.ok or len(lines) == 1):  # a system without a boot id still has this
        kernel_cmdline = lines[0]
        boot_id = lines[1].strip() if cmdline.ok and len(lines) > 1 else None
    else:
        errors.append(f"/proc/cmdline: {_failure(cmdline)}")
    return ProbeResult(
        reachable=True,
        os_release=os_release,
        cmdline=kernel_cmdline,
        error="; ".join(errors) or None,
        boot_id=boot_id,
    )


def _failure(result: CommandResult) -> str:
    if result.timed_out:
        return f"timed out after {result.duration:.1f}s"
    tail = result.stderr_tail(2)
    return f"exit status {result.returncode}" + (f": {tail}" if tail else "")
