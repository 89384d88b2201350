"""Load a configuration directory: read, merge the layers, validate, collect every error.

Layout::

    DIR/deploy.conf              daemon: section + global node settings
    DIR/clusters/<name>.conf     node settings of one cluster
    DIR/nodes.conf               <name or range>: {cluster, address, mac, bmc, overrides...}

All mistakes of all files are collected before anything is raised, so an admin fixes a config
in one round; each names its file, line, dotted key path and what would be valid.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pydantic import ValidationError

from kadeploy_core.errors import ConfigError, Problem
from kadeploy_core.plans import VARIANTS, Macrostep
from kadeploy_core.ranges import RangeError, expand_range
from kadeploy_core.suggest import did_you_mean
from kadeploy_core.validation import MISSING, problems_from
from kadeploy_core.yamldoc import KeyPath, YamlDocument, YamlLoadError, dotted, load_yaml_file
from kadeployd.config.layers import Layer, Merged, merge
from kadeployd.config.model import Config, Node
from kadeployd.config.schema import VLAN_FIELDS, DaemonSettings, NodeSettings
from kadeployd.config.templates import (
    NODE_FIELDS,
    CommandTemplate,
    TemplateError,
    placeholders,
)

DEPLOY_CONF = "deploy.conf"
NODES_CONF = "nodes.conf"
CLUSTERS_DIR = "clusters"
IDENTITY_KEYS = ("cluster", "address", "mac", "bmc")
"""Keys of a nodes.conf entry that describe the node; every other key overrides a setting."""
PER_NODE_KEYS = ("address", "mac", "bmc")
"""Identity keys that differ per node: in a range entry they hold a range of the same length."""
_CLUSTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_MAC = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$")


@dataclass
class _Entry:
    """One entry of nodes.conf, ranges expanded."""

    key: str
    names: list[str]
    cluster: str
    addresses: list[str]
    macs: list[str]
    bmcs: list[str | None]
    layer: Layer


@dataclass
class _Problems:
    items: list[Problem] = field(default_factory=list)

    def add(self, source: str, message: str, path: KeyPath = (), line: int | None = None) -> None:
        self.items.append(Problem(source, message, dotted(path), line))

    def extend(self, problems: list[Problem]) -> None:
        self.items.extend(problems)

    def unique(self) -> list[Problem]:
        """Each problem once, in file order (deploy.conf, cluster files, nodes.conf), then line."""

        def order(problem: Problem) -> tuple[int, str, int]:
            rank = {DEPLOY_CONF: 0, NODES_CONF: 2}.get(problem.source, 1)
            return rank, problem.source, problem.line or 0

        return sorted(dict.fromkeys(self.items), key=order)


def load_config(directory: Path) -> Config:
    """Load and validate ``directory``; raises :class:`ConfigError` listing every mistake."""
    problems = _Problems()
    if not directory.is_dir():
        raise ConfigError([Problem(str(directory), "configuration directory not found")])

    deploy_doc = _read(directory / DEPLOY_CONF, DEPLOY_CONF, problems)
    daemon = _daemon_settings(deploy_doc, problems)
    global_layer = _global_layer(deploy_doc, problems)
    cluster_layers = _cluster_layers(directory, problems)
    entries, mentioned = _node_entries(directory, cluster_layers, problems)

    nodes: dict[str, Node] = {}
    origins: dict[str, Mapping[str, str]] = {}
    for cluster, cluster_layer in cluster_layers.items():
        scope = merge([global_layer, cluster_layer])
        cluster_settings = _validate(scope, cluster_layer, problems)
        cluster_entries = [e for e in entries if e.cluster == cluster]
        if cluster not in mentioned and "*" not in mentioned:
            problems.add(cluster_layer.source, f"cluster {cluster!r} has no node in {NODES_CONF}")
        for entry in cluster_entries:
            node_scope, settings = scope, cluster_settings
            if entry.layer.data:
                node_scope = merge([global_layer, cluster_layer, entry.layer])
                settings = _validate(node_scope, cluster_layer, problems)
            if settings is None:
                continue
            _check_bmc(entry, settings, problems)
            where = _origin_map(node_scope)
            for name, address, mac, bmc in zip(
                entry.names, entry.addresses, entry.macs, entry.bmcs, strict=True
            ):
                nodes[name] = Node(name, cluster, address, mac, bmc, settings)
                origins[name] = where

    found = problems.unique()
    if found:
        raise ConfigError(found)
    clusters = {c: tuple(n.name for n in nodes.values() if n.cluster == c) for c in cluster_layers}
    return Config(
        directory=directory,
        daemon=daemon or DaemonSettings(),
        clusters=MappingProxyType(clusters),
        nodes=MappingProxyType(nodes),
        origins=MappingProxyType(origins),
    )


def _read(path: Path, source: str, problems: _Problems) -> YamlDocument:
    """The document at ``path``, or an empty one (with the problem recorded)."""
    try:
        doc = load_yaml_file(path, source)
    except YamlLoadError as exc:
        problems.extend(exc.problems)
        return YamlDocument(source, {})
    if doc.data is None:
        return YamlDocument(source, {}, doc.lines)
    if not isinstance(doc.data, dict):
        problems.add(source, "expected a mapping of keys at the top level", line=1)
        return YamlDocument(source, {}, doc.lines)
    return doc


def _without(data: Mapping[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in keys}


def _global_layer(doc: YamlDocument, problems: _Problems) -> Layer:
    """deploy.conf without its daemon section; unknown top-level keys are reported here so
    that the "did you mean" also considers ``daemon``."""
    known = {"daemon", *NodeSettings.model_fields}
    for key in doc.data:
        if key not in known:
            hint = did_you_mean(str(key), known)
            message = (
                f"unknown key{hint}" if hint else f"unknown key; valid: {', '.join(sorted(known))}"
            )
            problems.add(doc.source, message, (str(key),), doc.line_of((key,)))
    return Layer(doc, (), {k: v for k, v in doc.data.items() if k in known and k != "daemon"})


def _daemon_settings(doc: YamlDocument, problems: _Problems) -> DaemonSettings | None:
    raw = doc.data.get("daemon", {})
    try:
        return DaemonSettings.model_validate(raw if raw is not None else {})
    except ValidationError as exc:
        problems.extend(
            problems_from(
                exc,
                DaemonSettings,
                lambda loc: (doc.source, doc.line_of(("daemon", *loc))),
                prefix=("daemon",),
            )
        )
        return None


def _cluster_layers(directory: Path, problems: _Problems) -> dict[str, Layer]:
    folder = directory / CLUSTERS_DIR
    files = sorted(folder.glob("*.conf")) if folder.is_dir() else []
    if not files:
        problems.add(f"{CLUSTERS_DIR}/", "no cluster file: add clusters/<cluster>.conf")
    layers = {}
    for path in files:
        source = f"{CLUSTERS_DIR}/{path.name}"
        name = path.stem
        if not _CLUSTER_NAME.match(name):
            problems.add(source, "cluster file names use letters, digits, '.', '_' and '-' only")
            continue
        doc = _read(path, source, problems)
        layers[name] = Layer(doc, (), doc.data)
    return layers


def _node_entries(
    directory: Path, clusters: Mapping[str, Layer], problems: _Problems
) -> tuple[list[_Entry], set[str]]:
    """The valid entries of nodes.conf, and the cluster names every entry mentions."""
    doc = _read(directory / NODES_CONF, NODES_CONF, problems)
    entries = []
    mentioned = {str(raw.get("cluster")) for raw in doc.data.values() if isinstance(raw, dict)}
    for key, raw in doc.data.items():
        entry = _node_entry(doc, str(key), raw, clusters, problems)
        if entry is not None:
            entries.append(entry)
        else:
            mentioned.add("*")  # a broken entry may be the one meant for an empty cluster
    _check_unique(entries, doc, problems)
    return entries, mentioned


def _node_entry(
    doc: YamlDocument, key: str, raw: object, clusters: Mapping[str, Layer], problems: _Problems
) -> _Entry | None:
    source = doc.source

    def bad(message: str, *path: str | int) -> None:
        problems.add(source, message, (key, *path), doc.line_of((key, *path)))

    if not isinstance(raw, dict):
        bad("expected a mapping with cluster, address and mac")
        return None
    try:
        names = expand_range(key)
    except RangeError as exc:
        bad(f"bad node range: {exc}")
        return None
    values: dict[str, list[Any]] = {}
    for field_name in PER_NODE_KEYS:
        value = raw.get(field_name)
        if value is None:
            if field_name != "bmc":
                bad("required key is missing", field_name)
            values[field_name] = [None] * len(names)
            continue
        if not isinstance(value, str):
            bad(f"expected a string; got {value!r}", field_name)
            continue
        values[field_name] = _expand_field(value, names, field_name, bad)
    cluster = _cluster_of(raw, clusters, bad)
    for mac in values.get("mac", []):
        if mac is not None and not _MAC.match(mac):
            bad(f"expected a MAC address such as 02:00:00:00:02:01; got {mac!r}", "mac")
    if any(len(values.get(f, [])) != len(names) for f in PER_NODE_KEYS):
        return None
    if values["address"][0] is None or values["mac"][0] is None:
        return None  # reported above as missing
    if cluster is None:
        return None
    overrides = _without(raw, IDENTITY_KEYS)
    return _Entry(
        key=key,
        names=names,
        cluster=cluster,
        addresses=values["address"],
        macs=[m.lower() for m in values["mac"]],
        bmcs=values["bmc"],
        layer=Layer(doc, (key,), overrides),
    )


def _cluster_of(raw: dict[str, Any], clusters: Mapping[str, Layer], bad: Any) -> str | None:
    """The entry's cluster if it names a known one; otherwise report why and return None."""
    cluster = raw.get("cluster")
    if cluster is None:
        bad("required key is missing", "cluster")
    elif not isinstance(cluster, str):
        bad(f"expected a cluster name; got {cluster!r}", "cluster")
    elif cluster not in clusters:
        hint = did_you_mean(cluster, clusters) or f"; known clusters: {', '.join(clusters)}"
        bad(f"no cluster file clusters/{cluster}.conf{hint}", "cluster")
    else:
        return cluster
    return None


