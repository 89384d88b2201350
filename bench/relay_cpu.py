"""The chain relay's own CPU cost per GiB, on loopback, and what its parts cost.

    .venv/bin/python bench/relay_cpu.py [--size-mib 2048] [--runs 3]
        [--variant NAME=SOURCE[ RELAY-ARG...]]... [--rate MBIT [--piece-kib 64]] [--no-parts]

**The relay.** A server streams a random image of S MiB into a middle relay M that forwards it
to a tail relay T. Both are the real relay, started exactly as the daemon starts it
(``relay_launch`` + ``relay_stdin``: ``python3 -c BOOTSTRAP``, the source and the secret on
stdin) with the default options, listening on 127.0.0.1; each one's writer is
``sh -c 'exec cat > /dev/null'``, a separate process whose CPU is not counted. A relay's CPU is
utime + stime of its own process (all its threads, not its writer), read from /proc/PID/stat
when the stream starts and once it has exited (a zombie keeps its times until it is reaped),
so its start-up is left out. Per GiB of stream: M receives, writes to its writer and forwards
every byte; T receives and writes. Every run checks that both relays report the source's size
and SHA-256. On loopback a TCP send also does the receiving side's protocol work, so M's
figure holds T's receive processing and T's holds none of its own.

- By default the server is ``ChainSender`` (sendfile, as fast as the relays take it): the
  relays are CPU-bound and every receive gets about a whole 1 MiB piece.
- ``--rate MBIT`` paces the server instead: ``--piece-kib`` KiB sends at MBIT Mbit/s, as a
  link delivers them; the relays then wake up for every piece and the per-piece costs show.

``--variant NAME=SOURCE[ RELAY-ARG...]`` (repeatable; runs of the variants alternate, so that
a busy machine hurts them alike): SOURCE is ``tree`` (the work tree's relay), ``rev:REV`` (the
relay of a git revision, e.g. before a change) or ``file:PATH``; RELAY-ARGs are added to the
relay's arguments (e.g. ``--no-splice``). Default: ``tree``. The summary gives each variant's
median, range, and the median of its run-by-run differences to the first variant (each pair of
runs saw about the same machine: the steadiest comparison on a shared one).

**The parts** (``--no-parts`` skips them): each alone in a thread of this process, that
thread's CPU time per GiB, on pieces taken in turn from a 64 MiB buffer (the relay's ring: not
in cache): the hashes the standard library offers, a memory copy, ``send`` to loopback TCP,
and the two ways to take a piece from TCP into the ring and into the writer's pipe (read by
``cat > /dev/null``): ``recv_into`` + ``os.write`` (copies), or ``os.splice`` + ``tee(2)`` +
read + ``os.splice`` (what the relay does).

The target (issue "Deployment time end to end", item 3): at most 0.3 CPU-s per GiB for the
relay itself. Results and reading: BENCHMARKS.md, "Relay CPU per GiB".
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import hashlib
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from kadeployd.chain import (
    Hop,
    RelayEvent,
    new_secret,
    parse_report,
    relay_arguments,
    relay_launch,
    relay_stdin,
    send_chain,
)
from kadeployd.chain.command import _BOOTSTRAP, RELAY_PATH
from kadeployd.chain.relay import ACK, MessageReader, client_handshake, connect

PYTHON = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
MIB = 1 << 20
GIB = 1 << 30
TARGET = 0.3
TICK = os.sysconf("SC_CLK_TCK")
NULL_WRITER = ["sh", "-c", "exec cat > /dev/null"]
WAIT = 600.0
F_SETPIPE_SZ = 1031


class BenchError(Exception):
    pass


# -- the real relay ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Variant:
    name: str
    source: bytes | None
    """The relay's source; None: the work tree's, launched by ``relay_launch`` itself."""
    args: list[str]


def parse_variant(spec: str) -> Variant:
    name, sep, rest = spec.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{spec!r} is not NAME=SOURCE[ ARG...]")
    where, *args = rest.split()
    if where == "tree":
        source = None
    elif where.startswith("file:"):
        source = Path(where[5:]).read_bytes()
    elif where.startswith("rev:"):
        path = RELAY_PATH.relative_to(Path(__file__).resolve().parent.parent)
        source = subprocess.run(
            ["git", "show", f"{where[4:]}:{path}"],
            cwd=RELAY_PATH.parent,
            capture_output=True,
            check=True,
        ).stdout
    else:
        raise argparse.ArgumentTypeError(f"source {where!r}: tree, rev:REV or file:PATH")
    return Variant(name, source, args)


def process_cpu(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads, not its children), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def process_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs; idle and iowait count as not busy."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    total = sum(fields[:8])
    return total - fields[3] - fields[4], total


class Relay:
    """One relay process, started as the daemon starts it, and its reports."""

    def __init__(self, variant: Variant, secret: bytes) -> None:
        args = [*relay_arguments(NULL_WRITER, listen="127.0.0.1:0"), *variant.args]
        if variant.source is None:
            argv, stdin = relay_launch(args, python=(PYTHON,)), relay_stdin(secret)
        else:  # another relay source, through the same bootstrap
            argv = [PYTHON, "-c", _BOOTSTRAP.format(size=len(variant.source)), *args]
            stdin = variant.source + secret + b"\n"
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(stdin)
        self.proc.stdin.close()
        self.events: list[RelayEvent] = []
        first = parse_report(self.proc.stdout.readline())
        if first.kind != "listening":
            raise BenchError(f"relay did not start: {first}")
        self.hop = Hop("127.0.0.1", first.port)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.append(parse_report(line))

    def cpu_at_exit(self) -> float:
        """Its CPU seconds once it has exited, read from the zombie before reaping it."""
        deadline = time.monotonic() + WAIT
        while process_state(self.proc.pid) != "Z":
            if time.monotonic() > deadline:
                raise BenchError("relay did not exit")
            time.sleep(0.01)
        cpu = process_cpu(self.proc.pid)
        if self.proc.wait(WAIT) != 0:
            assert self.proc.stderr is not None
            raise BenchError(f"relay exited {self.proc.returncode}: {self.proc.stderr.read()!r}")
        self._reader.join(WAIT)
        return cpu

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, 9)
            self.proc.wait(WAIT)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@dataclass(frozen=True, slots=True)
class Run:
    middle: float
    """CPU-s per GiB of the middle relay (receive, write, forward)."""
    tail: float
    """CPU-s per GiB of the tail relay (receive, write)."""
    seconds: float
    busy: float
    """Share of the machine's cores busy during the stream (anyone's work)."""


def make_image(path: Path, size: int) -> str:
    """Random bytes (64 MiB of them, repeated); returns their SHA-256."""
    block = os.urandom(64 * MIB)
    sha = hashlib.sha256()
    with path.open("wb") as out:
        left = size
        while left:
            piece = memoryview(block)[: min(left, len(block))]
            out.write(piece)
            sha.update(piece)
            left -= len(piece)
    return sha.hexdigest()


def paced_send(image: Path, hops: list[Hop], secret: bytes, rate: float, piece: int) -> None:
    """The server's part at ``rate`` bit/s in ``piece``-byte sends; raises unless acked."""
    size = image.stat().st_size
    rest = [hop.address for hop in hops[1:]]
    header = {"size": size, "you": hops[0].address, "rest": rest}
    with connect(hops[0].address, 10) as sock, image.open("rb") as source:
        if client_handshake(sock, secret, header, 30) != 0:
            raise BenchError("the first relay asked for an offset")
        sock.settimeout(None)  # blocking: sendfile waits for room instead of EAGAIN
        start = time.monotonic()
        sent = 0
        while sent < size:
            sent += os.sendfile(sock.fileno(), source.fileno(), sent, min(piece, size - sent))
            ahead = start + sent * 8 / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        sock.shutdown(socket.SHUT_WR)
        reader = MessageReader()
        while data := sock.recv(65536):
            if any(kind == ACK for kind, _ in reader.feed(data)):
                return
    raise BenchError("no ack from the chain")


