"""Pure logic of ``--breakpoint`` and ``--custom-steps``: names, parsing with file:line
errors, which operations run around which microstep, the verdict with breakpointed nodes."""

from __future__ import annotations

import textwrap

import pytest

from kadeploy_core.breakpoint import parse_breakpoint
from kadeploy_core.custom_ops import (
    MAX_OPERATIONS,
    CustomSteps,
    check_send_name,
    parse_custom_steps,
)
from kadeploy_core.errors import InputError
from kadeploy_core.machine import NodeEvent, NodeState, next_state
from kadeploy_core.plans import Macrostep
from kadeploy_core.stepnames import (
    StepScope,
    UnknownStep,
    macrostep_names,
    resolve_macrostep,
)
from kadeploy_core.yamldoc import parse_yaml
from kadeployd.workflow.custom_run import expand
from kadeployd.workflow.outcome import Tally, Verdict

M = Macrostep
S = NodeState


# ------------------------------------------------------------------ names


def test_macrostep_names_generic_variant_classes_and_kadeploy3_aliases() -> None:
    names = macrostep_names()
    assert names["BroadcastEnv"] == StepScope(M.BROADCAST_ENV)
    assert names["SetDeploymentEnvUntrusted"] == StepScope(M.SET_DEPLOYMENT_ENV, "untrusted")
    assert names["BootNewEnvClassical"] == StepScope(M.BOOT_NEW_ENV, "classical")
    assert names["BootNewEnvHardReboot"] == StepScope(M.BOOT_NEW_ENV, "hard_reboot")
    assert names["BroadcastEnvKascade"] == StepScope(M.BROADCAST_ENV, "chain")


def test_microsteps_of_a_generic_macrostep_are_those_of_every_variant() -> None:
    every = resolve_macrostep("BroadcastEnv").microsteps()
    assert {"send_image_chain", "send_image_direct", "run_postinstalls", "nothing"} <= set(every)
    assert len(every) == len(set(every))
    assert "send_image_direct" not in resolve_macrostep("BroadcastEnvChain").microsteps()


def test_set_vlan_is_named_in_every_boot_new_env_variant() -> None:
    """``kadeploy --vlan`` ends BootNewEnv with set_vlan: breakpoints and custom steps may
    name it, and no other macrostep has it."""
    for name in ("BootNewEnv", "BootNewEnvClassical", "BootNewEnvHardReboot"):
        assert resolve_macrostep(name).microsteps()[-1] == "set_vlan"
    assert "set_vlan" not in resolve_macrostep("BroadcastEnv").microsteps()
    assert parse_breakpoint("BootNewEnv:set_vlan").stops_before(
        M.BOOT_NEW_ENV, "classical", 0, "set_vlan"
    )


# ------------------------------------------------------------------ breakpoint


def test_breakpoint_on_a_microstep_stops_before_it_in_any_variant_that_has_it() -> None:
    stop = parse_breakpoint("BroadcastEnv:send_image_chain")
    assert str(stop) == "BroadcastEnv:send_image_chain"
    assert stop.stops_before(M.BROADCAST_ENV, "chain", 0, "send_image_chain")
    assert not stop.stops_before(M.BROADCAST_ENV, "direct", 0, "send_image_direct")
    assert not stop.stops_before(M.SET_DEPLOYMENT_ENV, "untrusted", 0, "send_image_chain")


def test_breakpoint_on_a_macrostep_stops_before_its_first_microstep() -> None:
    stop = parse_breakpoint("BroadcastEnv")
    assert stop.stops_before(M.BROADCAST_ENV, "direct", 0, "send_image_direct")
    assert not stop.stops_before(M.BROADCAST_ENV, "direct", 1, "run_postinstalls")
    only_chain = parse_breakpoint("BroadcastEnvChain")
    assert only_chain.stops_before(M.BROADCAST_ENV, "chain", 0, "send_image_chain")
    assert not only_chain.stops_before(M.BROADCAST_ENV, "direct", 0, "send_image_direct")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("BroadcastEnv:send_image_chian", "did you mean 'send_image_chain' or"),
        ("BroadcastEnv:partition_disk", "unknown microstep 'partition_disk' of BroadcastEnv"),
        ("BroadcastEnvChain:send_image_direct", "valid: send_image_chain, run_postinstalls"),
        ("BroadcastEn", "did you mean 'BroadcastEnv'"),
        ("Broadcast:x", "valid: SetDeploymentEnv, BroadcastEnv, BootNewEnv"),
    ],
)
def test_unknown_breakpoint_names_say_what_is_valid(text: str, expected: str) -> None:
    with pytest.raises(UnknownStep, match="unknown") as caught:
        parse_breakpoint(text)
    assert expected in str(caught.value)


@pytest.mark.parametrize("text", ["", "a:b:c", "BroadcastEnv:", "x" * 300])
def test_malformed_breakpoints(text: str) -> None:
    with pytest.raises(ValueError, match="expected MACROSTEP or MACROSTEP:MICROSTEP"):
        parse_breakpoint(text)


