"""Sent writes: batched transactions, savepoints, read-your-writes, events after commit.

A real SQLite file in tmp_path and the real StoreActor thread. To make batching deterministic
without timing, a test holds the database's write lock from another connection while it
sends: the actor's first batch waits for the lock, every other write piles up in its mailbox,
and the release lets them through as one batch.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pykka
import pytest

from kadeployd.events import EventHub, NodeLogged, NodeStateChanged
from kadeployd.store import (
    AppendLog,
    FinishDeployment,
    FinishNode,
    RecordProgress,
    RecordState,
    Store,
    StoreActor,
    StoreProxy,
    database_path,
)

WAIT = 10.0  # upper bound for any wait; never reached when things work
T0 = 1_700_000_000.0
SUMMARY = re.compile(r"^store: wrote (\d+) rows in (\d+) transactions$")


@pytest.fixture(autouse=True)
def _stop_all_actors() -> Iterator[None]:
    yield
    pykka.ActorRegistry.stop_all(timeout=WAIT)
    assert pykka.ActorRegistry.get_all() == []


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return database_path(tmp_path / "state")


@pytest.fixture
def store(db: Path) -> Iterator[Store]:
    with Store.open(db) as opened:
        yield opened


def start_actor(
    db: Path, hub: EventHub | None = None
) -> tuple[pykka.ActorRef[StoreActor], StoreProxy]:
    ref = StoreActor.start(path=db, hub=hub)
    return ref, cast(StoreProxy, ref.proxy())


def create(store: StoreProxy, nodes: tuple[str, ...]) -> str:
    ident: str = store.create_deployment(
        user="alice", environment_name="debian-min", nodes=nodes, at=T0
    ).get(timeout=WAIT)
    return ident


@contextlib.contextmanager
def write_lock(db: Path) -> Iterator[None]:
    """Hold the database's write lock (as a slow disk or a checkpoint would) for the block."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield
        conn.execute("ROLLBACK")
    finally:
        conn.close()


def test_many_sent_writes_are_written_in_a_few_transactions(db: Path) -> None:
    ref, store = start_actor(db)
    nodes = tuple(f"n-{i}" for i in range(1, 201))
    ident = create(store, nodes)
    before = store.stats().get(timeout=WAIT)
    with write_lock(db):
        for node in nodes:  # none of these waits for the database
            store.submit(RecordState(ident, node, "rebooting", "SetDeploymentEnv", at=T0 + 1))
            store.submit(AppendLog(ident, node, "info", f"{node} reboots", at=T0 + 1))
            ref.tell(RecordState(ident, node, "deploy_env", "SetDeploymentEnv", at=T0 + 2))
        assert ref.is_alive()
    history = store.history(ident).get(timeout=WAIT)  # an ask: the pending writes are written first
    after = store.stats().get(timeout=WAIT)
    assert len(history) == 3 * len(nodes)
    assert [h.state for h in history if h.node == "n-7"] == ["pending", "rebooting", "deploy_env"]
    assert len(store.log(ident).get(timeout=WAIT)) == len(nodes)
    assert after["rows"] - before["rows"] == 3 * len(nodes)
    # The first batch waited for the lock while the others piled up: at most two batches.
    assert 1 <= after["batches"] - before["batches"] <= 2
    assert after["transactions"] - before["transactions"] == after["batches"] - before["batches"]
    assert after["largest_batch"] >= 3 * len(nodes) // 2
    assert after["pending"] == 0


