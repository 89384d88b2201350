"""A daemon and its API on the testbed whose nodes are named as Grid'5000 names them.

The ``g5k_testbed`` fixture of tests/conftest.py brings up nodes 81-84 named
``griffon-1.nancy.grid5000.fr`` .. ``griffon-4.nancy.grid5000.fr`` (``--name-format
'griffon-{n}.nancy.grid5000.fr'``), booting from 127.0.0.1:<free port>. :func:`g5k_api`
starts a daemon on a copy of the configuration ``up`` wrote (its nodes.conf holds the range
``griffon-[1-4].nancy.grid5000.fr``), whose PxeActor serves that port, and its API on a Unix
socket; alice may deploy every node and the environment ``debian-min`` is registered public.
Tools run against it with ``KADEPLOY_SERVER=unix:<socket>`` and ``KADEPLOY_TOKEN``
(:meth:`G5kApi.env`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pykka
import yaml
from api_fixtures import ADMIN, RunningApi, register, short_dir, start_api

G5K_FIRST = 81
"""Node numbers 81-84: addresses 127.0.2.81-84, BMCs 127.0.3.81-84, namespaces of their own;
no other testbed of the suite uses them (session 1-4, workflow 21-24, chain 41-44, demo
61-62, lifecycle 101+)."""
G5K_FORMAT = "griffon-{n}.nancy.grid5000.fr"
G5K_NODES = tuple(G5K_FORMAT.format(n=n) for n in range(1, 5))
G5K_RANGE = "griffon-[1-4].nancy.grid5000.fr"

ConfEdit = Callable[[dict[str, Any], dict[str, Any]], None]
"""Edits (deploy.conf data, cluster file data) of the copied configuration."""


@dataclass
class G5kApi:
    """A daemon with its API on the g5k testbed, and what a tool needs to reach it."""

    running: RunningApi
    testbed: Any
    nodefile: Path
    """The testbed's nodes, one fully qualified name a line."""

    @property
    def socket(self) -> Path:
        return self.running.socket

    def env(self, user: str = "alice", home: Path | None = None) -> dict[str, str]:
        """The environment of a tool run as ``user``: the daemon's socket, the user's token,
        the venv's tools first on PATH."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("KADEPLOY_")}
        env.update(
            KADEPLOY_SERVER=f"unix:{self.socket}",
            KADEPLOY_TOKEN=self.running.tokens[user],
            PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
        )
        if home is not None:
            env["HOME"] = str(home)
        return env


def g5k_conf(testbed: Any, conf: Path, state: Path, socket: Path, edit: ConfEdit | None) -> Path:
    """A copy of ``testbed``'s configuration in ``conf``, the daemon's state in ``state``,
    its API on ``socket``, root an administrator, quick boot checks."""
    shutil.copytree(testbed.layout.conf_dir, conf)
    deploy = yaml.safe_load((conf / "deploy.conf").read_text())
    cluster_file = next((conf / "clusters").glob("*.conf"))
    cluster = yaml.safe_load(cluster_file.read_text()) or {}
    deploy["daemon"].update(
        state_dir=str(state),
        chain_gather_window=5,
        api={"unix_socket": str(socket)},
        almighty_users=[ADMIN],
    )
    deploy["boot"]["check_interval"] = 0.3
    if edit is not None:
        edit(deploy, cluster)
    (conf / "deploy.conf").write_text(yaml.safe_dump(deploy))
    cluster_file.write_text(yaml.safe_dump(cluster))
    return conf


def reset_nodes(testbed: Any) -> None:
    """Every node back in its prod env, faults cleared, no PXE profile of a past daemon."""
    testbed.reset()
    for profile in (testbed.layout.tftp_root / "pxelinux.cfg").glob("01-*"):
        profile.unlink()


@contextlib.contextmanager
def g5k_api(
    testbed: Any, base: Path, image: Path, edit: ConfEdit | None = None
) -> Iterator[G5kApi]:
    """A daemon and its API on ``testbed`` (nodes reset first), ``image`` (a make-image
    description) registered public, alice allowed everywhere; stopped and removed on exit."""
    reset_nodes(testbed)
    sockets = short_dir()
    conf = g5k_conf(testbed, base / "conf", base / "state", sockets / "api.sock", edit)
    running = start_api(conf, sockets / "api.sock")
    try:
        with running.client(ADMIN) as root:
            granted = root.post("/v1/rights", json={"user": "alice", "nodes": ["*"]})
            assert granted.status_code == 201, granted.text
            answer = register(root, image, visibility="public")
            assert answer.status_code == 201, answer.text
        yield G5kApi(running, testbed, testbed.layout.nodefile)
    finally:
        running.stop()
        pykka.ActorRegistry.stop_all(timeout=10)
        shutil.rmtree(sockets, ignore_errors=True)
