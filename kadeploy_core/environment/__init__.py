"""Environment descriptions (Kadeploy3 ``kaenv`` YAML): the validated, frozen model, and
loading one from a file or an uploaded text with every mistake reported at once."""

from kadeploy_core.environment.description import (
    BootSpec,
    Compression,
    EnvironmentDescription,
    Filesystem,
    ImageKind,
    ImageSpec,
    OperatingSystem,
    ScriptArchive,
    Visibility,
)
from kadeploy_core.environment.loader import load_environment, parse_environment

__all__ = [
    "BootSpec",
    "Compression",
    "EnvironmentDescription",
    "Filesystem",
    "ImageKind",
    "ImageSpec",
    "OperatingSystem",
    "ScriptArchive",
    "Visibility",
    "load_environment",
    "parse_environment",
]
