"""Nodes named as admins name them in Kadeploy3: ``griffon-1.nancy.grid5000.fr``.

Fully qualified names go through ``-m`` (names, comma lists, ranges such as
``griffon-[1-4].nancy.grid5000.fr``), nodefiles, nodes.conf and every output; the testbed
names its nodes so with ``--name-format``, and a deployment by such names and ranges runs on
it (``g5k`` fixture, tests/g5k_fixtures.py).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from g5k_fixtures import G5K_FIRST, G5K_FORMAT, G5K_NODES, G5K_RANGE

from kadeploy_core.errors import NodeListError
from kadeploy_core.nodelist import expand_node_args, parse_nodefile, resolve_nodes
from kadeploy_testbed.confgen import nodes_conf, write_conf
from kadeploy_testbed.layout import Layout, name_format_problem, node_specs
from kadeployd.admission import AdmissionRefused
from kadeployd.admission.decide import known_nodes
from kadeployd.config import load_config

BIN = Path(sys.executable).parent
SHORT = ("griffon-1", "griffon-2", "griffon-3", "griffon-4")


def test_ranges_and_comma_lists_of_fully_qualified_names_expand() -> None:
    assert expand_node_args([G5K_RANGE]) == list(G5K_NODES)
    assert expand_node_args(
        ["griffon-[3-4].nancy.grid5000.fr,griffon-1.nancy.grid5000.fr", G5K_NODES[0]]
    ) == [G5K_NODES[2], G5K_NODES[3], G5K_NODES[0]]
    assert expand_node_args(["graphene-[01-02].nancy.grid5000.fr"]) == [
        "graphene-01.nancy.grid5000.fr",
        "graphene-02.nancy.grid5000.fr",
    ]


def test_an_oar_nodefile_of_fully_qualified_names_counts_each_once() -> None:
    text = "".join(f"{name}\n{name}\n" for name in G5K_NODES)  # one line per core
    assert [ref.name for ref in parse_nodefile(text, "nodes")] == list(G5K_NODES)


def test_a_short_name_is_unknown_and_the_full_one_is_suggested() -> None:
    with pytest.raises(NodeListError) as caught:
        resolve_nodes(["griffon-2"], G5K_NODES)
    assert "unknown node 'griffon-2'; did you mean 'griffon-2.nancy.grid5000.fr'?" in str(
        caught.value
    )
    with pytest.raises(AdmissionRefused) as refused:
        known_nodes(["griffon-3", G5K_NODES[0]], G5K_NODES, merge_repeats=False)
    assert refused.value.problems[0].message == (
        "unknown node griffon-3; did you mean 'griffon-3.nancy.grid5000.fr'?"
    )
    with pytest.raises(NodeListError) as caught:
        resolve_nodes([G5K_NODES[1]], SHORT)
    assert "did you mean 'griffon-2'?" in str(caught.value)


@pytest.mark.parametrize(
    ("name_format", "problem"),
    [
        ("griffon", "names every node alike"),
        ("griffon-{x}.nancy", "unknown field {x}"),
        ("griffon-{i}.", "gives names such as 'griffon-250.'"),
        ("griffon-{i}/x", "gives names such as"),
        ("g" * 70 + "-{i}", "at most 64"),
        ("griffon-{i", "expected '}'"),
    ],
)
def test_bad_name_formats_say_why(name_format: str, problem: str) -> None:
    found = name_format_problem(name_format)
    assert found is not None and problem in found, found
    assert name_format_problem(G5K_FORMAT) is None


def test_the_testbed_names_its_nodes_by_the_format_and_nothing_else_changes() -> None:
    plain = node_specs(4, netns=True, first=G5K_FIRST)
    named = node_specs(4, netns=True, first=G5K_FIRST, name_format=G5K_FORMAT)
    assert [spec.name for spec in named] == list(G5K_NODES)
    for before, after in zip(plain, named, strict=True):
        assert (after.address, after.mac, after.bmc, after.netns, after.veth_host) == (
            before.address,
            before.mac,
            before.bmc,
            before.netns,
            before.veth_host,
        )


def test_generated_nodes_conf_holds_a_range_of_fully_qualified_names(tmp_path: Path) -> None:
    specs = node_specs(4, netns=False, first=G5K_FIRST, name_format=G5K_FORMAT)
    assert list(nodes_conf(specs, G5K_FORMAT)) == [G5K_RANGE]
    layout = Layout.at(tmp_path)
    write_conf(layout, specs, "127.0.0.1", 6969, name_format=G5K_FORMAT)
    config = load_config(layout.conf_dir)
    assert list(config.nodes) == list(G5K_NODES)
    node = config.nodes[G5K_NODES[3]]
    assert (node.address, node.mac, node.bmc) == ("127.0.2.84", "02:00:00:00:02:54", "127.0.3.84")


def _run(tool: str, *args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / tool), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
        cwd=cwd,
    )


@pytest.mark.root
def test_deploy_by_fully_qualified_names_ranges_and_nodefile(g5k: Any, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(home / "key")], check=True
    )
    env = g5k.env("alice", home)
    nodefile = home / "nodefile"
    nodefile.write_text("".join(f"{name}\n{name}\n" for name in G5K_NODES[2:]))

    status = subprocess.run(
        [str(BIN / "kadeploy-testbed"), "status", "--dir", str(g5k.testbed.layout.root)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert [line.split()[0] for line in status.stdout.splitlines()[1:]] == list(G5K_NODES)
    assert g5k.nodefile.read_text() == "".join(f"{name}\n" for name in G5K_NODES)

    short = _run("kadeploy", "-m", "griffon-1", "-e", "debian-min", env=env, cwd=home)
    assert short.returncode == 2, short.stdout + short.stderr
    assert "griffon-1.nancy.grid5000.fr" in short.stderr

    result = _run(
        "kadeploy", "-m", "griffon-[1-2].nancy.grid5000.fr", "-f", str(nodefile),
        "-e", "debian-min", "-k", str(home / "key.pub"), "-o", "ok", "-n", "ko",
        env=env, cwd=home,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    summary = lines.index("The deployment is successful on 4 nodes:")
    assert sorted(line.strip() for line in lines[summary + 1 : summary + 5]) == list(G5K_NODES)
    assert sorted((home / "ok").read_text().splitlines()) == list(G5K_NODES)
    assert (home / "ko").read_text() == ""

    login = subprocess.run(
        g5k.testbed.ssh_argv(G5K_NODES[3], "cat", "/etc/os-release", key=home / "key"),
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert login.returncode == 0, login.stderr
    assert "ID=debian-min" in login.stdout

    nodes = _run("kanodes", "-m", G5K_RANGE, env=env, cwd=home)
    assert nodes.returncode == 0, nodes.stdout + nodes.stderr
    for name in G5K_NODES:
        assert name in nodes.stdout
    for name in SHORT:
        assert f"{name} " not in nodes.stdout
