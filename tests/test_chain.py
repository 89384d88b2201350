"""Chain transfer with real relay processes, real TCP on 127.0.0.1 and real writers.

Each test starts relays (``python3 -I -S relay.py``), streams a file through them with
``ChainSender`` and checks what every hop wrote and reported. Mid-stream faults are timed by
pausing the sender in its ``checkpoint`` hook, never by sleeping.
"""

from __future__ import annotations

import ast
import hashlib
import os
import signal
import socket
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from chain_fixtures import (
    PYTHON,
    WAIT,
    RelayFactory,
    RelayProcess,
    raw_writer,
    relays,
    slow_writer,
    tar_writer,
    vm_rss_kib,
    wait_until,
)

from kadeployd.chain import (
    ChainCancelled,
    ChainEvent,
    ChainResult,
    ChainSender,
    Hop,
    new_secret,
    send_chain,
)
from kadeployd.chain.command import RELAY_PATH
from kadeployd.chain.relay import MAGIC, NONCE_SIZE
from kadeployd.environment import Compression
from kadeployd.environment.image import checks_itself

__all__ = ["relays"]

MIB = 1 << 20


def random_file(path: Path, size: int) -> Path:
    """``size`` bytes that compress badly, written in pieces to keep the test's memory low."""
    with path.open("wb") as out:
        left = size
        while left:
            piece = min(left, 4 * MIB)
            out.write(os.urandom(piece))
            left -= piece
    return path


def sha256_of(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as stream:
        while block := stream.read(4 * MIB):
            sha.update(block)
    return sha.hexdigest()


class Pause:
    """A checkpoint hook that holds the sender once it passed ``at`` bytes, until released."""

    def __init__(self, at: int) -> None:
        self.at = at
        self.reached = threading.Event()
        self.release = threading.Event()
        self.offset = 0

    def __call__(self, offset: int) -> None:
        self.offset = offset
        if offset >= self.at and not self.reached.is_set():
            self.reached.set()
            assert self.release.wait(WAIT), "the test never released the sender"


class Background:
    """Runs a ChainSender in a thread, as the daemon does."""

    def __init__(self, sender: ChainSender) -> None:
        self.sender = sender
        self.result: ChainResult | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.result = self.sender.run()
        except BaseException as exc:
            self.error = exc

    def join(self) -> ChainResult:
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), "the sender did not finish"
        self.sender.close()
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


def start_chain(
    relays: RelayFactory, tmp_path: Path, count: int, secret: bytes, **options: object
) -> tuple[list[Hop], list[Path]]:
    outputs = [tmp_path / f"out{i}" for i in range(count)]
    started = [
        relays.start(f"relay{i}", raw_writer(outputs[i]), secret, **options) for i in range(count)
    ]
    return [relay.wait_listening() for relay in started], outputs