def test_breakpointed_is_final_and_reachable_from_pending_and_working_states() -> None:
    assert S.BREAKPOINTED.final
    for state in (S.PENDING, S.REBOOTING, S.DEPLOY_ENV, S.PARTITIONING, S.TRANSFERRING):
        assert next_state(state, NodeEvent.BREAKPOINT) == S.BREAKPOINTED


def test_breakpointed_nodes_count_as_a_success() -> None:
    tally = Tally(("a", "b", "c"))
    for node in ("a", "b", "c"):
        tally.record(node, S.BREAKPOINTED)
    assert tally.verdict() == (Verdict.SUCCEEDED, "3/3 nodes stopped at the breakpoint")
    mixed = Tally(("a", "b", "c"))
    mixed.record("a", S.BREAKPOINTED)
    mixed.record("b", S.DEPLOYED)
    mixed.record("c", S.DEPLOY_FAILED)
    assert mixed.verdict() == (Verdict.FAILED, "1/3 nodes stopped at the breakpoint, 1 deployed")
    enough = Tally(("a", "b", "c"), min_nodes=2)
    enough.record("a", S.BREAKPOINTED)
    enough.record("b", S.BREAKPOINTED)
    assert enough.verdict() == (Verdict.SUCCEEDED, "min nodes reached (2/2)")


# ------------------------------------------------------------------ custom steps


EXAMPLE = """\
SetDeploymentEnv:
  format_deploy_partition:
    post-ops:
      - action: exec
        name: make_tmp
        command: mkdir -p /mnt/dest/tmp
BroadcastEnv:
  run_postinstalls:
    pre-ops:
      - action: send
        name: motd
        file: ./motd.txt
        destination: /mnt/dest/etc
      - action: run
        name: tune
        file: ./tune.sh
        params: "--fast 'two words'"
        timeout: 30
BroadcastEnvChain:
  run_postinstalls:
    post-ops:
      - {action: exec, name: chain_only, command: "true"}
    substitute:
      - {action: exec, name: instead, command: "echo replaced"}
"""


def parse(text: str) -> CustomSteps:
    document = parse_yaml(textwrap.dedent(text), "steps.yaml")
    return parse_custom_steps(document.data, "steps.yaml", document.line_of)


def problems(text: str) -> list[str]:
    with pytest.raises(InputError) as caught:
        parse(text)
    return [str(p) for p in caught.value.problems]


def test_the_example_parses_and_each_operation_keeps_its_fields() -> None:
    steps = parse(EXAMPLE)
    names = [op.name for op in steps.operations()]
    assert names == ["make_tmp", "motd", "tune", "chain_only", "instead"]
    tune = steps.operations()[2]
    assert (tune.action, tune.file, tune.params, tune.timeout) == (
        "run",
        "./tune.sh",
        ("--fast", "two words"),
        30,
    )
    assert steps.file_names() == ["./motd.txt", "./tune.sh"]
    assert steps.shown()["BroadcastEnv"]["run_postinstalls"]["pre-ops"][1]["params"] == (
        "--fast 'two words'"
    )


def test_which_operations_run_around_which_microstep() -> None:
    steps = parse(EXAMPLE)
    around = steps.around(M.SET_DEPLOYMENT_ENV, "untrusted", "format_deploy_partition")
    assert around is not None
    assert ([o.name for o in around.post], around.pre, around.substitute) == (
        ["make_tmp"],
        (),
        None,
    )
    assert steps.around(M.SET_DEPLOYMENT_ENV, "untrusted", "partition_disk") is None
    assert steps.around(M.BOOT_NEW_ENV, "classical", "format_deploy_partition") is None
    # The generic block and the chain's block both apply while the chain runs...
    chain = steps.around(M.BROADCAST_ENV, "chain", "run_postinstalls")
    assert chain is not None
    assert [o.name for o in chain.pre] == ["motd", "tune"]
    assert [o.name for o in chain.post] == ["chain_only"]
    assert [o.name for o in chain.substitute or ()] == ["instead"]
    # ... only the generic one while the direct variant runs.
    direct = steps.around(M.BROADCAST_ENV, "direct", "run_postinstalls")
    assert direct is not None
    assert ([o.name for o in direct.pre], direct.post, direct.substitute) == (
        ["motd", "tune"],
        (),
        None,
    )


