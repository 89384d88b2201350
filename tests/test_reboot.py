"""Reboot levels, the reboot window and the RebootActor, with real commands (no mocks).

Power templates in these configurations point at real executables (``true``, ``false``,
``sh -c``, ``sleep``, ``ipmitool``): the config accepts any argument list. Scripts get their
data as positional arguments (``"$1"``), never spliced into the script text.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pykka
import pytest
import yaml
from reboot_fixtures import WAIT, PidReaper, process_alive, read_pid, wait_until

from kadeployd.config import Config, load_config
from kadeployd.config.schema import PowerSettings
from kadeployd.reboot import (
    DuplicateRequest,
    NoPowerCommand,
    PowerAction,
    PowerState,
    RebootActor,
    RebootLevel,
    RebootResult,
    RebootWindow,
    available_level,
    escalate,
    parse_power_state,
)
from kadeployd.reboot.jobs import PowerRequest, plan


@pytest.fixture(autouse=True)
def _stop_all_actors() -> Iterator[None]:
    yield
    pykka.ActorRegistry.stop_all(timeout=WAIT)
    assert pykka.ActorRegistry.get_all() == []


@pytest.fixture
def reaper() -> Iterator[PidReaper]:
    pids = PidReaper()
    yield pids
    pids.kill_all()


# ---------------------------------------------------------------- helpers

LOG_EVENTS = 'echo "start $2" >> "$1"; sleep 0.2; echo "end $2" >> "$1"'
"""A command that records when it starts and ends: args log file, node name."""
WAIT_FOR_FILE = (
    'echo "start $2" >> "$1"; while [ ! -e "$3" ]; do sleep 0.02; done; echo "end $2" >> "$1"'
)
"""Like LOG_EVENTS but runs until file $3 exists."""
SLEEP_WITH_PIDFILE = 'sleep 30 & echo $! > "$1"; wait'
"""Runs until killed; its child's pid goes to $1 so the test can check the child died too."""


def build_config(
    tmp_path: Path,
    power: dict[str, Any],
    nodes: int = 1,
    overrides: dict[str, dict[str, Any]] | None = None,
    variables: dict[str, str] | None = None,
) -> Config:
    """A real configuration directory with nodes n-1..n-N of cluster alpha, loaded."""
    conf = tmp_path / "conf"
    (conf / "clusters").mkdir(parents=True)
    deploy = {
        "daemon": {"state_dir": str(tmp_path / "state")},
        "boot": {"deploy_kernel": "kernels/deploy-vmlinuz"},
        "automata": {
            "macrosteps": {
                "SetDeploymentEnv": [{"type": "untrusted", "retries": 1, "timeout": 100}],
                "BroadcastEnv": [{"type": "direct", "retries": 1, "timeout": 100}],
                "BootNewEnv": [{"type": "classical", "retries": 1, "timeout": 100}],
            }
        },
        "vars": {"log": str(tmp_path / "events.log"), **(variables or {})},
        "power": {"command_timeout": WAIT, **power},
    }
    (conf / "deploy.conf").write_text(yaml.safe_dump(deploy))
    (conf / "clusters" / "alpha.conf").write_text("disk: {block_device: /dev/sda}\n")
    entries: dict[str, Any] = {}
    for index in range(1, nodes + 1):
        name = f"n-{index}"
        entries[name] = {
            "cluster": "alpha",
            "address": f"10.0.0.{index}",
            "mac": f"02:00:00:00:00:{index:02x}",
            "bmc": f"10.1.0.{index}",
            **(overrides or {}).get(name, {}),
        }
    (conf / "nodes.conf").write_text(yaml.safe_dump(entries))
    return load_config(conf)


