"""The local command adapter, with real processes: exit codes, output, timeouts, groups, cancel."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from reboot_fixtures import WAIT, PidReaper, process_alive, read_pid, wait_until

from kadeployd.adapters import CommandResult, RunningCommand, run_command


@pytest.fixture
def reaper() -> Iterator[PidReaper]:
    pids = PidReaper()
    yield pids
    pids.kill_all()


def run_in_thread(command: RunningCommand) -> tuple[threading.Thread, list[CommandResult]]:
    results: list[CommandResult] = []
    thread = threading.Thread(target=lambda: results.append(command.run()), daemon=True)
    thread.start()
    return thread, results


# ---------------------------------------------------------------- how commands end


def test_successful_command_is_ok() -> None:
    result = run_command(["true"], timeout=WAIT)
    assert result.ok
    assert result.returncode == 0
    assert not result.timed_out
    assert result.argv == ("true",)
    assert result.describe() == "succeeded"


def test_failing_command_reports_its_status_and_stderr() -> None:
    result = run_command(
        ["sh", "-c", "echo out; echo first >&2; echo 'boom: bad BMC' >&2; exit 3"], timeout=WAIT
    )
    assert not result.ok
    assert result.returncode == 3
    assert result.stdout == "out\n"
    assert result.stderr_tail() == "first\nboom: bad BMC"
    assert result.stderr_tail(lines=1) == "boom: bad BMC"
    assert result.describe() == "exited with status 3: boom: bad BMC"


def test_arguments_are_passed_as_is_without_a_shell() -> None:
    result = run_command(["printf", "%s|", "a b", "$HOME", ";", "`id`"], timeout=WAIT)
    assert result.stdout == "a b|$HOME|;|`id`|"


def test_missing_executable_is_a_result_not_an_exception() -> None:
    result = run_command(["no-such-ipmitool", "chassis", "power", "status"], timeout=WAIT)
    assert not result.ok
    assert result.returncode is None
    assert result.stderr == "command not found: no-such-ipmitool"
    assert result.describe() == "command not found: no-such-ipmitool"


def test_non_executable_file_is_a_result(tmp_path: Path) -> None:
    script = tmp_path / "power.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o644)
    result = run_command([str(script)], timeout=WAIT)
    assert result.returncode is None
    assert "permission denied" in result.stderr
    assert str(script) in result.stderr


def test_stdin_is_fed_and_large_output_does_not_stall() -> None:
    data = b"0123456789abcdef" * 65536  # 1 MiB: larger than any pipe buffer
    result = run_command(["cat"], timeout=WAIT, stdin=data, output_limit=len(data))
    assert result.ok
    assert result.stdout == data.decode()


def test_without_stdin_the_command_reads_end_of_file() -> None:
    result = run_command(["cat"], timeout=WAIT)
    assert result.ok
    assert result.stdout == ""


def test_output_keeps_only_the_tail() -> None:
    result = run_command(["sh", "-c", "seq 1 100000"], timeout=WAIT, output_limit=1000)
    assert result.ok
    header, body = result.stdout.split("\n", 1)
    assert len(body) == 1000
    assert body.endswith("99999\n100000\n")
    full = sum(len(f"{i}\n") for i in range(1, 100001))
    assert header == f"[kadeployd: first {full - 1000} bytes of output dropped]"


# ---------------------------------------------------------------- timeouts and process groups


def test_timeout_kills_the_command_and_its_children(tmp_path: Path, reaper: PidReaper) -> None:
    pidfile = tmp_path / "child.pid"
    result = run_command(
        ["sh", "-c", 'sleep 30 & echo $! > "$1"; wait', "sh", str(pidfile)], timeout=0.5
    )
    child = reaper.add(read_pid(pidfile))
    assert result.timed_out
    assert not result.ok
    assert result.returncode == -15  # SIGTERM was enough
    assert result.describe().startswith("timed out after")
    wait_until(lambda: not process_alive(child), what=f"child {child} to be gone")


def test_sigterm_ignored_means_sigkill_after_the_grace(tmp_path: Path, reaper: PidReaper) -> None:
    pidfile = tmp_path / "child.pid"
    script = 'trap "" TERM; sleep 30 & echo $! > "$1"; wait; wait'
    result = run_command(["sh", "-c", script, "sh", str(pidfile)], timeout=0.3, kill_grace=0.3)
    child = reaper.add(read_pid(pidfile))
    assert result.timed_out
    assert result.returncode == -9
    wait_until(lambda: not process_alive(child), what=f"child {child} to be gone")


def test_background_leftovers_are_killed_when_the_command_exits(
    tmp_path: Path, reaper: PidReaper
) -> None:
    pidfile = tmp_path / "child.pid"
    result = run_command(
        ["sh", "-c", 'sleep 30 & echo $! > "$1"; echo done', "sh", str(pidfile)], timeout=WAIT
    )
    child = reaper.add(read_pid(pidfile))
    assert result.ok
    assert result.stdout == "done\n"
    assert not result.timed_out
    wait_until(lambda: not process_alive(child), what=f"leftover {child} to be gone")


def test_process_escaping_the_group_does_not_hold_the_result(
    tmp_path: Path, reaper: PidReaper
) -> None:
    # setsid leaves the command's group (out of reach, like a daemon) with stdout still open:
    # the result comes when the command itself exits, after a short drain, not at the timeout.
    pidfile = tmp_path / "escaped.pid"
    script = (
        'setsid sh -c \'echo $$ > "$1"; exec sleep 30\' inner "$1" & '
        'while [ ! -s "$1" ]; do sleep 0.01; done; echo started'
    )
    result = run_command(["sh", "-c", script, "sh", str(pidfile)], timeout=WAIT)
    escaped = reaper.add(read_pid(pidfile))
    assert result.ok
    assert result.stdout == "started\n"
    assert not result.timed_out
    assert process_alive(escaped)  # out of reach by design; the reaper ends it


# ---------------------------------------------------------------- cancel from another thread


def test_cancel_kills_a_running_command(tmp_path: Path, reaper: PidReaper) -> None:
    pidfile = tmp_path / "child.pid"
    command = RunningCommand(
        ["sh", "-c", 'sleep 30 & echo $! > "$1"; wait', "sh", str(pidfile)], timeout=60
    )
    thread, results = run_in_thread(command)
    child = reaper.add(read_pid(pidfile))
    assert command.pid is not None
    assert command.cancel()
    thread.join(WAIT)
    assert not thread.is_alive()
    (result,) = results
    assert result.cancelled
    assert not result.timed_out
    assert not result.ok
    assert result.describe() == "was cancelled"
    wait_until(lambda: not process_alive(child), what=f"child {child} to be gone")
    assert not command.cancel()  # already over


def test_cancel_before_run_starts_nothing() -> None:
    command = RunningCommand(["sleep", "30"], timeout=60)
    assert command.cancel()
    result = command.run()
    assert result.cancelled
    assert result.returncode is None
    assert command.pid is None


def test_a_command_runs_only_once() -> None:
    command = RunningCommand(["true"], timeout=WAIT)
    assert command.run().ok
    with pytest.raises(RuntimeError):
        command.run()