def test_a_batch_takes_a_few_statements_whatever_its_size(db: Path) -> None:
    """sqlite3 lets go of the GIL around each statement, and each time the store's thread may
    wait a switch interval to get it back while thousands of node actors run: a batch's rows
    are written in a few multi-row statements, and read back exactly as sent."""
    nodes = tuple(f"n-{i}" for i in range(1, 1001))
    with Store.open(db) as store:
        ident = store.create_deployment(user="alice", environment_name="e", nodes=nodes, at=T0)
        writes: list[RecordState | AppendLog | FinishNode] = []
        for i, node in enumerate(nodes):
            at = T0 + 1 + i / 7  # fractions that need every digit of a double
            writes.append(
                RecordState(ident, node, "rebooting", "SetDeploymentEnv", "kexec", 1, at=at)
            )
            writes.append(AppendLog(ident, node, "info", f"{node} reboots", at=at))
            writes.append(FinishNode(ident, node, "deployed", "ok", at=at + 1))
        statements: list[str] = []
        conn = store._conn
        assert conn is not None
        conn.set_trace_callback(statements.append)
        result = store.write_batch(writes)
        conn.set_trace_callback(None)
        assert (result.applied, result.dropped) == (len(writes), 0)
        # 3,000 writes: a node query, two id queries, and the rows (node records, history,
        # logs) in chunks of 256 rows: far from one statement per row.
        assert len(statements) <= 40, statements[:5]
        node = store.node(ident, "n-8")
        assert (node.state, node.macrostep, node.variant, node.attempt) == (
            "deployed",
            "SetDeploymentEnv",
            "kexec",
            1,
        )
        assert node.started_at == T0 + 1 + 7 / 7
        assert node.finished_at == T0 + 1 + 7 / 7 + 1
        history = [h for h in store.history(ident) if h.node == "n-8"]
        assert [(h.state, h.at) for h in history] == [
            ("pending", T0),
            ("rebooting", T0 + 1 + 7 / 7),
            ("deployed", T0 + 1 + 7 / 7 + 1),
        ]
        assert [e.seq for e in result.events if isinstance(e, NodeStateChanged)][:2] == [
            h.seq for h in store.history(ident)[len(nodes) : len(nodes) + 2]
        ]
        assert [line.text for line in store.log(ident, "n-999")] == ["n-999 reboots"]


def test_a_full_buffer_is_written_without_waiting_for_the_flush(db: Path) -> None:
    ref = StoreActor.start(path=db, batch_limit=10)
    store = cast(StoreProxy, ref.proxy())
    nodes = tuple(f"n-{i}" for i in range(1, 26))
    ident = create(store, nodes)
    with write_lock(db):
        for node in nodes:
            store.submit(RecordState(ident, node, "rebooting", at=T0 + 1))
    assert len(store.history(ident).get(timeout=WAIT)) == 2 * len(nodes)
    assert store.stats().get(timeout=WAIT)["largest_batch"] <= 10


def test_a_bad_write_in_a_batch_is_dropped_alone(store: Store) -> None:
    ident = store.create_deployment(
        user="alice", environment_name="debian-min", nodes=("node-1", "node-2"), at=T0
    )
    result = store.write_batch(
        [
            RecordState(ident, "node-1", "rebooting", at=T0 + 1),
            RecordState(ident, "node-9", "rebooting", at=T0 + 1),  # unknown node
            FinishNode(ident, "node-2", "finished", at=T0 + 1),  # not a final state
            AppendLog(ident, "node-1", "stdxxx", "x", at=T0 + 1),  # unknown stream
            AppendLog(ident, "node-1", "info", cast(str, None), at=T0 + 1),  # NOT NULL
            RecordState(ident, "node-2", "rebooting", at=T0 + 1),
            FinishNode(ident, "node-1", "deployed", at=T0 + 2),
            RecordState(ident, "node-1", "booting", at=T0 + 3),  # late: ignored
            RecordState("no-such-deployment", "node-1", "rebooting"),
            RecordProgress(ident, "node-2", 10, 100),
        ]
    )
    assert (result.applied, result.ignored, result.dropped) == (4, 1, 5)
    history = store.history(ident)
    assert [(h.node, h.state) for h in history] == [
        ("node-1", "pending"),
        ("node-2", "pending"),
        ("node-1", "rebooting"),
        ("node-2", "rebooting"),
        ("node-1", "deployed"),
    ]
    assert store.log(ident) == []
    assert store.node(ident, "node-2").bytes_done == 10
    # The events carry the seqs the database gave the rows, in commit order.
    states = [e for e in result.events if isinstance(e, NodeStateChanged)]
    assert [(e.seq, e.state, e.final) for e in states] == [
        (h.seq, h.state, h.state == "deployed") for h in history[2:]
    ]
    stats = store.stats()
    assert (stats["batches"], stats["dropped"], stats["ignored"]) == (1, 5, 1)


