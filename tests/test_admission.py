"""Admission as pure logic, without threads: which requests may have their nodes, and the
refusal each gets (kind, message, problems), as the NodeSupervisor decides them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from daemon_fixtures import dummy_config, make_tar_environment

from kadeployd.admission import (
    AdmissionRefused,
    Hold,
    NodeHolds,
    Refusal,
    admit_deployment,
    admit_nodes,
)
from kadeployd.config import Config, load_config
from kadeployd.environment import EnvironmentDescription, load_environment
from kadeployd.store.rights import Right
from kadeployd.workflow.job import DeploymentRequest, NoEnvironment, Operation


class Reads:
    """The store's answers, as plain data."""

    def __init__(self, rights: Sequence[Right] = (), states: Mapping[str, str] | None = None):
        self._rights = list(rights)
        self._states = dict(states or {})

    def rights(self, user: str) -> Sequence[Right]:
        return [r for r in self._rights if r.user == user]

    def node_states(self, deployment_id: str) -> Mapping[str, str]:
        return self._states


@pytest.fixture
def config(tmp_path: Path) -> Config:
    """n-1..n-4 of cluster tiny (disk /dev/vdz, deploy partition 3); root is an admin."""
    return load_config(dummy_config(tmp_path / "conf"))


@pytest.fixture
def env(tmp_path: Path) -> EnvironmentDescription:
    return load_environment(make_tar_environment(tmp_path))


def deployment(env: EnvironmentDescription, *nodes: str, **options: object) -> DeploymentRequest:
    return DeploymentRequest(user="alice", environment=env, nodes=nodes, **options)  # type: ignore[arg-type]


def refusal(call: object) -> AdmissionRefused:
    assert callable(call)
    with pytest.raises(AdmissionRefused) as caught:
        call()
    return caught.value


def test_a_deployment_names_configured_nodes_once(
    config: Config, env: EnvironmentDescription
) -> None:
    holds, reads = NodeHolds(), Reads()
    refused = refusal(
        lambda: admit_deployment(
            deployment(env, "n-1", "n-7", "n-1"),
            caller=None,
            force=False,
            config=config,
            holds=holds,
            reads=reads,
        )
    )
    assert refused.kind is Refusal.UNKNOWN_NODE
    assert [p.path for p in refused.problems] == ["nodes[1]", "nodes[2]"]
    assert refused.message.startswith("unknown node n-7")
    assert "did you mean" in refused.message
    assert refused.problems[1].message == "node n-1 is listed twice"
    # A reboot operation merges the repeats.
    reboot = DeploymentRequest(
        user="alice",
        environment=NoEnvironment(name="deploy_env"),
        nodes=("n-2", "n-1", "n-2"),
        operation=Operation.DEPLOY_ENV,
    )
    admitted = admit_deployment(
        reboot, caller=None, force=False, config=config, holds=holds, reads=reads
    )
    assert admitted == ("n-2", "n-1")


def test_the_disk_and_the_clusters_are_checked_before_the_rights(
    config: Config, env: EnvironmentDescription
) -> None:
    holds, reads = NodeHolds(), Reads()  # bob holds no right at all
    ambiguous = refusal(
        lambda: admit_deployment(
            deployment(env, "n-1", block_device="/dev/vda1"),
            caller="bob",
            force=False,
            config=config,
            holds=holds,
            reads=reads,
        )
    )
    assert ambiguous.kind is Refusal.INVALID_BLOCK_DEVICE
    assert ambiguous.message.startswith("block_device /dev/vda1 on n-1: it ends in a digit")
    elsewhere = env.model_copy(update={"clusters": ("griffon",)})
    incompatible = refusal(
        lambda: admit_deployment(
            deployment(elsewhere, "n-1", "n-2"),
            caller="bob",
            force=False,
            config=config,
            holds=holds,
            reads=reads,
        )
    )
    assert incompatible.kind is Refusal.INCOMPATIBLE_ENVIRONMENT
    assert [p.path for p in incompatible.problems] == ["nodes[0]", "nodes[1]"]
    assert "does not run on cluster tiny of n-1 (its clusters: griffon)" in incompatible.message


def test_rights_are_on_the_deploy_partition_or_its_device_path(
    config: Config, env: EnvironmentDescription
) -> None:
    holds = NodeHolds()
    reads = Reads([Right("bob", "n-1", "3"), Right("bob", "n-2", "/dev/vdb3")])

    def admit(*nodes: str, caller: str | None = "bob", **options: object) -> tuple[str, ...]:
        return admit_deployment(
            deployment(env, *nodes, **options),
            caller=caller,
            force=False,
            config=config,
            holds=holds,
            reads=reads,
        )

    assert admit("n-1") == ("n-1",)
    assert admit("n-2", block_device="/dev/vdb") == ("n-2",)
    refused = refusal(lambda: admit("n-1", "n-2", "n-3"))
    assert refused.kind is Refusal.NO_RIGHT
    assert refused.message == (
        "no right to deploy n-2, n-3; an administrator grants rights with karights"
    )
    assert refused.problems[0].message == "bob has no right to deploy n-2 (partition 3)"
    other_disk = refusal(lambda: admit("n-1", block_device="/dev/vdb"))
    assert "such as /dev/vdb3, or on * is needed" in other_disk.message
    assert refusal(lambda: admit("n-1", deploy_partition=4)).kind is Refusal.NO_RIGHT
    # An administrator, and the daemon's own code, need no right.
    assert admit("n-3", caller="root") == ("n-3",)
    assert admit("n-3", caller=None) == ("n-3",)


