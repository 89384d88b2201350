"""The JSON documents of the API: request bodies (strict: unknown fields are errors) and
responses. They are the OpenAPI schema the command-line tools are written against."""

from __future__ import annotations

import logging
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, model_validator

logger = logging.getLogger(__name__)

MAX_DESCRIPTION = 1 << 20
MAX_KEYS = 64 << 10
MAX_PXE_PROFILE = 64 << 10

NodeName = Annotated[
    str,
    Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$"),
]
NodeOrAny = Annotated[
    str, Field(min_length=1, max_length=255, pattern=r"^(\*|[A-Za-z0-9][A-Za-z0-9._-]*)$")
]
MAX_DEVICE = 64
_DEVICE = re.compile(r"/dev/[A-Za-z0-9][A-Za-z0-9._/-]*")
DEVICE_HELP = (
    "expected an absolute device path under /dev such as /dev/sdb "
    f"(letters, digits, '.', '_', '-', '/'; no '.', '..' or empty component; "
    f"at most {MAX_DEVICE} characters)"
)


def is_device_path(value: str, limit: int = MAX_DEVICE) -> bool:
    """``value`` is a device path a request may name: under /dev, plain characters, no
    ``.``/``..``/empty component (so it cannot climb out of /dev), at most ``limit`` long."""
    return (
        len(value) <= limit
        and _DEVICE.fullmatch(value) is not None
        and all(part not in ("", ".", "..") for part in value.split("/")[2:])
    )


def _device_path(value: str) -> str:
    if not is_device_path(value):
        raise ValueError(DEVICE_HELP)
    return value


def _partition_or_any(value: str) -> str:
    # A partition's path is the block device's and a suffix (p128 at most).
    partition_path = is_device_path(value, MAX_DEVICE + 8)
    if value == "*" or re.fullmatch(r"[1-9][0-9]{0,2}", value) or partition_path:
        return value
    raise ValueError(
        "expected *, a partition number (1-999) or a partition's device path such as "
        "/dev/sdb3 (the key of a deployment with a block device, kadeploy -b)"
    )


BlockDevice = Annotated[
    str,
    Field(
        description=f"a device path under /dev, at most {MAX_DEVICE} characters",
        examples=["/dev/sdb"],
    ),
    AfterValidator(_device_path),
]
PartitionOrAny = Annotated[
    str,
    Field(description="*, a partition number, or a partition's device path such as /dev/sdb3"),
    AfterValidator(_partition_or_any),
]
UserName = Annotated[
    str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_][A-Za-z0-9._-]*\$?$")
]
EnvName = Annotated[
    str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
]
FileName = Annotated[
    str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_+][A-Za-z0-9._+-]*$")
]
UploadId = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
MAX_VLAN = 4094
"""VLAN ids go from 1 to 4094 (IEEE 802.1Q reserves 0 and 4095)."""


def _vlan_id(value: str) -> str:
    if not (value.isascii() and value.isdigit() and len(value) <= 4) or not (
        1 <= int(value) <= MAX_VLAN
    ):
        shown = value if len(value) <= 20 else f"{value[:20]}..."
        raise ValueError(f"expected a VLAN id from 1 to {MAX_VLAN}, such as '100'; got {shown!r}")
    return str(int(value))


VlanId = Annotated[str, AfterValidator(_vlan_id)]
TimeoutText = Annotated[
    str,
    Field(
        min_length=1,
        max_length=200,
        description="seconds, or an expression of n (the node count) such as '120 + 10 * n'",
    ),
]
Visibility = Literal["private", "shared", "public"]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ------------------------------------------------------------------ requests


class EnvironmentRef(_In):
    """A registered environment: name, version (default: the latest), owner (default: yours,
    else the public one of that name)."""

    name: EnvName
    version: Annotated[int, Field(ge=1, le=2**31)] | None = None
    user: UserName | None = None


class EnvironmentFiles(_In):
    """A description (kaenv YAML text) and the uploads holding the files it names."""

    description: Annotated[str, Field(min_length=1, max_length=MAX_DESCRIPTION)]
    files: dict[FileName, UploadId] = Field(
        default_factory=dict,
        description="file name as written in the description -> upload id",
        max_length=64,
    )


