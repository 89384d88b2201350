"""PID 1 of an emulated node: the "operating system" the firmware booted.

Run by the controller as ``unshare --pid --fork --mount --uts --mount-proc [--net=...] python -m
kadeploy_testbed.nodeinit BOOTSPEC.json``, so it is PID 1 of a fresh PID namespace with a private
mount and UTS namespace. It only uses the standard library (it runs once per boot per node).

What it does, in order: set the hostname; mount a private tmpfs on ``/run`` (hides the host's
``/run/systemd``, gives sshd its ``/run/sshd``) and copy its small files there; bind the disk
files at ``/dev/testbed/sda*``; bind the PXE APPEND line over ``/proc/cmdline`` and the env's
os-release over ``/etc/os-release``; bind the node's own power script over every path of
``reboot``, ``poweroff``, ``halt``, ``shutdown`` and ``systemctl``; put the node's ``kexec``
on the PATH (over ``/usr/local/sbin``); mount a private ``/tmp``;
for a deployed env loop-mount the partition at ``/run/testbed/root`` with ``/proc``, ``/sys``
and ``/dev`` inside; then run ``sshd -D -e`` and reap every orphan.

How it ends tells the controller what happened (``unshare`` passes the status on):

* exit ``EXIT_REBOOT`` after SIGTERM (busybox's ``reboot`` and the node's own ``reboot`` send it),
  or death by SIGHUP (``reboot(2)`` inside a PID namespace): reboot;
* exit ``EXIT_POWEROFF`` after SIGUSR1/SIGUSR2 (halt/poweroff, busybox init's convention), or
  death by SIGINT (``reboot(2)`` with POWER_OFF/HALT): power off;
* exit ``EXIT_SILENT``: the env cannot start (e.g. unmountable partition): the node stays on and
  silent, as real hardware hangs at boot;
* exit ``EXIT_KEXEC`` after SIGPWR (the node's ``kexec -e``): the kernel ``kexec -l`` loaded
  and its command line are written to the boot spec's ``kexec_file`` first, and the controller
  boots what they say without running the firmware (no PXE, no TFTP request).
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from typing import Any

EXIT_REBOOT = 100
EXIT_POWEROFF = 101
EXIT_SILENT = 102
EXIT_BROKEN = 103
EXIT_KEXEC = 104

POWER_NAMES = ("reboot", "poweroff", "halt", "shutdown", "systemctl")
POWER_DIRS = ("/sbin", "/usr/sbin", "/bin", "/usr/bin")

RUN_DIR = "/run/testbed"
DISK_DIR = "/dev/testbed"
CHROOT = f"{RUN_DIR}/root"
BOOT_ID = "/proc/sys/kernel/random/boot_id"
"""What the kernel says is this boot's id: a new one at every boot of the node."""
KEXEC_DIR = f"{RUN_DIR}/kexec"
"""Inside a node: the kernel and command line ``kexec -l`` loaded (the node's "memory")."""
SBIN_DIR = f"{RUN_DIR}/sbin"
"""Inside a node: its own programs, bound over ``/usr/local/sbin`` (first in root's PATH)."""
LOCAL_SBIN = "/usr/local/sbin"

KEXEC_SCRIPT = r"""#!/bin/sh
# kadeploy-testbed: this node's kexec, as kexec-tools': `kexec -l KERNEL [--initrd=FILE]
# [--append=LINE | --command-line=LINE | --reuse-cmdline]` loads a kernel, `kexec -e` jumps
# to it (no firmware, no PXE), `kexec -u` unloads it. The jump signals the node's own init.
state=/run/testbed/kexec
usage() {
  echo "usage: kexec -l KERNEL [--initrd=FILE] [--append=LINE] | kexec -e | kexec -u" >&2
  exit 1
}
action=""; kernel=""; initrd=""; append=""
while [ $# -gt 0 ]; do
  case "$1" in
    -l|--load) action=load ;;
    -e|--exec) action=exec ;;
    -u|--unload) action=unload ;;
    --initrd=*|--ramdisk=*) initrd=${1#*=} ;;
    --initrd|--ramdisk) [ $# -gt 1 ] || usage; shift; initrd=$1 ;;
    --append=*|--command-line=*) append=${1#*=} ;;
    --append|--command-line) [ $# -gt 1 ] || usage; shift; append=$1 ;;
    --reuse-cmdline) append=$(cat /proc/cmdline) ;;
    -*) echo "kexec: unsupported option $1" >&2; exit 1 ;;
    *) if [ "$action" = load ] && [ -z "$kernel" ]; then kernel=$1; else usage; fi ;;
  esac
  shift
done
case "$action" in
  load)
    [ -n "$kernel" ] || usage
    if [ ! -f "$kernel" ] || [ ! -r "$kernel" ]; then
      echo "kexec: cannot read kernel $kernel" >&2; exit 1
    fi
    if [ -n "$initrd" ] && { [ ! -f "$initrd" ] || [ ! -r "$initrd" ]; }; then
      echo "kexec: cannot read initrd $initrd" >&2; exit 1
    fi
    mkdir -p "$state" && rm -f "$state/kernel" &&
      cp "$kernel" "$state/kernel.new" && printf '%s\n' "$append" > "$state/cmdline" &&
      mv "$state/kernel.new" "$state/kernel" || { echo "kexec: load failed" >&2; exit 1; }
    ;;
  exec)
    if [ ! -f "$state/kernel" ]; then
      echo "kexec: no kernel loaded (kexec -l first)" >&2; exit 1
    fi
    sync
    kill -s PWR 1 ;;
  unload) rm -f "$state/kernel" ;;
  *) usage ;;
esac
"""


