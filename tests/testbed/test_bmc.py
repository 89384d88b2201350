"""The testbed BMC driven by Debian's real ipmitool over IPMI v2 lanplus on loopback."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from kadeploy_testbed.bmc import BmcError, BmcHandle, start_bmc

pytestmark = pytest.mark.skipif(shutil.which("ipmitool") is None, reason="needs ipmitool")

USER = "admin"
PASSWORD = "password"


class Power:
    """A node's power as the BMC sees it; records every call (thread-safe: the pump calls it)."""

    def __init__(self, fail: bool = False) -> None:
        self.on = False
        self.calls: list[str] = []
        self.fail = fail
        self._lock = threading.Lock()

    def _record(self, call: str) -> None:
        with self._lock:
            self.calls.append(call)
        if self.fail:
            raise RuntimeError(f"{call} failed on purpose")

    def is_on(self) -> bool:
        return self.on

    def power_on(self) -> None:
        self._record("on")
        self.on = True

    def power_off(self) -> None:
        self._record("off")
        self.on = False

    def power_cycle(self) -> None:
        self._record("cycle")
        self.on = True

    def power_reset(self) -> None:
        self._record("reset")


class SoftPower(Power):
    def power_soft(self) -> None:
        self._record("soft")
        self.on = False


def free_port(address: str) -> int:
    """A free UDP port on ``address`` below the ephemeral range.

    An ephemeral port could be handed to another process's client socket (bound to 0.0.0.0,
    which blocks our address) as soon as a stopped BMC releases it.
    """
    for port in range(16230, 16330):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind((address, port))
            except OSError:
                continue
            return port
    raise AssertionError(f"no free UDP port in 16230-16329 on {address}")


def ipmitool(
    bmc: BmcHandle,
    *command: str,
    password: str = PASSWORD,
    password_file: Path | None = None,
    retransmit_after: int = 5,
) -> subprocess.CompletedProcess[str]:
    """Run ipmitool; a long retransmission delay (``-N``) keeps a slow answer on a loaded
    machine from being requested twice (the BMC would then see two power calls)."""
    auth = ["-f", str(password_file)] if password_file else ["-P", password]
    target = ["-H", bmc.address, "-p", str(bmc.port), "-U", USER, *auth]
    return subprocess.run(
        ["ipmitool", "-I", "lanplus", *target, "-N", str(retransmit_after), *command],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def power() -> Power:
    return Power()


@pytest.fixture
def bmc(power: Power) -> Iterator[BmcHandle]:
    address = "127.0.3.201"
    handle = start_bmc(address, free_port(address), USER, PASSWORD, power, name="node-1")
    yield handle
    handle.stop()


def pump_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "bmc-pump"]


def test_chassis_power_commands_reach_the_power_control(bmc: BmcHandle, power: Power) -> None:
    status = ipmitool(bmc, "chassis", "power", "status")
    assert (status.returncode, status.stdout.strip()) == (0, "Chassis Power is off")

    on = ipmitool(bmc, "chassis", "power", "on")
    assert on.returncode == 0, on.stderr
    assert on.stdout.strip() == "Chassis Power Control: Up/On"
    assert ipmitool(bmc, "chassis", "power", "status").stdout.strip() == "Chassis Power is on"

    assert ipmitool(bmc, "chassis", "power", "cycle").returncode == 0
    assert ipmitool(bmc, "chassis", "power", "reset").returncode == 0
    off = ipmitool(bmc, "chassis", "power", "off")
    assert off.stdout.strip() == "Chassis Power Control: Down/Off"
    assert ipmitool(bmc, "chassis", "power", "soft").returncode == 0  # no power_soft: off
    assert ipmitool(bmc, "chassis", "power", "status").stdout.strip() == "Chassis Power is off"
    assert power.calls == ["on", "cycle", "reset", "off", "off"]


def test_password_file(bmc: BmcHandle, power: Power, tmp_path: Path) -> None:
    password_file = tmp_path / "ipmi-password"
    password_file.write_text(PASSWORD + "\n")
    password_file.chmod(0o600)
    result = ipmitool(bmc, "chassis", "power", "on", password_file=password_file)
    assert result.returncode == 0, result.stderr
    assert power.calls == ["on"]


def test_wrong_password_is_refused(bmc: BmcHandle, power: Power) -> None:
    result = ipmitool(bmc, "chassis", "power", "on", password="wrong")
    assert result.returncode != 0
    assert "Unable to establish IPMI v2 / RMCP+ session" in result.stderr
    assert power.calls == []


def test_soft_uses_power_soft_when_the_control_has_it() -> None:
    control = SoftPower()
    control.on = True
    with start_bmc("127.0.3.202", free_port("127.0.3.202"), USER, PASSWORD, control) as handle:
        assert ipmitool(handle, "chassis", "power", "soft").returncode == 0
    assert control.calls == ["soft"]