def _expand_field(value: str, names: list[str], field_name: str, bad: Any) -> list[str]:
    """A per-node field: a range as long as the name range, or one value for a single node."""
    try:
        expanded = expand_range(value)
    except RangeError as exc:
        bad(f"bad range: {exc}", field_name)
        return []
    if len(expanded) == len(names):
        return expanded
    if len(names) > 1 and len(expanded) == 1:
        bad(
            f"the entry names {len(names)} nodes, so {field_name} needs a range of "
            f"{len(names)} values too (e.g. 10.0.0.[1-{len(names)}]); got {value!r}",
            field_name,
        )
    else:
        bad(
            f"range of {len(expanded)} values for {len(names)} nodes: both sides of an entry "
            "must have the same length",
            field_name,
        )
    return []


def _check_unique(entries: list[_Entry], doc: YamlDocument, problems: _Problems) -> None:
    for attribute, label in (("names", "node name"), ("addresses", "address"), ("macs", "MAC")):
        first_seen: dict[str, str] = {}
        for entry in entries:
            for value in getattr(entry, attribute):
                if value in first_seen:
                    line = doc.line_of((entry.key,))
                    message = f"{label} {value} is also defined by entry {first_seen[value]!r}"
                    problems.add(doc.source, message, (entry.key,), line)
                else:
                    first_seen[value] = entry.key