class CustomStepsIn(_In):
    """``kadeploy --custom-steps``: the document (macrostep -> microstep -> pre-ops, substitute
    or post-ops -> operations; checked by the daemon, see kadeploy_core/custom_ops.py),
    each ``file`` of its operations naming one of ``files``."""

    steps: dict[Annotated[str, Field(max_length=100)], Any] = Field(
        description="macrostep -> microstep -> pre-ops | substitute | post-ops -> operations",
        min_length=1,
        max_length=64,
    )
    files: dict[FileName, UploadId] = Field(
        default_factory=dict,
        description="file name as written in the operations -> upload id",
        max_length=64,
    )
    names: dict[FileName, Annotated[str, Field(min_length=1, max_length=255)]] = Field(
        default_factory=dict,
        description="file name as written in the operations -> the name a send operation "
        "gives the file on the node (the user's own file name, which may hold spaces; "
        "default: the same name)",
        max_length=64,
    )


Singularity = Annotated[str, Field(max_length=255, pattern=r"^[^\x00-\x1f\x7f]*$")]
"""A node's value of ``NODE_SINGULARITY`` in a user's PXE profile: one line of text."""


class PxeIn(_In):
    """``kadeploy -w FILE [-x FILES] [--set-pxe-pattern FILE]``: the pxelinux profile
    BootNewEnv writes for each node instead of the environment's, Kadeploy3 style:
    ``FILES_PREFIX`` names your TFTP directory (where ``files`` go), ``NODE_SINGULARITY`` is
    replaced by each node's value in ``singularities`` (empty for a node without one)."""

    profile: Annotated[str, Field(min_length=1, max_length=MAX_PXE_PROFILE)]
    singularities: dict[NodeName, Singularity] | None = Field(default=None, max_length=100_000)
    files: dict[FileName, UploadId] = Field(
        default_factory=dict,
        description="file name under your TFTP directory (FILES_PREFIX) -> upload id",
        max_length=16,
    )


class DeploymentCreate(_In):
    """``kadeploy``: deploy an environment on nodes."""

    nodes: Annotated[list[NodeName], Field(min_length=1, max_length=100_000)]
    environment: EnvironmentRef | None = None
    anonymous_environment: EnvironmentFiles | None = None
    authorized_keys: Annotated[str, Field(max_length=MAX_KEYS)] = ""
    """Public keys (``-k``) as text."""
    authorized_keys_upload: UploadId | None = None
    """Or an upload holding them."""
    min_nodes: Annotated[int, Field(ge=1)] | None = None
    partition: Annotated[int, Field(ge=1, le=128)] | None = None
    block_device: BlockDevice | None = None
    """``-b``: the disk to deploy on instead of the cluster's ``disk.block_device``; the right
    needed is then on the deploy partition's device path (e.g. ``/dev/sdb3``)."""
    force: StrictBool = False
    """Deploy nodes that another running deployment holds."""
    breakpoint: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    """``--breakpoint``: MACROSTEP or MACROSTEP:MICROSTEP; each node stops before it."""
    custom_steps: CustomStepsIn | None = None
    """``--custom-steps``: operations run around microsteps."""
    vlan: VlanId | None = None
    """``--vlan ID`` (KaVLAN): once each node booted its new env, the site's switch
    command (the nodes' ``vlan.switch``) moves it onto VLAN ID; nodes without one are
    refused."""
    boot_partition: Annotated[int, Field(ge=0, le=128)] | None = None
    """``-c``: the partition BootNewEnv boots instead of the deploy partition (0: the disk)."""
    reformat_tmp: Annotated[str, Field(pattern=r"^[a-z0-9]{1,16}$")] | None = None
    """``-r FSTYPE``: mkfs.FSTYPE on the nodes' /tmp partition (``disk.tmp_partition``)."""
    disable_disk_partitioning: StrictBool = False
    """``--disable-disk-partitioning``: the partitioning script does not run."""
    disable_bootloader_install: StrictBool = False
    """``--disable-bootloader-install``: the boot loader script does not run."""
    disable_kexec: StrictBool = False
    """``--no-kexec``: BootNewEnv tries no kexec variant."""
    timeout_reboot_classical: TimeoutText | None = None
    """``--reboot-classical-timeout``: seconds or an expression of n (``"120 + n"``)."""
    timeout_reboot_kexec: TimeoutText | None = None
    """``--reboot-kexec-timeout``: seconds or an expression of n."""
    force_steps: Annotated[str, Field(min_length=1, max_length=2000)] | None = None
    """``--force-steps``: Kadeploy3's automata text, for administrators only
    (``SetDeploymentEnv|SetDeploymentEnvUntrusted:1:300&BroadcastEnv|...&BootNewEnv|...``)."""
    pxe: PxeIn | None = None
    """``-w``/``-x``/``--set-pxe-pattern``: your own profile for BootNewEnv (no kexec)."""

    @model_validator(mode="after")
    def _one_environment(self) -> DeploymentCreate:
        if (self.environment is None) == (self.anonymous_environment is None):
            raise ValueError("give exactly one of environment and anonymous_environment")
        if self.authorized_keys and self.authorized_keys_upload:
            raise ValueError("give authorized_keys or authorized_keys_upload, not both")
        return self


