"""Chain transfer on loopback: N local relays, an image of S MiB, throughput and CPU cost.

    .venv/bin/python bench/chain_loopback.py --nodes 4 --size-mib 512 [--writer null|file]

Loopback has no link rate, so this measures the relays' CPU cost, not the chain's shape: the
time is bounded by the two cores (see measured-facts "Chain transfer"). Prints the wall time,
MB/s of the stream, and CPU seconds per GiB per relay (relays and their writers) and for the
sender. The shaped-link benchmark (testbed nodes in network namespaces) is bench/chain.py.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kadeployd.chain import Hop, new_secret, relay_arguments, send_chain
from kadeployd.chain.command import RELAY_PATH

logger = logging.getLogger(__name__)

PYTHON = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
GIB = 1 << 30


def make_image(path: Path, size: int) -> None:
    block = os.urandom(1 << 20)
    with path.open("wb") as out:
        for _ in range(size >> 20):
            out.write(block)


def start_relay(
    workdir: Path, writer: list[str], secret: bytes
) -> tuple[subprocess.Popen[bytes], Hop]:
    program = workdir / "relay.py"
    shutil.copyfile(RELAY_PATH, program)
    proc = subprocess.Popen(
        [PYTHON, "-I", "-S", str(program), *relay_arguments(writer, listen="127.0.0.1:0")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(secret + b"\n")
    proc.stdin.close()
    first = json.loads(proc.stdout.readline())
    if first.get("event") != "listening":
        raise SystemExit(f"relay did not start: {first}")
    return proc, Hop("127.0.0.1", int(first["port"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--writer", choices=["null", "file"], default="null")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="chain-bench-") as tmp:
        root = Path(tmp)
        image = root / "image.raw"
        make_image(image, args.size_mib << 20)
        size = image.stat().st_size
        secret = new_secret()
        procs = []
        hops = []
        for index in range(args.nodes):
            workdir = root / f"node{index}"
            workdir.mkdir()
            target = "/dev/null" if args.writer == "null" else str(workdir / "out")
            proc, hop = start_relay(workdir, ["sh", "-c", 'exec cat > "$1"', "sh", target], secret)
            procs.append(proc)
            hops.append(hop)
        before_children = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu_before = time.process_time()
        start = time.monotonic()
        try:
            result = send_chain(image, hops, secret, stall_timeout=30)
            elapsed = time.monotonic() - start
            sender_cpu = time.process_time() - cpu_before
            for proc in procs:
                proc.wait(60)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                if proc.stdout is not None:
                    proc.stdout.close()
        after_children = resource.getrusage(resource.RUSAGE_CHILDREN)
        relay_cpu = (after_children.ru_utime - before_children.ru_utime) + (
            after_children.ru_stime - before_children.ru_stime
        )
        failures = result.failures([hop.address for hop in hops])
        cores = os.cpu_count()
        print(f"nodes={args.nodes} size={size >> 20} MiB writer={args.writer} on {cores} cores")
        print(f"time {elapsed:.2f} s, {size / elapsed / 1e6:.0f} MB/s")
        per_node = relay_cpu / (size / GIB) / args.nodes
        print(f"relay CPU {per_node:.2f} s per GiB per node (with writer)")
        print(f"sender CPU {sender_cpu / (size / GIB):.2f} s per GiB (with source SHA-256)")
        print("all nodes correct" if not failures else f"FAILURES: {failures}")


if __name__ == "__main__":
    main()