def test_power_commands_and_reboot_operations_need_a_right_on_the_node(
    config: Config,
) -> None:
    holds, reads = NodeHolds(), Reads([Right("bob", "n-1", "5")])
    nodes = admit_nodes(
        "bob",
        ["n-1", "n-1"],
        action="power on",
        force=False,
        config=config,
        holds=holds,
        reads=reads,
    )
    assert [n.name for n in nodes] == ["n-1"]
    refused = refusal(
        lambda: admit_nodes(
            "bob", ["n-2"], action="power off", force=False, config=config, holds=holds, reads=reads
        )
    )
    assert (refused.kind, refused.problems[0].message) == (
        Refusal.NO_RIGHT,
        "bob has no right on n-2",
    )
    assert refused.message.startswith("no right to power off n-2;")
    reboot = DeploymentRequest(
        user="bob",
        environment=NoEnvironment(name="deploy_env"),
        nodes=("n-1", "n-2"),
        operation=Operation.DEPLOY_ENV,
    )
    operation = refusal(
        lambda: admit_deployment(
            reboot, caller="bob", force=False, config=config, holds=holds, reads=reads
        )
    )
    assert operation.message.startswith("no right to reboot n-2;")


def test_a_node_held_by_a_running_deployment_is_busy_unless_forced(
    config: Config, env: EnvironmentDescription
) -> None:
    holds = NodeHolds()
    holds.take(Hold("d1", "alice"), ["n-1", "n-2"])
    reads = Reads(states={"n-1": "rebooting", "n-2": "transferring"})
    busy = refusal(
        lambda: admit_deployment(
            deployment(env, "n-2", "n-3"),
            caller=None,
            force=False,
            config=config,
            holds=holds,
            reads=reads,
        )
    )
    assert busy.kind is Refusal.NODE_BUSY
    assert busy.message == "n-2 already in a running deployment; use force to deploy anyway"
    assert busy.problems[0].message == (
        "n-2 is being deployed by alice (deployment d1, state transferring)"
    )
    power = refusal(
        lambda: admit_nodes(
            "root", ["n-1"], action="reboot", force=False, config=config, holds=holds, reads=reads
        )
    )
    assert power.message == "n-1 in a running deployment; use force to reboot anyway"
    forced = admit_deployment(
        deployment(env, "n-2", "n-3"),
        caller=None,
        force=True,
        config=config,
        holds=holds,
        reads=reads,
    )
    assert forced == ("n-2", "n-3")


def test_min_nodes_must_be_reachable(config: Config, env: EnvironmentDescription) -> None:
    refused = refusal(
        lambda: admit_deployment(
            deployment(env, "n-1", "n-2", min_nodes=3),
            caller=None,
            force=False,
            config=config,
            holds=NodeHolds(),
            reads=Reads(),
        )
    )
    assert (refused.kind, str(refused)) == (
        Refusal.INVALID_REQUEST,
        "request: min_nodes: expected 1 to 2",
    )


def test_the_latest_taker_holds_a_node_and_only_its_holder_frees_it() -> None:
    holds = NodeHolds()
    holds.take(Hold("d1", "alice"), ["n-1", "n-2"])
    holds.take(Hold("d2", "bob"), ["n-2"])  # forced
    assert holds.held() == {"n-1": "d1", "n-2": "d2"}
    assert holds.release("d1", ["n-1", "n-2"]) == ["n-1"]
    assert holds.held() == {"n-2": "d2"}
    assert holds.holders(["n-1", "n-2"]) == {"n-2": Hold("d2", "bob")}
    assert holds.release("d2", ["n-2"]) == ["n-2"]
    assert holds.held() == {}


def test_force_over_another_users_deployment_takes_an_administrator(
    config: Config, env: EnvironmentDescription
) -> None:
    holds = NodeHolds()
    holds.take(Hold("d1", "alice"), ["n-1", "n-2"])
    reads = Reads(rights=[Right("bob", "*", "*"), Right("alice", "*", "*")])
    bobs = DeploymentRequest(user="bob", environment=env, nodes=("n-3", "n-2", "n-1"))
    refused = refusal(
        lambda: admit_deployment(
            bobs, caller="bob", force=True, config=config, holds=holds, reads=reads
        )
    )
    assert refused.kind is Refusal.FORCE_REFUSED
    assert refused.message == (
        "force may not deploy n-2: it is in the running deployment d1 of alice (and 1 more "
        "nodes); only an administrator (daemon.almighty_users) may act on another user's "
        "deployment"
    )
    assert [p.message for p in refused.problems] == [
        "n-2 is in deployment d1 of alice",
        "n-1 is in deployment d1 of alice",
    ]
    power = refusal(
        lambda: admit_nodes(
            "bob", ["n-1"], action="power off", force=True, config=config, holds=holds, reads=reads
        )
    )
    assert (power.kind, power.message.split(":")[0]) == (
        Refusal.FORCE_REFUSED,
        "force may not power off n-1",
    )
    # Her own deployment, an administrator, the daemon's own code: forced through.
    hers = deployment(env, "n-1", "n-3")
    for caller in ("alice", "root", None):
        assert admit_deployment(
            hers, caller=caller, force=True, config=config, holds=holds, reads=reads
        ) == ("n-1", "n-3")
    for user in ("alice", "root"):
        assert [
            n.name
            for n in admit_nodes(
                user, ["n-2"], action="reboot", force=True, config=config, holds=holds, reads=reads
            )
        ] == ["n-2"]