def test_bad_sent_writes_do_not_kill_the_actor_nor_lose_the_good_ones(db: Path) -> None:
    ref, store = start_actor(db)
    ident = create(store, ("node-1", "node-2"))
    store.submit(RecordState(ident, "node-9", "rebooting"))
    store.submit(FinishNode(ident, "node-1", "finished"))
    store.submit(FinishDeployment(ident, "running"))
    store.submit(cast(RecordState, "not a write at all"))
    ref.tell(RecordState(ident, "node-2", "rebooting"))
    assert store.node(ident, "node-2").get(timeout=WAIT).state == "rebooting"
    assert ref.is_alive()
    assert store.stats().get(timeout=WAIT)["dropped"] == 3


def test_an_ask_reads_the_writes_sent_before_it_in_order(db: Path) -> None:
    ref, store = start_actor(db)
    ident = create(store, ("node-1",))
    store.submit(RecordState(ident, "node-1", "rebooting", at=T0 + 1))
    assert store.node(ident, "node-1").get(timeout=WAIT).state == "rebooting"
    ref.tell(AppendLog(ident, "node-1", "stdout", "hello", at=T0 + 2))
    assert [line.text for line in store.log(ident, "node-1").get(timeout=WAIT)] == ["hello"]
    store.submit(RecordState(ident, "node-1", "deploy_env", at=T0 + 3))
    assert store.finish_node(ident, "node-1", "deployed", at=T0 + 4).get(timeout=WAIT) is True
    states = [h.state for h in store.history(ident).get(timeout=WAIT)]
    assert states == ["pending", "rebooting", "deploy_env", "deployed"]


def test_events_are_published_after_commit_with_the_database_seqs(db: Path) -> None:
    hub = EventHub()
    _ref, store = start_actor(db, hub)
    ident = create(store, ("node-1", "node-2"))
    with hub.subscribe(ident) as subscription:
        subscription.take()  # the actor's start asked existing subscribers to re-read
        store.submit(RecordState(ident, "node-1", "rebooting", at=T0 + 1))
        store.submit(AppendLog(ident, "node-1", "cmd", "reboot", at=T0 + 1))
        store.submit(FinishDeployment(ident, "aborted", "cancelled", at=T0 + 2))
        history = store.history(ident).get(timeout=WAIT)  # flushed, hence published
        log = store.log(ident).get(timeout=WAIT)
        delivery = subscription.take()
    states = [e for e in delivery.events if isinstance(e, NodeStateChanged)]
    assert [(e.seq, e.node, e.state) for e in states] == [
        (h.seq, h.node, h.state) for h in history[2:]
    ]
    assert [e.state for e in states] == ["rebooting", "aborted", "aborted"]
    logged = [e for e in delivery.events if isinstance(e, NodeLogged)]
    assert [(e.seq, e.text) for e in logged] == [(log[0].seq, "reboot")]
    assert type(delivery.events[-1]).__name__ == "DeploymentEnded"


def test_a_started_store_makes_the_subscribers_re_read(db: Path) -> None:
    hub = EventHub()
    with hub.subscribe("any") as subscription:
        _ref, store = start_actor(db, hub)
        store.running().get(timeout=WAIT)  # on_start has run
        assert subscription.take().lagged


def test_stopping_writes_the_pending_writes_and_logs_one_summary(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kadeployd.store.actor")
    ref, store = start_actor(db)
    nodes = tuple(f"n-{i}" for i in range(1, 51))
    ident = create(store, nodes)
    for node in nodes:
        store.submit(RecordState(ident, node, "rebooting", at=T0 + 1))
    ref.stop(timeout=WAIT)  # behind the writes in the mailbox, maybe before their flush
    with Store.open(db) as reopened:
        assert {n.state for n in reopened.nodes(ident)} == {"rebooting"}
    summaries = [r.getMessage() for r in caplog.records if r.getMessage().startswith("store:")]
    assert len(summaries) == 1, summaries
    match = SUMMARY.match(summaries[0])
    assert match is not None
    rows, transactions = int(match[1]), int(match[2])
    assert rows == len(nodes)
    assert 2 <= transactions <= 1 + len(nodes)  # the creation, then the batches
