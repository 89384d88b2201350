"""Environment descriptions (kaenv YAML): valid files, and every kind of mistake, all at once."""

from __future__ import annotations

import os
from pathlib import Path

import pydantic
import pytest

from kadeploy_core.errors import EnvironmentError_, Problem
from kadeployd.environment import (
    Compression,
    Filesystem,
    ImageKind,
    Visibility,
    load_environment,
    parse_environment,
)

FULL = """\
name: debian-min
version: 1
description: "Minimal busybox environment"
author: jdoe@example.org
visibility: public
destructive: false
os: linux
image: {file: debian-min.tar.zst, kind: tar, compression: zstd}
preinstall: {archive: pre.tgz, compression: gzip, script: run.sh}
postinstalls: [{archive: post.tgz, compression: gzip, script: "run.sh --net 'two words'"}]
boot: {kernel: /boot/vmlinuz, initrd: /boot/initrd.img, kernel_params: "console=ttyS0"}
filesystem: ext4
partition_type: 0x83
clusters: [griffon]
"""

MINIMAL = """\
name: debian-min
version: 3
os: linux
image:
  file: debian-min.tar.zst
  kind: tar
  compression: zstd
boot:
  kernel: /vmlinuz
filesystem: ext4
"""


@pytest.fixture
def envdir(tmp_path: Path) -> Path:
    """A directory with the files the descriptions name (their content does not matter here)."""
    for name in ("debian-min.tar.zst", "debian-min.img", "pre.tgz", "post.tgz"):
        (tmp_path / name).write_bytes(b"not read by these tests")
    return tmp_path


def write(directory: Path, text: str, name: str = "env.yaml") -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(path: Path) -> tuple[Problem, ...]:
    with pytest.raises(EnvironmentError_) as caught:
        load_environment(path)
    for problem in caught.value.problems:
        assert "Input should" not in problem.message
        assert "pydantic" not in problem.message.lower()
    return caught.value.problems


def only_problem(path: Path) -> Problem:
    (problem,) = problems_of(path)
    return problem


def with_line(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new)


def test_full_description(envdir: Path) -> None:
    env = load_environment(write(envdir, FULL))
    assert env.name == "debian-min"
    assert env.version == 1
    assert env.description == "Minimal busybox environment"
    assert env.author == "jdoe@example.org"
    assert env.visibility is Visibility.PUBLIC
    assert env.destructive is False
    assert env.image.file == envdir / "debian-min.tar.zst"
    assert env.image.file.is_absolute()
    assert env.image.kind is ImageKind.TAR
    assert env.image.compression is Compression.ZSTD
    assert env.preinstall is not None
    assert env.preinstall.archive == envdir / "pre.tgz"
    assert env.preinstall.argv == ("run.sh",)
    assert env.postinstalls[0].argv == ("run.sh", "--net", "two words")
    assert env.boot.kernel == "/boot/vmlinuz"
    assert env.boot.initrd == "/boot/initrd.img"
    assert env.boot.kernel_params == "console=ttyS0"
    assert env.filesystem is Filesystem.EXT4
    assert env.partition_type == 0x83
    assert env.clusters == ("griffon",)
    assert env.runs_on("griffon")
    assert not env.runs_on("graphene")
    assert env.source == str(envdir / "env.yaml")


def test_defaults_of_a_minimal_description(envdir: Path) -> None:
    env = load_environment(write(envdir, MINIMAL))
    assert env.description == ""
    assert env.author == ""
    assert env.visibility is Visibility.PRIVATE
    assert env.destructive is False
    assert env.preinstall is None
    assert env.postinstalls == ()
    assert env.boot.initrd is None
    assert env.boot.kernel_params == ""
    assert env.partition_type == 0x83
    assert env.clusters is None
    assert env.runs_on("any-cluster")


def test_description_is_frozen(envdir: Path) -> None:
    env = load_environment(write(envdir, MINIMAL))
    with pytest.raises(pydantic.ValidationError):
        env.version = 2  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        env.image.kind = ImageKind.DD  # type: ignore[misc]


