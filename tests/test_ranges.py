"""Bracket ranges: node-[1-16], node-[01-10,12], 127.0.2.[1-16]."""

from __future__ import annotations

import pytest

from kadeploy_core.ranges import RangeError, expand_range, fold_names, has_range, range_length


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("node-1", ["node-1"]),
        ("node-[1-3]", ["node-1", "node-2", "node-3"]),
        ("node-[3]", ["node-3"]),
        ("node-[1,3,5-6]", ["node-1", "node-3", "node-5", "node-6"]),
        ("node-[01-03,12]", ["node-01", "node-02", "node-03", "node-12"]),
        ("node-[08-11]", ["node-08", "node-09", "node-10", "node-11"]),
        ("node-[001-2]", ["node-001", "node-002"]),
        ("node-[0-2]", ["node-0", "node-1", "node-2"]),
        ("node-[07]", ["node-07"]),
        ("[1-2]-node", ["1-node", "2-node"]),
        ("griffon-[9-10].nancy", ["griffon-9.nancy", "griffon-10.nancy"]),
        ("127.0.2.[1-3]", ["127.0.2.1", "127.0.2.2", "127.0.2.3"]),
        ("n[5-5]", ["n5"]),
    ],
)
def test_expand_range(text: str, expected: list[str]) -> None:
    assert expand_range(text) == expected
    assert range_length(text) == len(expected)


def test_range_keeps_duplicates_and_order() -> None:
    # Pure expansion: callers decide what a repeat means (nodelist collapses, config refuses).
    assert expand_range("n[3,1-2,1]") == ["n3", "n1", "n2", "n1"]


def test_length_of_a_large_range_without_building_it() -> None:
    assert range_length("node-[1-100000]") == 100_000


def test_has_range() -> None:
    assert has_range("node-[1-2]")
    assert has_range("node-1]")
    assert not has_range("node-1")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("node-[5-1]", "goes downwards"),
        ("node-[a-b]", "'a' is not a number"),
        ("node-[1-2", "unbalanced brackets"),
        ("node-1-2]", "unbalanced brackets"),
        ("node-]1-2[", "']' comes before '['"),
        ("node-[1-2]-[1-2]", "at most one"),
        ("node-[[1-2]]", "at most one"),
        ("node-[]", "empty group"),
        ("node-[ ]", "empty group"),
        ("node-[1,,2]", "empty item"),
        ("node-[1,]", "empty item"),
        ("node-[-3]", "a number on each side"),
        ("node-[1-]", "a number on each side"),
        ("node-[1-2-3]", "'2-3' is not a number"),
        ("node-[ 1-2]", "' 1' is not a number"),
        ("node-[1.5]", "'1.5' is not a number"),
        ("node-[²]", "is not a number"),
    ],
)
def test_bad_ranges(text: str, reason: str) -> None:
    with pytest.raises(RangeError) as caught:
        expand_range(text)
    assert reason in caught.value.reason
    assert caught.value.text == text
    assert str(caught.value).startswith(repr(text))
    with pytest.raises(RangeError):
        range_length(text)


def test_range_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="goes downwards"):
        expand_range("n[2-1]")


def test_limit() -> None:
    with pytest.raises(RangeError, match="more than the limit of 10"):
        expand_range("n[1-11]", limit=10)
    with pytest.raises(RangeError, match="200000001 names"):
        range_length("n[0-200000000]")
    assert len(expand_range("n[1-10]", limit=10)) == 10


def test_node_names_are_folded_as_kadeploy3_folds_them() -> None:
    names = [f"griffon-{i}.nancy.grid5000.fr" for i in (4, 1, 2)]
    assert fold_names(names) == "griffon-[1-2,4].nancy.grid5000.fr"
    assert fold_names(["graphene-01", "graphene-02", "n-3", "frontend", "n-1"]) == (
        "graphene-[01-02],n-[1,3],frontend"
    )
    assert fold_names(["n-1"]) == "n-1"
