"""Merging configuration layers (global, cluster, node) while remembering where values came from.

Mappings are merged key by key at every depth; any other value (numbers, strings, lists such as
command templates or variant lists) set by a more specific layer replaces the less specific one
whole. ``origins`` maps each key path that a layer set to that layer, so an error or
``check-config --node`` can name the file and line of the value in force.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kadeploy_core.yamldoc import KeyPath, YamlDocument


@dataclass(frozen=True, slots=True)
class Layer:
    """Node settings found in one document, starting at key path ``root`` of that document."""

    doc: YamlDocument
    root: KeyPath
    data: Mapping[str, Any]

    @property
    def source(self) -> str:
        """The file name shown in messages."""
        return self.doc.source

    def line(self, path: KeyPath) -> int | None:
        """Line of ``path`` (relative to this layer's root) in the document."""
        return self.doc.line_of((*self.root, *path))

    def where(self, path: KeyPath) -> str:
        """``file:line`` of ``path``."""
        line = self.line(path)
        return self.source if line is None else f"{self.source}:{line}"


@dataclass(frozen=True, slots=True)
class Merged:
    """The merged settings of one scope, and which layer set each key path."""

    data: dict[str, Any]
    origins: dict[KeyPath, Layer]

    def origin_of(self, path: KeyPath) -> Layer | None:
        """The layer that set ``path`` or its nearest enclosing key."""
        for end in range(len(path), 0, -1):
            layer = self.origins.get(path[:end])
            if layer is not None:
                return layer
        return None


def merge(layers: Sequence[Layer]) -> Merged:
    """Merge ``layers``, least specific first."""
    data: dict[str, Any] = {}
    origins: dict[KeyPath, Layer] = {}
    for layer in layers:
        _merge_into(data, layer.data, (), layer, origins)
    return Merged(data, origins)


def _merge_into(
    target: dict[str, Any],
    source: Mapping[str, Any],
    path: KeyPath,
    layer: Layer,
    origins: dict[KeyPath, Layer],
) -> None:
    for key, value in source.items():
        here = (*path, key)
        if isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _merge_into(target[key], value, here, layer, origins)
            continue
        for stale in [p for p in origins if p[: len(here)] == here]:
            del origins[stale]
        target[key] = copy.deepcopy(value)
        for sub in _paths(value, here):
            origins[sub] = layer


def _paths(value: Any, path: KeyPath) -> Iterator[KeyPath]:
    yield path
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from _paths(item, (*path, key))
