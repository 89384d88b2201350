"""bench/faults.py's pure helpers: how it reads the daemon log and its scenario list.

The benchmark itself (a testbed, a daemon, faults) is run by hand: see RELIABILITY.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

sys.path.append(str(Path(__file__).resolve().parents[1] / "bench"))

from faults import SCENARIOS, _parse_scenarios, _tracebacks, flood_sources

PARAMIKO_TRACEBACK = (
    "2026-12-08 00:11:25,010 ERROR [Thread-398] paramiko.transport: "
    "Traceback (most recent call last):"
)
DAEMON_TRACEBACK = (
    "2026-12-08 00:11:26,000 ERROR [api] kadeployd.api.guard: error 1a2b\n"
    "Traceback (most recent call last):\n"
    '  File "x.py", line 1, in f\n'
    "ValueError: boom"
)


def test_tracebacks_counts_paramiko_apart_from_the_daemons_own() -> None:
    text = "\n".join([PARAMIKO_TRACEBACK, PARAMIKO_TRACEBACK, DAEMON_TRACEBACK, "INFO ok"])

    assert _tracebacks(text) == (1, 2)


def test_tracebacks_of_a_quiet_log_are_none() -> None:
    assert _tracebacks("2026-12-08 INFO [api] uvicorn.access: GET /v1/nodes 200\n") == (0, 0)


def test_scenarios_run_in_the_suite_order_whatever_the_order_given() -> None:
    assert _parse_scenarios("tftp-flood, api-load,noboot") == ["api-load", "noboot", "tftp-flood"]


def test_an_unknown_scenario_is_named_with_the_valid_ones() -> None:
    with pytest.raises(argparse.ArgumentTypeError) as caught:
        _parse_scenarios("noboot,fire")

    message = str(caught.value)
    assert "unknown fire" in message
    assert all(name in message for name in SCENARIOS)


def test_the_flood_never_comes_from_the_testbeds_addresses() -> None:
    sources = flood_sources(64)

    assert len(set(sources)) == 64
    assert not any(
        address == "127.0.0.1" or address.startswith(("127.0.2.", "127.0.3."))
        for address in sources
    )