def measure_chain(image: Path, sha256: str, variant: Variant, rate: float, piece: int) -> Run:
    if "--digest" in variant.args and "none" in variant.args:
        sha256 = ""  # the relays report no digest; bytes and writer status are still checked
    secret = new_secret()
    relays: list[Relay] = []
    try:
        relays = [Relay(variant, secret), Relay(variant, secret)]
        hops = [relay.hop for relay in relays]
        cpu_before = [process_cpu(relay.proc.pid) for relay in relays]
        busy0, total0 = machine_jiffies()
        start = time.monotonic()
        if rate:
            paced_send(image, hops, secret, rate, piece)
        else:
            result = send_chain(image, hops, secret, stall_timeout=30, source_sha256=sha256)
            failures = result.failures([hop.address for hop in hops])
            if failures:
                raise BenchError(f"the chain failed: {failures}")
        seconds = time.monotonic() - start
        busy1, total1 = machine_jiffies()
        cpu = [
            relay.cpu_at_exit() - before for relay, before in zip(relays, cpu_before, strict=True)
        ]
    finally:
        for relay in relays:
            relay.stop()
    size = image.stat().st_size
    for relay in relays:
        done = [e for e in relay.events if e.kind == "done"]
        if not done or (done[0].bytes, done[0].sha256, done[0].writer_status) != (size, sha256, 0):
            raise BenchError(f"relay reported {done} instead of {size} bytes, {sha256}")
    gib = size / GIB
    return Run(cpu[0] / gib, cpu[1] / gib, seconds, (busy1 - busy0) / max(1, total1 - total0))


