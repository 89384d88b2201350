"""Pure logic of the tools: progress rendering, summaries, exit codes, addresses, SSE parsing."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from kadeploy_cli.client import ServerAddress, _parse_sse, parse_address
from kadeploy_cli.errors import UsageProblem
from kadeploy_cli.output import NodeOutcome, Progress, exit_code, summary_lines, transfer_text

DEPLOYMENT = {"id": "d1", "created_at": 100.0, "node_count": 2, "user": "alice",
              "environment": {"name": "tiny", "version": 1, "anonymous": False}}  # fmt: skip


def event(node: str, state: str, at: float, **extra: object) -> dict[str, object]:
    return {"node": node, "state": state, "at": at, **extra}


def screen(progress: Progress) -> list[str]:
    """The live view as it is drawn now, as plain lines."""
    out = io.StringIO()
    Console(file=out, width=100, color_system=None).print(progress.view())
    return out.getvalue().splitlines()


def test_on_a_terminal_the_live_view_shows_each_step_and_a_ticking_clock() -> None:
    out, clock = io.StringIO(), Clock()
    progress = Progress(DEPLOYMENT, ["n-1", "n-2"], verbose=3, stream=out, tty=True, clock=clock)
    try:
        progress.state(event("n-1", "transferring", 101.0))
        progress.state(event("n-2", "transferring", 101.5))
        assert screen(progress) == ["  transferring   2 nodes", "  elapsed 1.5 s"]
        clock.now = 3.0  # no event for 3 s: the clock runs on
        assert screen(progress)[-1] == "  elapsed 4.5 s"
        progress.state(event("n-1", "deployed", 103.0))  # an earlier time: never backwards
        assert screen(progress) == [
            "  transferring   1 node",
            "  deployed       1/2 nodes",
            "  elapsed 4.5 s",
        ]
    finally:
        progress.close()
    assert out.getvalue().endswith("\x1b[?25h")  # closed: the cursor is shown again


def test_failures_are_printed_as_they_happen_above_the_block() -> None:
    out = io.StringIO()
    progress = Progress(DEPLOYMENT, ["n-1", "n-2"], verbose=3, stream=out, tty=False)
    progress.state(event("n-1", "deploy_failed", 102.0, macrostep="BootNewEnv",
                         message="ssh timed out"))  # fmt: skip
    progress.state(event("n-2", "deployed", 103.0))
    assert out.getvalue().splitlines() == [
        "[    2.0s] n-1 DEPLOY_FAILED in BootNewEnv: ssh timed out",
        "[    2.0s] deploy_failed  1 node",
        "[    3.0s] deployed       1/2 nodes",
    ]
    assert progress.all_final()


def test_verbose_0_prints_nothing() -> None:
    out = io.StringIO()
    progress = Progress(DEPLOYMENT, ["n-1"], verbose=0, stream=out, tty=False)
    progress.header(DEPLOYMENT)
    progress.state(event("n-1", "deploy_failed", 102.0))
    assert out.getvalue() == ""


def test_summary_and_exit_codes() -> None:
    ok = NodeOutcome("n-1", "deployed", None, None)
    ko = NodeOutcome("n-2", "deploy_failed", "BootNewEnv", "ssh timed out")
    finished = {**DEPLOYMENT, "status": "failed", "finished_at": 110.0, "reason": "1 failed"}
    lines = summary_lines(finished, [ok, ko])
    assert lines[0] == "Deployment d1 failed in 10.0 s: 1/2 nodes deployed (1 failed)"
    assert "  n-2  deploy_failed: BootNewEnv: ssh timed out" in lines
    assert exit_code(finished, [ok, ko]) == 1
    assert exit_code(finished, [ko]) == 4
    assert exit_code({"status": "succeeded"}, [ok, ko]) == 0  # min nodes reached
    assert exit_code({"status": "succeeded"}, [ok]) == 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/run/k.sock", ServerAddress(socket=Path("/run/k.sock"))),
        ("unix:/run/k.sock", ServerAddress(socket=Path("/run/k.sock"))),
        ("http://h:25300/", ServerAddress(url="http://h:25300")),
        ("h:25300", ServerAddress(url="http://h:25300")),
    ],
)
def test_server_addresses(text: str, expected: ServerAddress) -> None:
    assert parse_address(text) == expected


def test_a_bad_server_address_says_what_is_valid() -> None:
    with pytest.raises(UsageProblem, match="expected a socket path"):
        parse_address("nowhere")


def test_server_sent_events_are_parsed() -> None:
    lines = iter(["id: 4", "event: state", 'data: {"node": "n-1"}', "", ": keepalive", "",
                  "event: end", 'data: {"status": "succeeded"}', ""])  # fmt: skip
    events = list(_parse_sse(lines))
    assert [(e.kind, e.id, e.data) for e in events] == [
        ("state", "4", {"node": "n-1"}),
        ("end", None, {"status": "succeeded"}),
    ]


MIB = 1024 * 1024


class Clock:
    """A hand-turned clock for the transfer rate (pure logic: no wall clock)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def transfer(done_mib: int, total_mib: int) -> dict[str, object]:
    return {"bytes_done": done_mib * MIB, "bytes_total": total_mib * MIB, "nodes": {}}