class _Stop(Exception):
    """Raised from a signal handler to leave the reaping loop."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _log(message: str) -> None:
    print(f"nodeinit: {message}", file=sys.stderr, flush=True)


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL)


def _mount(*args: str) -> None:
    _run("mount", *args)


def _bind_file(source: str, target: str) -> None:
    _mount("--bind", source, target)


def _power_targets() -> list[str]:
    """Real files behind every reboot/poweroff/... path (Debian's are symlinks to systemctl)."""
    targets: list[str] = []
    for directory in POWER_DIRS:
        for name in POWER_NAMES:
            path = os.path.join(directory, name)
            if os.path.lexists(path) and os.path.exists(path):
                real = os.path.realpath(path)
                if real not in targets:
                    targets.append(real)
    return targets


def _sethostname(name: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    raw = name.encode()
    if libc.sethostname(raw, len(raw)) != 0:
        raise OSError(ctypes.get_errno(), "sethostname")


def _prepare(spec: dict[str, Any]) -> None:
    _sethostname(spec["name"])
    _mount("--make-rprivate", "/")
    # Everything the node needs from its node directory is copied or bound while the host's
    # view is still complete (the testbed directory may be under /tmp, which gets hidden).
    _mount("-t", "tmpfs", "-o", "mode=0755,size=16m", "kdtb-run", "/run")
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    os.makedirs(RUN_DIR, mode=0o755, exist_ok=True)
    for name, source in spec["files"].items():
        target = os.path.join(RUN_DIR, name)
        shutil.copyfile(source, target)
        os.chmod(target, 0o600 if name.endswith("key") else 0o644)
    power = os.path.join(RUN_DIR, "power")
    shutil.copyfile(spec["power_script"], power)
    os.chmod(power, 0o755)  # noqa: S103 - a program every user of the node may run

    # Real block-device nodes, as udev makes them: a bind mount of the host's /dev/loopN would
    # make /dev/testbed/sdaN a mount point, which `umount /dev/testbed/sda3` would remove.
    _mount("-t", "tmpfs", "-o", "mode=0755,size=1m", "kdtb-disk", DISK_DIR)
    for dev, source in spec["disk"].items():
        os.mknod(os.path.join(DISK_DIR, dev), stat.S_IFBLK | 0o660, os.stat(source).st_rdev)

    _bind_file(os.path.join(RUN_DIR, "cmdline"), "/proc/cmdline")
    _bind_file(os.path.join(RUN_DIR, "boot_id"), BOOT_ID)
    _bind_file(os.path.join(RUN_DIR, "os-release"), os.path.realpath("/etc/os-release"))
    for target in _power_targets():
        _bind_file(power, target)
    os.makedirs(SBIN_DIR, mode=0o755, exist_ok=True)
    kexec = os.path.join(SBIN_DIR, "kexec")
    with open(kexec, "w", encoding="utf-8") as stream:
        stream.write(KEXEC_SCRIPT)
    os.chmod(kexec, 0o755)  # noqa: S103 - a program every user of the node may run
    if os.path.isdir(LOCAL_SBIN):
        _mount("--bind", SBIN_DIR, LOCAL_SBIN)
    _mount("-t", "tmpfs", "-o", "mode=1777", "kdtb-tmp", "/tmp")  # noqa: S108 - the node's own /tmp
    # The node's own root home, as on a real machine: the host's /root (its shell profile,
    # e.g. a pyenv shim shadowing the system python3) is not the node's.
    _mount("-t", "tmpfs", "-o", "mode=0700", "kdtb-root-home", "/root")

    chroot = spec.get("chroot_partition")
    if chroot:
        os.makedirs(CHROOT, mode=0o755, exist_ok=True)
        try:
            _mount(os.path.join(DISK_DIR, chroot), CHROOT)
        except subprocess.CalledProcessError:
            _log(f"cannot mount {chroot}: nothing to boot")
            raise _Stop(EXIT_SILENT) from None
        for sub in ("proc", "sys", "dev"):
            os.makedirs(os.path.join(CHROOT, sub), mode=0o755, exist_ok=True)
        _mount("-t", "proc", "proc", os.path.join(CHROOT, "proc"))
        _bind_file(os.path.join(RUN_DIR, "cmdline"), os.path.join(CHROOT, "proc", "cmdline"))
        _bind_file(os.path.join(RUN_DIR, "boot_id"), os.path.join(CHROOT, BOOT_ID.lstrip("/")))
        _mount("-t", "sysfs", "sysfs", os.path.join(CHROOT, "sys"))
        _mount("--rbind", "/dev", os.path.join(CHROOT, "dev"))


def _write_status(stream: Any, word: str) -> None:
    stream.seek(0)
    stream.truncate()
    stream.write(word + "\n")
    stream.flush()


def _start_sshd() -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["/usr/sbin/sshd", "-D", "-e", "-f", os.path.join(RUN_DIR, "sshd_config")],
        stdin=subprocess.DEVNULL,
    )


def _on_signal(code: int) -> Any:
    def handler(signum: int, frame: object) -> None:
        raise _Stop(code)

    return handler


def _shutdown() -> None:
    """Stop every other process of the namespace (``kill(-1)`` from PID 1 reaches them all)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(-1, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                time.sleep(0.05)


def _serve() -> None:
    """Run sshd, restart it if it dies (like a service manager would), reap orphans."""
    restarts = 0
    sshd = _start_sshd()
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            pid, status = -1, 0
        if pid in (sshd.pid, -1):
            sshd.returncode = os.waitstatus_to_exitcode(status) if pid != -1 else -1
            _log(f"sshd exited with {sshd.returncode}")
            restarts += 1
            if restarts > 5:
                _log("sshd keeps dying: giving up")
                raise _Stop(EXIT_BROKEN)
            time.sleep(1.0)
            sshd = _start_sshd()


def _hand_over_kexec(stream: Any) -> None:
    """Write what ``kexec -l`` loaded for the controller: one JSON line (the command line),
    then the kernel's bytes. Nothing when nothing is loaded (the controller then reboots the
    node through its firmware)."""
    try:
        with open(os.path.join(KEXEC_DIR, "cmdline"), encoding="utf-8") as cmdline:
            append = cmdline.read().strip()
        with open(os.path.join(KEXEC_DIR, "kernel"), "rb") as kernel:
            data = kernel.read()
    except OSError as error:
        _log(f"kexec: nothing loaded: {error}")
        return
    stream.write(json.dumps({"cmdline": append}).encode() + b"\n" + data)
    stream.flush()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or os.getpid() != 1:
        _log("usage: run as PID 1 of a new PID namespace with one argument, the boot spec")
        return 2
    with open(args[0], encoding="utf-8") as stream:
        spec = json.load(stream)
    # Opened now: the node directory may be hidden later (a testbed under /tmp).
    status = open(spec["status_file"], "w", encoding="utf-8")  # noqa: SIM115
    kexec_out = open(spec["kexec_file"], "wb")  # noqa: SIM115
    # busybox init's convention: TERM reboots, USR1 halts, USR2 powers off.
    signal.signal(signal.SIGTERM, _on_signal(EXIT_REBOOT))
    signal.signal(signal.SIGINT, _on_signal(EXIT_REBOOT))
    signal.signal(signal.SIGUSR1, _on_signal(EXIT_POWEROFF))
    signal.signal(signal.SIGUSR2, _on_signal(EXIT_POWEROFF))
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGPWR, _on_signal(EXIT_KEXEC))
    code = EXIT_BROKEN
    try:
        _prepare(spec)
        _log(f"{spec['name']} up in env {spec['env']}")
        _write_status(status, "running")
        _serve()
    except _Stop as stop:
        code = stop.code
    except (OSError, subprocess.CalledProcessError, KeyError) as error:
        _log(f"boot failed: {error}")
        code = EXIT_SILENT
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGPWR, signal.SIG_IGN)
    _shutdown()
    if code == EXIT_KEXEC:
        _hand_over_kexec(kexec_out)
    if code == EXIT_SILENT:
        # Powered on but nothing runs: stay alive so the node looks like a hung machine.
        _log("silent: waiting for a power action")
        _write_status(status, "silent")
        while True:
            signal.pause()
    _log(f"exiting with {code}")
    return code


if __name__ == "__main__":
    sys.exit(main())