def test_relative_files_resolved_against_the_description_directory(
    envdir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    path = write(envdir, MINIMAL)
    elsewhere = tmp_path_factory.mktemp("cwd")
    old = Path.cwd()
    os.chdir(elsewhere)
    try:
        env = load_environment(Path(os.path.relpath(path, elsewhere)))
    finally:
        os.chdir(old)
    assert env.image.file == envdir / "debian-min.tar.zst"


def test_absolute_image_path(envdir: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    other = tmp_path_factory.mktemp("other")
    text = with_line(MINIMAL, "file: debian-min.tar.zst", f"file: {envdir}/debian-min.tar.zst")
    assert load_environment(write(other, text)).image.file == envdir / "debian-min.tar.zst"


def test_dd_image_needs_a_kernel_but_no_filesystem(envdir: Path) -> None:
    text = MINIMAL.replace("debian-min.tar.zst", "debian-min.img").replace("kind: tar", "kind: dd")
    text = text.replace("compression: zstd", "compression: none").replace("filesystem: ext4\n", "")
    env = load_environment(write(envdir, text))
    assert env.image.kind is ImageKind.DD
    assert env.filesystem is None
    no_kernel = write(envdir, text.replace("  kernel: /vmlinuz\n", "  initrd: /initrd.img\n"))
    problem = only_problem(no_kernel)
    assert (problem.path, problem.line) == ("boot.kernel", 8)  # the line of "boot:"
    assert problem.message == (
        "required key is missing: expected an absolute path inside the image (like /vmlinuz)"
    )


def test_filesystem_is_optional(envdir: Path) -> None:
    # Absent, the deployment uses the cluster's disk.filesystem from the configuration.
    assert (
        load_environment(write(envdir, MINIMAL.replace("filesystem: ext4\n", ""))).filesystem
        is None
    )


def test_parse_environment_for_uploads(envdir: Path) -> None:
    env = parse_environment(MINIMAL, "upload from jdoe", envdir)
    assert env.source == "upload from jdoe"
    assert env.image.file == envdir / "debian-min.tar.zst"
    with pytest.raises(EnvironmentError_) as caught:
        parse_environment("name: [", "upload from jdoe", envdir)
    assert caught.value.problems[0].source == "upload from jdoe"


def test_broken_yaml(envdir: Path) -> None:
    problem = only_problem(write(envdir, "name: debian\nversion: 1\nimage: {file: x, kind: tar\n"))
    assert problem.source == str(envdir / "env.yaml")
    assert problem.message.startswith("invalid YAML")
    assert problem.line is not None


def test_repeated_key(envdir: Path) -> None:
    problem = only_problem(write(envdir, MINIMAL + "version: 4\n"))
    assert (problem.path, problem.line, problem.message) == ("version", 11, "key repeated")


def test_missing_description_file(tmp_path: Path) -> None:
    problem = only_problem(tmp_path / "nope.yaml")
    assert problem.message == "file not found"


@pytest.mark.parametrize(
    ("text", "got"),
    [
        ("- name: debian\n- version: 1\n", "a list"),
        ("just a string\n", "'just a string'"),
        ("", "an empty document"),
        ("# only a comment\n", "an empty document"),
        ("42\n", "42"),
    ],
)
def test_top_level_must_be_a_mapping(envdir: Path, text: str, got: str) -> None:
    problem = only_problem(write(envdir, text))
    assert problem.message.startswith("expected a mapping of keys name, version, ")
    assert problem.message.endswith(f" at the top level; got {got}")


@pytest.mark.parametrize(
    ("old", "new", "path", "message"),
    [
        ("version: 3", "version: one", "version", "expected an integer >= 1; got 'one'"),
        ("version: 3", "version: 0", "version", "expected an integer >= 1; got 0"),
        ("version: 3", "version: 1.5", "version", "expected an integer >= 1; got 1.5"),
        ("version: 3", "version: true", "version", "expected an integer >= 1; got true"),
        ("version: 3", 'version: "3"', "version", "expected an integer >= 1; got '3'"),
        (
            "os: linux",
            "os: xen",
            "os",
            "expected linux (the only system kadeployd boots); got 'xen'",
        ),
        ("kind: tar", "kind: zip", "image.kind", "expected one of tar, dd; got 'zip'"),
        (
            "compression: zstd",
            "compression: bzip2",
            "image.compression",
            "expected one of gzip, zstd, xz, none; got 'bzip2'",
        ),
        ("compression: zstd", "compression:", "image.compression", "got nothing (null)"),
        ("name: debian-min", "name: 12", "name", "expected a name of letters, digits"),
        ("name: debian-min", "name: 'debian min'", "name", "got 'debian min'"),
        ("name: debian-min", "name: ''", "name", "got ''"),
        ("name: debian-min", "name: -debian", "name", "got '-debian'"),
        ("name: debian-min", "name: debian/../x", "name", "got 'debian/../x'"),
        ("filesystem: ext4", "filesystem: ntfs", "filesystem", "one of ext2, ext3, ext4, xfs;"),
        ("filesystem: ext4", "filesystem: [ext4]", "filesystem", "got a list"),
        ("  kernel: /vmlinuz", "  kernel: vmlinuz", "boot.kernel", "expected an absolute path"),
        ("  kernel: /vmlinuz", "  kernel: /../vmlinuz", "boot.kernel", "without '..'"),
        ("  kernel: /vmlinuz", "  kernel: /", "boot.kernel", "got '/'"),
        ("  kernel: /vmlinuz", "  kernel: 42", "boot.kernel", "expected an absolute path"),
        ("  kernel: /vmlinuz", "  kernel: {a: 1}", "boot.kernel", "got a mapping"),
        ("boot:\n  kernel: /vmlinuz", "boot: /vmlinuz", "boot", "expected a mapping with keys"),
        ("image:\n", "image: debian.tgz\nx:\n", "image", "expected a mapping with keys file"),
        ("file: debian-min.tar.zst", "file: 7", "image.file", "expected a file name; got 7"),
    ],
)
def test_wrong_values(envdir: Path, old: str, new: str, path: str, message: str) -> None:
    problems = problems_of(write(envdir, with_line(MINIMAL, old, new)))
    matching = [p for p in problems if p.path == path]
    assert matching, problems
    assert message in matching[0].message
    assert matching[0].line is not None


@pytest.mark.parametrize(
    ("extra", "path", "message"),
    [
        ("destructive: 'yes'\n", "destructive", "expected true or false; got 'yes'"),
        ("visibility: everyone\n", "visibility", "expected one of private, shared, public"),
        ("description: 12\n", "description", "expected a text; got 12"),
        ("partition_type: 300\n", "partition_type", "from 0 to 0xff (like 0x83); got 300"),
        ("partition_type: -1\n", "partition_type", "got -1"),
        ("partition_type: linux\n", "partition_type", "got 'linux'"),
        ("clusters: griffon\n", "clusters", "expected a list of cluster names; got 'griffon'"),
        ("clusters: [griffon, 3]\n", "clusters[1]", "expected a cluster name"),
        ("clusters: [a, b, a]\n", "clusters", "expected distinct cluster names; repeated: a"),
        ("clusters: []\n", "clusters", "leave the key out to mean all"),
        ("postinstalls: {archive: post.tgz}\n", "postinstalls", "expected a list of mappings"),
        ("postinstalls: [post.tgz]\n", "postinstalls[0]", "expected a mapping with keys archive"),
        ("preinstall: pre.tgz\n", "preinstall", "expected a mapping with keys archive"),
    ],
)
def test_wrong_optional_values(envdir: Path, extra: str, path: str, message: str) -> None:
    problem = only_problem(write(envdir, MINIMAL + extra))
    assert problem.path == path
    assert message in problem.message
    assert problem.line == 11


def test_partition_type_as_hex_string(envdir: Path) -> None:
    env = load_environment(write(envdir, MINIMAL + "partition_type: '0x8e'\n"))
    assert env.partition_type == 0x8E


def test_null_postinstalls_means_none(envdir: Path) -> None:
    assert load_environment(write(envdir, MINIMAL + "postinstalls:\n")).postinstalls == ()


def test_boot_paths_normalised(envdir: Path) -> None:
    text = with_line(MINIMAL, "kernel: /vmlinuz", "kernel: //boot/./vmlinuz")
    assert load_environment(write(envdir, text)).boot.kernel == "/boot/vmlinuz"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ('"console=ttyS0\\nMENU hidden"', "on one line"),
        ('"quiet\\u0000"', "on one line"),
        ("[console=ttyS0]", "expected kernel parameters on one line"),
    ],
)
def test_kernel_params_stay_on_one_line(envdir: Path, params: str, message: str) -> None:
    text = with_line(MINIMAL, "kernel: /vmlinuz", f"kernel: /vmlinuz\n  kernel_params: {params}")
    problem = only_problem(write(envdir, text))
    assert problem.path == "boot.kernel_params"
    assert message in problem.message


