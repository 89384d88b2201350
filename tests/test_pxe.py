"""PXE piece: pxelinux rendering, the TFTP root on disk, the tftpy server and PxeActor.

Real parts only: a real tftpy server on 127.0.0.1 (port 0) and a real TFTP client (the
testbed firmware's ``fetch``), real files, real actors. The round-trip tests parse what the
daemon renders with the testbed firmware's own parser.
"""

from __future__ import annotations

import io
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pykka
import pytest
import tftpy

from kadeploy_testbed.pxelinux import parse_profile, profile_candidates
from kadeploy_testbed.tftpfetch import TftpTransferError, fetch
from kadeployd.pxe import (
    BootTarget,
    ChainPartition,
    DeployKernel,
    LocalBoot,
    NetworkKernel,
    PxeActor,
    PxeError,
    PxeFiles,
    TftpService,
    atomic_write,
    profile_path,
    render_profile,
)

MAC = "AA:BB:CC:00:11:22"
MAC_FILE = "pxelinux.cfg/01-aa-bb-cc-00-11-22"
LOCAL = "127.0.0.1"
TIMEOUT = 3.0


@pytest.fixture(autouse=True)
def _stop_actors() -> Iterator[None]:
    yield
    pykka.ActorRegistry.stop_all(timeout=10)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "tftp"
    PxeFiles(path).prepare()
    return path


@pytest.fixture
def service(root: Path) -> Iterator[TftpService]:
    svc = TftpService(root, LOCAL, 0)
    svc.start()
    yield svc
    svc.stop()