class CancelRequest(_In):
    """Why the deployment is cancelled."""

    reason: Annotated[str, Field(max_length=500)] = "cancelled by user"


class EnvironmentCreate(EnvironmentFiles):
    """``kaenv -a``: register an environment; visibility overrides the description's."""

    visibility: Visibility | None = None


class VisibilityChange(_In):
    """``kaenv3 --set-visibility-tag``, ``--toggle-destructive-tag``,
    ``--update-{image,preinstall,postinstalls}-checksum``: at least one change."""

    visibility: Visibility | None = None
    toggle_destructive: StrictBool = False
    """Flip the description's ``destructive`` tag."""
    update_checksums: Annotated[
        list[Literal["image", "preinstall", "postinstalls"]], Field(max_length=3)
    ] = []
    """Record the md5 of these parts' files as they are now."""

    @model_validator(mode="after")
    def _something(self) -> VisibilityChange:
        if self.visibility is None and not self.toggle_destructive and not self.update_checksums:
            raise ValueError(
                "give at least one of visibility, toggle_destructive, update_checksums"
            )
        return self


class RightsGrant(_In):
    """``karights -a``: let ``user`` deploy ``nodes`` on ``partitions``."""

    user: UserName
    nodes: Annotated[list[NodeOrAny], Field(min_length=1, max_length=100_000)]
    partitions: Annotated[list[PartitionOrAny], Field(min_length=1, max_length=128)] = ["*"]
    others: Literal["keep", "refuse", "revoke"] = "keep"
    """Other (non-administrator) users' rights on these nodes: ``keep`` them (karights),
    ``refuse`` the grant with 409 ``conflicting_elements`` (karights3 -a: a node's rights are
    one user's), or ``revoke`` them first (karights3 -a -o)."""


# ------------------------------------------------------------------ responses


class ProblemOut(BaseModel):
    """One problem of an error: where it is and what would be valid."""

    source: str
    """``request`` for the request's body, parameters and headers; else a file's name."""
    path: str
    """Where in it, like ``body.nodes[2]`` or ``query.limit``; empty for the whole of it."""
    line: int | None
    message: str


class ErrorBody(BaseModel):
    """The error object."""

    code: str
    message: str
    details: list[ProblemOut]


class ErrorResponse(BaseModel):
    """Every error answer."""

    error: ErrorBody


class EnvironmentSummary(BaseModel):
    """Which environment a deployment or a node runs."""

    name: str
    version: int | None
    anonymous: bool


class DeploymentOut(BaseModel):
    """A deployment."""

    id: str
    user: str
    environment: EnvironmentSummary
    node_count: int
    min_nodes: int | None
    status: str
    reason: str
    created_at: float
    finished_at: float | None
    options: dict[str, Any]
    states: dict[str, int] | None = None
    """Number of nodes in each state (single deployment reads only)."""


class NodeStateOut(BaseModel):
    """A node's record in a deployment."""

    node: str
    state: str
    macrostep: str | None
    variant: str | None
    attempt: int
    step_started_at: float
    started_at: float | None
    finished_at: float | None
    final: bool
    error_step: str | None
    error_message: str | None
    elapsed: float | None
    bytes_done: int | None = None
    """Bytes of the image the node's latest transfer got; None before any transfer."""
    bytes_total: int | None = None
    """Size of the image transferred; None before any transfer."""