@pytest.mark.parametrize(
    ("script", "message"),
    [
        ("/usr/bin/setup", "relative path inside the archive; got '/usr/bin/setup'"),
        ("../setup", "relative path inside the archive; got '../setup'"),
        ('"run.sh --x \'a"', "balanced quotes"),
        ("'   '", "write none for no script"),
        ("5", "expected a command line whose first word is a relative path"),
    ],
)
def test_bad_scripts(envdir: Path, script: str, message: str) -> None:
    text = (
        MINIMAL
        + f"postinstalls:\n  - archive: post.tgz\n    compression: gzip\n    script: {script}\n"
    )
    problem = only_problem(write(envdir, text))
    assert problem.path == "postinstalls[0].script"
    assert problem.line == 14
    assert message in problem.message


@pytest.mark.parametrize("script", ["none", None])
def test_no_script(envdir: Path, script: str | None) -> None:
    line = f"script: {script}" if script else ""
    text = MINIMAL + f"preinstall: {{archive: pre.tgz, compression: none, {line}}}\n"
    env = load_environment(write(envdir, text))
    assert env.preinstall is not None
    assert env.preinstall.script is None
    assert env.preinstall.argv == ()


def test_missing_image_file_names_the_path_tried(envdir: Path) -> None:
    text = with_line(MINIMAL, "file: debian-min.tar.zst", "file: images/missing.tar.zst")
    problem = only_problem(write(envdir, text))
    assert problem.path == "image.file"
    assert problem.line == 5
    assert problem.message == f"file not found: '{envdir}/images/missing.tar.zst'"


