"""``kadeploy-testbed``: emulated bare-metal nodes (a thin click layer over testbed.py)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import click

from kadeploy_testbed import testbed as tb
from kadeploy_testbed.layout import DEFAULT_DISK_MB, DEFAULT_NAME_FORMAT, name_format_problem
from kadeploy_testbed.node import FAULTS
from kadeploy_testbed.state import TestbedConfig

logger = logging.getLogger(__name__)

_RATE_RE = re.compile(r"^\d+(\.\d+)?(bit|kbit|mbit|gbit|tbit|bps|kbps|mbps|gbps)$", re.IGNORECASE)

dir_option = click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("testbed"),
    show_default=True,
    help="Directory holding the testbed's state, disks, keys and generated configuration.",
)


def _tftp(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise click.BadParameter(
            f"{value!r}: expected HOST:PORT, e.g. 127.0.0.1:69", param_hint="--tftp"
        )
    return host, int(port)


def _disk_sizes(value: str | None) -> dict[int, int]:
    sizes = dict(DEFAULT_DISK_MB)
    if not value:
        return sizes
    parts = value.split(",")
    if len(parts) != 4 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise click.BadParameter(
            f"{value!r}: expected four sizes in MiB for sda1..sda4, e.g. 64,256,1024,256",
            param_hint="--disk-mb",
        )
    return {i + 1: int(p) for i, p in enumerate(parts)}


def _fail(error: Exception) -> click.ClickException:
    return click.ClickException(str(error))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log what the testbed does.")
def main(verbose: bool) -> None:
    """Emulated bare-metal nodes for tests and benchmarks: real sshd, PXE over TFTP, IPMI."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s")


@main.command()
@click.option("-n", "--nodes", type=click.IntRange(1, 250), required=True, help="Number of nodes.")
@dir_option
@click.option(
    "--first",
    type=click.IntRange(1, 250),
    default=1,
    show_default=True,
    help="Number of the first node (to run two testbeds side by side).",
)
@click.option(
    "--name-format",
    default=DEFAULT_NAME_FORMAT,
    show_default=True,
    help="Node names: {i} is the node's number, {n} its position from 1; e.g. "
    "'griffon-{n}.nancy.grid5000.fr' names them as Grid'5000 does.",
)
@click.option("--netns", is_flag=True, help="One network namespace per node, shaped links.")
@click.option(
    "--rate", default="200mbit", show_default=True, help="tc rate of each node link (--netns)."
)
@click.option(
    "--tftp",
    "tftp",
    default="127.0.0.1:69",
    show_default=True,
    help="HOST:PORT of the TFTP server nodes boot from.",
)
@click.option(
    "--disk-mb", default=None, help="Sizes of sda1..sda4 in MiB (default 64,256,1024,256)."
)
@click.option(
    "--boot-delay",
    type=click.FloatRange(0, 600),
    default=1.0,
    show_default=True,
    help="Seconds a node takes to boot.",
)
@click.option(
    "--jitter",
    type=click.FloatRange(0, 600),
    default=0.0,
    show_default=True,
    help="Random extra boot delay, up to this many seconds.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(1, 3600),
    default=tb.UP_TIMEOUT,
    show_default=True,
    help="Seconds to wait for every node to answer SSH.",
)
def up(
    *,
    nodes: int,
    directory: Path,
    first: int,
    name_format: str,
    netns: bool,
    rate: str,
    tftp: str,
    disk_mb: str | None,
    boot_delay: float,
    jitter: float,
    timeout: float,
) -> None:
    """Start N nodes in their prod env and write DIR/conf for the daemon."""
    host, port = _tftp(tftp)
    problem = name_format_problem(name_format)
    if problem is not None:
        raise click.BadParameter(problem, param_hint="--name-format")
    if not _RATE_RE.match(rate):
        raise click.BadParameter(
            f"{rate!r}: expected a tc rate such as 200mbit or 1gbit", param_hint="--rate"
        )
    config = TestbedConfig(
        nodes=nodes,
        first=first,
        netns=netns,
        rate=rate if netns else None,
        tftp_host=host,
        tftp_port=port,
        boot_delay=boot_delay,
        jitter=jitter,
        disk_mb=_disk_sizes(disk_mb),
        name_format=name_format,
    )
    try:
        bed = tb.up(directory, config, timeout=timeout)
    except tb.TestbedError as error:
        raise _fail(error) from None
    click.echo(
        f"{nodes} nodes up in {bed.layout.root}; daemon configuration in {bed.layout.conf_dir}"
    )


