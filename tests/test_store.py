"""The store: a real SQLite file in tmp_path, the real StoreActor thread, real concurrent readers."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pykka
import pytest

from kadeploy_core.errors import KadeployError
from kadeployd.store import (
    ERROR_TAIL_CHARS,
    INTERRUPTED,
    MIGRATIONS,
    SCHEMA_VERSION,
    DeploymentStatus,
    InvalidRecord,
    LogStream,
    Store,
    StoreActor,
    StoreError,
    StoreProxy,
    StoreReader,
    UnknownDeployment,
    UnknownNode,
    database_path,
)
from kadeployd.supervision import ChildRestarted, ChildSpec, Restart, SupervisionEvent, Supervisor

WAIT = 10.0  # upper bound for any wait; never reached when things work
T0 = 1_700_000_000.0  # explicit timestamps: no test depends on the wall clock


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


def new_deployment(store: Store, nodes: tuple[str, ...] = ("node-1", "node-2")) -> str:
    return store.create_deployment(
        user="alice",
        environment_name="debian-min",
        environment_version=1,
        environment={"name": "debian-min", "version": 1, "image": {"kind": "tar"}},
        options={"variants": ["untrusted"], "keys": True},
        nodes=nodes,
        at=T0,
    )


def start_actor(db: Path) -> tuple[pykka.ActorRef[StoreActor], StoreProxy]:
    ref = StoreActor.start(path=db)
    return ref, cast(StoreProxy, ref.proxy())


# --- opening, schema, WAL ---------------------------------------------------------------------


def test_open_creates_directory_and_a_versioned_wal_database(db: Path) -> None:
    assert not db.parent.exists()
    with Store.open(db) as store:
        conn = store._connection()
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert db.name == "kadeployd.db"
    raw = sqlite3.connect(db)
    try:
        versions = [r[0] for r in raw.execute("SELECT version FROM schema_version")]
        tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        env_columns = {r[1] for r in raw.execute("PRAGMA table_info(environments)")}
        rights_columns = {r[1] for r in raw.execute("PRAGMA table_info(rights)")}
        indices = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    finally:
        raw.close()
    assert versions == list(range(1, SCHEMA_VERSION + 1))
    assert {
        "deployments",
        "deployment_nodes",
        "state_history",
        "node_logs",
        "environments",
        "rights",
    } <= tables
    assert {"name", "version", "owner", "visibility", "description", "created_at"} <= env_columns
    assert rights_columns == {"user", "node", "partition"}
    assert {"deployments_by_status", "state_history_by_node", "node_logs_by_node"} <= indices


def test_reopening_applies_no_migration_twice(db: Path) -> None:
    Store.open(db).close()
    Store.open(db).close()
    raw = sqlite3.connect(db)
    try:
        assert raw.execute("SELECT count(*) FROM schema_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        raw.close()


def test_a_newer_schema_is_refused(db: Path) -> None:
    Store.open(db).close()
    raw = sqlite3.connect(db)
    with raw:
        raw.execute("INSERT INTO schema_version VALUES (?, 0)", (SCHEMA_VERSION + 1,))
    raw.close()
    with pytest.raises(StoreError, match="newer than this kadeployd knows"):
        Store.open(db)


def test_a_failed_migration_leaves_the_database_as_it_was(db: Path) -> None:
    db.parent.mkdir(parents=True)
    raw = sqlite3.connect(db)
    with raw:
        raw.execute("CREATE TABLE deployment_nodes (x)")  # clashes with migration 1
    raw.close()
    with pytest.raises(StoreError, match=r"schema migration 1 failed.*deployment_nodes"):
        Store.open(db)
    raw = sqlite3.connect(db)
    try:
        tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert raw.execute("SELECT count(*) FROM schema_version").fetchone()[0] == 0
    finally:
        raw.close()
    assert "deployments" not in tables  # created earlier in the same script, rolled back


def test_a_database_path_that_cannot_be_created_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="cannot create the directory"):
        Store.open(blocker / "kadeployd.db")


def test_data_survives_closing_and_reopening(db: Path) -> None:
    with Store.open(db) as store:
        dep = new_deployment(store)
        store.record_state(dep, "node-1", "rebooting", macrostep="SetDeploymentEnv", attempt=1)
    with Store.open(db) as store:
        assert store.deployment(dep).user == "alice"
        assert [n.state for n in store.nodes(dep)] == ["rebooting", "pending"]


# --- deployments and nodes --------------------------------------------------------------------


def test_a_deployment_is_recorded_with_its_environment_options_and_nodes(store: Store) -> None:
    dep = store.create_deployment(
        user="bob",
        environment_name="anonymous-env",
        environment={"name": "anonymous-env", "version": 3},
        options={"min_nodes": 2},
        min_nodes=2,
        anonymous=True,
        at=T0,
    )
    assert len(dep) == 32 and int(dep, 16) >= 0
    store.add_nodes(dep, ["n-b", "n-a"], at=T0 + 1)
    store.add_nodes(dep, ["n-c"], at=T0 + 2)
    view = store.deployment(dep)
    assert view.user == "bob"
    assert view.anonymous is True
    assert view.environment == {"name": "anonymous-env", "version": 3}
    assert view.environment_version is None
    assert view.options == {"min_nodes": 2}
    assert view.node_count == 3
    assert view.min_nodes == 2
    assert view.status is DeploymentStatus.RUNNING
    assert (view.created_at, view.finished_at, view.reason) == (T0, None, "")
    nodes = store.nodes(dep, now=T0 + 10)
    assert [n.node for n in nodes] == ["n-b", "n-a", "n-c"]  # the order they were added in
    assert all(n.state == "pending" and n.attempt == 0 and not n.final for n in nodes)
    assert [n.elapsed for n in nodes] == [9.0, 9.0, 8.0]


def test_record_state_updates_the_node_and_its_history_together(store: Store) -> None:
    dep = new_deployment(store)
    assert store.record_state(
        dep,
        "node-1",
        "rebooting",
        macrostep="SetDeploymentEnv",
        variant="untrusted",
        attempt=1,
        message="soft reboot",
        at=T0 + 5,
    )
    store.record_state(
        dep,
        "node-1",
        "deploy_env",
        macrostep="SetDeploymentEnv",
        variant="untrusted",
        attempt=1,
        at=T0 + 20,
    )
    node = store.node(dep, "node-1", now=T0 + 27.5)
    assert (node.state, node.macrostep, node.variant, node.attempt) == (
        "deploy_env",
        "SetDeploymentEnv",
        "untrusted",
        1,
    )
    assert node.step_started_at == T0 + 20
    assert node.started_at == T0 + 5  # when it left pending
    assert node.elapsed == 7.5
    history = store.history(dep, "node-1")
    assert [(h.state, h.attempt, h.message, h.at) for h in history] == [
        ("pending", 0, "", T0),
        ("rebooting", 1, "soft reboot", T0 + 5),
        ("deploy_env", 1, "", T0 + 20),
    ]
    assert [h.seq for h in history] == sorted(h.seq for h in history)
    assert {h.node for h in store.history(dep)} == {"node-1", "node-2"}


def test_a_failing_write_changes_neither_the_state_nor_the_history(db: Path, store: Store) -> None:
    dep = new_deployment(store)
    store.record_state(dep, "node-1", "rebooting", attempt=1, at=T0 + 1)
    raw = sqlite3.connect(db)
    with raw:  # a real failure in the middle of the transaction: the history insert is refused
        raw.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON state_history WHEN NEW.message = 'refuse' "
            "BEGIN SELECT RAISE(ABORT, 'refused by the test trigger'); END"
        )
    raw.close()
    with pytest.raises(StoreError, match="refused by the test trigger"):
        store.record_state(dep, "node-1", "deploy_env", attempt=2, message="refuse", at=T0 + 2)
    node = store.node(dep, "node-1")
    assert (node.state, node.attempt, node.step_started_at) == ("rebooting", 1, T0 + 1)
    assert [h.state for h in store.history(dep, "node-1")] == ["pending", "rebooting"]
    # the store is still usable after the rolled-back transaction
    assert store.record_state(dep, "node-1", "deploy_env", attempt=2, at=T0 + 3)


def test_finish_node_keeps_the_failed_step_and_the_tail_of_the_error(store: Store) -> None:
    dep = new_deployment(store)
    store.record_state(
        dep, "node-1", "transferring", macrostep="BroadcastEnv", variant="direct", attempt=2
    )
    stderr = "x" * 10_000 + "tar: Unexpected EOF in archive"
    assert store.finish_node(
        dep, "node-1", "deploy_failed", stderr, error_step="send_image", at=T0 + 50
    )
    assert store.finish_node(dep, "node-2", "deployed", "ssh ok", at=T0 + 60)
    failed, deployed = store.nodes(dep, now=T0 + 100)
    assert failed.final and failed.state == "deploy_failed"
    assert (failed.finished_at, failed.elapsed) == (T0 + 50, None)
    assert failed.error_step == "send_image"
    assert failed.error_message is not None
    assert len(failed.error_message) == ERROR_TAIL_CHARS
    assert failed.error_message.endswith("tar: Unexpected EOF in archive")
    assert failed.attempt == 2
    last = store.history(dep, "node-1")[-1]
    assert (last.state, last.macrostep, last.variant, last.attempt) == (
        "deploy_failed",
        "BroadcastEnv",
        "direct",
        2,
    )
    assert last.message == stderr  # the history keeps the whole message
    assert deployed.state == "deployed"
    assert deployed.error_message is None and deployed.error_step is None


def test_late_reports_after_a_final_state_are_ignored(store: Store) -> None:
    dep = new_deployment(store)
    assert store.finish_node(dep, "node-1", "aborted", "min nodes reached", at=T0 + 1)
    assert store.record_state(dep, "node-1", "transferring", attempt=1, at=T0 + 2) is False
    assert store.finish_node(dep, "node-1", "deployed", at=T0 + 3) is False
    node = store.node(dep, "node-1")
    assert (node.state, node.error_message) == ("aborted", "min nodes reached")
    assert [h.state for h in store.history(dep, "node-1")] == ["pending", "aborted"]


def test_finish_deployment_aborts_the_nodes_still_running(store: Store) -> None:
    dep = new_deployment(store, ("node-1", "node-2", "node-3"))
    store.finish_node(dep, "node-1", "deployed", at=T0 + 5)
    store.record_state(dep, "node-2", "booting", macrostep="BootNewEnv", attempt=1, at=T0 + 6)
    assert store.finish_deployment(dep, DeploymentStatus.SUCCEEDED, "min nodes reached", at=T0 + 7)
    view = store.deployment(dep)
    assert (view.status, view.reason, view.finished_at) == (
        DeploymentStatus.SUCCEEDED,
        "min nodes reached",
        T0 + 7,
    )
    states = {n.node: (n.state, n.final, n.error_step) for n in store.nodes(dep)}
    assert states == {
        "node-1": ("deployed", True, None),
        "node-2": ("aborted", True, "booting"),
        "node-3": ("aborted", True, "pending"),
    }
    # ended once: a second end, a late state or new nodes change nothing
    assert store.finish_deployment(dep, "failed", "too late", at=T0 + 8) is False
    assert store.deployment(dep).status is DeploymentStatus.SUCCEEDED
    assert store.record_state(dep, "node-2", "deployed_env", attempt=1) is False
    with pytest.raises(InvalidRecord, match="nodes can only be added while it runs"):
        store.add_nodes(dep, ["node-9"])


def test_mark_interrupted_aborts_running_deployments_only(store: Store) -> None:
    done = new_deployment(store, ("a-1",))
    store.finish_node(done, "a-1", "deployed", at=T0 + 1)
    store.finish_deployment(done, "succeeded", at=T0 + 1)
    crashed = new_deployment(store, ("b-1", "b-2"))
    store.finish_node(crashed, "b-1", "deploy_failed", "no ssh", error_step="wait_ssh")
    store.record_state(crashed, "b-2", "transferring", attempt=1)
    assert store.running() == [crashed]

    assert store.mark_interrupted(at=T0 + 99) == [crashed]

    assert store.running() == []
    view = store.deployment(crashed)
    assert (view.status, view.reason, view.finished_at) == (
        DeploymentStatus.ABORTED,
        INTERRUPTED,
        T0 + 99,
    )
    b1, b2 = store.nodes(crashed)
    assert (b1.state, b1.error_message) == ("deploy_failed", "no ssh")  # already final: kept
    assert (b2.state, b2.final, b2.error_message, b2.finished_at) == (
        "aborted",
        True,
        INTERRUPTED,
        T0 + 99,
    )
    assert store.history(crashed, "b-2")[-1].state == "aborted"
    assert store.deployment(done).status is DeploymentStatus.SUCCEEDED
    assert store.mark_interrupted() == []


def test_deployments_newest_first_filtered_and_limited(store: Store) -> None:
    ids = []
    for i, user in enumerate(["alice", "bob", "alice", "carol"]):
        ids.append(store.create_deployment(user=user, environment_name="e", at=T0 + i, nodes=["n"]))
    store.finish_deployment(ids[0], "failed", "all nodes failed")
    assert [d.id for d in store.deployments()] == ids[::-1]
    assert [d.id for d in store.deployments(user="alice")] == [ids[2], ids[0]]
    assert [d.id for d in store.deployments(status="failed")] == [ids[0]]
    assert [d.id for d in store.deployments(status=DeploymentStatus.RUNNING, user="alice")] == [
        ids[2]
    ]
    assert [d.id for d in store.deployments(limit=2)] == [ids[3], ids[2]]
    assert store.running() == ids[1:]


def test_logs_in_order_per_node_and_paged(store: Store) -> None:
    dep = new_deployment(store)
    first = store.append_log(dep, "node-1", "cmd", "mkfs.ext4 /dev/sda3", at=T0)
    store.append_log(dep, "node-2", LogStream.INFO, "retrying with hard reboot", at=T0 + 1)
    store.append_logs(
        dep, "node-1", [("stdout", "done"), (LogStream.STDERR, "warning: x")], at=T0 + 2
    )
    log1 = store.log(dep, "node-1")
    assert [(line.stream, line.text) for line in log1] == [
        (LogStream.CMD, "mkfs.ext4 /dev/sda3"),
        (LogStream.STDOUT, "done"),
        (LogStream.STDERR, "warning: x"),
    ]
    assert log1[0].seq == first and log1[0].at == T0
    assert [line.node for line in store.log(dep)] == ["node-1", "node-2", "node-1", "node-1"]
    assert [line.text for line in store.log(dep, "node-1", after=first, limit=1)] == ["done"]


# --- errors -----------------------------------------------------------------------------------


def test_unknown_deployment_ids_are_clear_errors(store: Store) -> None:
    missing = "0" * 32
    calls = [
        lambda: store.deployment(missing),
        lambda: store.nodes(missing),
        lambda: store.node(missing, "n"),
        lambda: store.history(missing),
        lambda: store.log(missing),
        lambda: store.add_nodes(missing, ["n"]),
        lambda: store.record_state(missing, "n", "rebooting"),
        lambda: store.finish_node(missing, "n", "aborted"),
        lambda: store.append_log(missing, "n", "info", "x"),
        lambda: store.finish_deployment(missing, "aborted"),
    ]
    for call in calls:
        with pytest.raises(UnknownDeployment, match=f"no deployment with id '{missing}'") as info:
            call()
        assert isinstance(info.value, StoreError) and isinstance(info.value, KadeployError)


def test_unknown_nodes_are_clear_errors_with_a_suggestion(store: Store) -> None:
    dep = new_deployment(store, ("node-1", "node-2"))
    message = f"deployment {dep} has no node 'node-3'; did you mean"
    with pytest.raises(UnknownNode, match=message):
        store.record_state(dep, "node-3", "rebooting")
    with pytest.raises(UnknownNode, match=message):
        store.finish_node(dep, "node-3", "aborted")
    with pytest.raises(UnknownNode, match=message):
        store.append_log(dep, "node-3", "stdout", "x")
    with pytest.raises(UnknownNode, match=message):
        store.history(dep, "node-3")
    with pytest.raises(UnknownNode, match=message):
        store.log(dep, "node-3")
    with pytest.raises(UnknownNode, match=r"has no node 'zzz'$"):
        store.node(dep, "zzz")


def test_invalid_values_are_refused_with_what_would_be_valid(store: Store) -> None:
    dep = new_deployment(store)
    with pytest.raises(InvalidRecord, match="go through finish_node"):
        store.record_state(dep, "node-1", "deployed")
    with pytest.raises(InvalidRecord, match=r"'deploy_fail' is not a final.*'deploy_failed'"):
        store.finish_node(dep, "node-1", "deploy_fail")
    with pytest.raises(InvalidRecord, match=r"unknown log stream 'sdterr'.*'stderr'"):
        store.append_log(dep, "node-1", "sdterr", "x")
    with pytest.raises(InvalidRecord, match=r"unknown deployment status 'succeded'.*'succeeded'"):
        store.finish_deployment(dep, "succeded")
    with pytest.raises(InvalidRecord, match="needs a final status"):
        store.finish_deployment(dep, "running")
    with pytest.raises(InvalidRecord, match="would list twice: node-1, node-3"):
        store.add_nodes(dep, ["node-3", "node-1", "node-3"])
    with pytest.raises(InvalidRecord, match="attempt must be an integer >= 0"):
        store.record_state(dep, "node-1", "rebooting", attempt=-1)
    with pytest.raises(InvalidRecord, match="min_nodes must be"):
        store.create_deployment(user="u", environment_name="e", min_nodes=0)
    with pytest.raises(InvalidRecord, match="options cannot be stored as JSON"):
        store.create_deployment(user="u", environment_name="e", options={"p": Path("/x")})
    assert len(store.deployments()) == 1  # nothing half-written
    assert store.deployment(dep).node_count == 2


def test_a_closed_store_says_so(db: Path) -> None:
    store = Store.open(db)
    store.close()
    store.close()
    with pytest.raises(StoreError, match="the store is closed"):
        store.running()


# --- readers ----------------------------------------------------------------------------------


def test_reader_needs_an_existing_database(db: Path) -> None:
    with pytest.raises(StoreError, match="cannot open the database read-only"):
        StoreReader(db)


def test_reader_sees_committed_writes_and_has_no_write_methods(db: Path, store: Store) -> None:
    dep = new_deployment(store)
    with StoreReader(db) as reader:
        store.record_state(dep, "node-2", "rebooting", attempt=1, at=T0 + 1)
        assert reader.node(dep, "node-2").state == "rebooting"
        assert reader.deployment(dep) == store.deployment(dep)
        assert reader.history(dep) == store.history(dep)
    assert not any(
        hasattr(StoreReader, name)
        for name in ("record_state", "finish_node", "append_log", "mark_interrupted")
    )


def test_an_open_read_snapshot_does_not_block_the_actor(db: Path) -> None:
    """WAL: a reader in the middle of a read transaction neither blocks nor sees a write."""
    _, store = start_actor(db)
    dep = store.create_deployment(user="u", environment_name="e", nodes=["n1"]).get(timeout=WAIT)
    held = sqlite3.connect(db.absolute().as_uri() + "?mode=ro", uri=True, isolation_level=None)
    try:
        held.execute("BEGIN")
        query = "SELECT state FROM deployment_nodes WHERE node = 'n1'"
        assert held.execute(query).fetchone()[0] == "pending"
        assert store.record_state(dep, "n1", "rebooting", attempt=1).get(timeout=WAIT) is True
        assert held.execute(query).fetchone()[0] == "pending"  # its snapshot
        with StoreReader(db) as reader:
            assert reader.node(dep, "n1").state == "rebooting"
        held.execute("COMMIT")
        assert held.execute(query).fetchone()[0] == "rebooting"
    finally:
        held.close()


def test_concurrent_readers_always_see_consistent_records(db: Path) -> None:
    """Two threads share one StoreReader while the actor writes; every snapshot is whole."""
    _, store = start_actor(db)
    nodes = [f"n{i}" for i in range(4)]
    dep = store.create_deployment(user="u", environment_name="e", nodes=nodes).get(timeout=WAIT)
    reader = StoreReader(db)
    done = threading.Event()
    problems: list[str] = []
    reads = [0, 0]

    def read(slot: int) -> None:
        try:
            while not done.is_set() or reads[slot] == 0:
                current = reader.nodes(dep)
                history = reader.history(dep)  # a later snapshot: it has all of `current`
                seen = {(h.node, h.state, h.attempt) for h in history}
                problems.extend(
                    f"{n.node} {n.state}/{n.attempt} missing from history"
                    for n in current
                    if (n.node, n.state, n.attempt) not in seen
                )
                later = {n.node: n.attempt for n in reader.nodes(dep)}
                problems.extend(
                    f"{h.node} history attempt {h.attempt} ahead of record {later[h.node]}"
                    for h in history
                    if h.attempt > later[h.node]
                )
                reads[slot] += 1
        except Exception as exc:  # reported below, in the test's thread
            problems.append(repr(exc))

    threads = [threading.Thread(target=read, args=(slot,)) for slot in (0, 1)]
    for thread in threads:
        thread.start()
    try:
        for attempt in range(1, 61):
            futures = [
                store.record_state(dep, node, "transferring", attempt=attempt, message="m")
                for node in nodes
            ]
            assert all(f.get(timeout=WAIT) for f in futures)
    finally:
        done.set()
        for thread in threads:
            thread.join(timeout=WAIT)
        reader.close()
    assert not any(thread.is_alive() for thread in threads)
    assert problems == []
    assert min(reads) > 0


# --- the actor --------------------------------------------------------------------------------


def test_actor_serves_every_store_method_through_its_proxy(db: Path) -> None:
    ref, store = start_actor(db)
    dep = store.create_deployment(user="alice", environment_name="e", nodes=["n1"], at=T0).get(
        timeout=WAIT
    )
    store.add_nodes(dep, ["n2"], at=T0).get(timeout=WAIT)
    store.record_state(dep, "n1", "rebooting", macrostep="SetDeploymentEnv", attempt=1).get(
        timeout=WAIT
    )
    store.append_log(dep, "n1", "cmd", "ipmitool chassis power cycle").get(timeout=WAIT)
    store.finish_node(dep, "n2", "deploy_failed", "boom", error_step="reboot").get(timeout=WAIT)
    assert store.running().get(timeout=WAIT) == [dep]
    assert [n.state for n in store.nodes(dep).get(timeout=WAIT)] == ["rebooting", "deploy_failed"]
    assert store.node(dep, "n1").get(timeout=WAIT).attempt == 1
    assert len(store.history(dep, "n1").get(timeout=WAIT)) == 2
    assert store.log(dep, "n1").get(timeout=WAIT)[0].text == "ipmitool chassis power cycle"
    assert store.finish_deployment(dep, "failed", "all nodes failed").get(timeout=WAIT)
    assert store.deployment(dep).get(timeout=WAIT).status is DeploymentStatus.FAILED
    assert [d.id for d in store.deployments(user="alice").get(timeout=WAIT)] == [dep]
    assert store.mark_interrupted().get(timeout=WAIT) == []
    assert store.path.get(timeout=WAIT) == db
    # an error goes back to the caller; the actor lives on
    with pytest.raises(UnknownDeployment):
        store.deployment("nope").get(timeout=WAIT)
    assert ref.is_alive()
    ref.stop(timeout=WAIT)


def test_actor_restarted_after_a_crash_reopens_the_same_file(db: Path) -> None:
    ref, store = start_actor(db)
    dep = store.create_deployment(user="u", environment_name="e", nodes=["n1"]).get(timeout=WAIT)
    store.record_state(dep, "n1", "rebooting", attempt=1).get(timeout=WAIT)
    ref.proxy().finish_deployment.defer("no-such-id", "failed")  # raises in a tell: it dies
    assert ref.actor_stopped.wait(WAIT)

    ref2, store2 = start_actor(db)
    assert store2.node(dep, "n1").get(timeout=WAIT).state == "rebooting"
    assert store2.running().get(timeout=WAIT) == [dep]  # a store restart aborts nothing
    assert store2.record_state(dep, "n1", "deploy_env", attempt=1).get(timeout=WAIT)
    ref2.stop(timeout=WAIT)

    ref3, store3 = start_actor(db)  # and after a clean stop
    assert store3.node(dep, "n1").get(timeout=WAIT).state == "deploy_env"
    ref3.stop(timeout=WAIT)


def test_a_supervised_store_comes_back_with_its_data(db: Path) -> None:
    restarted = threading.Event()

    def listener(event: SupervisionEvent) -> None:
        if isinstance(event, ChildRestarted) and event.name == "store":
            restarted.set()

    sup = Supervisor.start(
        [ChildSpec("store", lambda: StoreActor.start(path=db), Restart.PERMANENT)],
        name="test",
        listeners=[listener],
    )
    try:
        store = cast(StoreProxy, sup.proxy("store"))
        dep = store.create_deployment(user="u", environment_name="e", nodes=["n1"]).get(
            timeout=WAIT
        )
        sup.proxy("store").finish_node.defer(dep, "n1", "not-a-state")  # crash the store
        assert restarted.wait(WAIT)
        store = cast(StoreProxy, sup.proxy("store", timeout=WAIT))
        assert store.running().get(timeout=WAIT) == [dep]
        assert store.finish_node(dep, "n1", "deployed").get(timeout=WAIT)
    finally:
        assert sup.stop(timeout=WAIT).ok


def test_an_actor_that_cannot_open_its_database_stops(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    ref = StoreActor.start(path=blocker / "kadeployd.db")
    assert ref.actor_stopped.wait(WAIT)  # on_start raised StoreError (logged); nothing to serve
    with pytest.raises(pykka.ActorDeadError):
        ref.proxy()


# --- image transfer progress ------------------------------------------------------------------


def test_record_progress_is_read_back_and_ignored_once_the_node_is_final(
    db: Path, store: Store
) -> None:
    deployment_id = new_deployment(store)
    assert store.node(deployment_id, "node-1").bytes_done is None
    assert store.record_progress(deployment_id, "node-1", 1024, 4096)
    assert store.record_progress(deployment_id, "node-2", 4096, 4096)
    with StoreReader(db) as reader:
        records = {n.node: (n.bytes_done, n.bytes_total) for n in reader.nodes(deployment_id)}
    assert records == {"node-1": (1024, 4096), "node-2": (4096, 4096)}
    store.finish_node(deployment_id, "node-2", "deployed", at=T0 + 1)
    assert not store.record_progress(deployment_id, "node-2", 0, 4096)  # late report
    assert not store.record_progress(deployment_id, "node-9", 0, 4096)  # stray report
    assert not store.record_progress("0" * 32, "node-1", 0, 4096)
    assert store.node(deployment_id, "node-2").bytes_done == 4096
    store.finish_deployment(deployment_id, DeploymentStatus.ABORTED, "cancelled", at=T0 + 2)
    assert not store.record_progress(deployment_id, "node-1", 2048, 4096)
    assert store.node(deployment_id, "node-1").bytes_done == 1024
    with pytest.raises(InvalidRecord, match="byte counts >= 0"):
        store.record_progress(deployment_id, "node-1", -1, 4096)


def test_record_progress_goes_through_the_actor(db: Path) -> None:
    ref, proxy = start_actor(db)
    deployment_id = proxy.create_deployment(
        user="alice", environment_name="e", nodes=("node-1",), at=T0
    ).get(timeout=WAIT)
    assert proxy.record_progress(deployment_id, "node-1", 5, 10).get(timeout=WAIT)
    assert proxy.node(deployment_id, "node-1").get(timeout=WAIT).bytes_total == 10
    ref.stop(timeout=WAIT)


def test_migration_2_adds_progress_to_an_existing_version_1_database(db: Path) -> None:
    db.parent.mkdir(parents=True)
    raw = sqlite3.connect(db, isolation_level=None)
    try:
        raw.executescript(
            "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL);"
            + MIGRATIONS[0]
        )
        raw.execute("INSERT INTO schema_version VALUES (1, 0)")
        raw.execute(
            "INSERT INTO deployments (id, user, environment_name, environment, options, "
            "node_count, created_at) VALUES ('d1', 'alice', 'e', '{}', '{}', 1, ?)",
            (T0,),
        )
        raw.execute(
            "INSERT INTO deployment_nodes (deployment_id, node, position, state, "
            "step_started_at) VALUES ('d1', 'node-1', 0, 'transferring', ?)",
            (T0,),
        )
    finally:
        raw.close()
    with Store.open(db) as store:
        before = store.node("d1", "node-1", now=T0)
        assert (before.state, before.bytes_done, before.bytes_total) == ("transferring", None, None)
        assert store.record_progress("d1", "node-1", 3, 9)
        after = store.node("d1", "node-1")
        assert (after.bytes_done, after.bytes_total) == (3, 9)
    raw = sqlite3.connect(db)
    try:
        versions = [r[0] for r in raw.execute("SELECT version FROM schema_version ORDER BY 1")]
    finally:
        raw.close()
    assert versions[:2] == [1, 2]  # later migrations (3: environment checksums) follow
    assert versions == list(range(1, SCHEMA_VERSION + 1))


def test_statistics_leave_out_reboot_operations(store: Store) -> None:
    deployed = new_deployment(store, ("node-1",))
    store.record_state(deployed, "node-1", "booting", macrostep="BootNewEnv", attempt=1, at=T0)
    store.finish_node(deployed, "node-1", "deployed", "up", at=T0 + 60)
    reboot = store.create_deployment(
        user="alice",
        environment_name="deploy_env",
        options={"operation": "deploy_env", "reboot_level": "soft"},
        nodes=("node-1",),
        at=T0 + 100,
    )
    store.record_state(reboot, "node-1", "rebooting", macrostep="SetDeploymentEnv", attempt=2)
    store.finish_node(reboot, "node-1", "deploy_failed", "no answer", at=T0 + 200)

    (stats,) = store.node_stats()
    assert (stats.deployments, stats.deployed, stats.failed, stats.retries) == (1, 1, 0, 0)
    assert {d.state for d in store.state_durations()} == {"pending", "booting"}
    assert store.node_usage()["node-1"].deployment_id == reboot  # what the node runs now
