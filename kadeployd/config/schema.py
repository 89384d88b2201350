"""Typed, frozen schema of the configuration files.

``DaemonSettings`` is the ``daemon:`` section of deploy.conf (one value for the whole daemon).
``NodeSettings`` is everything else: the same keys may appear in deploy.conf, in a cluster file
and in a node's entry of nodes.conf; the loader merges them (node > cluster > global) and
validates the result against this schema.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    model_validator,
)

from kadeploy_core.paths import DEFAULT_STATE_DIR, SOCKET_NAME
from kadeploy_core.plans import Macrostep
from kadeployd.config.host_keys import PinnedHostKeys, inline_host_keys, read_host_key_file
from kadeployd.config.templates import CommandTemplate, TemplateError, placeholders
from kadeployd.config.timeouts import Timeout


class Frozen(BaseModel):
    """Base of every config model: immutable, and unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)


"""Implemented variants of each macrostep; a config naming another one is rejected."""


def _template_item(value: object) -> object:
    if isinstance(value, bool):
        raise ValueError(
            "got a boolean: YAML reads unquoted on, off, yes and no as true/false; quote the word"
        )
    if isinstance(value, int | float):
        return str(value)
    return value


def _to_template(items: tuple[str, ...]) -> CommandTemplate:
    if not items:
        raise ValueError("expected a non-empty argument list such as [ipmitool, -H, '{bmc}', ...]")
    for item in items:
        try:
            placeholders(item)
        except TemplateError as exc:
            raise ValueError(str(exc)) from None
    return CommandTemplate(items)


def _to_timeout(value: object) -> Timeout:
    return Timeout.parse(value)


def _to_host_key_file(value: object) -> PinnedHostKeys:
    if isinstance(value, PinnedHostKeys):
        return value
    if not isinstance(value, str | Path) or not str(value):
        raise ValueError("expected the path of an OpenSSH public key file")
    return read_host_key_file(Path(value))


def _to_inline_host_keys(value: object) -> PinnedHostKeys:
    if isinstance(value, PinnedHostKeys):
        return value
    if not isinstance(value, str):
        raise ValueError("expected OpenSSH public keys as text, one a line")
    return inline_host_keys(value)


TemplateArg = Annotated[str, BeforeValidator(_template_item)]
Command = Annotated[
    tuple[TemplateArg, ...],
    AfterValidator(_to_template),
    PlainSerializer(lambda t: list(t.argv)),
]
TimeoutValue = Annotated[Any, AfterValidator(_to_timeout), PlainSerializer(str)]
HostKeyFile = Annotated[Any, AfterValidator(_to_host_key_file), PlainSerializer(lambda k: k.source)]
InlineHostKeys = Annotated[
    Any, AfterValidator(_to_inline_host_keys), PlainSerializer(lambda k: "\n".join(k.keys))
]
Seconds = Annotated[float, Field(gt=0)]
PartitionNumber = Annotated[int, Field(ge=1, le=128)]
PortNumber = Annotated[int, Field(ge=1, le=65535)]


# ---------------------------------------------------------------- node settings


class SshSettings(Frozen):
    """How the daemon reaches nodes' deploy and deployed envs."""

    user: str = "root"
    port: PortNumber = 22
    identity_file: Path = Path("/etc/kadeployd/id_deploy")
    connect_timeout: Seconds = 10
    command_timeout: Seconds = 600
    keepalive_interval: Seconds = 15


class PowerSettings(Frozen):
    """Power and reboot command templates (argument lists), run by the RebootActor."""

    command_timeout: Seconds = 30
    soft_reboot_grace: Seconds = 30
    """Seconds a node whose soft reboot command succeeded has to be seen going down (no
    longer answering, or answering with another boot id) before the reboot escalates to hard."""
    hard_reboot_grace: Seconds = 30
    """The same for a hard reboot, before it escalates to very hard."""
    reboot_soft: Command | None = None
    reboot_hard: Command | None = None
    reboot_very_hard: Command | None = None
    power_on: Command | None = None
    power_off: Command | None = None
    power_status: Command | None = None
    secret_vars: tuple[str, ...] = ()
    """Names of ``vars`` whose values are secret, besides names containing pass, secret,
    token or key: shown as ``***`` wherever a power command is logged or quoted."""

    def templates(self) -> dict[str, CommandTemplate]:
        """The configured command templates, by key (``reboot_soft``...)."""
        found = {name: getattr(self, name) for name in type(self).model_fields}
        return {name: t for name, t in found.items() if isinstance(t, CommandTemplate)}