@pytest.fixture
def udp_socket() -> Iterator[socket.socket]:
    """A UDP socket bound to a free port of 127.0.0.1 (to take a port away from a server)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOCAL, 0))
        yield sock


def get(port: int, name: str) -> bytes | None:
    """Fetch ``name``; None when the server says "not found" or refuses the request."""
    try:
        return fetch(LOCAL, port, name, TIMEOUT)
    except TftpTransferError:
        return None


# -- profiles (pure) ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "kind", "kernel", "initrd", "append"),
    [
        (
            DeployKernel(
                "kernels/deploy-vmlinuz", "kernels/deploy-initrd.img", "console=ttyS0 quiet"
            ),
            "kernel",
            "kernels/deploy-vmlinuz",
            "kernels/deploy-initrd.img",
            "console=ttyS0 quiet",
        ),
        (DeployKernel("kernels/vmlinuz", None, ""), "kernel", "kernels/vmlinuz", None, ""),
        (
            NetworkKernel(
                "envs/debian-min-1/vmlinuz", "envs/debian-min-1/initrd", "root=/dev/sda3 ro"
            ),
            "kernel",
            "envs/debian-min-1/vmlinuz",
            "envs/debian-min-1/initrd",
            "root=/dev/sda3 ro",
        ),
        (LocalBoot(), "localboot", None, None, ""),
    ],
)
def test_render_parses_back_with_the_testbed_firmware(
    target: DeployKernel | NetworkKernel | LocalBoot,
    kind: str,
    kernel: str | None,
    initrd: str | None,
    append: str,
) -> None:
    entry = parse_profile(render_profile(target), source=MAC_FILE)
    assert (entry.label, entry.kind, entry.kernel, entry.initrd, entry.append) == (
        "kadeploy",
        kind,
        kernel,
        initrd,
        append,
    )


@pytest.mark.parametrize(("disk", "partition"), [(0, 2), (1, 5)])
def test_chain_partition_parses_back(disk: int, partition: int) -> None:
    entry = parse_profile(render_profile(ChainPartition(disk, partition), label="prod"))
    assert (entry.label, entry.kind, entry.chain_disk, entry.chain_partition) == (
        "prod",
        "chain",
        disk,
        partition,
    )


def test_render_text_is_plain_pxelinux() -> None:
    assert render_profile(ChainPartition(0, 2)) == (
        "# kadeployd: chain-load a local partition\n"
        "DEFAULT kadeploy\n"
        "\n"
        "LABEL kadeploy\n"
        "  COM32 chain.c32\n"
        "  APPEND hd0 2\n"
    )
    assert "  LOCALBOOT 0\n" in render_profile(LocalBoot())


@pytest.mark.parametrize("mac", ["AA:BB:CC:00:11:22", "aa-bb-cc-00-11-22", " aa:bb:cc:00:11:22 "])
def test_profile_path_is_what_the_firmware_asks_first(mac: str) -> None:
    assert profile_path(mac) == MAC_FILE
    assert profile_path(mac) == profile_candidates(mac.strip(), "127.0.2.1")[0]


@pytest.mark.parametrize(
    "mac", ["", "aa:bb:cc:00:11", "aa:bb:cc:00:11:zz", "aa:bb-cc:00:11:22", "aabbcc001122"]
)
def test_bad_mac_is_refused_clearly(mac: str) -> None:
    with pytest.raises(PxeError, match=r"invalid MAC address.*six hex pairs"):
        profile_path(mac)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: DeployKernel("/boot/vmlinuz", None, ""), r"DeployKernel.kernel: .* is absolute"),
        (lambda: DeployKernel("../vmlinuz", None, ""), r"'\.\.' component"),
        (lambda: DeployKernel("a//vmlinuz", None, ""), r"empty"),
        (lambda: DeployKernel("my kernel", None, ""), r"contains spaces"),
        (lambda: DeployKernel("", None, ""), r"non-empty path"),
        (lambda: NetworkKernel("k", "in itrd", ""), r"NetworkKernel.initrd"),
        (lambda: DeployKernel("k", None, "quiet\nLABEL evil"), r"params: .*newline"),
        (lambda: DeployKernel("k", None, "-"), r"no parameters"),
        (lambda: ChainPartition(-1, 2), r"ChainPartition.disk: expected an integer >= 0"),
        (lambda: ChainPartition(0, 0), r"ChainPartition.partition: expected an integer >= 1"),
        (lambda: ChainPartition(True, 2), r"ChainPartition.disk"),
    ],
)
def test_bad_targets_are_refused_with_the_field(build: Callable[[], object], message: str) -> None:
    with pytest.raises(PxeError, match=message):
        build()


def test_bad_label_is_refused() -> None:
    with pytest.raises(PxeError, match="profile label"):
        render_profile(LocalBoot(), label="two words")


# -- files on disk (logic, no threads) ------------------------------------------------------


def test_profiles_set_read_list_remove(root: Path) -> None:
    files = PxeFiles(root)
    assert files.profile(MAC) is None
    assert files.set_profile(MAC, LocalBoot()) == MAC_FILE
    assert files.profile("aa-bb-cc-00-11-22") == render_profile(LocalBoot())
    files.set_profile("02:00:00:00:00:01", ChainPartition(0, 2))
    (root / "pxelinux.cfg" / "default").write_text("DEFAULT x\n")
    assert files.profiles() == ["02:00:00:00:00:01", "aa:bb:cc:00:11:22"]
    assert files.remove_profile(MAC) is True
    assert files.remove_profile(MAC) is False
    assert files.profile(MAC) is None
    assert sorted(os.listdir(root / "pxelinux.cfg")) == ["01-02-00-00-00-00-01", "default"]


def test_profile_rewrite_is_atomic(root: Path) -> None:
    """A reader never sees a partial profile while it is rewritten over and over."""
    files = PxeFiles(root)
    targets: list[BootTarget] = [
        DeployKernel("kernels/deploy", None, "a" * 200_000),
        NetworkKernel("envs/e/vmlinuz", "envs/e/initrd", "b" * 150_000),
    ]
    versions = {render_profile(t).encode() for t in targets}
    files.set_profile(MAC, targets[0])
    path = root / MAC_FILE
    writes_done = threading.Event()
    seen: list[bytes] = []

    def read_loop() -> None:
        while not writes_done.is_set():
            seen.append(path.read_bytes())

    reader = threading.Thread(target=read_loop)
    reader.start()
    try:
        for i in range(100):
            files.set_profile(MAC, targets[i % 2])
    finally:
        writes_done.set()
        reader.join(timeout=10)
    assert seen
    assert {data for data in seen if data not in versions} == set()
    assert os.listdir(root / "pxelinux.cfg") == [MAC_FILE.split("/")[1]]


def test_failed_atomic_write_keeps_nothing_half_done(tmp_path: Path) -> None:
    target = tmp_path / "target"
    (target / "inside").mkdir(parents=True)  # a non-empty directory cannot be replaced
    with pytest.raises(PxeError, match=f"cannot write {target}"):
        atomic_write(target, b"data")
    assert sorted(os.listdir(tmp_path)) == ["target"]
    with pytest.raises(PxeError, match="cannot write"):
        atomic_write(tmp_path / "missing-dir" / "file", b"data")


def test_prepare_removes_temp_files_left_by_a_crash(tmp_path: Path) -> None:
    root = tmp_path / "tftp"
    files = PxeFiles(root)
    files.prepare()
    files.set_profile(MAC, LocalBoot())
    files.publish_boot_files("env1", b"kernel", None)
    leftovers = [
        root / "pxelinux.cfg" / ".01-aa.x1.tmp",
        root / "envs" / "env1" / ".vmlinuz.x2.tmp",
    ]
    for leftover in leftovers:
        leftover.write_bytes(b"half")
    PxeFiles(root).prepare()
    assert not any(p.exists() for p in leftovers)
    assert PxeFiles(root).profile(MAC) == render_profile(LocalBoot())


def test_publish_boot_files(root: Path) -> None:
    files = PxeFiles(root)
    assert files.publish_boot_files("debian-min_1.0", b"K" * 10, b"I" * 20) == (
        "envs/debian-min_1.0/vmlinuz",
        "envs/debian-min_1.0/initrd",
    )
    assert (root / "envs/debian-min_1.0/vmlinuz").read_bytes() == b"K" * 10
    assert (root / "envs/debian-min_1.0/initrd").read_bytes() == b"I" * 20
    # Published again without an initrd: the stale one goes, so the paths say what exists.
    assert files.publish_boot_files("debian-min_1.0", b"K2", None) == (
        "envs/debian-min_1.0/vmlinuz",
        None,
    )
    assert sorted(os.listdir(root / "envs/debian-min_1.0")) == ["vmlinuz"]
    assert files.remove_boot_files("debian-min_1.0") is True
    assert files.remove_boot_files("debian-min_1.0") is False


@pytest.mark.parametrize("key", ["", ".", "..", "a/b", "../x", "x y", "é", "k" * 129])
def test_publish_refuses_bad_keys(root: Path, key: str) -> None:
    with pytest.raises(PxeError, match=r"boot files key .*letters, digits"):
        PxeFiles(root).publish_boot_files(key, b"kernel", None)
    assert os.listdir(root / "envs") == []


def test_publish_refuses_an_empty_kernel(root: Path) -> None:
    with pytest.raises(PxeError, match="kernel must be non-empty bytes"):
        PxeFiles(root).publish_boot_files("env", b"", None)


# -- the TFTP server ------------------------------------------------------------------------


def test_tftpy_logging_is_kept_quiet() -> None:
    assert logging.getLogger("tftpy").getEffectiveLevel() > logging.WARNING


def test_real_client_fetches_profile_and_kernel(root: Path, service: TftpService) -> None:
    files = PxeFiles(root)
    kernel = os.urandom(300_000)  # many 512-byte blocks
    kernel_path, initrd_path = files.publish_boot_files("env-1", kernel, b"initrd-bytes")
    files.set_profile(MAC, NetworkKernel(kernel_path, initrd_path, "console=ttyS0"))

    text = get(service.port, MAC_FILE)
    assert text is not None
    entry = parse_profile(text.decode(), source=MAC_FILE)
    assert entry.kernel is not None
    assert get(service.port, entry.kernel) == kernel
    assert entry.initrd is not None
    assert get(service.port, entry.initrd) == b"initrd-bytes"

    served = service.served()
    assert [s.name for s in served] == [MAC_FILE, kernel_path, initrd_path]
    assert {s.host for s in served} == {LOCAL}
    assert all(s.port > 0 for s in served)


def test_missing_file_is_not_found(service: TftpService) -> None:
    assert fetch(LOCAL, service.port, "pxelinux.cfg/01-00-00-00-00-00-00", TIMEOUT) is None
    assert service.served() == []


def test_requests_outside_the_root_are_refused(
    tmp_path: Path, root: Path, service: TftpService, caplog: pytest.LogCaptureFixture
) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"top secret")
    (root / "escape").symlink_to(secret)
    (root / "pxelinux.cfg" / "escape-dir").symlink_to(tmp_path)
    (root / "inside").symlink_to("pxelinux.cfg/default")
    (root / "pxelinux.cfg" / "default").write_bytes(b"DEFAULT x\n")

    caplog.set_level(logging.WARNING, logger="kadeployd.pxe.tftp")
    for name in [
        "../secret",
        "pxelinux.cfg/../../secret",
        str(secret),
        "/secret",
        "escape",
        "pxelinux.cfg/escape-dir/secret",
        "./pxelinux.cfg/default",
        "pxelinux.cfg",
    ]:
        assert get(service.port, name) is None, name
    assert service.served() == []
    assert "resolves outside the TFTP root" in caplog.text
    assert "is absolute" in caplog.text
    # A symlink that stays inside the root is fine.
    assert get(service.port, "inside") == b"DEFAULT x\n"


def test_uploads_are_refused(root: Path, service: TftpService) -> None:
    client = tftpy.TftpClient(LOCAL, service.port, options={}, flock=False)
    with pytest.raises(tftpy.TftpException, match=r"Access violation|ERR"):
        client.upload("pxelinux.cfg/01-aa-bb-cc-00-11-22", io.BytesIO(b"DEFAULT evil\n"), timeout=1)
    assert os.listdir(root / "pxelinux.cfg") == []


def test_port_taken_gives_a_clear_error(root: Path, udp_socket: socket.socket) -> None:
    port = udp_socket.getsockname()[1]
    svc = TftpService(root, LOCAL, port)
    with pytest.raises(PxeError, match=rf"cannot listen on 127\.0\.0\.1:{port} .*already in use"):
        svc.start()
    assert not svc.running
    svc.stop()  # harmless after a failed start


def test_stop_frees_the_port(root: Path) -> None:
    (root / "pxelinux.cfg" / "default").write_bytes(b"one")
    first = TftpService(root, LOCAL, 0)
    first.start()
    port = first.port
    assert get(port, "pxelinux.cfg/default") == b"one"
    first.stop()
    first.stop()  # idempotent
    assert not first.running

    second = TftpService(root, LOCAL, port)
    second.start()
    try:
        assert second.port == port
        assert get(port, "pxelinux.cfg/default") == b"one"
    finally:
        second.stop()


def test_all_addresses_listen_stops_too(root: Path) -> None:
    svc = TftpService(root, "0.0.0.0", 0)
    svc.start()
    port = svc.port
    svc.stop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("0.0.0.0", port))


def test_malformed_datagrams_do_not_stop_the_server(root: Path, service: TftpService) -> None:
    (root / "pxelinux.cfg" / "default").write_bytes(b"ok")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for datagram in [
            b"",
            b"\x00",
            b"\x00\x09junk",
            b"\x00\x01\xff\xfe\x00octet\x00",  # non-ASCII name: tftpy's loop raises
            b"\x00\x01a\x00octet\x00blksize\x00zz\x00",  # bad option value: tftpy raises
        ]:
            sock.sendto(datagram, (LOCAL, service.port))
            assert get(service.port, "pxelinux.cfg/default") == b"ok"
    assert service.malformed == 5  # each refused alone, with an ERROR packet
    assert service.running


@pytest.mark.parametrize(
    ("listen", "port", "message"),
    [
        ("127.0.0.1", 70000, r"daemon.tftp.port.*0 to 65535"),
        ("no-such-host.invalid", 0, r"daemon.tftp.listen.*cannot be resolved"),
        ("192.0.2.77", 0, r"192\.0\.2\.77 is not an address of this machine"),
    ],
)
def test_bad_listen_settings_are_clear(root: Path, listen: str, port: int, message: str) -> None:
    with pytest.raises(PxeError, match=message):
        TftpService(root, listen, port).start()


def test_missing_root_is_clear(tmp_path: Path) -> None:
    with pytest.raises(PxeError, match=r"TFTP root .*missing.* is not a directory"):
        TftpService(tmp_path / "missing", LOCAL, 0).start()


# -- PxeActor -------------------------------------------------------------------------------


def test_actor_serves_profiles_and_boot_files(tmp_path: Path) -> None:
    root = tmp_path / "tftp"  # created by the actor
    pxe = PxeActor.start(root=root, listen=LOCAL, port=0).proxy()
    port = pxe.port().get(timeout=10)
    # Deployments write their boot files to the root themselves (environment/bootfiles.py).
    kernel_path, initrd_path = PxeFiles(root).publish_boot_files("deb-1", b"\x7fELF" * 1000, None)
    assert (kernel_path, initrd_path) == ("envs/deb-1/vmlinuz", None)
    assert (
        pxe.set_profile(MAC, NetworkKernel(kernel_path, None, "quiet")).get(timeout=10) == MAC_FILE
    )

    text = get(port, MAC_FILE)
    assert text is not None
    assert text.decode() == pxe.profile(MAC).get(timeout=10)
    entry = parse_profile(text.decode())
    assert (entry.kind, entry.kernel, entry.initrd, entry.append) == (
        "kernel",
        kernel_path,
        None,
        "quiet",
    )
    assert get(port, kernel_path) == b"\x7fELF" * 1000
    assert [(s.name, s.host) for s in pxe.served().get(timeout=10)] == [
        (MAC_FILE, LOCAL),
        (kernel_path, LOCAL),
    ]

    assert pxe.remove_profile(MAC).get(timeout=10) is True
    assert fetch(LOCAL, port, MAC_FILE, TIMEOUT) is None
    with pytest.raises(PxeError, match="invalid MAC"):
        pxe.set_profile("nope", LocalBoot()).get(timeout=10)
    assert pxe.port().get(timeout=10) == port  # an error answered to a caller leaves it alive


def test_restarted_actor_finds_profiles_on_disk(root: Path) -> None:
    ref = PxeActor.start(root=root, listen=LOCAL, port=0)
    ref.proxy().set_profile(MAC, ChainPartition(0, 2)).get(timeout=10)
    ref.stop(timeout=10)

    pxe = PxeActor.start(root=root, listen=LOCAL, port=0).proxy()
    assert pxe.profiles().get(timeout=10) == ["aa:bb:cc:00:11:22"]
    assert pxe.profile(MAC).get(timeout=10) == render_profile(ChainPartition(0, 2))
    text = get(pxe.port().get(timeout=10), MAC_FILE)
    assert text is not None
    assert parse_profile(text.decode()).kind == "chain"


def test_actor_stop_frees_the_port(root: Path) -> None:
    ref = PxeActor.start(root=root, listen=LOCAL, port=0)
    port = ref.proxy().port().get(timeout=10)
    ref.stop(timeout=10)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOCAL, port))


def test_actor_dies_at_start_when_port_taken(
    root: Path, udp_socket: socket.socket, caplog: pytest.LogCaptureFixture
) -> None:
    port = udp_socket.getsockname()[1]
    ref = PxeActor.start(root=root, listen=LOCAL, port=port)
    with pytest.raises(pykka.ActorDeadError):
        ref.proxy().port().get(timeout=10)  # proxy() itself raises if on_start already failed
    assert "already in use" in caplog.text