# -- the parts --------------------------------------------------------------------------------


def ring_pieces(ring: memoryview, total: int, piece: int) -> Iterator[memoryview]:
    """``total`` bytes as ``piece``-byte slices taken in turn from ``ring``."""
    offset = 0
    for _ in range(total // piece):
        if offset + piece > len(ring):
            offset = 0
        yield ring[offset : offset + piece]
        offset += piece


def per_gib(work: Callable[[], int]) -> float:
    """CPU seconds of this thread per GiB for ``work`` (which returns the bytes it did)."""
    start = time.thread_time()
    done = work()
    return (time.thread_time() - start) / (done / GIB)


def in_thread(target: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """A connected loopback TCP pair with Nagle off, as the relay's hops are."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    for sock in (client, server):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return client, server


def sized_pipe() -> tuple[int, int]:
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, F_SETPIPE_SZ, MIB)
    return read_end, write_end


@contextlib.contextmanager
def null_writer() -> Iterator[int]:
    """The write end of a 1 MiB pipe read by ``cat > /dev/null``, as the relay's writer."""
    proc = subprocess.Popen(NULL_WRITER, stdin=subprocess.PIPE)
    assert proc.stdin is not None
    fd = proc.stdin.fileno()
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, F_SETPIPE_SZ, MIB)
    try:
        yield fd
    finally:
        proc.stdin.close()
        proc.wait(WAIT)


@contextlib.contextmanager
def tcp_feed(ring: memoryview, total: int) -> Iterator[socket.socket]:
    """A socket that receives ``total`` bytes from ``ring`` (sent by a thread), then EOF."""
    feeder, receiver = tcp_pair()

    def feed() -> None:
        for view in ring_pieces(ring, total, 4 * MIB):
            feeder.sendall(view)
        feeder.shutdown(socket.SHUT_WR)

    thread = in_thread(feed)
    try:
        yield receiver
    finally:
        thread.join(WAIT)
        feeder.close()
        receiver.close()


def part_hash(ring: memoryview, total: int, name: str) -> float:
    def work() -> int:
        if name in ("crc32", "adler32"):
            value = 0 if name == "crc32" else 1
            step = getattr(zlib, name)
            for view in ring_pieces(ring, total, MIB):
                value = step(view, value)
        else:
            digest = hashlib.new(name)
            for view in ring_pieces(ring, total, MIB):
                digest.update(view)
            digest.digest()
        return total

    return per_gib(work)


def part_copy(ring: memoryview, total: int) -> float:
    target = bytearray(MIB)

    def work() -> int:
        for view in ring_pieces(ring, total, MIB):
            target[:] = view
        return total

    return per_gib(work)


def part_send(ring: memoryview, total: int, piece: int) -> float:
    """``send`` of ``piece``-byte slices into loopback TCP (with the receiver's kernel work)."""
    sender, receiver = tcp_pair()

    def drain() -> None:
        scratch = memoryview(bytearray(4 * MIB))
        while receiver.recv_into(scratch):
            pass

    thread = in_thread(drain)

    def work() -> int:
        for view in ring_pieces(ring, total, piece):
            sender.sendall(view)
        return total

    try:
        return per_gib(work)
    finally:
        sender.shutdown(socket.SHUT_WR)
        thread.join(WAIT)
        sender.close()
        receiver.close()


def part_copy_intake(ring: memoryview, total: int, piece: int) -> float:
    """recv_into the ring, then os.write the piece to the writer: the relay's copy path."""
    target = memoryview(bytearray(64 * MIB))
    with tcp_feed(ring, total) as sock, null_writer() as writer:

        def work() -> int:
            got = offset = 0
            while True:
                if offset + piece > len(target):
                    offset = 0
                count = sock.recv_into(target[offset : offset + piece])
                if not count:
                    return got
                view = target[offset : offset + count]
                while view:
                    view = view[os.write(writer, view) :]
                got += count
                offset += count

        return per_gib(work)


def part_splice_intake(ring: memoryview, total: int, piece: int) -> float:
    """splice TCP -> pipe A, tee A -> B, read A into the ring, splice B -> the writer."""
    libc = ctypes.CDLL(None, use_errno=True)
    tee = libc.tee
    tee.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_size_t, ctypes.c_uint]
    tee.restype = ctypes.c_ssize_t
    target = memoryview(bytearray(64 * MIB))
    a_r, a_w = sized_pipe()
    b_r, b_w = sized_pipe()
    with tcp_feed(ring, total) as sock, null_writer() as writer:

        def work() -> int:
            got = offset = 0
            while True:
                if offset + piece > len(target):
                    offset = 0
                count = os.splice(sock.fileno(), a_w, piece, flags=os.SPLICE_F_MOVE)
                if not count:
                    return got
                if tee(a_r, b_w, count, os.SPLICE_F_NONBLOCK) != count:
                    raise BenchError("short tee")
                done = 0
                while done < count:
                    done += os.readv(a_r, [target[offset + done : offset + count]])
                while done:
                    done -= os.splice(b_r, writer, done)
                got += count
                offset += count

        try:
            return per_gib(work)
        finally:
            for fd in (a_r, a_w, b_r, b_w):
                os.close(fd)