class Replies:
    """A reply_to that collects results from any thread; tests wait on it, never sleep."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._results: dict[str, list[RebootResult]] = {}

    def __call__(self, result: RebootResult) -> None:
        with self._cond:
            self._results.setdefault(result.request_id, []).append(result)
            self._cond.notify_all()

    def wait(self, request_id: str, timeout: float = WAIT) -> RebootResult:
        with self._cond:
            if not self._cond.wait_for(lambda: request_id in self._results, timeout):
                pytest.fail(f"no result for request {request_id} within {timeout} s")
            results = self._results[request_id]
        assert len(results) == 1, f"request {request_id} answered {len(results)} times"
        return results[0]


def start_actor(window: int = 10, window_sleep: float = 0, kill_grace: float = 5.0) -> Any:
    return RebootActor.start(
        window=window, window_sleep=window_sleep, kill_grace=kill_grace
    ).proxy()


def read_events(log: Path) -> list[tuple[str, str]]:
    return [tuple(line.split()) for line in log.read_text().splitlines()]  # type: ignore[misc]


def busy_periods(events: list[tuple[str, str]]) -> list[list[str]]:
    """Nodes started in each period during which at least one command ran."""
    periods: list[list[str]] = []
    running = 0
    for kind, node in events:
        if kind == "start":
            if running == 0:
                periods.append([])
            periods[-1].append(node)
            running += 1
        else:
            running -= 1
    return periods


def peak_concurrency(events: list[tuple[str, str]]) -> int:
    running = peak = 0
    for kind, _node in events:
        running += 1 if kind == "start" else -1
        peak = max(peak, running)
    return peak


# ---------------------------------------------------------------- levels (pure)


@pytest.mark.parametrize(
    ("attempt", "level"),
    [
        (1, RebootLevel.SOFT),
        (2, RebootLevel.HARD),
        (3, RebootLevel.VERY_HARD),
        (7, RebootLevel.VERY_HARD),
    ],
)
def test_escalation_follows_kadeploy3(attempt: int, level: RebootLevel) -> None:
    assert escalate(attempt) is level


def test_escalation_counts_from_one() -> None:
    with pytest.raises(ValueError, match="from 1"):
        escalate(0)


def power_settings(*levels: str) -> PowerSettings:
    return PowerSettings.model_validate({f"reboot_{level}": [level] for level in levels})


@pytest.mark.parametrize(
    ("defined", "wanted", "used"),
    [
        (("soft", "hard", "very_hard"), "soft", "soft"),
        (("soft", "hard", "very_hard"), "very_hard", "very_hard"),
        (("hard", "very_hard"), "soft", "hard"),
        (("very_hard",), "soft", "very_hard"),
        (("soft", "very_hard"), "hard", "very_hard"),
        (("soft", "hard"), "very_hard", "hard"),  # nothing stronger: the strongest there is
        (("soft",), "very_hard", "soft"),
    ],
)
def test_available_level_falls_to_the_next_defined(
    defined: tuple[str, ...], wanted: str, used: str
) -> None:
    assert available_level(power_settings(*defined), RebootLevel(wanted)) is RebootLevel(used)


def test_no_reboot_command_at_all_is_a_clear_error() -> None:
    with pytest.raises(NoPowerCommand) as caught:
        available_level(PowerSettings(), RebootLevel.HARD)
    message = str(caught.value)
    assert "no reboot command is configured" in message
    assert "power.reboot_soft, power.reboot_hard, power.reboot_very_hard" in message


@pytest.mark.parametrize(
    ("output", "state"),
    [
        ("Chassis Power is on\n", PowerState.ON),
        ("Chassis Power is off\n", PowerState.OFF),
        ("warning: foo\nChassis Power is ON", PowerState.ON),
        ("off\n", PowerState.OFF),
        ("", None),
        ("Error: Unable to establish IPMI v2 / RMCP+ session", None),
    ],
)
def test_power_state_is_parsed(output: str, state: PowerState | None) -> None:
    assert parse_power_state(output) == state


def test_plan_renders_the_node_template(tmp_path: Path) -> None:
    config = build_config(
        tmp_path, {"reboot_hard": ["ipmitool", "-H", "{bmc}", "-U", "{ipmi_user}", "cycle"]},
        variables={"ipmi_user": "admin"},
    )  # fmt: skip
    planned = plan("r1", config.nodes["n-1"], RebootLevel.SOFT)
    assert isinstance(planned, PowerRequest)
    assert planned.argv == ("ipmitool", "-H", "10.1.0.1", "-U", "admin", "cycle")
    assert planned.operation is RebootLevel.HARD
    assert planned.timeout == WAIT


# ---------------------------------------------------------------- the window (pure)


def test_window_without_sleep_reuses_a_freed_slot_at_once() -> None:
    window: RebootWindow[str] = RebootWindow(2, 0)
    for key in "abcd":
        window.submit(key, key.upper())
    assert window.take_startable() == [("a", "A"), ("b", "B")]
    assert window.take_startable() == []
    assert window.finished("a") is False  # no sleep to start
    assert window.take_startable() == [("c", "C")]  # while b still runs
    assert window.running == {"b", "c"}
    assert window.queued == ("d",)


def test_window_with_sleep_runs_whole_batches_apart() -> None:
    window: RebootWindow[str] = RebootWindow(2, 1.5)
    for key in "abcde":
        window.submit(key, key)
    assert [k for k, _ in window.take_startable()] == ["a", "b"]
    assert window.finished("a") is False
    assert window.take_startable() == []  # b still runs: the batch is not over
    assert window.finished("b") is True  # batch over: start the sleep
    assert window.sleeping
    assert window.take_startable() == []
    window.sleep_over()
    assert [k for k, _ in window.take_startable()] == ["c", "d"]


def test_window_queue_can_be_cancelled_and_rejects_duplicates() -> None:
    window: RebootWindow[str] = RebootWindow(1, 0)
    window.submit("a", "A")
    window.submit("b", "B")
    with pytest.raises(KeyError):
        window.submit("a", "again")
    window.take_startable()
    assert window.remove_queued("a") is None  # running, not queued
    assert window.remove_queued("b") == "B"
    assert window.queued == ()


# ---------------------------------------------------------------- the actor, real commands


class Requester(pykka.ThreadingActor):
    """Stands for a NodeActor: receives results by a proxy call it never waits on."""

    def __init__(self) -> None:
        super().__init__()
        self.results: list[RebootResult] = []
        self.done = threading.Event()

    def reboot_done(self, result: RebootResult) -> None:
        self.results.append(result)
        self.done.set()


def test_reboot_runs_the_rendered_template_and_tells_an_actor(tmp_path: Path) -> None:
    config = build_config(
        tmp_path,
        {"reboot_soft": ["sh", "-c", 'echo "$1 $2 $3"', "sh", "{node}", "{address}", "{bmc}"]},
    )
    requester_ref = Requester.start()
    requester = requester_ref.proxy()
    reboot = start_actor()
    reboot.reboot("r1", config.nodes["n-1"], RebootLevel.SOFT, requester.reboot_done)
    assert requester_ref.proxy().done.get(timeout=WAIT).wait(WAIT)
    (result,) = requester.results.get(timeout=WAIT)
    assert result.ok
    assert result.request_id == "r1"
    assert result.node.name == "n-1"
    assert result.operation is RebootLevel.SOFT
    assert result.message == "soft reboot succeeded"
    assert result.command is not None
    assert result.command.stdout == "n-1 10.0.0.1 10.1.0.1\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["false"], "hard reboot exited with status 1"),
        (
            ["sh", "-c", "echo 'Error: no route to BMC' >&2; exit 3"],
            "hard reboot exited with status 3: Error: no route to BMC",
        ),
        (
            ["no-such-ipmitool", "chassis", "power", "cycle"],
            "hard reboot could not run: command not found: no-such-ipmitool",
        ),
    ],
)
def test_failed_command_gives_a_failed_result(
    tmp_path: Path, argv: list[str], message: str
) -> None:
    config = build_config(tmp_path, {"reboot_hard": argv})
    replies = Replies()
    start_actor().reboot("r1", config.nodes["n-1"], RebootLevel.HARD, replies)
    result = replies.wait("r1")
    assert not result.ok
    assert result.message == message
    assert result.command is not None


def test_missing_level_escalates_to_the_next_configured(tmp_path: Path) -> None:
    config = build_config(
        tmp_path, {"reboot_hard": ["echo", "hard"], "reboot_very_hard": ["echo", "very_hard"]}
    )
    replies = Replies()
    start_actor().reboot("r1", config.nodes["n-1"], escalate(1), replies)
    result = replies.wait("r1")
    assert result.ok
    assert result.requested is RebootLevel.SOFT
    assert result.operation is RebootLevel.HARD
    assert result.command is not None and result.command.stdout == "hard\n"
    assert result.message == "hard reboot (no reboot_soft configured) succeeded"


def test_escalated_attempt_runs_the_stronger_command(tmp_path: Path) -> None:
    config = build_config(
        tmp_path,
        {
            "reboot_soft": ["echo", "soft"],
            "reboot_hard": ["echo", "hard"],
            "reboot_very_hard": ["echo", "very_hard"],
        },
    )
    replies = Replies()
    reboot = start_actor()
    for attempt in (1, 2, 3):
        reboot.reboot(f"a{attempt}", config.nodes["n-1"], escalate(attempt), replies)
    outputs = [replies.wait(f"a{attempt}").command for attempt in (1, 2, 3)]
    assert [c.stdout if c else None for c in outputs] == ["soft\n", "hard\n", "very_hard\n"]


def test_node_without_a_reboot_command_gets_a_clear_error(tmp_path: Path) -> None:
    config = build_config(tmp_path, {"power_status": ["true"]})
    replies = Replies()
    start_actor().reboot("r1", config.nodes["n-1"], RebootLevel.HARD, replies)
    result = replies.wait("r1")
    assert not result.ok
    assert result.command is None
    assert result.message.startswith("node n-1: no reboot command is configured")


def test_power_status_is_parsed_from_the_output(tmp_path: Path) -> None:
    config = build_config(
        tmp_path,
        {"power_status": ["echo", "Chassis Power is on"], "power_on": ["true"]},
        nodes=2,
        overrides={"n-2": {"power": {"power_status": ["echo", "Who knows"]}}},
    )
    replies = Replies()
    reboot = start_actor()
    reboot.power("s1", config.nodes["n-1"], PowerAction.STATUS, replies)
    reboot.power("s2", config.nodes["n-2"], PowerAction.STATUS, replies)
    reboot.power("on", config.nodes["n-1"], PowerAction.ON, replies)
    reboot.power("off", config.nodes["n-1"], PowerAction.OFF, replies)
    status = replies.wait("s1")
    assert status.ok and status.power_state is PowerState.ON
    assert status.message == "power is on"
    unknown = replies.wait("s2")
    assert not unknown.ok and unknown.power_state is None
    assert "cannot tell the power state" in unknown.message
    assert replies.wait("on").ok
    off = replies.wait("off")
    assert not off.ok
    assert "set power.power_off" in off.message


def test_command_timeout_kills_the_command_and_its_children(
    tmp_path: Path, reaper: PidReaper
) -> None:
    pidfile = tmp_path / "child.pid"
    config = build_config(
        tmp_path,
        {
            "command_timeout": 0.5,
            "reboot_hard": ["sh", "-c", SLEEP_WITH_PIDFILE, "sh", "{pidfile}"],
        },
        variables={"pidfile": str(pidfile)},
    )
    replies = Replies()
    start_actor().reboot("r1", config.nodes["n-1"], RebootLevel.HARD, replies)
    result = replies.wait("r1")
    child = reaper.add(read_pid(pidfile))
    assert not result.ok
    assert result.command is not None and result.command.timed_out
    assert result.message.startswith("hard reboot timed out after")
    wait_until(lambda: not process_alive(child), what=f"child {child} to be gone")


def test_window_bounds_the_commands_running_at_once(tmp_path: Path) -> None:
    config = build_config(
        tmp_path, {"reboot_hard": ["sh", "-c", LOG_EVENTS, "sh", "{log}", "{node}"]}, nodes=5
    )
    replies = Replies()
    reboot = start_actor(window=2)
    for node in config.nodes.values():
        reboot.reboot(node.name, node, RebootLevel.HARD, replies)
    assert all(replies.wait(name).ok for name in config.nodes)
    events = read_events(tmp_path / "events.log")
    assert len(events) == 10
    assert peak_concurrency(events) == 2


def test_without_sleep_a_slow_command_does_not_hold_back_the_others(tmp_path: Path) -> None:
    release = tmp_path / "release"
    config = build_config(
        tmp_path,
        {"reboot_hard": ["sh", "-c", LOG_EVENTS, "sh", "{log}", "{node}"]},
        nodes=4,
        overrides={
            "n-1": {
                "power": {
                    "reboot_hard": ["sh", "-c", WAIT_FOR_FILE, "sh", "{log}", "{node}", "{release}"]
                }
            }
        },
        variables={"release": str(release)},
    )
    replies = Replies()
    reboot = start_actor(window=2)
    for node in config.nodes.values():
        reboot.reboot(node.name, node, RebootLevel.HARD, replies)
    for name in ("n-2", "n-3", "n-4"):  # all through the second slot while n-1 holds the first
        assert replies.wait(name).ok
    release.touch()
    assert replies.wait("n-1").ok
    events = read_events(tmp_path / "events.log")
    assert ("start", "n-1") in events[:2]  # in the first pair, with n-2
    assert events[-1] == ("end", "n-1")
    assert peak_concurrency(events) == 2


def test_window_sleep_separates_batches(tmp_path: Path) -> None:
    config = build_config(
        tmp_path, {"reboot_hard": ["sh", "-c", LOG_EVENTS, "sh", "{log}", "{node}"]}, nodes=5
    )
    replies = Replies()
    reboot = start_actor(window=2, window_sleep=0.1)
    for node in config.nodes.values():
        reboot.reboot(node.name, node, RebootLevel.HARD, replies)
    assert all(replies.wait(name).ok for name in config.nodes)
    periods = busy_periods(read_events(tmp_path / "events.log"))
    # A batch starts only once the previous one has completely ended: no period of activity
    # ever holds more than one window's worth of commands.
    assert all(len(period) <= 2 for period in periods), periods
    assert sorted(node for period in periods for node in period) == list(config.nodes)
    assert len(periods) >= 3


def blocking_setup(tmp_path: Path) -> tuple[Config, Path]:
    """n-1's reboot runs until killed (its child's pid in a file); n-2's is quick."""
    pidfile = tmp_path / "child.pid"
    config = build_config(
        tmp_path,
        {"reboot_hard": ["true"]},
        nodes=2,
        overrides={
            "n-1": {"power": {"reboot_hard": ["sh", "-c", SLEEP_WITH_PIDFILE, "sh", "{pidfile}"]}}
        },
        variables={"pidfile": str(pidfile)},
    )
    return config, pidfile


