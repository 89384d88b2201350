"""kadeploy's live view on a real pseudo-terminal, and the transfer rate it shows.

The pty test runs the installed ``kadeploy`` with its stdin, stdout and stderr on a pty,
against a server started with ``kadeploy-server start`` (dummy macrosteps): n-1..n-3 deploy at
once, n-4's reboot hangs until the deployment is cancelled, so the view stays up without
events for a while, then shows a failure and the summary.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import termios
import threading
import time

from cli_fixtures import SLOW_NODE, CliServer, cli_server, tool
from daemon_fixtures import wait_until
from test_daemon_actors import processes_with

from kadeploy_cli.output import STREAM_GAP, StreamRate

__all__ = ["cli_server"]

MIB = 1024 * 1024
TOKENS = re.compile(r"(\x1b\[[0-9;?]*[A-Za-z]|\r|\n)")


def screen_of(output: str) -> list[str]:
    """The lines a terminal shows after ``output``: text, CR, LF, cursor up (``CSI n A``) and
    erase line (``CSI 2K``) as a VT100 does them; colours and cursor visibility ignored.
    Trailing blanks and blank lines at the end are dropped."""
    lines: list[list[str]] = [[]]
    row = col = 0
    for token in TOKENS.split(output):
        if token == "\r":
            col = 0
        elif token == "\n":
            row += 1
            lines.extend([] for _ in range(row + 1 - len(lines)))
        elif token.startswith("\x1b["):
            if token.endswith("A"):
                row = max(0, row - int(token[2:-1] or 1))
            elif token == "\x1b[2K":
                lines[row] = []
        else:
            line = lines[row]
            line.extend(" " for _ in range(col + len(token) - len(line)))
            line[col : col + len(token)] = token
            col += len(token)
    text = ["".join(line).rstrip() for line in lines]
    while text and not text[-1]:
        text.pop()
    return text


def rate_of(samples: list[tuple[float, int]]) -> float | None:
    rate = StreamRate()
    for now, done in samples:
        rate.add(now, done * MIB)
    found = rate.rate()
    return None if found is None else found / MIB


def test_the_rate_leaves_out_the_wait_before_the_first_bytes() -> None:
    # The relays start (0 bytes), wait 30 s for the chain to gather, then 10 MiB/s.
    samples = [(0.0, 0), (30.0, 4), *((30.0 + s, 4 + 10 * s) for s in range(1, 6))]
    assert rate_of(samples) == 10.0
    assert rate_of(samples[:2]) is None  # bytes seen once: no time to divide by yet
    assert rate_of([(0.0, 0), (1.0, 0)]) is None


def test_the_rate_leaves_out_pauses_between_rounds_and_restarts() -> None:
    first_round = [(0.0, 0), (1.0, 5), (2.0, 15), (3.0, 25)]  # 10 MiB/s
    # Round 2 starts 20 s later: its relays report 0 (total unchanged), wait, then stream.
    second_round = [(20.0, 25), (24.0, 30), (25.0, 50), (26.0, 70)]  # 20 MiB/s
    assert rate_of(first_round + second_round) == (20 + 40) / (2 + 2)
    # Without an event in between: a silence longer than STREAM_GAP is not streaming time.
    gap = 3.0 + STREAM_GAP + 1
    assert rate_of([*first_round, (gap, 30), (gap + 1, 50)]) == (20 + 20) / (2 + 1)
    # A node restarts its transfer (the total goes down): the bytes start over.
    assert rate_of([*first_round, (4.0, 10), (5.0, 12), (6.0, 22)]) == (20 + 10) / (2 + 1)


def test_joining_during_the_stream_counts_from_the_first_event() -> None:
    assert rate_of([(0.0, 40), (1.0, 50), (2.0, 60)]) == 10.0  # kadeploy --follow


# ------------------------------------------------------------------ on a pty


class Terminal:
    """A child process on a pseudo-terminal of 120 x 40; everything it writes, kept."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: str) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        self._master = master
        self._output = bytearray()
        self._lock = threading.Lock()
        self.process = subprocess.Popen(
            argv, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=cwd, start_new_session=True
        )
        os.close(slave)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self._master, 65536)
            except OSError:  # EIO: every process holding the pty's other side is gone
                return
            if not chunk:
                return
            with self._lock:
                self._output += chunk

    def raw(self) -> str:
        with self._lock:
            return self._output.decode(errors="replace")

    def screen(self) -> list[str]:
        """The terminal's lines as they stand (see :func:`screen_of`)."""
        return screen_of(self.raw())

    def wait(self, timeout: float) -> int:
        code = self.process.wait(timeout)
        self._reader.join(10)
        os.close(self._master)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.wait(10)


def test_on_a_terminal_kadeploy_shows_a_live_view_then_the_summary(cli_server: CliServer) -> None:
    env = cli_server.env("alice", TERM="xterm-256color")
    for variable in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "COLUMNS"):
        env.pop(variable, None)
    argv = [tool("kadeploy"), "-m", f"n-[1-3],{SLOW_NODE}", "-e", "tiny", "-k"]
    terminal = Terminal(argv, env, str(cli_server.home))
    try:
        wait_until(lambda: "  rebooting      1 node" in terminal.screen(), 60, "the live view")
        wait_until(lambda: processes_with(cli_server.marker), 30, f"{SLOW_NODE}'s reboot to hang")
        during = terminal.screen()
        assert during[1:3] == ["  rebooting      1 node", "  deployed       3/4 nodes"], during
        time.sleep(2)  # no event meanwhile (n-4 hangs): the clock ticks on all the same
        later = terminal.screen()
        assert later[:3] == during[:3], later
        assert elapsed(later[3]) - elapsed(during[3]) >= 1.5, (during, later)
        running = [d for d in cli_server.running_deployments() if d["node_count"] == 4]
        assert len(running) == 1, running
        ident = running[0]["id"]
        with cli_server.api("alice") as alice:
            assert alice.post(f"/v1/deployments/{ident}/cancel").status_code == 202
        code = terminal.wait(60)
    finally:
        terminal.kill()
    screen = terminal.screen()
    assert code == 1, screen
    assert "Traceback" not in terminal.raw()
    # The view was redrawn in place: the steps it showed before are gone; the failure was
    # printed above it as it happened; its last state stays, the summary below.
    assert screen[0] == f"Deployment {ident} of tiny version 1 on 4 nodes (user alice)", screen
    assert re.fullmatch(
        rf"\[ *\d+\.\ds\] {SLOW_NODE} ABORTED in SetDeploymentEnv: .*", screen[1]
    ), screen
    assert screen[2:4] == ["  deployed       3/4 nodes", "  aborted        1 node"], screen
    assert elapsed(screen[4]) >= elapsed(later[3]), screen
    assert screen[5].startswith(f"Deployment {ident} aborted in "), screen
    assert screen[6:] == [
        "The deployment is successful on 3 nodes:",
        "  n-1",
        "  n-2",
        "  n-3",
        "The deployment failed on 1 node:",
        f"  {SLOW_NODE}  aborted: cancelled by user",
    ], screen
    wait_until(lambda: not processes_with(cli_server.marker), 30, "the reboot to be killed")


def elapsed(line: str) -> float:
    """The seconds of the view's clock line."""
    found = re.fullmatch(r"  elapsed (\d+\.\d) s", line)
    assert found, line
    return float(found.group(1))