HASHES = ("sha256", "sha1", "md5", "blake2b", "blake2s", "sha512", "crc32", "adler32")


def parts(total: int) -> list[tuple[str, str, float]]:
    """(part, piece size, CPU-s per GiB) for every part."""
    ring = memoryview(bytearray(os.urandom(64 * MIB)))
    rows = []
    for name in HASHES:
        label = f"zlib.{name}" if name in ("crc32", "adler32") else f"hashlib.{name}"
        rows.append((label, "1 MiB", part_hash(ring, total, name)))
    rows.append(("memory copy", "1 MiB", part_copy(ring, total)))
    for piece in (MIB, 64 * 1024):
        size = f"{piece // 1024} KiB" if piece < MIB else f"{piece // MIB} MiB"
        rows.append(("send to TCP", size, part_send(ring, total, piece)))
        copies = part_copy_intake(ring, total, piece)
        rows.append(("TCP -> ring + writer: recv_into, os.write", size, copies))
        spliced = part_splice_intake(ring, total, piece)
        rows.append(("TCP -> ring + writer: splice, tee, read, splice", size, spliced))
    return rows


# -- report -----------------------------------------------------------------------------------


def describe_machine() -> str:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    version = subprocess.run(
        [PYTHON, "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return (
        f"{len(os.sched_getaffinity(0))} x {model}, kernel {platform.release()}, "
        f"relays on {version}"
    )


def paired(runs: list[Run], base: list[Run], field: str) -> str:
    """Median of the run-by-run differences to the first variant (runs alternate, so each
    pair saw about the same machine)."""
    if runs is base:
        return "-"
    diffs = [getattr(r, field) - getattr(b, field) for r, b in zip(runs, base, strict=True)]
    return f"{statistics.median(diffs):+.2f}"


def summary_row(name: str, runs: list[Run], base: list[Run], size: int) -> str:
    middle = statistics.median(r.middle for r in runs)
    tail = statistics.median(r.tail for r in runs)
    seconds = statistics.median(r.seconds for r in runs)
    busy = statistics.median(r.busy for r in runs)
    spread = f"{min(r.middle for r in runs):.2f}-{max(r.middle for r in runs):.2f}"
    tail_min = min(r.tail for r in runs)
    return (
        f"| {name} | {len(runs)} | {seconds:.2f} | {size / seconds / 1e6:.0f} | {busy:.0%} "
        f"| **{middle:.2f}** ({spread}) | {paired(runs, base, 'middle')} | {middle / TARGET:.1f} "
        f"| {tail:.2f} (min {tail_min:.2f}) | {paired(runs, base, 'tail')} "
        f"| {tail / TARGET:.1f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=2048, help="stream size (default 2048)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each variant (median)")
    parser.add_argument(
        "--variant",
        action="append",
        type=parse_variant,
        default=[],
        help="NAME=SOURCE[ RELAY-ARG...], SOURCE: tree, rev:REV or file:PATH (repeatable)",
    )
    parser.add_argument("--rate", type=float, default=0.0, help="pace the server, Mbit/s")
    parser.add_argument("--piece-kib", type=int, default=64, help="paced send size (KiB)")
    parser.add_argument("--no-parts", action="store_true", help="skip the parts' costs")
    parser.add_argument("--parts-mib", type=int, default=1024, help="bytes per part (MiB)")
    args = parser.parse_args()
    variants: list[Variant] = args.variant or [parse_variant("tree=tree")]
    if len({v.name for v in variants}) < len(variants):
        parser.error("each --variant needs its own NAME")
    size = args.size_mib * MIB
    server = (
        f"paced, {args.piece_kib} KiB sends at {args.rate:g} Mbit/s"
        if args.rate
        else "ChainSender (sendfile, CPU-bound)"
    )
    print(f"machine: {describe_machine()}")
    print(f"stream: {args.size_mib} MiB, server: {server}, writers: {' '.join(NULL_WRITER)}")
    print(f"target: {TARGET} CPU-s per GiB for the relay itself\n")

    runs: dict[str, list[Run]] = {v.name: [] for v in variants}
    with tempfile.TemporaryDirectory(prefix="relay-cpu-") as tmp:
        image = Path(tmp) / "image.raw"
        sha256 = make_image(image, size)
        for index in range(args.runs):
            for variant in variants:
                run = measure_chain(image, sha256, variant, args.rate * 1e6, args.piece_kib * 1024)
                runs[variant.name].append(run)
                print(
                    f"run {index + 1} {variant.name}: middle {run.middle:.3f}, tail "
                    f"{run.tail:.3f} CPU-s/GiB, {run.seconds:.2f} s, machine {run.busy:.0%} busy",
                    flush=True,
                )
    print(
        "\n| relay | runs | wall s | MB/s | machine busy | middle CPU-s/GiB (min-max) "
        f"| vs {variants[0].name} | x target | tail CPU-s/GiB | vs {variants[0].name} "
        "| x target |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for variant in variants:
        label = " ".join([variant.name, *variant.args])
        print(summary_row(label, runs[variant.name], runs[variants[0].name], size))

    if not args.no_parts:
        total = args.parts_mib * MIB
        print(f"\nparts ({args.parts_mib} MiB each, one thread's CPU):\n")
        print("| part | piece | CPU-s/GiB | GiB/s of one core |")
        print("|---|---|---|---|")
        for name, piece, cost in parts(total):
            print(f"| {name} | {piece} | {cost:.3f} | {1 / cost:.2f} |")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