def test_image_file_that_is_a_directory(envdir: Path) -> None:
    (envdir / "adir").mkdir()
    problem = only_problem(write(envdir, with_line(MINIMAL, "debian-min.tar.zst", "adir")))
    assert problem.message == f"not a regular file: '{envdir}/adir'"


def test_missing_postinstall_archive(envdir: Path) -> None:
    text = MINIMAL + "postinstalls: [{archive: gone.tgz, compression: gzip, script: run.sh}]\n"
    problem = only_problem(write(envdir, text))
    assert problem.path == "postinstalls[0].archive"
    assert str(envdir / "gone.tgz") in problem.message


@pytest.mark.parametrize("url", ["server:///grid5000/images/min.tgz", "http://example.org/x"])
def test_urls_are_refused(envdir: Path, url: str) -> None:
    problem = only_problem(write(envdir, with_line(MINIMAL, "debian-min.tar.zst", url)))
    assert problem.path == "image.file"
    assert "URLs are not supported" in problem.message


def test_unknown_keys_with_did_you_mean(envdir: Path) -> None:
    text = with_line(MINIMAL, "compression: zstd", "compresion: zstd")
    text = with_line(text, "version: 3", "versoin: 3")
    problems = problems_of(write(envdir, text))
    # The misspelt keys are not also reported as missing: the hint says it all.
    assert [(p.path, p.line, p.message) for p in problems] == [
        ("versoin", 2, "unknown key; did you mean 'version'?"),
        ("image.compresion", 7, "unknown key; did you mean 'compression'?"),
    ]


def test_unknown_key_without_a_close_name_lists_the_valid_ones(envdir: Path) -> None:
    problem = only_problem(write(envdir, MINIMAL + "multipart: false\n"))
    assert problem.path == "multipart"
    assert problem.message.startswith("unknown key; valid keys are name, version, description")


def test_unknown_key_in_a_list_item(envdir: Path) -> None:
    text = MINIMAL + "postinstalls:\n  - {archive: post.tgz, compression: gzip, scritp: run.sh}\n"
    problem = only_problem(write(envdir, text))
    assert (problem.path, problem.line) == ("postinstalls[0].scritp", 12)
    assert problem.message == "unknown key; did you mean 'script'?"


def test_non_text_key(envdir: Path) -> None:
    problem = only_problem(write(envdir, MINIMAL + "3: three\n"))
    assert problem.message == "expected a text key; got 3"


def test_missing_required_keys(envdir: Path) -> None:
    problems = problems_of(write(envdir, "version: 1\nimage: {file: debian-min.tar.zst}\n"))
    # A missing key is reported at the line of the mapping that lacks it.
    assert [(p.line, p.path, p.message) for p in problems] == [
        (
            1,
            "name",
            "required key is missing: expected a name of letters, digits, '.', '_', '+' or '-' "
            "(starting with a letter or digit, at most 64)",
        ),
        (1, "os", "required key is missing: expected linux (the only system kadeployd boots)"),
        (
            1,
            "boot",
            "required key is missing: expected a mapping with keys kernel, initrd, kernel_params",
        ),
        (2, "image.kind", "required key is missing: expected one of tar, dd"),
        (2, "image.compression", "required key is missing: expected one of gzip, zstd, xz, none"),
    ]


def test_every_mistake_reported_in_one_pass(envdir: Path) -> None:
    text = """\
name: debian min
version: 0
visibility: everyone
os: linux
image: {file: missing.tar.gz, kind: tar, compresion: gzip}
boot: {kernel: vmlinuz, kernel_params: 3}
partition_type: 0x183
clusters: [griffon, griffon]
colour: blue
"""
    problems = problems_of(write(envdir, text))
    assert [(p.line, p.path) for p in problems] == [
        (1, "name"),
        (2, "version"),
        (3, "visibility"),
        (5, "image.file"),
        (5, "image.compresion"),
        (6, "boot.kernel"),
        (6, "boot.kernel_params"),
        (7, "partition_type"),
        (8, "clusters"),
        (9, "colour"),
    ]
    assert all(p.source == str(envdir / "env.yaml") for p in problems)
    rendered = str(EnvironmentError_(problems))
    assert f"{envdir}/env.yaml:5: image.compresion: unknown key; did you mean 'compression'?" in (
        rendered
    )


def test_problem_points_at_a_key_of_the_description(envdir: Path) -> None:
    env = load_environment(write(envdir, FULL))
    problem = env.problem(("boot", "kernel"), "not in the image")
    assert problem == Problem(str(envdir / "env.yaml"), "not in the image", "boot.kernel", 11)
