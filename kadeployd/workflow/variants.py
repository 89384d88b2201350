"""Each macrostep variant as an ordered list of microsteps, and the state each one runs in.

The state is set before the microstep's work starts, so a query during the run shows what the
node is doing now (a step may also move the state itself when it sees the node arrive).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from kadeployd.config import Macrostep
from kadeployd.workflow import steps
from kadeployd.workflow.context import StepContext
from kadeployd.workflow.states import NodeState

S = NodeState


@dataclass(frozen=True, slots=True)
class Microstep:
    """One named unit of work of a variant."""

    name: str
    state: NodeState
    run: Callable[[StepContext], None]


def _m(state: NodeState, run: Callable[[StepContext], None]) -> Microstep:
    return Microstep(run.__name__, state, run)


_BROADCAST_TAIL = (
    _m(S.POSTINSTALL, steps.run_postinstalls),
    _m(S.POSTINSTALL, steps.copy_user_keys),
    _m(S.POSTINSTALL, steps.check_kernel_files),
    _m(S.POSTINSTALL, steps.sync_and_umount),
)

MICROSTEPS: dict[Macrostep, dict[str, tuple[Microstep, ...]]] = {
    Macrostep.SET_DEPLOYMENT_ENV: {
        "untrusted": (
            _m(S.REBOOTING, steps.switch_pxe_to_deploy_env),
            _m(S.REBOOTING, steps.reboot_escalating),
            _m(S.REBOOTING, steps.wait_deploy_env),
            _m(S.PARTITIONING, steps.partition_disk),
            _m(S.PARTITIONING, steps.format_deploy_partition),
        ),
        "prod": (
            _m(S.DEPLOY_ENV, steps.check_prod_env),
            _m(S.PARTITIONING, steps.format_deploy_partition),
        ),
        "dummy": (_m(S.DEPLOY_ENV, steps.nothing),),
    },
    Macrostep.BROADCAST_ENV: {
        "chain": (_m(S.TRANSFERRING, steps.send_image_chain), *_BROADCAST_TAIL),
        "direct": (_m(S.TRANSFERRING, steps.send_image_direct), *_BROADCAST_TAIL),
        "dummy": (_m(S.TRANSFERRING, steps.nothing),),
    },
    Macrostep.BOOT_NEW_ENV: {
        "classical": (
            _m(S.BOOTING, steps.switch_pxe_to_deployed_env),
            _m(S.BOOTING, steps.reboot_escalating),
            _m(S.BOOTING, steps.wait_deployed_env),
        ),
        "hard_reboot": (
            _m(S.BOOTING, steps.switch_pxe_to_deployed_env),
            _m(S.BOOTING, steps.reboot_hard),
            _m(S.BOOTING, steps.wait_deployed_env),
        ),
        "dummy": (_m(S.BOOTING, steps.nothing),),
    },
}