@main.command()
@dir_option
def down(directory: Path) -> None:
    """Stop the testbed and remove its processes, namespaces, mounts and loop devices."""
    swept = tb.down(directory)
    for item in swept:
        click.echo(f"swept {item}")
    click.echo("testbed down")


@main.command()
@dir_option
def status(directory: Path) -> None:
    """Print every node: power, env (prod/deploy/deployed pN/off/silent/hung), address."""
    try:
        entries = tb.attach(directory).status()
    except tb.TestbedError as error:
        raise _fail(error) from None
    width = max([10, *(len(entry["name"]) for entry in entries)])
    click.echo(f"{'NODE':<{width}} {'POWER':<6} {'ENV':<14} {'ADDRESS':<15} {'BMC':<12} FAULTS")
    for entry in entries:
        click.echo(
            f"{entry['name']:<{width}} {entry['power']:<6} {entry['env']:<14} "
            f"{entry['address']:<15} {entry['bmc']:<12} {','.join(entry['faults']) or '-'}"
        )


@main.command()
@dir_option
@click.argument("node")
@click.argument("action", type=click.Choice(["on", "off", "cycle", "reset", "soft", "status"]))
def power(directory: Path, node: str, action: str) -> None:
    """Power NODE on, off, cycle, reset, soft (ACPI off) or print its status."""
    try:
        click.echo(f"{node}: {tb.attach(directory).power(node, action)}")
    except tb.TestbedError as error:
        raise _fail(error) from None


@main.command()
@dir_option
@click.argument("node")
@click.argument("kind", type=click.Choice(FAULTS))
def fault(directory: Path, node: str, kind: str) -> None:
    """Inject a fault into NODE (clear undoes them all)."""
    try:
        result = tb.attach(directory).fault(node, kind)
    except tb.TestbedError as error:
        raise _fail(error) from None
    click.echo(
        f"{node}: {result['power']} {result['env']} faults: {','.join(result['faults']) or '-'}"
    )


@main.command()
@dir_option
@click.argument("node")
@click.argument("vlan", type=click.IntRange(1, 4094))
def vlan(directory: Path, node: str, vlan: int) -> None:
    """Move NODE's link onto VLAN of the bridge, untagged (--netns testbeds; 1 is the
    default VLAN): what the site's KaVLAN does for kadeploy --vlan (the generated vlan.switch)."""
    try:
        tb.attach(directory).set_vlan(node, vlan)
    except tb.TestbedError as error:
        raise _fail(error) from None
    click.echo(f"{node}: VLAN {vlan}")


@main.command("make-image")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Image file to write.",
)
@click.option("--name", default="debian-min", show_default=True, help="Environment name.")
@click.option("--kind", type=click.Choice(["tar", "dd"]), default="tar", show_default=True)
@click.option(
    "--compression",
    type=click.Choice(["gzip", "zstd", "xz", "none"]),
    default="zstd",
    show_default=True,
)
@click.option(
    "--size-mb",
    type=click.IntRange(0, 1 << 20),
    default=0,
    help="Pad the image to about this size.",
)
@click.option("--version", "version", type=click.IntRange(1), default=1, show_default=True)
def make_image(
    *, out: Path, name: str, kind: str, compression: str, size_mb: int, version: int
) -> None:
    """Build a small busybox environment image and its kaenv description."""
    from kadeploy_testbed import image  # noqa: PLC0415 - loaded only for this command

    try:
        result = image.make_image(
            out,
            name=name,
            kind=kind,  # type: ignore[arg-type]
            compression=compression,  # type: ignore[arg-type]
            size_mb=size_mb,
            version=version,
        )
    except image.MakeImageError as error:
        raise _fail(error) from None
    click.echo(f"image {result.image} ({result.size} bytes), description {result.description}")


if __name__ == "__main__":  # the generated vlan.switch runs ``python -m kadeploy_testbed.cli``
    main()