def test_cancel_drops_a_queued_request_and_kills_a_running_one(
    tmp_path: Path, reaper: PidReaper
) -> None:
    config, pidfile = blocking_setup(tmp_path)
    replies = Replies()
    reboot = start_actor(window=1)
    reboot.reboot("r1", config.nodes["n-1"], RebootLevel.HARD, replies)
    reboot.reboot("r2", config.nodes["n-2"], RebootLevel.HARD, replies)
    child = reaper.add(read_pid(pidfile))
    # The actor answers while a command runs: its inbox is never blocked on one.
    activity = reboot.activity().get(timeout=WAIT)
    assert activity.running == ("r1",)
    assert activity.queued == ("r2",)

    assert reboot.cancel("r2").get(timeout=WAIT) is True
    queued = replies.wait("r2")
    assert queued.cancelled and not queued.ok
    assert queued.command is None
    assert queued.message == "hard reboot cancelled before it started"

    assert reboot.cancel("r1").get(timeout=WAIT) is True
    running = replies.wait("r1")
    assert running.cancelled and not running.ok
    assert running.command is not None and running.command.cancelled
    assert running.message == "hard reboot cancelled"
    assert not running.stopped and not queued.stopped
    wait_until(lambda: not process_alive(child), what=f"child {child} to be gone")

    assert reboot.cancel("never-sent").get(timeout=WAIT) is False
    wait_until(lambda: reboot.activity().get(timeout=WAIT).running == ())