VLAN_FIELDS = ("vlan", "user")
"""Placeholders ``vlan.switch`` may use besides a power command's: the VLAN id asked
for and the user who deploys (Kadeploy3's ``VLAN_ID`` and ``USER``)."""


class VlanSettings(Frozen):
    """KaVLAN: how the site moves a node onto a VLAN (``kadeploy --vlan ID``)."""

    switch: Command | None = None
    """Argument list run once the node booted its new env, e.g. ``[kavlan, -s, -i,
    '{vlan}', -m, '{node}', -u, '{user}']``; the power commands' placeholders and ``vars``
    plus ``{vlan}`` and ``{user}``; secrets masked as in power commands
    (``power.secret_vars``). None: the nodes cannot change VLAN."""
    command_timeout: Seconds = 30


class BootSettings(Frozen):
    """PXE boot of the deploy env and of the prod env."""

    deploy_kernel: str
    """Path of the deploy env's kernel, relative to ``daemon.tftp.root``."""
    deploy_initrd: str | None = None
    deploy_kernel_params: str = ""
    prod_boot: Literal["chain", "localboot"] = "chain"
    """How the prod env is booted: chain.c32 to the prod partition, or the disk's own loader."""
    check_interval: Seconds = 2
    deploy_host_key_file: HostKeyFile | None = None
    """OpenSSH public host key file(s) of the deploy env (one key a line, as sshd's
    ``ssh_host_*_key.pub``), read when the configuration is loaded: SSH connections to a
    node's deploy env accept only these keys (kadeployd/config/host_keys.py)."""
    deploy_host_key: InlineHostKeys | None = None
    """The same keys inline (``ssh-ed25519 AAAA...``, one a line); a node accepts the keys of
    either setting."""
    deploy_authorized_keys: Annotated[str, Field(pattern=r"^/[^\x00-\x1f]{0,1023}$")] = (
        "/root/.ssh/authorized_keys"
    )
    """The deploy env's file of root's authorized keys, where ``kareboot -r deploy_env -k``
    appends the user's keys (Kadeploy3's send_key_in_deploy_env)."""

    def deploy_host_keys(self) -> tuple[str, ...]:
        """The deploy env's pinned host keys (``"<type> <base64>"``); empty: not pinned."""
        keys: dict[str, None] = {}
        for pinned in (self.deploy_host_key_file, self.deploy_host_key):
            if isinstance(pinned, PinnedHostKeys):
                keys.update(dict.fromkeys(pinned.keys))
        return tuple(keys)


class DiskSettings(Frozen):
    """Block device layout of the nodes."""

    block_device: str = "/dev/sda"
    partition_device: str = "{block_device}{partition}"
    deploy_partition: PartitionNumber = 3
    prod_partition: PartitionNumber | None = 2
    swap_partition: PartitionNumber | None = None
    filesystem: Literal["ext2", "ext3", "ext4", "xfs"] = "ext4"
    partitioning_script: Path | None = None
    """Admin script run in the deploy env before formatting; None keeps the partition table."""
    tmp_partition: PartitionNumber | None = None
    """The node's /tmp partition, which ``kadeploy -r FSTYPE`` reformats; None: the nodes
    have none, and a deployment asking for it is refused."""
    bootloader_script: Path | None = None
    """Admin script run in the deploy env once the image is on the deploy partition (mounted
    at ``KADEPLOY_ENV_EXTRACTION_DIR``), to install the boot loader that a firmware booting
    the disk (``kadeploy -c 0``) runs; None installs nothing."""

    def partition_path(self, number: int) -> str:
        """Device path of partition ``number`` (``/dev/sda3``, ``/dev/nvme0n1p3``)."""
        return self.partition_device.format(block_device=self.block_device, partition=number)


