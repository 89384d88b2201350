"""TFTP downloads for the emulated PXE firmware, with a real tftpy client.

Errors::

    TftpFetchError            a download failed
    ├── TftpUnreachable       no TFTP server answered (none listening, unreachable, timeout)
    └── TftpTransferError     a server answered with an error other than "file not found"

"File not found" is not an error: ``fetch`` returns None, as the firmware then tries the next
profile name. With no server at the address, ``fetch`` waits the whole ``timeout`` (the client's
socket is unconnected, so Linux does not report ICMP "port unreachable" to it), as PXE firmware
does, so a retry loop around it does not spin.
"""

from __future__ import annotations

import io
import logging
import socket

from tftpy import TftpClient, TftpException, TftpFileNotFoundError, TftpTimeout

from kadeploy_testbed.pxelinux import profile_candidates

logger = logging.getLogger(__name__)

# tftpy logs every retransmission and every "file not found" at WARNING/ERROR level; both are
# routine for PXE firmware (which tries several profile names and retries until a server
# answers), so they are kept out of the testbed's logs unless someone lowers this level again.
logging.getLogger("tftpy").setLevel(logging.CRITICAL)

_RETRIES = 3
"""Each request is sent up to this many times; each wait is ``timeout / _RETRIES``."""


class TftpFetchError(Exception):
    """A TFTP download failed."""


class TftpUnreachable(TftpFetchError):
    """No TFTP server answered at the given address and port."""


class TftpTransferError(TftpFetchError):
    """The TFTP server refused or broke off the transfer."""


def fetch(server: str, port: int, remote: str, timeout: float) -> bytes | None:
    """Download ``remote`` from the TFTP server at ``server:port`` into memory.

    Returns None when the server answers "file not found". ``timeout`` bounds the wait for
    each answer (one RRQ and its retransmissions), not the whole transfer.
    """
    if timeout <= 0:
        raise ValueError(f"timeout must be positive, got {timeout}")
    try:
        # Resolved here because tftpy resolves after opening its socket, and leaks it on failure.
        address = socket.gethostbyname(server)
    except OSError as err:
        raise TftpUnreachable(f"cannot resolve TFTP server {server!r}: {err}") from None
    buffer = io.BytesIO()
    client = TftpClient(address, port, options={}, flock=False)
    where = f"tftp://{server}:{port}/{remote}"
    try:
        client.download(remote, buffer, timeout=timeout / _RETRIES, retries=_RETRIES)
    except TftpFileNotFoundError:
        logger.debug("%s: file not found", where)
        return None
    except TftpTimeout:
        raise TftpUnreachable(f"{where}: no answer within {timeout:g} s") from None
    except ConnectionRefusedError:
        raise TftpUnreachable(f"{where}: no TFTP server listening") from None
    except OSError as err:
        raise TftpUnreachable(f"{where}: {err.strerror or err}") from None
    except TftpException as err:
        raise TftpTransferError(f"{where}: {err}") from None
    data = buffer.getvalue()
    logger.debug("%s: %d bytes", where, len(data))
    return data


def fetch_profile(
    server: str, port: int, mac: str, ip: str, timeout: float
) -> tuple[str, str] | None:
    """Fetch the first pxelinux profile that exists for this node, in pxelinux order.

    Returns ``(remote name, text)``, or None when the server has none of the candidates.
    Raises TftpUnreachable as soon as one request gets no answer.
    """
    for remote in profile_candidates(mac, ip):
        data = fetch(server, port, remote, timeout)
        if data is not None:
            return remote, data.decode("utf-8", errors="replace")
    return None