class TransferOut(BaseModel):
    """How far one node's image transfer is."""

    bytes_done: int
    bytes_total: int


class ProgressOut(BaseModel):
    """The ``progress`` event: the image transfer of a deployment.

    Counts the nodes that started a transfer and did not fail: a node past its transfer
    counts as complete, a failed one leaves the sums (it would hold them below 100 %)."""

    bytes_done: int
    bytes_total: int
    nodes: dict[str, TransferOut]


class HistoryOut(BaseModel):
    """A state a node entered."""

    seq: int
    node: str
    state: str
    macrostep: str | None
    variant: str | None
    attempt: int
    message: str
    at: float


class NodeDetailOut(NodeStateOut):
    """A node's record and its history."""

    history: list[HistoryOut]


class LogLineOut(BaseModel):
    """A piece of a node's log."""

    seq: int
    node: str
    at: float
    stream: str
    text: str


class NodeOut(BaseModel):
    """``kanodes``: a configured node and what the records say it runs."""

    name: str
    cluster: str
    address: str
    state: str | None
    """Its state in its latest deployment; None if never deployed."""
    busy: bool
    """Whether a running deployment holds it."""
    deployment_id: str | None
    owner: str | None
    """Who deployed it last."""
    environment: EnvironmentSummary | None
    """What it runs: the environment of its latest deployment, if that deployed it."""
    since: float | None
    operation: str | None = None
    """The kareboot operation (deploy_env, recorded_env) its latest record is of; None for a
    deployment."""
    environment_owner: str | None = None
    """Who registered the environment it runs (None: anonymous or unknown)."""


class EnvironmentOut(BaseModel):
    """A registered environment version."""

    name: str
    version: int
    owner: str
    visibility: str
    created_at: float
    description: dict[str, Any]
    checksums: dict[str, str] = {}
    """md5 of its files by key (image.file, preinstall.archive, postinstalls[N].archive)."""


class RightOut(BaseModel):
    """A right."""

    user: str
    node: str
    partition: str


class RightsChange(BaseModel):
    """How many rights a grant or revocation changed."""

    changed: int


class UploadOut(BaseModel):
    """A stored upload."""

    id: str
    name: str
    size: int
    sha256: str
    created_at: float


class NodeStatsOut(BaseModel):
    """``kastat``: a node's outcomes."""

    node: str
    deployments: int
    deployed: int
    failed: int
    aborted: int
    retries: int
    success_rate: float | None
    mean_duration: float | None
    last_at: float | None


class StateDurationOut(BaseModel):
    """``kastat``: time spent in a state."""

    state: str
    entered: int
    mean: float
    longest: float


class DeploymentLogOut(BaseModel):
    """``kastat3``: one node's record of one finished operation, with Kadeploy3's field names
    (``stepN``: macrostep and variant, e.g. SetDeploymentEnvUntrusted; durations and timeouts
    in whole seconds; ``md5`` empty, as Kadeploy3 left it)."""

    wid: str
    user: str
    hostname: str
    step1: str
    step2: str
    step3: str
    timeout_step1: int
    timeout_step2: int
    timeout_step3: int
    retry_step1: int
    retry_step2: int
    retry_step3: int
    start: int
    step1_duration: int
    step2_duration: int
    step3_duration: int
    env: str
    md5: str
    success: bool
    error: str


class FailureRateOut(BaseModel):
    """``kastat3 -b``: a node's failure rate over the records (1 - succeeded / total)."""

    hostname: str
    rate: float


class LivenessOut(BaseModel):
    """``/v1/health`` without a token nor root at the other end: the daemon answers."""

    status: Literal["ok"]


class HealthOut(BaseModel):
    """The server's status (with a token, or root at the other end of the Unix socket)."""

    status: str
    version: str
    pid: int
    started_at: float
    uptime: float
    deployments_in_flight: int
    reloads: int
    reload_failures: int
    last_reload_error: str | None
    reloaded_at: float | None


class WhoAmI(BaseModel):
    """The caller, as the token says."""

    user: str
    admin: bool


class ReloadOut(BaseModel):
    """The outcome of a reload."""

    nodes: int
    clusters: list[str]
