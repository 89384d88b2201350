"""Pure workflow logic: the state table, the retry/fallback plan, min_nodes, cancel tokens."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import cast

import pytest

from kadeploy_core.machine import (
    FINAL_STATES,
    TRANSITIONS,
    InvalidTransition,
    NodeEvent,
    NodeState,
    next_state,
)
from kadeploy_core.plans import (
    OPERATION_MACROSTEPS,
    VARIANT_PLANS,
    VARIANTS,
    Macrostep,
    Operation,
    microsteps,
)
from kadeploy_core.policy import Plan, Position
from kadeployd.config import Macrosteps
from kadeployd.workflow.cancel import CancelToken
from kadeployd.workflow.context import Again, StepContext
from kadeployd.workflow.outcome import Tally, Verdict
from kadeployd.workflow.steps import STEPS, wait_for_recorded_env

S, E = NodeState, NodeEvent


def test_every_configurable_variant_has_microsteps_and_no_other() -> None:
    assert {m: tuple(v) for m, v in VARIANT_PLANS.items()} == VARIANTS


def test_every_microstep_of_every_plan_has_code() -> None:
    names = {
        step.name
        for operation, macrosteps in OPERATION_MACROSTEPS.items()
        for macrostep in macrosteps
        for variant in VARIANTS[macrostep]
        for vlan in (False, True)  # kadeploy --vlan adds set_vlan to BootNewEnv
        for keys in (False, True)  # kareboot deploy_env -k adds send_key_in_deploy_env
        for step in microsteps(operation, macrostep, variant, vlan=vlan, keys=keys)
    }
    assert names <= set(STEPS), names - set(STEPS)
    assert set(STEPS) == names  # and no code without a name in a plan


def _walk(operation: Operation, choice: dict[Macrostep, str]) -> NodeState:
    """Feed the table what a node running ``choice`` of each macrostep fires, then done."""
    state = S.PENDING
    for macrostep in OPERATION_MACROSTEPS[operation]:
        for step in microsteps(operation, macrostep, choice[macrostep]):
            for event in (step.enters, step.reached):
                if event is not None:
                    state = next_state(state, event)
    return next_state(state, E.DONE)


@pytest.mark.parametrize("operation", list(Operation))
@pytest.mark.parametrize("variant_index", [0, 1, 2])
def test_every_plan_walks_the_table_to_deployed(operation: Operation, variant_index: int) -> None:
    choice = {m: VARIANTS[m][variant_index] for m in Macrostep}
    assert _walk(operation, choice) == S.DEPLOYED


@pytest.mark.parametrize(
    ("state", "event", "target"),
    [
        (S.PENDING, E.REBOOT_ORDERED, S.REBOOTING),
        (S.PENDING, E.DEPLOY_ENV_REACHED, S.DEPLOY_ENV),
        (S.REBOOTING, E.DEPLOY_ENV_REACHED, S.DEPLOY_ENV),
        (S.PARTITIONING, E.REBOOT_ORDERED, S.REBOOTING),  # retry of SetDeploymentEnv
        (S.POSTINSTALL, E.TRANSFER_STARTED, S.TRANSFERRING),  # retry of BroadcastEnv
        (S.BOOTING, E.DONE, S.DEPLOYED),
        (S.TRANSFERRING, E.ABORT, S.ABORTED),
        (S.PENDING, E.FAIL, S.DEPLOY_FAILED),
        (S.TRANSFERRING, E.STEP_FAILED, S.TRANSFERRING),
        (S.BOOTING, E.TIMED_OUT, S.BOOTING),
    ],
)
def test_allowed_transitions(state: NodeState, event: NodeEvent, target: NodeState) -> None:
    assert next_state(state, event) == target


@pytest.mark.parametrize(
    ("state", "event"),
    [
        (S.TRANSFERRING, E.DONE),
        (S.POSTINSTALL, E.DONE),
        (S.PENDING, E.DONE),
        (S.PENDING, E.TRANSFER_STARTED),
        (S.BOOTING, E.TRANSFER_STARTED),
        (S.PENDING, E.STEP_FAILED),
        (S.DEPLOYED, E.REBOOT_ORDERED),
        (S.ABORTED, E.DONE),
        (S.DEPLOY_FAILED, E.FAIL),
    ],
)
def test_forbidden_transitions(state: NodeState, event: NodeEvent) -> None:
    with pytest.raises(InvalidTransition, match=f"no transition from {state} on {event}"):
        next_state(state, event)


def test_nothing_leaves_a_final_state() -> None:
    assert not [row for row in TRANSITIONS if row[0].final]


def test_final_states_are_final() -> None:
    assert all(state.final for state in FINAL_STATES)
    assert not S.BOOTING.final


def plan() -> Plan:
    return Plan(
        Macrosteps.model_validate(
            {
                "SetDeploymentEnv": [
                    {"type": "untrusted", "retries": 2, "timeout": 10},
                    {"type": "prod", "retries": 0, "timeout": 10},
                ],
                "BroadcastEnv": [{"type": "direct", "retries": 0, "timeout": "5 * n"}],
                "BootNewEnv": [{"type": "classical", "retries": 1, "timeout": 10}],
            }
        )
    )


def test_a_variant_is_retried_then_falls_to_the_next_then_fails() -> None:
    p = plan()
    position = p.first()
    assert position == Position(Macrostep.SET_DEPLOYMENT_ENV, 0, 1)
    seen = []
    while position is not None:
        seen.append((p.variant(position).type, position.attempt))
        position = p.after_failure(position)
    assert seen == [("untrusted", 1), ("untrusted", 2), ("untrusted", 3), ("prod", 1)]


def test_success_moves_to_the_next_macrostep_first_variant() -> None:
    p = plan()
    retried = Position(Macrostep.SET_DEPLOYMENT_ENV, 1, 1)
    assert p.after_success(retried) == Position(Macrostep.BROADCAST_ENV, 0, 1)
    assert p.after_success(Position(Macrostep.BOOT_NEW_ENV, 0, 2)) is None


def test_tally_without_min_nodes_waits_for_every_node() -> None:
    tally = Tally(("a", "b", "c"))
    tally.record("a", S.DEPLOYED)
    tally.record("b", S.DEPLOY_FAILED)
    assert tally.verdict() == (Verdict.RUNNING, "")  # c still goes to its end
    tally.record("c", S.DEPLOYED)
    assert tally.verdict() == (Verdict.FAILED, "2/3 nodes deployed")
    tally = Tally(("a", "b"))
    tally.record("a", S.DEPLOYED)
    assert tally.verdict() == (Verdict.RUNNING, "")
    tally.record("b", S.DEPLOYED)
    assert tally.verdict() == (Verdict.SUCCEEDED, "2/2 nodes deployed")


def test_tally_succeeds_as_soon_as_min_nodes_are_deployed() -> None:
    tally = Tally(("a", "b", "c", "d"), min_nodes=3)
    for node in "abc":
        assert tally.verdict()[0] == Verdict.RUNNING
        tally.record(node, S.DEPLOYED)
    assert tally.verdict() == (Verdict.SUCCEEDED, "min nodes reached (3/3)")


def test_tally_fails_as_soon_as_min_nodes_is_out_of_reach() -> None:
    tally = Tally(("a", "b", "c", "d"), min_nodes=4)
    tally.record("b", S.DEPLOY_FAILED)
    verdict, reason = tally.verdict()
    assert verdict == Verdict.FAILED
    assert reason == "4 deployed nodes needed, at most 3 possible (1 node failed)"


def test_tally_refuses_impossible_min_nodes_and_non_final_states() -> None:
    with pytest.raises(ValueError, match="between 1 and 2"):
        Tally(("a", "b"), min_nodes=3)
    with pytest.raises(ValueError, match="not a final state"):
        Tally(("a",)).record("a", S.BOOTING)


def test_cancel_token_runs_callbacks_once_with_the_first_reason() -> None:
    token = CancelToken()
    calls: list[str] = []
    token.on_cancel(lambda: calls.append("early"))
    removed = token.on_cancel(lambda: calls.append("removed"))
    removed()
    token.cancel("timeout")
    token.cancel("abort")
    token.on_cancel(lambda: calls.append("late"))
    assert calls == ["early", "late"]
    assert token.reason == "timeout"
    assert token.wait(0)


def test_cancel_token_wakes_a_waiting_thread() -> None:
    token = CancelToken()
    woke = threading.Event()

    def waiter() -> None:
        if token.wait(30):
            woke.set()

    thread = threading.Thread(target=waiter)
    thread.start()
    token.cancel("abort")
    thread.join(timeout=10)
    assert woke.is_set()


class _KeysSeen:
    """The host keys a node offers at successive probes (None: no answer): the fake services
    of a pure-logic test of the wait; tests/workflow/test_reboot_kinds.py runs it for real."""

    def __init__(self, keys: list[str | None]) -> None:
        self.keys = keys
        self.probes = 0

    def host_key(self) -> str | None:
        self.probes += 1
        return self.keys.pop(0)


def _waiting_context(keys: list[str | None], before: str) -> tuple[StepContext, _KeysSeen]:
    services = _KeysSeen(keys)
    boot = SimpleNamespace(check_interval=0)
    context = SimpleNamespace(
        memory={"host_key_before_reboot": before},
        scratch={},
        node=SimpleNamespace(settings=SimpleNamespace(boot=boot)),
        services=services,
    )
    return cast(StepContext, context), services


@pytest.mark.parametrize(
    ("keys", "probes"),
    [
        (["old", "new"], 2),  # another environment: a new key is enough
        (["old", None, None, "old"], 4),  # the same environment, seen down then back
        (["old", None, "old", None, None, "old"], 6),  # one lost probe is not a reboot
    ],
)
def test_recorded_env_wait_knows_a_reboot_into_the_same_environment(
    keys: list[str | None], probes: int
) -> None:
    context, services = _waiting_context(keys, before="old")
    while isinstance(wait_for_recorded_env(context), Again):
        pass
    assert services.probes == probes