class Variant(Frozen):
    """One variant of a macrostep with its retry and timeout policy."""

    type: str
    retries: Annotated[int, Field(ge=0, le=100)] = 0
    timeout: TimeoutValue


def _variant_list(macrostep: Macrostep) -> Any:
    def check(variants: tuple[Variant, ...]) -> tuple[Variant, ...]:
        if not variants:
            raise ValueError(f"expected at least one variant of {macrostep.value}")
        return variants

    return Annotated[tuple[Variant, ...], AfterValidator(check)]


class Macrosteps(Frozen):
    """Variant lists per macrostep, tried in order."""

    SetDeploymentEnv: _variant_list(Macrostep.SET_DEPLOYMENT_ENV)  # type: ignore[valid-type]
    BroadcastEnv: _variant_list(Macrostep.BROADCAST_ENV)  # type: ignore[valid-type]
    BootNewEnv: _variant_list(Macrostep.BOOT_NEW_ENV)  # type: ignore[valid-type]

    def variants(self, macrostep: Macrostep) -> tuple[Variant, ...]:
        """The variant list of ``macrostep``."""
        result: tuple[Variant, ...] = getattr(self, macrostep.value)
        return result


class Automata(Frozen):
    """The deployment workflow's policy, as in Kadeploy3's ``automata`` section."""

    macrosteps: Macrosteps


class NodeSettings(Frozen):
    """Everything that may differ from node to node, after merging the three layers."""

    ssh: SshSettings = SshSettings()
    vars: dict[str, Annotated[str, BeforeValidator(_template_item)]] = {}
    power: PowerSettings = PowerSettings()
    vlan: VlanSettings = VlanSettings()
    boot: BootSettings
    disk: DiskSettings = DiskSettings()
    automata: Automata


# ---------------------------------------------------------------- daemon settings


def _host_port(value: str | None) -> str | None:
    if value is None:
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT such as 127.0.0.1:25300; got {value!r}")
    return value


class ApiSettings(Frozen):
    """Where the REST API listens; the Unix socket is always served."""

    unix_socket: Path | None = None
    """Default: ``<state_dir>/kadeployd.sock``."""
    tcp_listen: Annotated[str | None, AfterValidator(_host_port)] = None
    tls_certificate: Path | None = None
    """PEM certificate (chain) served on ``tcp_listen``; with ``tls_key``, TCP speaks HTTPS."""
    tls_key: Path | None = None
    """PEM private key of ``tls_certificate``."""
    max_body_bytes: Annotated[int, Field(ge=1024, le=2**31)] = 16 * 2**20
    """Largest request body but uploads' (``daemon.max_upload_mib``); larger ones get 413."""
    limit_concurrency: Annotated[int, Field(ge=8, le=100_000)] = 1024
    """Connections plus requests in flight over all users; beyond it uvicorn answers 503."""
    backlog: Annotated[int, Field(ge=1, le=65535)] = 128
    """Connections waiting to be accepted, per listening socket."""
    timeout_keep_alive: Annotated[int, Field(ge=1, le=3600)] = 5
    """Seconds an idle connection stays open, and a client has to send a whole request head."""
    h11_max_incomplete_event_size: Annotated[int, Field(ge=4096, le=2**24)] = 64 * 1024
    """Largest request line plus headers, in bytes."""
    max_requests_per_user: Annotated[int, Field(ge=1, le=100_000)] = 32
    """Requests of one user in flight at once (event streams apart); beyond it 429."""
    max_streams_per_user: Annotated[int, Field(ge=1, le=100_000)] = 16
    """Event streams one user holds open at once; beyond it 429."""
    max_streams: Annotated[int, Field(ge=1, le=100_000)] = 256
    """Event streams open at once over all users; beyond it 429."""
    max_power_requests_per_user: Annotated[int, Field(ge=1, le=100_000)] = 8
    """Power and simple reboot requests of one user waiting for their commands at once
    (each may name many nodes); beyond it 429."""

    @model_validator(mode="after")
    def _tls_pair(self) -> ApiSettings:
        if (self.tls_certificate is None) != (self.tls_key is None):
            given, missing = (
                ("tls_certificate", "tls_key")
                if self.tls_key is None
                else ("tls_key", "tls_certificate")
            )
            raise ValueError(f"{given} is set but {missing} is not: TLS needs both, or neither")
        if self.tls_certificate is not None and self.tcp_listen is None:
            raise ValueError("tls_certificate and tls_key serve tcp_listen, which is not set")
        return self