def test_a_failing_control_gets_an_ipmi_error_and_the_bmc_goes_on(bmc: BmcHandle) -> None:
    failing = Power(fail=True)
    with start_bmc("127.0.3.203", free_port("127.0.3.203"), USER, PASSWORD, failing) as handle:
        result = ipmitool(handle, "chassis", "power", "on")
        assert result.returncode != 0
        assert failing.calls == ["on"]
        assert ipmitool(handle, "chassis", "power", "status").returncode == 0
    # The other BMC of the process still answers.
    assert ipmitool(bmc, "chassis", "power", "status").returncode == 0


def test_several_bmcs_on_one_port_with_their_own_passwords() -> None:
    port = free_port("127.0.3.211")
    controls = [Power() for _ in range(4)]
    handles = [
        start_bmc(f"127.0.3.{211 + i}", port, USER, f"secret-{i}", control, name=f"node-{i}")
        for i, control in enumerate(controls)
    ]
    try:
        for i, handle in enumerate(handles):
            if i % 2:
                result = ipmitool(handle, "chassis", "power", "on", password=f"secret-{i}")
                assert result.returncode == 0, result.stderr
        for i, handle in enumerate(handles):
            status = ipmitool(handle, "chassis", "power", "status", password=f"secret-{i}")
            assert status.stdout.strip() == f"Chassis Power is {'on' if i % 2 else 'off'}"
        assert ipmitool(handles[0], "chassis", "power", "on", password="secret-1").returncode
        assert [c.calls for c in controls] == [[], ["on"], [], ["on"]]
    finally:
        for handle in handles:
            handle.stop()


def test_stop_releases_the_port_and_ends_the_pump(power: Power) -> None:
    address = "127.0.3.204"
    port = free_port(address)
    handle = start_bmc(address, port, USER, PASSWORD, power)
    assert ipmitool(handle, "chassis", "power", "status").returncode == 0
    handle.stop()
    handle.stop()  # idempotent
    assert pump_threads() == []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rebind:
        rebind.bind((address, port))  # the BMC's socket is really closed
    # A new BMC on the same address and port works (and starts a new pump).
    with start_bmc(address, port, USER, PASSWORD, power) as again:
        assert len(pump_threads()) == 1
        assert ipmitool(again, "chassis", "power", "on").returncode == 0
    assert power.calls == ["on"]
    assert pump_threads() == []


def test_stopped_bmc_does_not_answer(power: Power) -> None:
    address = "127.0.3.205"
    handle = start_bmc(address, free_port(address), USER, PASSWORD, power)
    handle.stop()
    result = ipmitool(handle, "-R", "1", "chassis", "power", "status", retransmit_after=1)
    assert result.returncode != 0


def test_port_in_use_is_a_clear_error(bmc: BmcHandle, power: Power) -> None:
    with pytest.raises(BmcError, match=r"cannot listen on 127\.0\.3\.201 UDP port \d+: Address"):
        start_bmc(bmc.address, bmc.port, USER, PASSWORD, power)


def test_bad_address_is_a_clear_error(power: Power) -> None:
    with pytest.raises(BmcError, match="not valid"):
        start_bmc("no-such-host.invalid", 16230, USER, PASSWORD, power)
    with pytest.raises(BmcError, match="must not be empty"):
        start_bmc("127.0.3.206", 16230, USER, "", power)


def test_many_bmcs_power_cycled_at_once_all_answer() -> None:
    """A redeploy: every node power-cycled through its BMC at about the same time, with
    ``power status`` calls in between, 10 ipmitool at once, several rounds in a row.

    It used to wedge pyghmi's I/O thread in a blocking ``recvfrom`` (a send from the pump
    thread made the shared socket blocking), after which no BMC of the process answered.
    """
    count, rounds = 16, 15
    port = free_port("127.0.3.221")
    controls = [Power() for _ in range(count)]
    handles = [
        start_bmc(f"127.0.3.{221 + i}", port, USER, PASSWORD, control, name=f"node-{i}")
        for i, control in enumerate(controls)
    ]
    failures: list[str] = []
    try:
        with ThreadPoolExecutor(max_workers=10) as pool:
            for round_ in range(rounds):
                calls = [
                    (handle.name, action, pool.submit(ipmitool, handle, "chassis", "power", action))
                    for handle in handles
                    for action in ("cycle", "status")
                ]
                for name, action, call in calls:
                    result = call.result()
                    if result.returncode != 0:
                        failures.append(f"round {round_} {name} {action}: {result.stderr.strip()}")
    finally:
        for handle in handles:
            handle.stop()
    assert failures == []
    assert all(control.calls.count("cycle") >= rounds for control in controls)