def test_duplicate_request_id_is_refused(tmp_path: Path, reaper: PidReaper) -> None:
    config, pidfile = blocking_setup(tmp_path)
    replies = Replies()
    reboot = start_actor()
    reboot.reboot("r1", config.nodes["n-1"], RebootLevel.HARD, replies)
    reaper.add(read_pid(pidfile))
    with pytest.raises(DuplicateRequest, match="r1"):
        reboot.reboot("r1", config.nodes["n-2"], RebootLevel.HARD, replies).get(timeout=WAIT)
    reboot.cancel("r1").get(timeout=WAIT)
    assert replies.wait("r1").cancelled


def test_an_answered_id_can_be_reused_at_once(tmp_path: Path) -> None:
    config = build_config(tmp_path, {"reboot_hard": ["echo", "hard"]})
    first, second = Replies(), Replies()
    reboot = start_actor()
    reboot.reboot("r1", config.nodes["n-1"], RebootLevel.HARD, first)
    assert first.wait("r1").ok
    # The slot is freed before the answer goes out: no DuplicateRequest for a finished id.
    reboot.reboot("r1", config.nodes["n-1"], RebootLevel.HARD, second).get(timeout=WAIT)
    assert second.wait("r1").ok


def test_stop_kills_running_commands_and_answers_queued_ones(
    tmp_path: Path, reaper: PidReaper
) -> None:
    config, pidfile = blocking_setup(tmp_path)
    replies = Replies()
    ref = RebootActor.start(window=1, window_sleep=0)
    reboot = ref.proxy()
    reboot.reboot("r1", config.nodes["n-1"], RebootLevel.HARD, replies)
    reboot.reboot("r2", config.nodes["n-2"], RebootLevel.HARD, replies)
    child = reaper.add(read_pid(pidfile))
    ref.stop(timeout=WAIT)
    running, queued = replies.wait("r1"), replies.wait("r2")
    assert running.cancelled and queued.cancelled
    assert running.stopped and queued.stopped  # the requester should ask the next incarnation
    assert running.message == "hard reboot cancelled: the reboot service stopped"
    assert queued.message == "hard reboot cancelled: the reboot service stopped"
    wait_until(lambda: not process_alive(child), what=f"child {child} to be gone")


