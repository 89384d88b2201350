"""Pure logic of the chain: relay report lines, per-node verdicts, relay arguments."""

from __future__ import annotations

import json

import pytest

from kadeployd.chain import (
    ChainResult,
    HopResult,
    RelayEvent,
    ReportError,
    parse_report,
    relay_arguments,
)
from kadeployd.chain.relay import MessageReader, PeerLost, encode_message, parse_args


@pytest.mark.parametrize(
    ("line", "event"),
    [
        ('{"event": "listening", "port": 4000}\n', RelayEvent("listening", port=4000)),
        (b'{"event":"progress","bytes":12}', RelayEvent("progress", bytes=12)),
        (
            '{"event":"dead","node":"10.0.0.2:4000","reason":"stalled"}',
            RelayEvent("dead", node="10.0.0.2:4000", reason="stalled"),
        ),
        (
            '{"event":"done","bytes":3,"sha256":"ab","writer_status":0}',
            RelayEvent("done", bytes=3, sha256="ab", writer_status=0),
        ),
        (
            '{"event":"done","bytes":3,"sha256":"ab","writer_status":null}',
            RelayEvent("done", bytes=3, sha256="ab", writer_status=None),
        ),
        ('{"event":"error","reason":"boom"}', RelayEvent("error", reason="boom")),
    ],
)
def test_parse_report_reads_every_event(line: str | bytes, event: RelayEvent) -> None:
    assert parse_report(line) == event


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("Warning: something", "is not JSON"),
        ("[1, 2]", "is not a JSON object"),
        ('{"event": "bogus"}', "event 'bogus' is not one of listening, progress, dead"),
        ('{"event": "progress", "bytes": "12"}', "field 'bytes' must be a int, got '12'"),
        ('{"event": "progress", "bytes": true}', "field 'bytes' must be a int, got True"),
    ],
)
def test_parse_report_names_what_is_wrong(line: str, message: str) -> None:
    with pytest.raises(ReportError, match=message.replace("[", r"\[")):
        parse_report(line)


def test_failures_checks_each_node_against_the_source() -> None:
    good = HopResult("a:1", 10, "f00d", 0)
    result = ChainResult(
        size=10,
        sha256="f00d",
        results={
            "a:1": good,
            "b:1": HopResult("b:1", 10, "bad", 0),
            "c:1": HopResult("c:1", 7, "f00d", 0),
            "d:1": HopResult("d:1", 10, "f00d", 2, "tar: no space left"),
        },
        dead={"e:1": "stalled: no progress nor heartbeat for 10.2 s"},
    )
    assert result.failures(["a:1", "b:1", "c:1", "d:1", "e:1", "f:1"]) == {
        "b:1": "SHA-256 bad differs from the source's f00d",
        "c:1": "received 7 bytes of 10",
        "d:1": "writer exit status 2: tar: no space left",
        "e:1": "cut out of the chain: stalled: no progress nor heartbeat for 10.2 s",
        "f:1": "no result reported",
    }


def test_hop_result_from_a_bad_ack_entry_is_a_report_error() -> None:
    with pytest.raises(ReportError, match="field 'bytes' must be a int"):
        HopResult.from_ack({"node": "a:1", "bytes": None, "sha256": "x", "writer_status": 0})


def test_relay_arguments_round_trip_through_the_relay_parser() -> None:
    writer = ["sh", "-c", "zstd -dc | tar -x -C '/mnt/dest dir'"]
    args = parse_args(
        relay_arguments(
            writer, stall_timeout=2.5, ring_mib=8, secret_env="S", flush="/mnt/d d", flush_mib=2
        )
    )
    assert json.loads(args.writer) == writer
    assert (args.stall_timeout, args.ring_mib, args.secret_env) == (2.5, 8, "S")
    assert (args.flush, args.flush_mib) == ("/mnt/d d", 2)
    assert parse_args(relay_arguments(writer)).flush == ""
    with pytest.raises(ValueError, match="non-empty list of strings"):
        relay_arguments([])


def test_message_reader_splits_and_rejects() -> None:
    reader = MessageReader()
    data = encode_message(b"H") + encode_message(b"D", {"node": "a:1", "reason": "x"})
    assert reader.feed(data[:3]) == []
    assert reader.feed(data[3:]) == [(b"H", {}), (b"D", {"node": "a:1", "reason": "x"})]
    with pytest.raises(PeerLost, match="bad message"):
        MessageReader().feed(b"Z\0\0\0\0")
