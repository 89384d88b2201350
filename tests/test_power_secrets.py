"""Secrets never in logs: a power command with a password variable, run for real through the
daemon's API (dummy config, shell-script commands), every log line captured."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pykka
import pytest
from api_fixtures import api_config, short_dir, start_api
from click.testing import CliRunner

from kadeployd.reboot.redact import is_secret_name
from kadeployd.server_cli import main

PASSWORD = "pw-Zq81-very-secret"
WORD = "hunter2-by-config"

SECRET_POWER = f"""\
vars: {{ipmi_password: "{PASSWORD}", bmc_word: "{WORD}", ipmi_user: admin}}
power:
  secret_vars: [bmc_word]
  power_off: [sh, -c, 'echo "login as $1 with $2 refused" >&2; exit 1', power-off, "{{ipmi_user}}", "{{ipmi_password}}"]
  power_on: [sh, -c, 'test "$1" = "$2"', power-on, "{{bmc_word}}", "{WORD}"]
"""


def test_power_commands_are_logged_and_answered_without_their_secrets(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    directory = short_dir()
    socket_path = directory / "api.sock"
    api = start_api(api_config(tmp_path / "conf", socket_path, {1: SECRET_POWER}), socket_path)
    try:
        root = api.client("root")
        off = root.post("/v1/power", json={"nodes": ["n-1"], "action": "off"})
        assert off.status_code == 200, off.text
        [result] = off.json()
        assert not result["ok"]
        # The command's stderr quoted the password: the answer carries it masked.
        assert "login as admin with *** refused" in result["message"]
        on = root.post("/v1/power", json={"nodes": ["n-1"], "action": "on"})
        assert on.status_code == 200, on.text
        assert on.json()[0]["ok"], on.text  # the real value reached the command
    finally:
        api.stop()
        pykka.ActorRegistry.stop_all(timeout=10)
        shutil.rmtree(directory, ignore_errors=True)
    text = caplog.text
    assert "power_off" in text and "power_on" in text  # which template ran, and on which node
    assert "sh -c" in text and "admin ***" in text
    assert PASSWORD not in text + off.text
    assert WORD not in text + on.text


def test_check_config_shows_secret_vars_masked(tmp_path: Path) -> None:
    conf = api_config(tmp_path / "conf", tmp_path / "api.sock", {1: SECRET_POWER})
    shown = CliRunner().invoke(main, ["check-config", "--conf", str(conf), "--node", "n-1"])
    assert shown.exit_code == 0, shown.output
    assert "vars.ipmi_user" in shown.output and '"admin"' in shown.output
    assert PASSWORD not in shown.output
    assert f'"{WORD}"' not in shown.output.split("vars.bmc_word")[1].splitlines()[0]


def test_secret_names() -> None:
    assert is_secret_name("ipmi_password") and is_secret_name("BMC_PASSWD")
    assert is_secret_name("api_token") and is_secret_name("api_key")
    assert is_secret_name("plain", configured=["plain"])
    assert not is_secret_name("ipmi_password_file")  # a path, shown
    assert not is_secret_name("ssh_key") and not is_secret_name("ipmi_user")