def test_a_failing_reply_to_does_not_harm_the_actor(tmp_path: Path) -> None:
    config = build_config(tmp_path, {"reboot_hard": ["true"]})

    def broken(result: RebootResult) -> None:
        raise RuntimeError("requester is gone")

    replies = Replies()
    reboot = start_actor()
    reboot.reboot("r1", config.nodes["n-1"], RebootLevel.HARD, broken)
    reboot.reboot("r2", config.nodes["n-1"], RebootLevel.HARD, replies)
    assert replies.wait("r2").ok
    wait_until(lambda: reboot.activity().get(timeout=WAIT).running == (), what="slots freed")


# ---------------------------------------------------------------- real ipmitool, pyghmi BMC

BMC_ADDRESS = "127.0.3.201"  # away from the testbed's 127.0.3.1..N


class Chassis:
    """The node side of a BMC: a power flag and the actions received (from the BMC thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.on = True
        self.actions: list[str] = []

    def _record(self, action: str, on: bool) -> None:
        with self._lock:
            self.actions.append(action)
            self.on = on

    def is_on(self) -> bool:
        with self._lock:
            return self.on

    def power_on(self) -> None:
        self._record("on", True)

    def power_off(self) -> None:
        self._record("off", False)

    def power_cycle(self) -> None:
        self._record("cycle", True)

    def power_reset(self) -> None:
        self._record("reset", True)


def free_udp_port(address: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((address, 0))
        port: int = probe.getsockname()[1]
        return port


def test_real_ipmitool_against_a_pyghmi_bmc(tmp_path: Path) -> None:
    bmc_module = pytest.importorskip("kadeploy_testbed.bmc")
    port = free_udp_port(BMC_ADDRESS)
    password_file = tmp_path / "ipmi_password"
    password_file.write_text("s3cret\n")
    ipmitool = ["ipmitool", "-I", "lanplus", "-H", "{bmc}", "-p", "{bmc_port}", "-U", "admin",
                "-f", "{ipmi_password_file}", "chassis", "power"]  # fmt: skip
    config = build_config(
        tmp_path,
        {
            "reboot_hard": [*ipmitool, "cycle"],
            "reboot_very_hard": [*ipmitool, "reset"],
            "power_on": [*ipmitool, "on"],
            "power_off": [*ipmitool, "off"],
            "power_status": [*ipmitool, "status"],
        },
        overrides={"n-1": {"bmc": BMC_ADDRESS}},
        variables={"bmc_port": str(port), "ipmi_password_file": str(password_file)},
    )
    node = config.nodes["n-1"]
    chassis = Chassis()
    replies = Replies()
    reboot = start_actor(window=1)
    with bmc_module.start_bmc(BMC_ADDRESS, port, "admin", "s3cret", chassis, name="n-1"):
        steps: list[tuple[str, PowerAction | RebootLevel]] = [
            ("status-1", PowerAction.STATUS),
            ("off", PowerAction.OFF),
            ("status-2", PowerAction.STATUS),
            ("on", PowerAction.ON),
            ("hard", RebootLevel.HARD),
            ("very-hard", RebootLevel.VERY_HARD),
        ]
        for request_id, operation in steps:  # window 1: they run in this order
            if isinstance(operation, RebootLevel):
                reboot.reboot(request_id, node, operation, replies)
            else:
                reboot.power(request_id, node, operation, replies)
        results = {request_id: replies.wait(request_id) for request_id, _ in steps}
    for request_id, result in results.items():
        assert result.ok, (request_id, result.message, result.command)
    assert results["status-1"].power_state is PowerState.ON
    assert results["status-2"].power_state is PowerState.OFF
    assert chassis.actions == ["off", "on", "cycle", "reset"]
