"""Pure logic of the Kadeploy3 commands: the client configuration, errors as Kadeploy3's exit
codes, the node lists and progress lines, the request fields of Kadeploy3's options."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import pytest

from kadeploy_cli.client import ServerAddress
from kadeploy_cli.errors import (
    ApiFailure,
    ServerFailure,
    ServerUnreachable,
    UsageProblem,
    api_failure,
)
from kadeploy_cli.k3 import config
from kadeploy_cli.k3.common import expand_prefixes, k3_error
from kadeploy_cli.k3.kadeploy3 import FORCE_STEPS, k3_fields
from kadeploy_cli.k3.pxe import read_singularities
from kadeploy_cli.k3.workflow import (
    Outcome,
    Printer,
    Progress,
    operation_url,
    print_result,
)
from kadeploy_cli.output import NodeOutcome

KADEPLOY3_CONF = """\
---
default: site1
servers:
- name: site1
  port: 25300
  hostname: frontend.site1.testbed.lan
  secure: true
- name: site2
  port: 25300
  hostname: frontend.site2.testbed.lan
  secure: false
- name: lab
  url: unix:/run/kd.sock
  token_file: /etc/lab.token
"""


def test_kadeploy3s_client_conf_is_read_as_is(tmp_path: Path) -> None:
    path = tmp_path / "client.conf"
    path.write_text(KADEPLOY3_CONF)
    conf = config.parse_client_config(path)
    assert conf.default == "site1"
    assert conf.server(None).address == ServerAddress(
        url="https://frontend.site1.testbed.lan:25300"
    )
    assert conf.server("site2").address == ServerAddress(
        url="http://frontend.site2.testbed.lan:25300"
    )
    lab = conf.server("lab")
    assert (lab.address, lab.token_file) == (
        ServerAddress(socket=Path("/run/kd.sock")),
        Path("/etc/lab.token"),
    )
    with pytest.raises(UsageProblem, match=r"The server 'nope' does not exist .*site1, site2, lab"):
        conf.server("nope")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("servers: []\n", "'servers': expected a non-empty list"),
        ("servers: [{name: a, hostname: h, port: 0}]\n", "'servers[0]'.port: expected a TCP port"),
        ("servers: [{hostname: h, port: 1}]\n", "'servers[0]'.name"),
        ("default: b\nservers: [{name: a, hostname: h, port: 1}]\n", "'default': 'b' is not"),
        ("servers: [{name: a, url: nowhere}]\n", "'servers[0]'.url: invalid server address"),
        ("servers: [\n", "Invalid YAML file"),
    ],
)
def test_a_bad_client_conf_names_the_field(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "client.conf"
    path.write_text(text)
    with pytest.raises(UsageProblem) as caught:
        config.parse_client_config(path)
    assert problem in caught.value.format_message()


def test_the_client_conf_is_found_where_kadeploy3_and_users_put_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv(config.FILE_ENV, raising=False)
    monkeypatch.delenv(config.DIR_ENV, raising=False)
    monkeypatch.setattr(config, "SYSTEM_DIR", tmp_path / "etc")
    assert config.config_path() is None
    monkeypatch.setenv("KADEPLOY_SERVER", "unix:/run/native.sock")
    implicit = config.load_client_config(None)
    assert implicit.implicit and implicit.server(None).address.socket == Path("/run/native.sock")
    assert config.load_client_config("host:25300").server(None).address.url == "http://host:25300"
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "client.conf").write_text(KADEPLOY3_CONF)
    assert config.config_path() == tmp_path / "etc" / "client.conf"
    (home / ".kadeploy3").mkdir(parents=True)
    (home / ".kadeploy3" / "client.conf").write_text(KADEPLOY3_CONF)
    assert config.config_path() == home / ".kadeploy3" / "client.conf"
    monkeypatch.setenv(config.DIR_ENV, str(tmp_path))
    (tmp_path / "client.conf").write_text(KADEPLOY3_CONF)
    assert config.config_path() == tmp_path / "client.conf"
    monkeypatch.setenv(config.FILE_ENV, str(tmp_path / "missing.conf"))
    with pytest.raises(UsageProblem, match="File not found"):
        config.load_client_config(None)


@pytest.mark.parametrize(
    ("error", "code", "tail"),
    [
        (api_failure(422, "unknown_node", "unknown node n-9"), 2, "[Kadeploy Error #2]"),
        (api_failure(403, "no_right", "no right on n-1"), 6, "[Kadeploy Error #6]"),
        (api_failure(404, "unknown_environment", "no env"), 7, "[Kadeploy Error #7]"),
        (api_failure(422, "invalid_custom_steps", "bad"), 8, "[Kadeploy Error #8]"),
        (api_failure(409, "node_busy", "busy"), 14, "[Kadeploy Error #14]"),
        (api_failure(401, "unauthorized", "bad token"), 2, "[HTTP Error #401]"),
        (api_failure(404, "unknown_deployment", "no such"), 1, "no such"),
        (api_failure(503, "store_unavailable", "down"), 3, "down"),
        (ServerUnreachable("cannot reach"), 1, "cannot reach"),
        (UsageProblem("bad nodefile"), 1, "bad nodefile"),
    ],
)
def test_errors_exit_with_kadeploy3s_codes(error: UsageProblem, code: int, tail: str) -> None:
    found = k3_error(error)
    assert (found.code, found.format_message().splitlines()[-1]) == (code, tail)


def test_a_refused_vlan_is_kadeploy3s_invalid_vlan_and_5xx_an_internal_error() -> None:
    vlan = ApiFailure(422, "invalid_request", "bad", [{"path": "body.vlan", "message": "1..4094"}])
    assert k3_error(vlan).code == 9
    failing = k3_error(ServerFailure(500, "internal_error", "boom"))
    assert failing.format_message().startswith("[Internal Server Error]\nboom")


def test_the_node_lists_are_kadeploy3s_and_the_files_appended(tmp_path: Path) -> None:
    out = io.StringIO()
    ok, ko = tmp_path / "ok", tmp_path / "ko"
    ok.write_text("")
    ko.write_text("earlier\n")
    outcome = Outcome.of(
        [
            NodeOutcome("n-1", "deployed", None, None),
            NodeOutcome("n-2", "breakpointed", None, None),
            NodeOutcome("n-3", "deploy_failed", "BootNewEnv", "the node did not answer"),
            NodeOutcome("n-4", "aborted", None, None),
        ]
    )
    print_result(
        "Deployment",
        outcome,
        {"ok_file": str(ok), "ko_file": str(ko)},
        Printer(None, threading.Lock(), out),
    )
    assert out.getvalue() == (
        "The deployment is successful on nodes\nn-1\nn-2\n"
        "The deployment failed on nodes\nn-3 (BootNewEnv: the node did not answer)\nn-4 (aborted)\n"
    )
    assert (ok.read_text(), ko.read_text()) == ("n-1\nn-2\n", "earlier\nn-3\nn-4\n")


def test_multi_server_lines_carry_the_server_name_as_kadeploy3_pads_it() -> None:
    out = io.StringIO()
    print_result(
        "Reboot operation", Outcome(ok=["a-1"]), {}, Printer("nancy", threading.Lock(), out)
    )
    assert out.getvalue() == (
        "[nancy]   The reboot operation is successful on nodes\n[nancy]   a-1\n"
    )


def test_progress_lines_follow_the_verbose_level() -> None:
    def lines(verbose: int, debug: io.StringIO | None = None) -> list[str]:
        out = io.StringIO()
        progress = Progress(
            "Deployment",
            {"created_at": 100.0},
            Printer(None, threading.Lock(), out),
            verbose,
            debug,
        )
        progress.launching(["n-1", "n-2"])
        progress.state(
            {
                "node": "n-1",
                "state": "rebooting",
                "macrostep": "SetDeploymentEnv",
                "variant": "untrusted",
                "at": 101.0,
            }
        )
        progress.state(
            {
                "node": "n-2",
                "state": "rebooting",
                "macrostep": "SetDeploymentEnv",
                "variant": "untrusted",
                "at": 101.0,
            }
        )
        progress.log({"node": "n-1", "stream": "stdout", "text": "mkfs done\nexit 0\n"})
        progress.state({"node": "n-1", "state": "deployed", "at": 142.4})
        progress.state(
            {
                "node": "n-2",
                "state": "deploy_failed",
                "macrostep": "BootNewEnv",
                "variant": "classical",
                "message": "no answer",
                "at": 150.0,
            }
        )
        progress.done()
        return out.getvalue().splitlines()

    assert lines(0) == ["Launching a deployment on n-[1-2]", "End of deployment after 50s"]
    assert lines(3) == [
        "Launching a deployment on n-[1-2]",
        "Performing a SetDeploymentEnvUntrusted step",
        "End of deployment for n-1 after 42s",
        "!!! The nodes n-2 failed on step BootNewEnvClassical",
        "Deployment failed for n-2 after 50s",
        "  n-2: no answer",
        "End of deployment after 50s",
    ]
    assert "[n-1] mkfs done" in lines(5)
    debug = io.StringIO()
    assert not any("mkfs" in line for line in lines(3, debug))
    assert debug.getvalue() == "[dbg] [n-1] mkfs done\n[dbg] [n-1] exit 0\n"


def test_no_wait_urls() -> None:
    assert (
        operation_url(ServerAddress(url="https://kd:25300"), "d1")
        == "https://kd:25300/v1/deployments/d1"
    )
    assert (
        operation_url(ServerAddress(socket=Path("/run/kd/api.sock")), "d1")
        == "http+unix://%2Frun%2Fkd%2Fapi.sock/v1/deployments/d1"
    )


def test_set_pxe_pattern_is_kadeploy3s_node_comma_value(tmp_path: Path) -> None:
    path = tmp_path / "pattern"
    path.write_text("# node,value\nn-1, 10.0.0.1\n\nn-2,10.0.0.2,extra\n")
    assert read_singularities(path) == {"n-1": "10.0.0.1", "n-2": "10.0.0.2"}
    path.write_text("n-1\n")
    with pytest.raises(Exception, match=r"pattern:1: expected NODE,VALUE"):
        read_singularities(path)


def test_only_the_options_given_are_sent() -> None:
    none = dict.fromkeys(
        [
            "boot_partition",
            "reformat_tmp",
            "reboot_classical_timeout",
            "reboot_kexec_timeout",
            "force_steps",
            "vlan",
        ]
    ) | dict.fromkeys(
        ["disable_kexec", "disable_bootloader_install", "disable_disk_partitioning"], False
    )
    assert k3_fields(none) == {}
    given = none | {
        "boot_partition": 0,
        "reformat_tmp": "ext4",
        "disable_kexec": True,
        "disable_bootloader_install": True,
        "disable_disk_partitioning": True,
        "reboot_classical_timeout": "100+n",
        "reboot_kexec_timeout": "60",
        "force_steps": "SetDeploymentEnv|SetDeploymentEnvUntrusted:1:100&BroadcastEnv|BroadcastEnvKascade:1:100&BootNewEnv|BootNewEnvClassical:1:100",
        "vlan": "12",
    }
    assert k3_fields(given) == {
        "boot_partition": 0,
        "reformat_tmp": "ext4",
        "disable_kexec": True,
        "disable_bootloader_install": True,
        "disable_disk_partitioning": True,
        "timeout_reboot_classical": "100+n",
        "timeout_reboot_kexec": "60",
        "force_steps": given["force_steps"],
        "vlan": "12",
    }
    assert FORCE_STEPS.match(str(given["force_steps"]))
    assert not FORCE_STEPS.match("BootNewEnv|BootNewEnvClassical:1:100")


def test_a_reason_on_several_lines_stays_on_its_node_line() -> None:
    outcome = Outcome.of([NodeOutcome("n-1", "deploy_failed", "BroadcastEnv", "mkfs:\n  bad\n")])
    assert outcome.ko == [("n-1", "BroadcastEnv: mkfs: bad")]


def test_long_options_may_be_abbreviated_as_rubys_optionparser_allows() -> None:
    names = ["--env-name", "--env-user", "--verbose-level", "--no-kexec", "--no-wait"]
    assert expand_prefixes(
        ["--env-n", "x", "--verbose=3", "--no-k", "--env", "-m", "--", "--verbose"], names
    ) == ["--env-name", "x", "--verbose-level=3", "--no-kexec", "--env", "-m", "--", "--verbose"]
