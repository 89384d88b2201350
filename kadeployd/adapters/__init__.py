"""Adapters: the only modules that talk to the outside world (local commands, SSH, TFTP).

The state machine and the actors call these, never ``subprocess`` or ``paramiko`` directly.
"""

from kadeployd.adapters.commands import CommandResult, RunningCommand, run_command

__all__ = ["CommandResult", "RunningCommand", "run_command"]
