"""Read a node's SSH host key without logging in.

The daemon tells a freshly booted deployed env from the deploy env it replaced by its host
key: deploy envs generate a new one at every boot, and the deployed env has its own. No login
is needed, so this works whatever keys the user's environment accepts.
"""

from __future__ import annotations

import logging
import socket

import paramiko

logger = logging.getLogger(__name__)


def fetch_host_key(address: str, port: int, timeout: float) -> str | None:
    """``"<type> <base64>"`` of the host key the SSH server at address:port offers, or None."""
    try:
        sock = socket.create_connection((address, port), timeout=timeout)
    except OSError:
        return None
    transport = paramiko.Transport(sock)
    transport.banner_timeout = timeout
    try:
        transport.start_client(timeout=timeout)
        key = transport.get_remote_server_key()
        return f"{key.get_name()} {key.get_base64()}"
    except (paramiko.SSHException, OSError, EOFError) as exc:
        logger.debug("no host key from %s:%s: %s", address, port, exc)
        return None
    finally:
        transport.close()
        sock.close()
