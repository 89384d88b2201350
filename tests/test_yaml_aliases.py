"""YAML aliases in environment descriptions: a few hundred bytes must not expand into gigabytes.

The bombs are parsed in a fresh interpreter whose peak RSS is read before and after, so the
bound on memory is asserted on a real process (no wall-clock assertions).
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest

from kadeploy_core.errors import EnvironmentError_
from kadeploy_core.yamldoc import YamlLimits, YamlLoadError, parse_yaml
from kadeployd.environment import parse_environment

MAX_RSS_DELTA = 50 << 20


def bomb(levels: int, width: int = 9) -> str:
    """``a: &a [x,x,...]``, ``b: &b [*a,*a,...]``, ...: width**levels values once expanded."""
    names = [chr(ord("a") + i) for i in range(levels)]
    lines = [f"{names[0]}: &{names[0]} [{','.join(['x'] * width)}]"]
    for previous, name in itertools.pairwise(names):
        lines.append(f"{name}: &{name} [{','.join([f'*{previous}'] * width)}]")
    return "\n".join(lines) + "\n"


PROBE = """
import json, resource, sys
from pathlib import Path
from kadeploy_core.errors import EnvironmentError_
from kadeployd.environment import parse_environment
text = sys.stdin.read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    parse_environment(text, "bomb.yaml", Path("/nonexistent"))
    outcome = "accepted"
except EnvironmentError_ as exc:
    outcome = str(exc)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"outcome": outcome, "delta": (after - before) * 1024}))
"""


def parse_in_subprocess(text: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        input=text,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, object] = json.loads(done.stdout)
    return result


@pytest.mark.parametrize("levels", [8, 10])
def test_alias_bomb_is_refused_with_bounded_memory(levels: int) -> None:
    text = bomb(levels)
    if levels == 8:
        assert len(text.encode()) <= 330  # the 325-byte description of the report
    result = parse_in_subprocess(text)
    outcome = str(result["outcome"])
    assert "aliases" in outcome
    assert outcome.startswith("bomb.yaml:3: more than 16 aliases"), outcome  # the 17th alias
    assert isinstance(result["delta"], int) and result["delta"] < MAX_RSS_DELTA, result


def test_few_aliases_expanding_far_are_refused_by_size() -> None:
    """Under the alias count, but 15 copies of a 1,000-value list: refused by expanded size."""
    text = "a: &a [" + ",".join(["x"] * 1000) + "]\nb: [" + ",".join(["*a"] * 15) + "]\n"
    result = parse_in_subprocess(text)
    outcome = str(result["outcome"])
    assert outcome.startswith("bomb.yaml:2: this value expands to more than 10000"), outcome
    assert isinstance(result["delta"], int) and result["delta"] < MAX_RSS_DELTA


def test_generic_limits_walk_each_node_once() -> None:
    """Configuration files (generous limits) still refuse a bomb by expanded size, quickly:
    the line walk visits each distinct node once."""
    with pytest.raises(YamlLoadError) as info:
        parse_yaml(bomb(9), "conf.yaml")
    assert "expands to more than" in str(info.value)
    doc = parse_yaml(bomb(4), "conf.yaml", YamlLimits(max_expanded_nodes=10_000))
    assert len(doc.data["d"]) == 9 and doc.data["d"][8][8][8] == ["x"] * 9
    assert doc.line_of(("d", 3, 2, 1)) == 3  # through an alias: the line of the anchored value


def test_deep_nesting_is_a_clear_error() -> None:
    with pytest.raises(YamlLoadError) as info:
        parse_yaml("[" * 5000 + "]" * 5000, "deep.yaml")
    assert "nested too deeply" in str(info.value)


SHARED_POSTINSTALL = """\
name: debian-min
version: 1
os: linux
image: {file: img.tar.zst, kind: tar, compression: zstd}
boot: {kernel: /vmlinuz}
filesystem: ext4
postinstalls:
  - &common {archive: post.tgz, compression: gzip, script: run.sh}
  - <<: *common
    script: "run.sh --second"
"""


def test_a_description_with_one_anchor_still_loads(tmp_path: Path) -> None:
    for name in ("img.tar.zst", "post.tgz"):
        (tmp_path / name).write_bytes(b"x")
    env = parse_environment(SHARED_POSTINSTALL, "env.yaml", tmp_path)
    assert [p.script for p in env.postinstalls] == ["run.sh", "run.sh --second"]
    assert env.postinstalls[1].archive == tmp_path / "post.tgz"


def test_too_many_aliases_name_the_line(tmp_path: Path) -> None:
    text = SHARED_POSTINSTALL + "".join(f"x{i}: *common\n" for i in range(20))
    with pytest.raises(EnvironmentError_) as info:
        parse_environment(text, "env.yaml", tmp_path)
    problem = info.value.problems[0]
    assert problem.line == 10 + 16  # the 17th alias (one in postinstalls, then x0 to x15)
    assert "more than 16 aliases" in problem.message
