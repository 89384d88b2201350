"""Pure logic: the checks of a user's PXE profile (kareboot set_pxe), the operations' plans,
and kaenv's Kadeploy3 options rewritten as subcommands."""

from __future__ import annotations

import click
import pytest

from kadeploy_cli.kaenv import translate_aliases
from kadeploy_core.errors import InputError
from kadeploy_core.plans import OPERATION_MACROSTEPS, Macrostep, Operation, microsteps
from kadeployd.pxe.errors import PxeError
from kadeployd.pxe.user_profiles import check_profile, user_dir

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
    # Relative or absolute, the caller's own directory and shared files are fine, and so are
    # the configuration files INCLUDE and MENU INCLUDE name there.
    included = check_profile(
        "INCLUDE users/alice/menu.cfg\nMENU INCLUDE /users/alice/m.cfg tag\n"
        "MENU INCLUDE FILES_PREFIX/x.cfg\nINCLUDE pxelinux.cfg/common\nMENU TITLE users/bob\n"
        "KERNEL users/alice/k\nMENU BACKGROUND splash.png\n",
        "alice",
    )
    assert "MENU INCLUDE users/alice/x.cfg" in included.text


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
        # One rule for both forms: under users/, only the caller's own directory.
        (
            "KERNEL users/bob/k\n",
            1,
            "KERNEL users/bob/k: paths under users/ must stay inside your directory users/alice/",
        ),
        ("INITRD users/alice/i,users/alice2/i\n", 1, "INITRD users/alice2/i: paths under"),
        ("APPEND initrd=users/bob/i\n", 1, "APPEND initrd=users/bob/i: paths under users/"),
        ("KERNEL //users/bob/k\n", 1, "inside your directory /users/alice/"),
        ("KERNEL users/alice\n", 1, "paths under users/ must stay inside"),
        ("KERNEL users/./bob/k\n", 1, "'.'"),
        ("KERNEL envs/../users/bob/k\n", 1, "'..'"),
        ("KERNEL /users/alice/../bob/k\n", 1, "'..'"),
        # Configuration files pxelinux includes are fetched over TFTP too.
        ("INCLUDE users/bob/menu.cfg\n", 1, "INCLUDE users/bob/menu.cfg: paths under users/"),
        ("include /users/bob/menu.cfg tag\n", 1, "INCLUDE /users/bob/menu.cfg: absolute"),
        ("INCLUDE ../pxelinux.cfg/default\n", 1, "'..'"),
        ("LABEL x\n  MENU INCLUDE users/bob/m.cfg\n", 2, "MENU INCLUDE users/bob/m.cfg: paths"),
        ("menu include tftp::m.cfg\n", 1, "MENU INCLUDE tftp::m.cfg: names another server"),
        ("MENU BACKGROUND /users/bob/splash.png\n", 1, "MENU BACKGROUND /users/bob/splash.png"),
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
    assert OPERATION_MACROSTEPS[Operation.DEPLOY_ENV] == (Macrostep.SET_DEPLOYMENT_ENV,)
    steps = microsteps(Operation.DEPLOY_ENV, Macrostep.SET_DEPLOYMENT_ENV, "prod")
    names = [m.name for m in steps]
    assert names == ["switch_pxe_to_deploy_env", "reboot_from_level", "wait_for_deploy_env"]
    boot = microsteps(Operation.RECORDED_ENV, Macrostep.BOOT_NEW_ENV, "classical")
    assert [m.name for m in boot] == [
        "switch_pxe_to_deployed_env",
        "reboot_from_level",
        "wait_for_recorded_env",
    ]
    deploy = microsteps(Operation.DEPLOY, Macrostep.BOOT_NEW_ENV, "classical")
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
