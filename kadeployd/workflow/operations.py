"""Reboot operations (kareboot ``deploy_env`` and ``recorded_env``) as plans of the
deployment workflow.

A reboot into the deploy env or into an environment already on a partition is a deployment
with only some of the macrosteps: the same DeploymentManager and NodeActors run it, so it gets
the configured retries and timeouts, the reboot escalation, per-node states and logs in the
store, events and cancel, with no second state machine.

==============  ===================  ====================================================
operation       macrostep run        microsteps (state)
==============  ===================  ====================================================
deploy          all three            :data:`kadeployd.workflow.variants.MICROSTEPS`
deploy_env      SetDeploymentEnv     PXE to the deploy kernel marked with the job id,
                                     reboot (rebooting); wait until SSH answers with the
                                     marker in /proc/cmdline (booting)
recorded_env    BootNewEnv           the BootNewEnv variant's own microsteps (booting):
                                     PXE to the env's kernel or chain to the partition,
                                     reboot, wait for the new env
==============  ===================  ====================================================

The retries and timeout are those of the configured variant at that position; a ``dummy``
variant does nothing, as in a deployment. A node that reaches the end is recorded
``deployed``: it runs what the operation asked for.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from kadeployd.config import Macrostep, Macrosteps, Node
from kadeployd.environment import ImageKind
from kadeployd.workflow import steps
from kadeployd.workflow.context import StepContext
from kadeployd.workflow.job import DeploymentJob, Operation
from kadeployd.workflow.policy import MACROSTEPS, Plan
from kadeployd.workflow.states import NodeState
from kadeployd.workflow.variants import MICROSTEPS, Microstep

logger = logging.getLogger(__name__)

S = NodeState

ORDER: dict[Operation, tuple[Macrostep, ...]] = {
    Operation.DEPLOY: MACROSTEPS,
    Operation.DEPLOY_ENV: (Macrostep.SET_DEPLOYMENT_ENV,),
    Operation.RECORDED_ENV: (Macrostep.BOOT_NEW_ENV,),
}
"""The macrosteps each operation runs."""


def wait_for_deploy_env(ctx: StepContext) -> None:
    """Wait until the node answers SSH in the deploy env booted for this job, without going
    on to partition: the operation ends there."""
    steps.await_deploy_env(ctx)
    ctx.log("info", "the deploy env answers")


def reboot_from_level(ctx: StepContext) -> None:
    """Reboot at the level asked (``kareboot -l``) on the first attempt, and at least as hard
    as the escalation (soft, hard, very hard) on the retries."""
    steps.reboot_at_least(ctx, ctx.job.request.reboot_level)


DOWN_CONFIRMATIONS = 2
"""Host-key probes in a row that must fail before a node counts as gone down for its reboot
(one failed probe may be a lost packet while the old system still runs)."""


def wait_for_recorded_env(ctx: StepContext) -> None:
    """Wait until the node answers SSH again after its reboot.

    A deployment knows the new env by a host key other than the deploy env's. Here the node
    may already run the environment it reboots into, and come back with the same key: so a
    node also counts as rebooted once it was seen down, then answers, whatever its key.
    """
    before = ctx.memory.get("host_key_before_reboot")
    interval = ctx.node.settings.boot.check_interval
    misses = 0
    while True:
        key = ctx.services.host_key()
        if key and (key != before or misses >= DOWN_CONFIRMATIONS):
            return
        misses = 0 if key else misses + 1
        ctx.wait(interval)


DEPLOY_ENV_STEPS = (
    Microstep("switch_pxe_to_deploy_env", S.REBOOTING, steps.switch_pxe_to_deploy_env),
    Microstep("reboot_from_level", S.REBOOTING, reboot_from_level),
    Microstep("wait_for_deploy_env", S.BOOTING, wait_for_deploy_env),
)

DUMMY_STEPS = (Microstep("nothing", S.BOOTING, steps.nothing),)
"""A ``dummy`` SetDeploymentEnv variant in deploy_env: nothing runs, the node is done."""


def plan_for(job: DeploymentJob, node: Node) -> Plan:
    """The node's plan for ``job``: its variant lists, restricted to the operation's
    macrosteps."""
    macrosteps: Macrosteps = node.settings.automata.macrosteps
    return Plan(macrosteps, ORDER[job.operation])


def microsteps(operation: Operation, macrostep: Macrostep, variant: str) -> tuple[Microstep, ...]:
    """What runs for an attempt of ``variant`` of ``macrostep`` in ``operation``."""
    if operation == Operation.DEPLOY_ENV:
        # Whatever way the cluster reaches the deploy env for a deployment (untrusted, or
        # prod for deploying from the running system), this operation reboots into it.
        return DUMMY_STEPS if variant == "dummy" else DEPLOY_ENV_STEPS
    chosen = MICROSTEPS[macrostep][variant]
    if operation == Operation.DEPLOY:
        return chosen
    replaced: dict[Callable[[StepContext], None], Microstep] = {
        steps.reboot_escalating: Microstep("reboot_from_level", S.BOOTING, reboot_from_level),
        steps.wait_deployed_env: Microstep(
            "wait_for_recorded_env", S.BOOTING, wait_for_recorded_env
        ),
    }
    return tuple(replaced.get(m.run, m) for m in chosen)


def publishes_boot_files(job: DeploymentJob) -> bool:
    """Whether the job needs the environment's kernel on the TFTP server: a deployment does
    (it checks its image), a reboot into a recorded tar environment does, the others chain to
    a partition or boot the deploy kernel."""
    if job.operation == Operation.DEPLOY:
        return True
    if job.operation == Operation.DEPLOY_ENV:
        return False
    return job.environment.image.kind == ImageKind.TAR