def test_relay_imports_only_the_standard_library(tmp_path: Path) -> None:
    tree = ast.parse(RELAY_PATH.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative import in relay.py"
            imported.add((node.module or "").split(".")[0])
    assert imported - {"__future__"} <= set(sys.stdlib_module_names)
    # And it really starts from a lone copy with no site-packages at all.
    copy = tmp_path / "relay.py"
    copy.write_bytes(RELAY_PATH.read_bytes())
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]); import relay; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] not in sys.stdlib_module_names))"
    )
    done = subprocess.run(
        [PYTHON, "-I", "-S", "-c", probe, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=True,
    )
    assert done.stdout.strip() == "['__main__', 'relay']"


def test_four_hop_chain_delivers_identical_raw_bytes(relays: RelayFactory, tmp_path: Path) -> None:
    image = random_file(tmp_path / "image.raw", 24 * MIB + 12345)
    secret = new_secret()
    hops, outputs = start_chain(relays, tmp_path, 4, secret)
    events: list[ChainEvent] = []

    result = send_chain(image, hops, secret, stall_timeout=10, on_event=events.append)

    source = sha256_of(image)
    assert result.sha256 == source
    assert result.failures([hop.address for hop in hops]) == {}
    assert result.dead == {}
    for output in outputs:
        assert sha256_of(output) == source
    for relay in relays.started:
        assert relay.wait_exit() == 0
        (done,) = relay.of_kind("done")
        assert (done.bytes, done.sha256, done.writer_status) == (image.stat().st_size, source, 0)
    assert [e.kind for e in events if e.kind != "progress"] == ["connected", "done"]


def test_four_hop_chain_unpacks_a_zstd_tar(relays: RelayFactory, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "os-release").write_text('NAME="kadeploy test"\n')
    random_file(tree / "blob", 6 * MIB)
    (tree / "link").symlink_to("etc/os-release")
    tarball = tmp_path / "image.tar"
    with tarfile.open(tarball, "w") as archive:
        archive.add(tree, arcname=".")
    image = tmp_path / "image.tar.zst"
    subprocess.run(["zstd", "-q", "-3", str(tarball), "-o", str(image)], check=True, timeout=WAIT)
    secret = new_secret()
    targets = [tmp_path / f"dest{i}" for i in range(4)]
    started = []
    for i, target in enumerate(targets):
        target.mkdir()
        started.append(relays.start(f"relay{i}", tar_writer(target), secret))
    hops = [relay.wait_listening() for relay in started]

    result = send_chain(image, hops, secret)

    assert result.failures([hop.address for hop in hops]) == {}
    for target in targets:
        assert (target / "etc" / "os-release").read_text() == 'NAME="kadeploy test"\n'
        assert sha256_of(target / "blob") == sha256_of(tree / "blob")
        assert os.readlink(target / "link") == "etc/os-release"


DIGESTS = pytest.mark.parametrize(
    "digest", [True, False], ids=["sha256", "no-digest-page-references"]
)
"""A middle relay with a digest keeps its ring in memory; without one (an image that checks
itself), its ring and its successor's share are pipes of page references (PipeRing)."""


def _page_references(relay: RelayProcess, digest: bool) -> bool:
    return ("page references" in relay.stderr_path.read_text()) != digest


@DIGESTS
@pytest.mark.parametrize("victim", [0, 1], ids=["first-hop", "second-hop"])
def test_killed_hop_is_cut_out_and_the_rest_finish(
    relays: RelayFactory, tmp_path: Path, victim: int, digest: bool
) -> None:
    size = 48 * MIB
    image = random_file(tmp_path / "image.raw", size)
    secret = new_secret()
    hops, outputs = start_chain(
        relays, tmp_path, 4, secret, ring_mib=40, progress_interval=0.05, digest=digest
    )
    pause = Pause(at=size // 3)
    sha = None if digest else ""
    sender = ChainSender(image, hops, secret, stall_timeout=30, checkpoint=pause, source_sha256=sha)
    running = Background(sender)
    assert pause.reached.wait(WAIT)
    wait_until(lambda: relays.started[-1].progress() > 0, what="the stream reaching the tail")

    # Freeze the victim so that the bytes sent next pile up in its buffers, then kill it:
    # the hop before it must re-link and feed the next one from what it holds.
    target = relays.started[victim]
    target.signal(signal.SIGSTOP)
    paused_at = pause.offset
    pause.release.set()
    if victim == 0:
        wait_until(lambda: pause.offset > paused_at, what="sender pushing into the frozen hop")
    else:
        wait_until(lambda: relays.started[0].progress() > paused_at, what="hop 1 forwarding")
    target.signal(signal.SIGKILL)
    result = running.join()

    source = sha256_of(image)
    assert result.sha256 == (source if digest else "")
    failures = result.failures([hop.address for hop in hops])
    assert list(failures) == [hops[victim].address]
    assert hops[victim].address in result.dead
    for index, output in enumerate(outputs):
        if index != victim:
            assert sha256_of(output) == source
    # The hops before the tail forwarded; the one before the victim caught its new
    # successor up from its ring.
    assert all(_page_references(relays.started[i], digest) for i in range(3) if i != victim)


@DIGESTS
def test_stalled_hop_is_detected_and_cut_out(
    relays: RelayFactory, tmp_path: Path, digest: bool
) -> None:
    size = 32 * MIB
    image = random_file(tmp_path / "image.raw", size)
    secret = new_secret()
    hops, outputs = start_chain(
        relays, tmp_path, 4, secret, stall_timeout=2, progress_interval=0.05, digest=digest
    )
    pause = Pause(at=size // 4)
    events: list[ChainEvent] = []
    sender = ChainSender(
        image,
        hops,
        secret,
        stall_timeout=2,
        checkpoint=pause,
        on_event=events.append,
        source_sha256=None if digest else "",
    )
    running = Background(sender)
    assert pause.reached.wait(WAIT)
    wait_until(lambda: relays.started[-1].progress() > 0, what="the stream reaching the tail")
    relays.started[2].signal(signal.SIGSTOP)  # stays stopped: only a stall timeout can help
    pause.release.set()
    result = running.join()

    stalled = hops[2].address
    # Only the stalled hop is cut out: hops 1 and 2, blocked behind it, kept sending heartbeats.
    assert list(result.dead) == [stalled]
    assert "stalled" in result.dead[stalled]
    assert [e.node for e in events if e.kind == "dead"] == [stalled]
    source = sha256_of(image)
    for index in (0, 1, 3):
        assert sha256_of(outputs[index]) == source
    assert _page_references(relays.started[1], digest)


def closed_by_peer(sock: socket.socket) -> bool:
    """True once the peer closed (EOF) or reset (it had unread bytes) the connection."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_connection_without_the_secret_is_refused(relays: RelayFactory, tmp_path: Path) -> None:
    secret = new_secret()
    hops, outputs = start_chain(relays, tmp_path, 1, secret)
    address = ("127.0.0.1", hops[0].port)

    with socket.create_connection(address, timeout=WAIT) as intruder:
        greeting = intruder.recv(len(MAGIC) + NONCE_SIZE, socket.MSG_WAITALL)
        assert greeting.startswith(MAGIC)
        intruder.sendall(b"\0" * 32 + b"\0\0\0\x02{}")
        assert closed_by_peer(intruder), "a wrong secret must get the connection closed"
    with socket.create_connection(address, timeout=WAIT) as silent:
        silent.shutdown(socket.SHUT_WR)  # presents nothing at all
        silent.recv(len(MAGIC) + NONCE_SIZE, socket.MSG_WAITALL)
        assert closed_by_peer(silent)

    # A sender with the wrong secret is refused too, and the relay keeps serving.
    image = random_file(tmp_path / "image.raw", 3 * MIB)
    refused = send_chain(image, hops, new_secret(), stall_timeout=5)
    assert "refused by the relay" in refused.dead[hops[0].address]
    result = send_chain(image, hops, secret)
    assert result.failures([hops[0].address]) == {}
    assert sha256_of(outputs[0]) == sha256_of(image)


def test_memory_stays_bounded_behind_a_slow_writer(relays: RelayFactory, tmp_path: Path) -> None:
    size = 96 * MIB
    ring_mib = 8
    image = random_file(tmp_path / "image.raw", size)
    secret = new_secret()
    relay = relays.start("slow", slow_writer(tmp_path / "out"), secret, ring_mib=ring_mib)
    hop = relay.wait_listening()
    before = vm_rss_kib(relay.proc.pid)
    samples: list[int] = []

    def sample(offset: int) -> None:
        samples.append(vm_rss_kib(relay.proc.pid))

    sender = ChainSender(image, [hop], secret, stall_timeout=30, checkpoint=sample)
    result = Background(sender).join()

    assert result.failures([hop.address]) == {}
    assert sha256_of(tmp_path / "out") == sha256_of(image)
    assert len(samples) > 20
    # Ring (which is also the receive buffer) plus a margin for the interpreter's own growth;
    # a relay that queued what its writer had not taken yet would hold most of the 96 MiB.
    bound = before + ring_mib * 1024 + 1024 + 8 * 1024
    assert max(samples) < bound, (before, max(samples))


def test_failing_writer_is_reported_and_the_stream_goes_on(
    relays: RelayFactory, tmp_path: Path
) -> None:
    image = random_file(tmp_path / "image.raw", 8 * MIB)
    secret = new_secret()
    outputs = [tmp_path / "out0", tmp_path / "out2"]
    started = [
        relays.start("relay0", raw_writer(outputs[0]), secret),
        relays.start("relay1", ["sh", "-c", "exit 3"], secret),
        relays.start("relay2", raw_writer(outputs[1]), secret),
    ]
    hops = [relay.wait_listening() for relay in started]

    result = send_chain(image, hops, secret)

    failures = result.failures([hop.address for hop in hops])
    assert list(failures) == [hops[1].address]
    assert "writer exit status 3" in failures[hops[1].address]
    for output in outputs:
        assert sha256_of(output) == sha256_of(image)


def test_cancel_stops_the_sender(relays: RelayFactory, tmp_path: Path) -> None:
    image = random_file(tmp_path / "image.raw", 16 * MIB)
    secret = new_secret()
    hops, _ = start_chain(relays, tmp_path, 2, secret)
    pause = Pause(at=4 * MIB)
    running = Background(ChainSender(image, hops, secret, checkpoint=pause))
    assert pause.reached.wait(WAIT)
    running.sender.cancel()
    pause.release.set()
    with pytest.raises(ChainCancelled):
        running.join()


def test_relay_rejects_bad_arguments_in_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [PYTHON, "-I", "-S", str(RELAY_PATH), "--writer", "cat"],
        input=b"s" * 32 + b"\n",
        check=False,
        capture_output=True,
        timeout=WAIT,
    )
    assert done.returncode == 2
    assert done.stderr.decode().strip().splitlines() == [
        "relay: --writer is not JSON: Expecting value: line 1 column 1 (char 0)"
    ]
    short = subprocess.run(
        [PYTHON, "-I", "-S", str(RELAY_PATH), "--writer", '["cat"]'],
        input=b"short\n",
        check=False,
        capture_output=True,
        timeout=WAIT,
    )
    assert short.returncode == 2
    assert b"shorter than 16 bytes" in short.stderr


def test_relay_without_upstream_gives_up_after_its_idle_timeout(relays: RelayFactory) -> None:
    relay = relays.start("idle", ["cat"], new_secret(), idle_timeout=0.5)
    relay.wait_listening()
    assert relay.wait_exit() == 3
    (error,) = relay.of_kind("error")
    assert "nothing from upstream" in error.reason


@pytest.fixture
def ext4_mount(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A real ext4 filesystem on a loop device, mounted; yields (mount point, loop device)."""
    # Roomy (sparse): on a nearly full ext4, delayed allocation gives up and writes at once.
    # Tables and journal initialised now, so no background zeroing writes to the device later.
    backing = tmp_path / "disk.img"
    with backing.open("wb") as disk:
        disk.truncate(1024 * MIB)
    mkfs = ["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"]
    subprocess.run([*mkfs, str(backing)], check=True, timeout=WAIT)
    device = subprocess.run(
        ["losetup", "--find", "--show", str(backing)],
        check=True,
        capture_output=True,
        text=True,
        timeout=WAIT,
    ).stdout.strip()
    mount_point = tmp_path / "mnt"
    mount_point.mkdir()
    try:
        subprocess.run(["mount", device, str(mount_point)], check=True, timeout=WAIT)
        try:
            yield mount_point, device
        finally:
            subprocess.run(["umount", str(mount_point)], check=True, timeout=WAIT)
    finally:
        subprocess.run(["losetup", "-d", device], check=True, timeout=WAIT)


def _kib_written(device: str) -> int:
    """KiB written to the block device so far (what reached it, not what sits in the cache)."""
    sectors = Path(f"/sys/block/{Path(device).name}/stat").read_text().split()[6]
    return int(sectors) // 2


@pytest.mark.root
def test_flush_makes_the_disk_write_during_the_stream(
    relays: RelayFactory, tmp_path: Path, ext4_mount: tuple[Path, str]
) -> None:
    # Without flushing, what the writer wrote would sit in the page cache until umount: the
    # kernel starts writeback only past a share of RAM, or after 30 s. The writer is paced
    # (about 3 s for 48 MiB) so that the stream lasts several of the flusher's periods.
    mount_point, device = ext4_mount
    image = random_file(tmp_path / "image.raw", 48 * MIB)
    target = mount_point / "image.raw"
    secret = new_secret()
    before = _kib_written(device)
    writer = slow_writer(target, block=MIB // 16, pause=0.004)
    relay = relays.start("flushing", writer, secret, flush=str(mount_point), flush_mib=4)

    result = send_chain(image, [relay.wait_listening()], secret)

    assert result.failures([f"127.0.0.1:{relay.port}"]) == {}
    assert relay.wait_exit() == 0
    assert sha256_of(target) == sha256_of(image)
    assert _kib_written(device) - before >= 24 * 1024, "the image was not written back yet"
    assert "flush" not in relay.stderr_path.read_text()


def test_relay_reports_an_unflushable_path_and_still_delivers(
    relays: RelayFactory, tmp_path: Path
) -> None:
    image = random_file(tmp_path / "image.raw", 8 * MIB)
    output = tmp_path / "out"
    secret = new_secret()
    missing = tmp_path / "no-such-dir"
    relay = relays.start("unflushable", raw_writer(output), secret, flush=str(missing), flush_mib=2)

    result = send_chain(image, [relay.wait_listening()], secret)

    assert result.failures([f"127.0.0.1:{relay.port}"]) == {}
    assert relay.wait_exit() == 0
    assert sha256_of(output) == sha256_of(image)
    assert f"cannot open {missing} to flush it" in relay.stderr_path.read_text()


def test_the_flushed_path_may_be_made_by_the_writer(relays: RelayFactory, tmp_path: Path) -> None:
    """The daemon's tar writer mounts the deploy partition itself, after the relay started:
    the relay opens the path to flush only once the writer has had data."""
    image = random_file(tmp_path / "image.raw", 8 * MIB)
    made = tmp_path / "made-by-the-writer"
    writer = ["sh", "-c", 'mkdir "$1" && exec cat > "$1/image.raw"', "sh", str(made)]
    secret = new_secret()
    relay = relays.start("mounting", writer, secret, flush=str(made), flush_mib=2)

    result = send_chain(image, [relay.wait_listening()], secret)

    assert result.failures([f"127.0.0.1:{relay.port}"]) == {}
    assert relay.wait_exit() == 0
    assert sha256_of(made / "image.raw") == sha256_of(image)
    assert "flush" not in relay.stderr_path.read_text()


def test_relays_without_a_digest_leave_the_check_to_the_decompressor(
    relays: RelayFactory, tmp_path: Path
) -> None:
    """``digest=False`` (an image that checks itself): no SHA-256 anywhere, and a corrupted
    byte still fails every node, through zstd's content checksum."""
    tree = tmp_path / "tree"
    tree.mkdir()
    random_file(tree / "blob", 4 * MIB)  # incompressible: zstd stores it in raw blocks
    tarball = tmp_path / "image.tar"
    with tarfile.open(tarball, "w") as archive:
        archive.add(tree, arcname=".")
    image = tmp_path / "image.tar.zst"
    subprocess.run(["zstd", "-q", "-3", str(tarball), "-o", str(image)], check=True, timeout=WAIT)
    assert checks_itself(image, Compression.ZSTD)
    corrupted = tmp_path / "corrupted.tar.zst"
    data = bytearray(image.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside a raw block: only the checksum can tell
    corrupted.write_bytes(bytes(data))

    for name, source in (("good", image), ("bad", corrupted)):
        secret = new_secret()
        targets = [tmp_path / f"{name}{i}" for i in range(2)]
        started = []
        for i, target in enumerate(targets):
            target.mkdir()
            started.append(relays.start(f"{name}{i}", tar_writer(target), secret, digest=False))
        hops = [relay.wait_listening() for relay in started]
        result = send_chain(source, hops, secret, source_sha256="")
        failures = result.failures([hop.address for hop in hops])
        for relay in started:
            assert relay.wait_exit() == 0
            (done,) = relay.of_kind("done")
            assert done.sha256 == ""
        if name == "good":
            assert failures == {}
            assert all(sha256_of(t / "blob") == sha256_of(tree / "blob") for t in targets)
        else:
            assert sorted(failures) == sorted(hop.address for hop in hops)
            assert all("writer exit status" in why for why in failures.values())


def test_a_tail_without_digest_splices_into_its_writer_and_survives_its_failures(
    relays: RelayFactory, tmp_path: Path
) -> None:
    """The tail without a digest keeps no byte in user space: the socket goes straight into
    its writer's pipe. A slow writer is waited for; one that stops reading leaves the stream
    to be received to its end and reported (bytes, writer status)."""
    image = random_file(tmp_path / "image.raw", 12 * MIB + 777)
    for name, writer, status in (
        ("slow", slow_writer(tmp_path / "slow.out", pause=0.001), 0),
        ("stops", ["sh", "-c", "head -c 100000 > /dev/null; exit 3"], 3),
    ):
        secret = new_secret()
        tail = relays.start(name, writer, secret, digest=False)
        hops = [tail.wait_listening()]
        result = send_chain(image, hops, secret, source_sha256="")
        assert tail.wait_exit() == 0
        assert "straight into the writer" in tail.stderr_path.read_text()
        (done,) = tail.of_kind("done")
        assert (done.bytes, done.sha256, done.writer_status) == (image.stat().st_size, "", status)
        failures = result.failures([hop.address for hop in hops])
        if status == 0:
            assert failures == {}
            assert sha256_of(tmp_path / "slow.out") == sha256_of(image)
        else:
            assert "writer exit status 3" in failures[hops[0].address]