class TftpSettings(Frozen):
    """The daemon's own TFTP server, which nodes' PXE firmware asks for profiles and kernels."""

    listen: str = "0.0.0.0"  # noqa: S104 - nodes reach the TFTP server from the cluster network
    port: Annotated[int, Field(ge=0, le=65535)] = 69
    """0 picks a free port: only useful when nothing boots from it (tests)."""
    root: Path | None = None
    """Default: ``<state_dir>/tftp``."""


class WorkerSettings(Frozen):
    """Sizes of the daemon's bounded pools for blocking work (``daemon.workers``).

    A node costs one actor; its SSH commands and the daemon's file work run on these pools,
    so the daemon's thread count is about one per node in flight plus these sizes, whatever
    the number of nodes. Work beyond a pool's size waits its turn in order. Read at start.
    """

    ssh: Annotated[int, Field(ge=1, le=4096)] = 128
    """SSH commands and probes running at once, over every deployment."""
    files: Annotated[int, Field(ge=1, le=256)] = 8
    """Local file work at once (boot files out of images, PXE profiles)."""
    node_turns: Annotated[int, Field(ge=1, le=1024)] = 4
    """Node actors handling a message at once. A node's work between two waits is short
    Python; more at once only makes thousands of node threads fight over the interpreter
    lock (10,000 dummy nodes in-process: 44 to 193 s unbounded, 10 to 18 s with 4)."""


class DaemonSettings(Frozen):
    """The ``daemon:`` section of deploy.conf."""

    state_dir: Path = DEFAULT_STATE_DIR
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    api: ApiSettings = ApiSettings()
    tftp: TftpSettings = TftpSettings()
    reboot_window: Annotated[int, Field(ge=1)] = 10
    reboot_window_sleep: Annotated[float, Field(ge=0)] = 0
    direct_transfer_window: Annotated[int, Field(ge=1)] = 4
    """Nodes one deployment streams its image to at once with the ``direct`` broadcast."""
    chain_gather_window: Annotated[float, Field(gt=0)] = 30
    """Seconds nodes ready for a ``chain`` broadcast wait at most for the others still setting
    up their deploy env; nodes arriving later go in a later, smaller chain."""
    chain_gather_share: Annotated[float, Field(ge=0)] = 1.0
    """Within that bound, the ready nodes wait for the others at most this multiple of the
    time the first of them took to get ready (from the deployment's start): a node that
    boots in twice the time of its peers (1.0) still joins them, one stuck in its firmware
    holds nobody for the whole window. 0: only the nodes ready together."""
    workers: WorkerSettings = WorkerSettings()
    almighty_users: tuple[str, ...] = ("root",)
    max_upload_mib: Annotated[int, Field(ge=1)] = 4096
    max_boot_file_mib: Annotated[int, Field(ge=1)] = 512
    """Largest kernel or initrd a deployment copies out of its image to the TFTP root."""
    max_boot_files_mib: Annotated[int, Field(ge=1)] = 768
    """Largest kernel and initrd together, per deployment."""
    max_uploads_per_user: Annotated[int, Field(ge=1)] = 32
    """Uploads one user keeps stored, not used yet (being received included); beyond it 429."""
    max_upload_storage_mib: Annotated[int, Field(ge=1)] = 16384
    """Bytes of the uploads one user keeps stored, not used yet; beyond it 413."""
    max_set_pxe_files_mib: Annotated[int, Field(ge=1)] = 1024
    """Bytes of the files one user's set_pxe keeps under ``users/<user>/`` of the TFTP root."""

    @property
    def tftp_root(self) -> Path:
        """The TFTP root, defaulting to ``<state_dir>/tftp``."""
        return self.tftp.root or self.state_dir / "tftp"

    @property
    def unix_socket(self) -> Path:
        """The API's Unix socket, defaulting to ``<state_dir>/kadeployd.sock``."""
        return self.api.unix_socket or self.state_dir / SOCKET_NAME