def test_transfer_text_is_a_bar_with_percent_sizes_and_rate() -> None:
    assert transfer_text(112 * MIB, 192 * MIB, 48 * MIB) == (
        "transfer [###########.........]  58% 112/192 MiB 48 MiB/s"
    )
    assert transfer_text(0, 4 * MIB, None) == "transfer [....................]   0% 0.0/4.0 MiB"
    assert transfer_text(3 * MIB, 0, None).startswith("transfer [####################] 100%")


def test_on_a_terminal_the_transfer_is_in_the_view_and_failures_are_printed_above() -> None:
    out, clock = io.StringIO(), Clock()
    progress = Progress(DEPLOYMENT, ["n-1", "n-2"], verbose=3, stream=out, tty=True, clock=clock)
    try:
        progress.state(event("n-1", "transferring", 101.0))
        progress.state(event("n-2", "transferring", 101.0))
        progress.transfer(transfer(0, 192))  # the relays start, then wait for the chain
        clock.now = 30.0
        progress.transfer(transfer(16, 192))  # the first bytes
        clock.now = 32.0
        progress.transfer(transfer(112, 192))
        assert screen(progress) == [
            "  transferring   2 nodes",
            "  transfer [###########.........]  58% 112/192 MiB 48 MiB/s",
            "  elapsed 33.0 s",
        ]
        progress.state(event("n-2", "deploy_failed", 133.0, macrostep="BroadcastEnv",
                             message="relay stalled"))  # fmt: skip
    finally:
        progress.close()
    assert "[   33.0s] n-2 DEPLOY_FAILED in BroadcastEnv: relay stalled\n" in out.getvalue()


def test_without_a_terminal_transfer_lines_are_few() -> None:
    out, clock = io.StringIO(), Clock()
    progress = Progress(DEPLOYMENT, ["n-1"], verbose=3, stream=out, tty=False, clock=clock)
    for second in range(12):  # an event every second (the server sends at most one per poll)
        clock.now = float(second)
        progress.transfer(transfer(second * 10, 200))
    clock.now = 12.5
    progress.transfer(transfer(200, 200))
    progress.transfer(transfer(200, 200))
    lines = out.getvalue().splitlines()
    assert [line.split("%")[0][-3:] for line in lines] == ["  0", " 25", " 50", "100"]
    assert lines[1].endswith("50/200 MiB 10 MiB/s")


def test_transfer_bar_hidden_below_verbose_3_and_malformed_events_ignored() -> None:
    out = io.StringIO()
    progress = Progress(DEPLOYMENT, ["n-1"], verbose=2, stream=out, tty=True)
    progress.transfer(transfer(1, 2))
    progress.transfer({"bytes_done": "many", "bytes_total": None})
    assert out.getvalue() == ""
    assert progress.transfer_line() == "transfer [##########..........]  50% 1.0/2.0 MiB"
