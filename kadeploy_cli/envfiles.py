"""An environment description on the user's side (``kadeploy -a``, ``kaenv add``): checked
here, its files uploaded, its text rewritten to name the uploads.

The daemon never opens a user's files: the description names its image and archives by
local paths, so this module validates it as the daemon would (every mistake with file, line
and key), streams each file to ``/v1/uploads``, and sends the description with each path
replaced by the plain name of its upload.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kadeploy_cli.client import Client
from kadeploy_cli.errors import UsageProblem
from kadeploy_cli.uploads import deleted_on_failure
from kadeploy_core.environment import EnvironmentDescription, load_environment
from kadeploy_core.errors import EnvironmentError_
from kadeploy_core.yamldoc import YamlLoadError, load_yaml_file

logger = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")
MAX_NAME = 128


@dataclass(frozen=True, slots=True)
class PreparedEnvironment:
    """What the API takes: the description text and ``file name -> upload id``."""

    name: str
    version: int
    description: str
    files: dict[str, str]

    def body(self) -> dict[str, Any]:
        """The ``anonymous_environment`` (or ``/v1/environments``) request body."""
        return {"description": self.description, "files": self.files}


def load(path: Path) -> tuple[EnvironmentDescription, dict[str, Any]]:
    """The validated description and its raw mapping; UsageProblem listing every mistake."""
    try:
        env = load_environment(path)
        raw = load_yaml_file(path).data
    except (EnvironmentError_, YamlLoadError) as exc:
        problems = [str(p) for p in exc.problems]
        raise UsageProblem(problems[0], problems[1:]) from None
    assert isinstance(raw, dict)  # load_environment checked the top level
    return env, raw


def local_files(env: EnvironmentDescription) -> list[tuple[tuple[str | int, ...], Path]]:
    """Every file the description names: its key path in the YAML and its local path."""
    files: list[tuple[tuple[str | int, ...], Path]] = [(("image", "file"), env.image.file)]
    if env.preinstall is not None:
        files.append((("preinstall", "archive"), env.preinstall.archive))
    files += [(("postinstalls", i, "archive"), p.archive) for i, p in enumerate(env.postinstalls)]
    return files


def upload_name(path: Path, taken: set[str]) -> str:
    """A plain file name for ``path`` that the API accepts and no other file uses."""
    base = _UNSAFE.sub("_", path.name).lstrip(".-") or "file"
    base = base[-(MAX_NAME - 8) :]
    name, counter = base, 1
    while name in taken:
        counter += 1
        name = f"{counter}-{base}"
    taken.add(name)
    return name


def prepare(path: Path, client: Client) -> PreparedEnvironment:
    """Validate ``path``, upload its files, and rewrite it to name the uploads."""
    env, raw = load(path)
    taken: set[str] = set()
    uploaded: dict[Path, str] = {}
    files: dict[str, str] = {}
    with deleted_on_failure(client) as made:
        for key, local in local_files(env):
            if local not in uploaded:
                name = upload_name(local, taken)
                logger.info("uploading %s as %s", local, name)
                files[name] = str(client.upload(local, name)["id"])
                made.append(files[name])
                uploaded[local] = name
            _set(raw, key, uploaded[local])
    text = yaml.safe_dump(raw, sort_keys=False, allow_unicode=True)
    return PreparedEnvironment(env.name, env.version, text, files)


def _set(data: Any, key: tuple[str | int, ...], value: str) -> None:
    for part in key[:-1]:
        data = data[part]
    data[key[-1]] = value