def test_every_mistake_is_reported_with_its_line_and_key() -> None:
    found = problems(
        """\
        BroadcastEnv:
          run_postinstals:
            pre-ops: []
          run_postinstalls:
            pre-op: []
            post-ops:
              - action: send
                name: motd
                file: motd.txt
              - action: run
                name: tune
                timeout: -3
                colour: red
              - action: exex
                name: x
              - action: exec
                name: y
              - action: exec
                name: z
                command: "true"
                file: extra.txt
              - {action: run, name: q, file: q.sh, params: "'unbalanced"}
        BootNewEnvFoo: {}
        """
    )
    assert found == [
        "steps.yaml:2: BroadcastEnv.run_postinstals: unknown microstep 'run_postinstals' of "
        "BroadcastEnv; did you mean 'run_postinstalls'?; valid: send_image_chain, "
        "run_postinstalls, copy_user_keys, check_kernel_files, install_bootloader, "
        "sync_and_umount, send_image_direct, nothing",
        "steps.yaml:5: BroadcastEnv.run_postinstalls.pre-op: unknown key; did you mean "
        "'pre-ops'?; valid keys are pre-ops, substitute, post-ops",
        "steps.yaml:7: BroadcastEnv.run_postinstalls.post-ops[0].destination: required for "
        "action send: a directory on the node to copy the file into",
        "steps.yaml:12: BroadcastEnv.run_postinstalls.post-ops[1].timeout: expected a number "
        "of seconds > 0 (default: the node's command timeout); got -3",
        "steps.yaml:13: BroadcastEnv.run_postinstalls.post-ops[1].colour: unknown key; valid "
        "keys are action, name, command, file, destination, params, timeout",
        "steps.yaml:14: BroadcastEnv.run_postinstalls.post-ops[2].action: expected one of "
        "exec (a shell command), send (copy a file), run (send a script and run it); got "
        "'exex'; did you mean 'exec'?",
        "steps.yaml:16: BroadcastEnv.run_postinstalls.post-ops[3].command: required for "
        "action exec: the shell command to run on the node",
        "steps.yaml:21: BroadcastEnv.run_postinstalls.post-ops[4].file: not used by action "
        "exec (it takes command)",
        "steps.yaml:22: BroadcastEnv.run_postinstalls.post-ops[5].params: cannot split into "
        "arguments: No closing quotation",
        "steps.yaml:23: BootNewEnvFoo: unknown macrostep 'BootNewEnvFoo'; did you mean "
        "'BootNewEnv' or 'BootNewEnvHardReboot' or 'BootNewEnvKexec'?; valid: "
        "SetDeploymentEnv, BroadcastEnv, BootNewEnv (or a variant's class name, e.g. "
        "BroadcastEnvChain)",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[]", "steps.yaml:1: expected a mapping of macrostep:"),
        ("BroadcastEnv: 3", "steps.yaml:1: BroadcastEnv: expected a mapping of microstep:"),
        (
            "BroadcastEnv: {nothing: []}",
            "BroadcastEnv.nothing: expected a mapping with pre-ops, substitute, post-ops",
        ),
        ("BroadcastEnv: {nothing: {pre-ops: {}}}", "pre-ops: expected a list of operations"),
        ("BroadcastEnv: {nothing: {pre-ops: [3]}}", "pre-ops[0]: expected a mapping"),
        (
            "BroadcastEnv: {nothing: {pre-ops: [{action: exec, command: x}]}}",
            "pre-ops[0].name: required key is missing: expected a short name",
        ),
        (
            "BroadcastEnv: {nothing: {pre-ops: [{action: exec, name: 'a b', command: x}]}}",
            "pre-ops[0].name: expected a short name of letters",
        ),
    ],
)
def test_malformed_shapes(text: str, expected: str) -> None:
    assert any(expected in p for p in problems(text)), problems(text)


def test_too_many_operations() -> None:
    ops = ", ".join(f"{{action: exec, name: o{i}, command: 'true'}}" for i in range(300))
    found = problems(f"BroadcastEnv: {{nothing: {{pre-ops: [{ops}]}}}}")
    assert found == [f"steps.yaml:1: 300 operations; at most {MAX_OPERATIONS} are allowed"]


def test_kadeploy3_variables_are_expanded_in_destinations_only_when_known() -> None:
    variables = {"KADEPLOY_ENV_EXTRACTION_DIR": "/mnt/dest"}
    assert expand("$KADEPLOY_ENV_EXTRACTION_DIR/etc", variables) == "/mnt/dest/etc"
    assert expand("${KADEPLOY_ENV_EXTRACTION_DIR}/x", variables) == "/mnt/dest/x"
    assert expand("$KADEPLOY_OTHER/$HOME", variables) == "$KADEPLOY_OTHER/$HOME"


@pytest.mark.parametrize("name", ["motd", "my file", ".hidden", "-dash", "été.txt", "a" * 255])
def test_send_keeps_any_file_name(name: str) -> None:
    assert check_send_name(name) is None


@pytest.mark.parametrize(
    "name", ["", ".", "..", "a/b", "a\x00b", "a\nb", "tab\there", "\x7f", "é" * 128, "\ud800"]
)
def test_send_refuses_what_cannot_be_a_file_name_on_the_node(name: str) -> None:
    problem = check_send_name(name)
    assert problem is not None
    assert "cannot be the name of the file on the node" in problem
    assert "not '.' or '..', no '/', no control character, at most 255 bytes" in problem
