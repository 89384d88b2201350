"""One emulated node inside the controller: power state, firmware runs, its namespace, faults.

A powered-on node is a "life": a thread that runs the firmware, starts the node's init in new
namespaces with ``unshare`` and waits for it to end. How init ended says what comes next
(:mod:`kadeploy_testbed.nodeinit`): reboot -> firmware again; power off -> off; kexec -> the
kernel it loaded boots at once, without the firmware (:meth:`NodeRunner._kexec_target`). Power
actions from the BMC or the control socket bump ``_generation`` so a stale life stops without
acting.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from kadeploy_testbed import disks, netns, nodeinit
from kadeploy_testbed.firmware import (
    Firmware,
    Interrupted,
    Silent,
    partition_with_kernel,
    prod_cmdline,
)
from kadeploy_testbed.layout import Layout, NodeSpec
from kadeploy_testbed.nodefiles import FIRMWARE_LOG, KEXEC_FILE, BootSpec, write_boot_files

logger = logging.getLogger(__name__)

FAULTS = ("noboot", "hang", "die", "slowdisk", "slowlink", "nokexec", "clear")
"""``nokexec``: the node's next ``kexec -e`` hangs it (silent until a power action), as a
kernel that cannot start after a kexec does."""
SLOWDISK_BPS = 2 * 1024 * 1024
"""Write rate of a node's disk under ``slowdisk`` (bytes/s)."""
SLOWLINK_RATE = "10mbit"


class FaultError(Exception):
    """A fault cannot be applied (e.g. slowlink without --netns)."""


@dataclass(frozen=True, slots=True)
class BootSettings:
    """Testbed-wide settings the firmware and node lives need."""

    tftp_server: str
    tftp_port: int
    boot_delay: float
    jitter: float
    rate: str | None
    """tc rate of the node links (``--netns``), None on loopback."""


@dataclass
class NodeStatus:
    name: str
    power: str
    env: str
    address: str
    bmc: str
    faults: list[str] = field(default_factory=list)


def namespace_pids(init_pid: int) -> list[int]:
    """Every host PID in the PID namespace whose init has host PID ``init_pid``."""
    try:
        target = os.readlink(f"/proc/{init_pid}/ns/pid")
    except OSError:
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry}/ns/pid") == target:
                pids.append(int(entry))
        except OSError:
            continue
    return pids


