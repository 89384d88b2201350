"""Pure logic: the checks of a user's PXE profile (kareboot set_pxe), the operations' plans,
and kaenv's Kadeploy3 options rewritten as subcommands."""

from __future__ import annotations

import click
import pytest

from kadeploy_cli.kaenv import translate_aliases
from kadeployd.config import Macrostep
from kadeployd.errors import InputError
from kadeployd.pxe.errors import PxeError
from kadeployd.pxe.user_profiles import check_profile, user_dir
from kadeployd.workflow import operations
from kadeployd.workflow.job import Operation

COMMANDS = {"add", "list", "print", "delete", "set-visibility"}


def test_files_prefix_forms_and_allowed_paths() -> None:
    profile = check_profile(
        "# mine\nDEFAULT a\nLABEL a\n  KERNEL FILES_PREFIX/k\n  INITRD FILES_PREFIX--i,envs/x/i2\n"
        "  APPEND initrd=/users/alice/i3 root=/dev/sda3\nLABEL b\n  COM32 chain.c32\n"
        "  APPEND hd0 2\n",
        "alice",
    )
    assert "KERNEL users/alice/k" in profile.text
    assert "INITRD users/alice/i,envs/x/i2" in profile.text
    assert profile.text.endswith("APPEND hd0 2\n")


@pytest.mark.parametrize(
    ("text", "line", "part"),
    [
        ("KERNEL a/../b\n", 1, "'..'"),
        ("LABEL x\nLINUX /etc/passwd\n", 2, "inside your directory /users/alice/"),
        ("INITRD ok,/users/bob/x\n", 1, "INITRD /users/bob/x"),
        ("KERNEL FILES_PREFIX/../../x\n", 1, "'..'"),
        ("KERNEL a\\b\n", 1, "backslash"),
        ("CONFIG http://h/x\n", 1, "another server"),
        ("DEFAULT x\0\n", 1, "control character"),
    ],
)
def test_bad_profiles_name_the_line(text: str, line: int, part: str) -> None:
    with pytest.raises(InputError) as caught:
        check_profile(text, "alice")
    [problem] = caught.value.problems
    assert problem.line == line
    assert part in problem.message


def test_size_limit_and_user_names() -> None:
    with pytest.raises(InputError, match="at most 65536"):
        check_profile("#" * 70_000, "alice")
    assert user_dir("svc$") == "users/svc$"
    for bad in ("..", "a/b", "", "-x"):
        with pytest.raises(PxeError):
            user_dir(bad)


def test_operations_run_only_their_macrosteps() -> None:
    assert operations.ORDER[Operation.DEPLOY_ENV] == (Macrostep.SET_DEPLOYMENT_ENV,)
    steps = operations.microsteps(Operation.DEPLOY_ENV, Macrostep.SET_DEPLOYMENT_ENV, "prod")
    names = [m.name for m in steps]
    assert names == ["switch_pxe_to_deploy_env", "reboot_from_level", "wait_for_deploy_env"]
    boot = operations.microsteps(Operation.RECORDED_ENV, Macrostep.BOOT_NEW_ENV, "classical")
    assert [m.name for m in boot] == [
        "switch_pxe_to_deployed_env",
        "reboot_from_level",
        "wait_deployed_env",
    ]
    deploy = operations.microsteps(Operation.DEPLOY, Macrostep.BOOT_NEW_ENV, "classical")
    assert "reboot_escalating" in [m.name for m in deploy]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["-l"], ["list"]),
        (["-l", "-u", "bob", "--json"], ["list", "-u", "bob", "--json"]),
        (["-S", "unix:/s", "-p", "deb", "--env-version", "2"],
         ["-S", "unix:/s", "print", "deb", "--env-version", "2"]),
        (["-u", "bob", "-d", "deb"], ["delete", "deb", "-u", "bob"]),
        (["--add=env.yaml"], ["add", "env.yaml"]),
        (["-p", "list"], ["print", "list"]),
        (["list", "-s"], ["list", "-s"]),
    ],
)  # fmt: skip
def test_kaenv3_options_become_subcommands(args: list[str], expected: list[str]) -> None:
    assert translate_aliases(args, COMMANDS) == expected


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-a"], "-a needs FILE"),
        (["-p", "--json"], "-p needs NAME"),
        (["-l", "-p", "x"], "-l and -p are two commands"),
        (["print", "-d", "x"], "-d and print are two commands"),
        (["--list=x"], "takes no value"),
    ],
)
def test_kaenv3_option_mistakes(args: list[str], message: str) -> None:
    with pytest.raises(click.UsageError, match=message):
        translate_aliases(args, COMMANDS)