def _validate(scope: Merged, cluster: Layer, problems: _Problems) -> NodeSettings | None:
    """Validate merged settings; errors point at the file that set the value."""

    def locate(loc: KeyPath) -> tuple[str, int | None]:
        layer = scope.origin_of(loc) or cluster
        return layer.source, layer.line(loc)

    try:
        settings = NodeSettings.model_validate(scope.data)
    except ValidationError as exc:
        found = problems_from(exc, NodeSettings, locate)
        problems.extend([_missing_hint(p, cluster) for p in found])
        return None
    problems.extend(_semantic_problems(settings, locate))
    return settings


def _missing_hint(problem: Problem, cluster: Layer) -> Problem:
    if not problem.message.startswith(MISSING):
        return problem
    return Problem(
        cluster.source,
        f"required key is missing: set it in {DEPLOY_CONF}, in {cluster.source} "
        f"or in the node's entry of {NODES_CONF}",
        problem.path,
        None,
    )


def _semantic_problems(settings: NodeSettings, locate: Any) -> list[Problem]:
    """Checks the schema cannot express: variant names, template fields."""
    found = []

    def add(message: str, path: KeyPath) -> None:
        source, line = locate(path)
        found.append(Problem(source, message, dotted(path), line))

    for macrostep in Macrostep:
        known = VARIANTS[macrostep]
        for index, variant in enumerate(settings.automata.macrosteps.variants(macrostep)):
            if variant.type not in known:
                message = f"unknown variant {variant.type!r} of {macrostep.value}; expected one of "
                add(
                    message + ", ".join(known) + did_you_mean(variant.type, known),
                    ("automata", "macrosteps", macrostep.value, index, "type"),
                )
    allowed = (*NODE_FIELDS, *settings.vars)
    for name, template in settings.power.templates().items():
        for field_name in template.unknown_fields(allowed):
            add(
                f"unknown placeholder {{{field_name}}}{did_you_mean(field_name, allowed)}; "
                f"valid: {', '.join('{' + a + '}' for a in allowed)} (add others under vars:)",
                ("power", name),
            )
    vlan_fields = (*allowed, *VLAN_FIELDS)
    if isinstance(settings.vlan.switch, CommandTemplate):
        for field_name in settings.vlan.switch.unknown_fields(vlan_fields):
            add(
                f"unknown placeholder {{{field_name}}}{did_you_mean(field_name, vlan_fields)}; "
                f"valid: {', '.join('{' + a + '}' for a in vlan_fields)} (add others under vars:)",
                ("vlan", "switch"),
            )
    try:
        disk_fields = set(placeholders(settings.disk.partition_device))
    except TemplateError as exc:
        add(str(exc), ("disk", "partition_device"))
    else:
        if not disk_fields <= {"block_device", "partition"} or "partition" not in disk_fields:
            add(
                "expected a template using {partition} and optionally {block_device}, "
                "such as '{block_device}p{partition}'",
                ("disk", "partition_device"),
            )
    return found


def _check_bmc(entry: _Entry, settings: NodeSettings, problems: _Problems) -> None:
    if entry.bmcs and entry.bmcs[0] is not None:
        return
    users = [
        name for name, template in settings.power.templates().items() if "bmc" in template.fields()
    ]
    if users:
        problems.add(
            entry.layer.source,
            f"required key is missing: power.{users[0]} uses {{bmc}}",
            (entry.key, "bmc"),
            entry.layer.doc.line_of((entry.key,)),
        )


def _origin_map(scope: Merged) -> Mapping[str, str]:
    return MappingProxyType(
        {dotted(path): layer.where(path) for path, layer in scope.origins.items()}
    )