def child_pid(pid: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return None
    children = text.split()
    return int(children[0]) if children else None


class NodeRunner:
    """Power and boot of one node. Thread-safe; every public method returns quickly."""

    def __init__(
        self,
        layout: Layout,
        spec: NodeSpec,
        settings: BootSettings,
        disk: dict[str, str],
        deploy_kernel: bytes,
    ) -> None:
        self.layout = layout
        self.spec = spec
        self.settings = settings
        self.disk = disk
        self.deploy_kernel = deploy_kernel
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._generation = 0
        self._on = False
        self._env = "off"
        self._proc: subprocess.Popen[bytes] | None = None
        self._init_pid: int | None = None
        self._faults: set[str] = set()
        self._threads: list[threading.Thread] = []
        self._reapers: list[threading.Thread] = []

    # -- power -------------------------------------------------------------------------------

    def is_on(self) -> bool:
        with self._lock:
            return self._on

    def power_on(self, direct: BootSpec | None = None) -> None:
        """Power on; ``direct`` skips PXE (the testbed starts nodes already running prod)."""
        with self._lock:
            if self._on:
                return
            self._on = True
            self._generation += 1
            generation = self._generation
            self._env = "booting"
            self._wake = threading.Event()
            thread = threading.Thread(
                target=self._life,
                args=(generation, self._wake, direct),
                name=f"{self.spec.name}-life",
                daemon=True,
            )
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def power_off(self, reason: str = "power off") -> None:
        with self._lock:
            self._generation += 1
            was_on = self._on
            self._on = False
            self._env = "off"
            self._faults.discard("hang")
            proc, init_pid = self._proc, self._init_pid
            self._proc, self._init_pid = None, None
            self._wake.set()
        if was_on:
            logger.info("%s: %s", self.spec.name, reason)
        if proc is not None:
            # Killing and reaping takes a moment: done in a thread so that BMC calls return at
            # once; the next boot of this node waits for it (see _run_init).
            reaper = threading.Thread(
                target=self._kill,
                args=(proc, init_pid),
                name=f"{self.spec.name}-reaper",
                daemon=True,
            )
            with self._lock:
                self._reapers = [r for r in self._reapers if r.is_alive()] + [reaper]
            reaper.start()

    def wait_reaped(self, timeout: float = 15.0) -> None:
        """Wait until every namespace this node had is gone."""
        with self._lock:
            reapers = list(self._reapers)
        for reaper in reapers:
            reaper.join(timeout)

    def power_cycle(self) -> None:
        self.power_off("power cycle")
        self.power_on()

    def power_reset(self) -> None:
        self.power_off("power reset")
        self.power_on()

    def power_soft(self) -> None:
        """ACPI soft-off: ask the node's init to power off, as a power button press does."""
        with self._lock:
            init_pid = self._init_pid
        if init_pid is None:
            self.power_off("soft off")
            return
        try:
            os.kill(init_pid, signal.SIGUSR2)
        except ProcessLookupError:
            self.power_off("soft off")

    def reset(self, *, prod: bool = True) -> None:
        """Clear faults, power off and boot straight into prod (the per-test reset)."""
        self.clear_faults()
        self.power_off("reset")
        if prod:
            self.power_on(direct=BootSpec(env="prod", cmdline=prod_cmdline()))

    def _kill(self, proc: subprocess.Popen[bytes] | None, init_pid: int | None) -> None:
        if proc is None:
            return
        target = init_pid or child_pid(proc.pid)
        for pid in [target] if target else []:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()  # --kill-child: the namespace's init gets SIGKILL too
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            logger.error("%s: unshare %d did not exit", self.spec.name, proc.pid)
        if target:
            deadline = time.monotonic() + 5
            while Path(f"/proc/{target}").exists() and time.monotonic() < deadline:
                time.sleep(0.02)

    # -- a life: firmware, init, and what its end means ---------------------------------------

    def _current(self, generation: int) -> bool:
        with self._lock:
            return self._generation == generation

    def _pause(self, wake: threading.Event, seconds: float) -> None:
        """Wait ``seconds`` unless a power action wakes this life up first."""
        wake.wait(seconds)

    def _set_env(self, generation: int, env: str) -> bool:
        with self._lock:
            if self._generation != generation:
                return False
            self._env = env
            return True

    def _life(self, generation: int, wake: threading.Event, direct: BootSpec | None) -> None:
        try:
            self._run_life(generation, wake, direct)
        except Exception:
            logger.exception("%s: node life crashed", self.spec.name)
            with self._lock:
                if self._generation == generation:
                    self._env = "hung"

    def _run_life(self, generation: int, wake: threading.Event, direct: BootSpec | None) -> None:
        boot = direct
        while self._current(generation):
            delay = self.settings.boot_delay + random.uniform(0, self.settings.jitter)  # noqa: S311
            self._pause(wake, delay)
            if not self._current(generation):
                return
            if boot is None:
                decided = self._firmware(generation, wake)
                if decided is None:
                    return
                if isinstance(decided, Silent):
                    logger.warning("%s: stays silent: %s", self.spec.name, decided.reason)
                    self._set_env(generation, "silent")
                    return
                boot = decided
            end = self._run_init(generation, boot)
            boot = None
            if end == "kexec":
                target = self._kexec_target()
                if isinstance(target, Silent):
                    logger.warning("%s: stays silent: %s", self.spec.name, target.reason)
                    self._set_env(generation, "silent")
                    return
                if target is not None:
                    logger.info("%s: kexec into %s", self.spec.name, target.describe)
                    boot = target
                self._set_env(generation, "booting")
                continue
            if end == "reboot":
                logger.info("%s: rebooting", self.spec.name)
                self._set_env(generation, "booting")
                continue
            if end == "off":
                with self._lock:
                    if self._generation == generation:
                        self._on = False
                        self._env = "off"
                        self._generation += 1
                logger.info("%s: powered itself off", self.spec.name)
            return

    def _kexec_target(self) -> BootSpec | Silent | None:
        """What the node's ``kexec -e`` boots: the kernel ``kexec -l`` loaded, recognised as
        the firmware recognises kernels (the deploy kernel, or the ``/boot`` file of a
        partition); None when nothing was loaded (the firmware runs, as after a reboot)."""
        with self._lock:
            nokexec = "nokexec" in self._faults
        if nokexec:
            return Silent("fault nokexec: the kernel kexec jumped to hangs")
        path = self.layout.node_dir(self.spec.name) / KEXEC_FILE
        try:
            header, _, kernel = path.read_bytes().partition(b"\n")
            cmdline = str(json.loads(header)["cmdline"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            logger.warning("%s: kexec with nothing loaded (%s): rebooting", self.spec.name, error)
            return None
        if kernel == self.deploy_kernel:
            return BootSpec(env="deploy", cmdline=cmdline, label="kexec")
        for device in self.disk.values():
            disks.flush(device)
        partitions = {p: self.disk[f"sda{p}"] for p in range(1, 5)}
        partition = partition_with_kernel(kernel, partitions)
        if partition is None:
            return Silent("kexec: the loaded kernel matches no deploy kernel nor any /boot file")
        return BootSpec(env="deployed", cmdline=cmdline, partition=partition, label="kexec")

    def _record_firmware(self, line: str) -> None:
        path = self.layout.node_dir(self.spec.name) / FIRMWARE_LOG
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        try:
            with path.open("a", encoding="utf-8") as log:
                log.write(f"{stamp} {line}\n")
        except OSError as error:
            logger.warning("%s: cannot write %s: %s", self.spec.name, path, error)

    def _firmware(self, generation: int, wake: threading.Event) -> BootSpec | Silent | None:
        with self._lock:
            noboot = "noboot" in self._faults
        if noboot:
            return Silent("fault noboot")
        partitions = {p: self.disk[f"sda{p}"] for p in range(1, 5)}
        for device in self.disk.values():
            disks.flush(device)
        firmware = Firmware(
            node=self.spec,
            tftp_server=self.settings.tftp_server,
            tftp_port=self.settings.tftp_port,
            deploy_kernel=self.deploy_kernel,
            partitions=partitions,
            whole_disk=self.disk.get("sda"),
            keep_going=lambda: self._current(generation),
            pause=lambda seconds: self._pause(wake, seconds),
            record=self._record_firmware,
        )
        try:
            return firmware.boot()
        except Interrupted:
            return None

    def _run_init(self, generation: int, boot: BootSpec) -> str:
        self.wait_reaped()
        spec_path = write_boot_files(self.layout, self.spec, boot, self.disk)
        node_dir = self.layout.node_dir(self.spec.name)
        (node_dir / "init.status").write_text("starting\n")
        argv = []
        if self.spec.netns:
            # Enter the node's existing namespace (unshare --net=FILE would make a new one).
            argv += ["nsenter", f"--net=/run/netns/{self.spec.netns}", "--"]
        argv += ["unshare", "--pid", "--fork", "--kill-child", "--mount", "--uts", "--mount-proc"]
        argv += [sys.executable, "-m", "kadeploy_testbed.nodeinit", str(spec_path)]
        with self._lock:
            if self._generation != generation:
                return "stale"
            with (node_dir / "console.log").open("ab") as console:
                console.write(f"--- boot {boot.describe} ({boot.label or '-'})\n".encode())
                console.flush()
                proc = subprocess.Popen(
                    argv,
                    cwd="/",
                    stdin=subprocess.DEVNULL,
                    stdout=console,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self._proc = proc
            self._env = boot.describe
        logger.info("%s: booting %s (unshare pid %d)", self.spec.name, boot.describe, proc.pid)
        deadline = time.monotonic() + 5
        init_pid = None
        while init_pid is None and proc.poll() is None and time.monotonic() < deadline:
            # nsenter execs unshare in place, so the init is the Popen's child either way.
            init_pid = child_pid(proc.pid)
            if init_pid is None:
                time.sleep(0.01)
        with self._lock:
            if self._proc is proc:
                self._init_pid = init_pid
        code = proc.wait()
        with self._lock:
            if self._generation != generation:
                return "stale"
            self._proc, self._init_pid = None, None
        if code in (nodeinit.EXIT_REBOOT, -signal.SIGHUP, 128 + signal.SIGHUP):
            return "reboot"
        if code == nodeinit.EXIT_KEXEC:
            return "kexec"
        if code in (nodeinit.EXIT_POWEROFF, -signal.SIGINT, 128 + signal.SIGINT):
            return "off"
        logger.error("%s: init ended with status %s: power lost", self.spec.name, code)
        return "off"

    # -- faults --------------------------------------------------------------------------------

    def fault(self, kind: str) -> None:
        if kind not in FAULTS:
            raise FaultError(f"unknown fault {kind!r}; valid: {', '.join(FAULTS)}")
        if kind == "clear":
            self.clear_faults()
        elif kind in ("noboot", "nokexec"):
            with self._lock:
                self._faults.add(kind)
        elif kind == "hang":
            self._signal_namespace(signal.SIGSTOP)
            with self._lock:
                self._faults.add("hang")
        elif kind == "die":
            self.power_off("fault die: power lost")
        elif kind == "slowdisk":
            disks.throttle(list(self.disk.values()), SLOWDISK_BPS)
            with self._lock:
                self._faults.add("slowdisk")
        elif kind == "slowlink":
            if self.spec.netns is None or self.settings.rate is None:
                raise FaultError("slowlink needs a testbed started with --netns")
            netns.set_rate(self.spec, SLOWLINK_RATE)
            with self._lock:
                self._faults.add("slowlink")

    def clear_faults(self) -> None:
        with self._lock:
            faults = set(self._faults)
            self._faults.clear()
        if "hang" in faults:
            self._signal_namespace(signal.SIGCONT)
        if "slowdisk" in faults:
            disks.throttle(list(self.disk.values()), 0)
        if "slowlink" in faults and self.settings.rate is not None:
            netns.set_rate(self.spec, self.settings.rate)

    def _signal_namespace(self, sig: signal.Signals) -> None:
        with self._lock:
            init_pid = self._init_pid
        if init_pid is None:
            return
        for pid in namespace_pids(init_pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    # -- status and shutdown --------------------------------------------------------------------

    def status(self) -> NodeStatus:
        with self._lock:
            env = self._env
            if env not in ("off", "booting", "silent", "hung") and self._proc is not None:
                status_file = self.layout.node_dir(self.spec.name) / "init.status"
                try:
                    if status_file.read_text().strip() == "silent":
                        env = "silent"
                except OSError:
                    pass
            if "hang" in self._faults and self._on:
                env = "hung"
            return NodeStatus(
                name=self.spec.name,
                power="on" if self._on else "off",
                env=env,
                address=self.spec.address,
                bmc=self.spec.bmc,
                faults=sorted(self._faults),
            )

    def stop(self) -> None:
        """Power off for good (controller shutdown)."""
        self.clear_faults()
        self.power_off("testbed down")
        self.wait_reaped()
        for thread in self._threads:
            thread.join(timeout=10)
