"""kastat3: Kadeploy3's CSV deployment log and failure rates, as an installed subprocess
against a server started with `kadeploy-server start` (deployments of the dummy variants, one
cancelled), and the log's filters, sort and limit on a real store."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_fixtures import SLOW_NODE, CliServer, cli_server
from daemon_fixtures import wait_until

from kadeploy_cli.k3.kastat3 import FIELDS
from kadeployd.store import Store, database_path
from kadeployd.store.deploy_log import LogFilter

__all__ = ["cli_server"]


@pytest.fixture(scope="module")
def history(cli_server: CliServer) -> dict[str, Any]:
    """Alice deploys n-1 and n-2 (both succeed), then n-4 (cancelled while it hangs)."""
    deployed = cli_server.run("kadeploy", "-m", "n-1,n-2", "-e", "tiny")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    with cli_server.api("alice") as client:
        first = client.get("/v1/deployments", params={"limit": 1}).json()[0]["id"]
        started = client.post(
            "/v1/deployments", json={"nodes": [SLOW_NODE], "environment": {"name": "tiny"}}
        )
        assert started.status_code == 201, started.text
        slow = started.json()["id"]
        cancelled = client.post(f"/v1/deployments/{slow}/cancel", json={})
        assert cancelled.status_code in (200, 202), cancelled.text

        def over() -> bool:
            return bool(client.get(f"/v1/deployments/{slow}").json()["status"] != "running")

        wait_until(over, 60, "the cancelled deployment to end")
    return {"first": first, "slow": slow}


def lines(result: Any) -> list[str]:
    assert result.returncode == 0, result.stdout + result.stderr
    return [line for line in result.stdout.split("\n") if line]


def test_kastat3_prints_kadeploy3_csv_with_fields(
    cli_server: CliServer, history: dict[str, Any]
) -> None:
    every = lines(cli_server.run("kastat3"))
    assert len(every) == 3
    assert cli_server.run("kastat3").stdout.endswith("\n")
    first = every[0].split(",")
    assert len(first) == len(FIELDS)
    row = dict(zip(FIELDS, first, strict=True))
    assert row["wid"] == history["first"]
    assert row["user"] == "alice"
    assert row["hostname"] == "n-1"
    assert row["step1"] == "SetDeploymentEnvDummy"
    assert row["step2"] == "BroadcastEnvDummy"
    assert row["step3"] == "BootNewEnvDummy"
    assert int(row["timeout_step1"]) > 0
    assert (row["retry_step1"], row["retry_step2"], row["retry_step3"]) == ("0", "0", "0")
    assert abs(int(row["start"]) - time.time()) < 3600
    assert row["env"] == "tiny:1"
    assert row["md5"] == ""
    assert (row["success"], row["error"]) == ("true", "")
    assert every[2].split(",")[2] == SLOW_NODE
    assert every[2].split(",")[18] == "false"

    chosen = lines(cli_server.run("kastat3", "-F", "hostname,success,wid"))
    assert chosen == [
        f"n-1,true,{history['first']}",
        f"n-2,true,{history['first']}",
        f"{SLOW_NODE},false,{history['slow']}",
    ]
    bad = cli_server.run("kastat3", "-F", "hostname,bogus,nope")
    assert (bad.returncode, bad.stderr.strip()) == (1, "Invalid field(s) bogus, nope")


def test_kastat3_filters_sort_and_limit(cli_server: CliServer, history: dict[str, Any]) -> None:
    one = lines(cli_server.run("kastat3", "-w", history["slow"], "-F", "hostname"))
    assert one == [SLOW_NODE]
    assert lines(cli_server.run("kastat3", "-m", "n-2", "-F", "hostname")) == ["n-2"]
    assert lines(cli_server.run("kastat3", "-o", "deploy", "-F", "hostname")) == [
        "n-1",
        "n-2",
        SLOW_NODE,
    ]
    assert cli_server.run("kastat3", "-o", "reboot").stdout == ""
    assert cli_server.run("kastat3", "-o", "power").stdout == ""
    assert cli_server.run("kastat3", "-y", "2000-01-01").stdout == ""
    assert len(lines(cli_server.run("kastat3", "-x", "2000-01-01 00:00:00"))) == 3
    assert len(lines(cli_server.run("kastat3", "--limit", "2"))) == 2
    assert lines(
        cli_server.run("kastat3", "--sort", "success,hostname", "-F", "hostname,success")
    ) == [f"{SLOW_NODE},false", "n-1,true", "n-2,true"]
    assert cli_server.run("kastat3", "-r", "1").stdout == ""  # the dummy steps never retry
    assert len(lines(cli_server.run("kastat3", "-r", "0", "-s", "1,3"))) == 3
    wrong_step = cli_server.run("kastat3", "-r", "1", "-s", "4")
    assert wrong_step.returncode == 4, wrong_step.stdout + wrong_step.stderr

    rates = lines(cli_server.run("kastat3", "-b"))
    assert rates == ["n-1: 0.0", "n-2: 0.0", f"{SLOW_NODE}: 1.0"]
    assert lines(cli_server.run("kastat3", "-b", "0.5")) == [f"{SLOW_NODE}: 1.0"]
    assert lines(cli_server.run("kastat3", "--failure-rate", ".5", "-m", "n-1")) == []
    bad_rate = cli_server.run("kastat3", "-b", "2")
    assert bad_rate.returncode == 1
    assert bad_rate.stderr.startswith("Option parsing error:")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(database_path(tmp_path / "state")) as opened:
        yield opened


def test_log_retries_steps_sort_and_limit_on_a_store(store: Store) -> None:
    """-r/-s select on the attempts of each macrostep; durations run to the next macrostep."""
    dep = store.create_deployment(
        user="alice",
        environment_name="deb",
        environment_version=2,
        environment={"name": "deb"},
        options={},
        nodes=("n-1", "n-2"),
        at=1000.0,
    )
    for node in ("n-1", "n-2"):
        store.record_state(dep, node, "rebooting", macrostep="SetDeploymentEnv",
                           variant="untrusted", attempt=1, at=1001)  # fmt: skip
    store.record_state(dep, "n-1", "rebooting", macrostep="SetDeploymentEnv",
                       variant="untrusted", attempt=2, at=1005)  # fmt: skip
    store.record_state(dep, "n-1", "transferring", macrostep="BroadcastEnv", variant="chain",
                       attempt=1, at=1010)  # fmt: skip
    store.record_state(dep, "n-1", "booting", macrostep="BootNewEnv", variant="classical",
                       attempt=1, at=1030)  # fmt: skip
    store.finish_node(dep, "n-1", "deployed", at=1040)
    store.finish_node(dep, "n-2", "deploy_failed", "boom", error_step="wait_deploy_env", at=1050)

    records = store.log_records(LogFilter())
    first = records[0]
    assert first.steps == (
        ("SetDeploymentEnv", "untrusted"),
        ("BroadcastEnv", "chain"),
        ("BootNewEnv", "classical"),
    )
    assert (first.retries, first.durations) == ((1, 0, 0), (9, 20, 10))
    assert (first.env, first.start, first.success) == ("deb:2", 1000, True)
    assert (records[1].steps[1], records[1].success, records[1].error) == (None, False, "boom")

    assert [r.hostname for r in store.log_records(LogFilter(min_retries=1))] == ["n-1"]
    assert store.log_records(LogFilter(min_retries=1, retry_steps=(2,))) == []
    assert [r.hostname for r in store.log_records(LogFilter(), sort=("step1_duration",))] == [
        "n-1",
        "n-2",
    ]
    assert [r.hostname for r in store.log_records(LogFilter(), sort=("success",))] == [
        "n-2",
        "n-1",
    ]
    assert len(store.log_records(LogFilter(), limit=1)) == 1
    with pytest.raises(ValueError, match="cannot sort on 'nope'"):
        store.log_records(LogFilter(), sort=("nope",))
    rates = {r.hostname: r.rate for r in store.failure_rates(LogFilter())}
    assert rates == {"n-1": 0.0, "n-2": 1.0}
