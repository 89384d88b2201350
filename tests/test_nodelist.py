"""Node lists: nodefiles as OAR writes them, -m arguments with ranges, unknown node names."""

from __future__ import annotations

from pathlib import Path

import pytest

from kadeploy_core.errors import NodeListError, Problem
from kadeploy_core.nodelist import (
    NodeRef,
    expand_node_arg_refs,
    expand_node_args,
    read_nodefile,
    read_nodefile_refs,
    resolve_nodes,
)

KNOWN = [f"node-{i}" for i in range(1, 17)]


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_oar_nodefile_one_line_per_core(tmp_path: Path) -> None:
    nodefile = write(
        tmp_path / "OAR_NODEFILE",
        "node-3\nnode-3\nnode-3\nnode-3\nnode-1\nnode-1\nnode-1\nnode-1\n",
    )
    assert read_nodefile(nodefile) == ["node-3", "node-1"]


def test_comments_blank_lines_and_whitespace(tmp_path: Path) -> None:
    nodefile = write(
        tmp_path / "nodes",
        "# reserved for the experiment\n"
        "\n"
        "  node-2  \n"
        "\tnode-5 # the fast one\n"
        "   \n"
        "node-2\n"
        "#node-9\n"
        "node-7#no space before the comment\n"
        "node-1\r\n",
    )
    assert read_nodefile(nodefile) == ["node-2", "node-5", "node-7", "node-1"]
    refs = read_nodefile_refs(nodefile)
    assert refs[0] == NodeRef("node-2", str(nodefile), 3)
    assert [ref.line for ref in refs] == [3, 4, 8, 9]


def test_empty_nodefile(tmp_path: Path) -> None:
    assert read_nodefile(write(tmp_path / "nodes", "")) == []
    assert read_nodefile(write(tmp_path / "comments", "# nothing\n\n")) == []


def test_bad_lines_reported_all_with_their_line(tmp_path: Path) -> None:
    nodefile = write(tmp_path / "nodes", "node-1\nnode-2 node-3\nnode-4\nnode_5!\n-node\n")
    with pytest.raises(NodeListError) as caught:
        read_nodefile(nodefile)
    problems = caught.value.problems
    assert [p.line for p in problems] == [2, 4, 5]
    assert all(p.source == str(nodefile) for p in problems)
    assert "expected one node name per line; got 'node-2 node-3'" in problems[0].message
    assert str(problems[0]).startswith(f"{nodefile}:2: ")


def test_missing_nodefile(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(NodeListError) as caught:
        read_nodefile(missing)
    assert caught.value.problems == (Problem(str(missing), "nodefile not found"),)


def test_nodefile_that_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(NodeListError, match="is a directory"):
        read_nodefile(tmp_path)


def test_nodefile_not_utf8(tmp_path: Path) -> None:
    nodefile = tmp_path / "latin1"
    nodefile.write_bytes("node-1\nn\xe9ud-2\n".encode("latin-1"))
    with pytest.raises(NodeListError) as caught:
        read_nodefile(nodefile)
    (problem,) = caught.value.problems
    assert problem.source == str(nodefile)
    assert "not UTF-8" in problem.message


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["node-1"], ["node-1"]),
        (["node-1,node-3"], ["node-1", "node-3"]),
        (["node-[1-3]"], ["node-1", "node-2", "node-3"]),
        (["node-[01-03,12]"], ["node-01", "node-02", "node-03", "node-12"]),
        (["node-[1-2],node-5", "node-[4,5]"], ["node-1", "node-2", "node-5", "node-4"]),
        (["node-2", "node-[1-3]", "node-2"], ["node-2", "node-1", "node-3"]),
        ([" node-1 , node-2 "], ["node-1", "node-2"]),
        (["a.example.org"], ["a.example.org"]),
        ([], []),
    ],
)
def test_expand_node_args(args: list[str], expected: list[str]) -> None:
    assert expand_node_args(args) == expected


@pytest.mark.parametrize(
    ("arg", "reason"),
    [
        ("node-[5-1]", "goes downwards"),
        ("node-[a-b]", "'a' is not a number"),
        ("node-[1-2", "unbalanced brackets"),
        ("node-1]", "unbalanced brackets"),
        ("node-1,,node-2", "empty name"),
        ("node-1,", "empty name"),
        ("node 1", "'node 1' is not a node name"),
        ("node-[1-2]x[3]", "at most one"),
        ("-node", "is not a node name"),
    ],
)
def test_bad_node_args_name_the_argument(arg: str, reason: str) -> None:
    with pytest.raises(NodeListError) as caught:
        expand_node_args(["node-1", arg])
    (problem,) = caught.value.problems
    assert problem.source == "-m"
    assert problem.message.startswith(f"in {arg!r}: ")
    assert reason in problem.message


def test_range_error_inside_a_comma_list_names_argument_and_item() -> None:
    with pytest.raises(NodeListError) as caught:
        expand_node_args(["node-1,node-[3-2]"])
    assert caught.value.problems[0].message == (
        "in 'node-1,node-[3-2]': 'node-[3-2]': item '3-2' goes downwards: "
        "the start must not exceed the end (2-3?)"
    )


def test_every_bad_argument_reported_at_once() -> None:
    with pytest.raises(NodeListError) as caught:
        expand_node_args(["node-[5-1]", "node-2", "node-[x]"])
    assert [p.message.split(":")[0] for p in caught.value.problems] == [
        "in 'node-[5-1]'",
        "in 'node-[x]'",
    ]


def test_expand_node_arg_refs_carry_source() -> None:
    assert expand_node_arg_refs(["n[1-2]"]) == [NodeRef("n1", "-m"), NodeRef("n2", "-m")]


def test_resolve_known_nodes_keeps_order_without_repeats() -> None:
    assert resolve_nodes(["node-3", "node-1", "node-3"], KNOWN) == ["node-3", "node-1"]


def test_unknown_nodes_reported_all_with_suggestions() -> None:
    with pytest.raises(NodeListError) as caught:
        resolve_nodes(["node-1", "node-17", "nod-2", "zzz", "node-17"], KNOWN)
    problems = caught.value.problems
    assert len(problems) == 3
    assert all(p.source == "-m" for p in problems)
    assert problems[0].message.startswith("unknown node 'node-17'; did you mean ")
    assert "'node-16'" in problems[0].message
    assert "'node-2'" in problems[1].message
    assert problems[2].message == "unknown node 'zzz'"


def test_unknown_nodes_from_a_nodefile_carry_their_line(tmp_path: Path) -> None:
    nodefile = write(tmp_path / "nodes", "node-1\n# spare\nnode-40\nnode-2\n")
    refs = read_nodefile_refs(nodefile) + expand_node_arg_refs(["node-[15-18]"])
    with pytest.raises(NodeListError) as caught:
        resolve_nodes(refs, KNOWN, source="ignored for refs")
    problems = caught.value.problems
    assert [(p.source, p.line) for p in problems] == [
        (str(nodefile), 3),
        ("-m", None),
        ("-m", None),
    ]
    assert str(problems[0]).startswith(f"{nodefile}:3: unknown node 'node-40'; did you mean")
    assert "'node-17'" in problems[1].message
    assert "'node-18'" in problems[2].message


def test_plain_names_use_the_given_source() -> None:
    with pytest.raises(NodeListError) as caught:
        resolve_nodes(["node-99"], KNOWN, source="api")
    assert caught.value.problems[0].source == "api"


def test_no_nodes_configured() -> None:
    with pytest.raises(NodeListError, match="no nodes are configured"):
        resolve_nodes(["node-1"], [])
