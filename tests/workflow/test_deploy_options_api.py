"""Kadeploy3's deployment options through the API of a real daemon (dummy macrosteps): each
given option is recorded under its name in the deployment's ``options``; a bad value is a 422
naming ``body.<field>`` (never a 500), ``force_steps`` is for administrators, and
``reformat_tmp`` needs every node's ``disk.tmp_partition``. Next to it, the pure logic: the
``force_steps`` text and the variant lists a request runs (kadeployd/workflow/automata.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_fixtures import RunningApi, error_of, serving_api, wait_finished
from daemon_fixtures import stop_all_actors

from kadeploy_core.forcesteps import ForceStepsError, parse_force_steps
from kadeploy_core.plans import Macrostep, Operation
from kadeployd.config import Macrosteps
from kadeployd.config.timeouts import Timeout
from kadeployd.workflow.automata import job_macrosteps
from kadeployd.workflow.job import DeploymentRequest, NoEnvironment

__all__ = ["stop_all_actors"]

FORCED = (
    "SetDeploymentEnv|SetDeploymentEnvUntrusted:1:100"
    "&BroadcastEnv|BroadcastEnvKascade:1:100"
    "&BootNewEnv|BootNewEnvKexec:0:30,BootNewEnvClassical:1:100"
)


DUMMIES = (
    "SetDeploymentEnv|SetDeploymentEnvDummy:0:30"
    "&BroadcastEnv|BroadcastEnvDummy:0:30"
    "&BootNewEnv|BootNewEnvDummy:0:30"
)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[RunningApi]:
    """The dummy config; n-1 has a /tmp partition, the others none."""
    with serving_api(tmp_path, overrides={1: "disk: {tmp_partition: 4}\n"}) as running:
        yield running


def deploy(client: httpx.Client, nodes: list[str], **body: Any) -> httpx.Response:
    return client.post(
        "/v1/deployments", json={"nodes": nodes, "environment": {"name": "tiny"}, **body}
    )


BAD: list[tuple[str, object, str]] = [
    ("boot_partition", 129, "less than or equal to 128"),
    ("boot_partition", -1, "greater than or equal to 0"),
    ("boot_partition", "two", "integer"),
    ("reformat_tmp", "EXT4", "pattern"),
    ("reformat_tmp", "ext4;reboot", "pattern"),
    ("reformat_tmp", "a" * 17, "pattern"),
    ("disable_kexec", "yes", "boolean"),
    ("disable_disk_partitioning", 1, "boolean"),
    ("disable_bootloader_install", None, "boolean"),
    ("timeout_reboot_kexec", "__import__('os')", "is not allowed"),
    ("timeout_reboot_kexec", "-5", "must be positive"),
    ("timeout_reboot_classical", "n / 0", "must be positive"),
    ("timeout_reboot_classical", "", "at least 1 character"),
    ("timeout_reboot_classical", "1" * 201, "at most 200 characters"),
    ("force_steps", "garbage", "expected the three macrosteps"),
    (
        "force_steps",
        FORCED.replace("Kascade", "Teleport"),
        "unknown variant 'BroadcastEnvTeleport'",
    ),
    ("force_steps", FORCED.replace(":1:100&Broad", ":1000:100&Broad"), "retries must be 0 to 100"),
    ("force_steps", FORCED.replace("BootNewEnv|", "BootNewEnv:"), "part 'BootNewEnv:"),
]


@pytest.mark.usefixtures("stop_all_actors")
def test_bad_values_are_422_naming_the_field(api: RunningApi) -> None:
    root = api.client("root")  # force_steps is checked for administrators
    started = len(api.daemon.reader().deployments(limit=1000))
    for field, value, words in BAD:
        answer = deploy(root, ["n-1"], **{field: value})
        assert answer.status_code == 422, (field, value, answer.text)
        error = error_of(answer)
        assert {d["path"] for d in error["details"]} == {f"body.{field}"}, (field, value, error)
        assert words in answer.text, (field, value, answer.text)
    assert len(api.daemon.reader().deployments(limit=1000)) == started


PXE_BAD: list[tuple[dict[str, Any], str, str]] = [
    ({"profile": "KERNEL ../../etc/passwd\n"}, "body.pxe.profile", "'..' component"),
    ({"profile": "KERNEL /vmlinuz\n"}, "body.pxe.profile", "inside your directory"),
    (
        {"profile": "KERNEL FILES_PREFIX/NODE_SINGULARITY\n", "singularities": {"n-1": ".."}},
        "body.pxe.singularities",
        "'..' component",
    ),
    ({"profile": "X", "singularities": {"n-1": "a\nb"}}, "body.pxe.singularities.n-1", "pattern"),
    ({"profile": "x" * (64 * 1024 + 1)}, "body.pxe.profile", "at most 65536 characters"),
    ({"profile": "X", "files": {"../k": "0" * 32}}, "body.pxe.files.../k.[key]", "pattern"),
]


@pytest.mark.usefixtures("stop_all_actors")
def test_bad_pxe_profiles_are_422_naming_the_field(api: RunningApi) -> None:
    alice = api.client("alice")
    for pxe, path, words in PXE_BAD:
        answer = deploy(alice, ["n-1"], pxe=pxe)
        assert answer.status_code == 422, (pxe, answer.text)
        error = error_of(answer)
        assert path in {d["path"] for d in error["details"]}, (pxe, error)
        assert words in answer.text, (pxe, answer.text)


@pytest.mark.usefixtures("stop_all_actors")
def test_force_steps_is_for_administrators(api: RunningApi) -> None:
    refused = deploy(api.client("alice"), ["n-1"], force_steps=FORCED)
    assert refused.status_code == 403, refused.text
    error = error_of(refused)
    assert error["details"][0]["path"] == "body.force_steps"
    assert "administrators only" in error["message"]


@pytest.mark.usefixtures("stop_all_actors")
def test_reformat_tmp_needs_a_tmp_partition_on_every_node(api: RunningApi) -> None:
    alice = api.client("alice")
    refused = deploy(alice, ["n-1", "n-2", "n-3"], reformat_tmp="ext4")
    assert refused.status_code == 422, refused.text
    error = error_of(refused)
    assert error["code"] == "no_tmp_partition"
    assert "disk.tmp_partition) on n-2, n-3" in error["message"]


@pytest.mark.usefixtures("stop_all_actors")
def test_every_given_option_is_recorded_under_its_name(api: RunningApi) -> None:
    given = {
        "boot_partition": 0,
        "reformat_tmp": "ext4",
        "disable_disk_partitioning": True,
        "disable_bootloader_install": True,
        "disable_kexec": True,
        "timeout_reboot_classical": "100 + 2 * n",
        "timeout_reboot_kexec": "60",
        "force_steps": DUMMIES,
    }
    root = api.client("root")
    answer = deploy(root, ["n-1"], **given)
    assert answer.status_code == 201, answer.text
    final = wait_finished(root, answer.json()["id"])
    shown = root.get(f"/v1/deployments/{final['id']}").json()["options"]
    assert {name: shown.get(name) for name in given} == given
    plain = deploy(root, ["n-2"])
    assert plain.status_code == 201, plain.text
    assert not set(given) & set(plain.json()["options"])


# ------------------------------------------------------------------ pure logic


def test_force_steps_text_is_read_as_kadeploy3_writes_it() -> None:
    forced = parse_force_steps(FORCED)
    assert forced.text == FORCED
    boot = forced.macrosteps[Macrostep.BOOT_NEW_ENV]
    assert [(v.type, v.retries, v.timeout) for v in boot] == [
        ("kexec", 0, 30),
        ("classical", 1, 100),
    ]
    assert forced.macrosteps[Macrostep.BROADCAST_ENV][0].type == "chain"
    with pytest.raises(ForceStepsError, match="BootNewEnv: 'BootNewEnvClassical:1'"):
        parse_force_steps(FORCED.replace("BootNewEnvClassical:1:100", "BootNewEnvClassical:1"))
    with pytest.raises(ForceStepsError, match="timeout must be 1 to"):
        parse_force_steps(FORCED.replace("Kexec:0:30", "Kexec:0:0"))


def _configured() -> Macrosteps:
    return Macrosteps.model_validate(
        {
            "SetDeploymentEnv": [{"type": "untrusted", "retries": 1, "timeout": 100}],
            "BroadcastEnv": [{"type": "chain", "retries": 1, "timeout": 100}],
            "BootNewEnv": [
                {"type": "kexec", "retries": 0, "timeout": 50},
                {"type": "classical", "retries": 1, "timeout": 300},
                {"type": "hard_reboot", "retries": 1, "timeout": 300},
            ],
        }
    )


def _request(tmp_path: Path, **options: Any) -> DeploymentRequest:
    from daemon_fixtures import make_tar_environment  # noqa: PLC0415

    from kadeployd.environment import load_environment  # noqa: PLC0415

    environment = load_environment(make_tar_environment(tmp_path))
    return DeploymentRequest(user="alice", environment=environment, nodes=("n-1",), **options)


def _boot(macrosteps: Macrosteps, n: int = 1) -> list[tuple[str, float]]:
    return [(v.type, v.timeout.seconds(n)) for v in macrosteps.BootNewEnv]


def test_the_variant_lists_a_request_runs(tmp_path: Path) -> None:
    configured = _configured()
    assert job_macrosteps(configured, _request(tmp_path)) is configured
    assert _boot(job_macrosteps(configured, _request(tmp_path, disable_kexec=True))) == [
        ("classical", 300),
        ("hard_reboot", 300),
    ]
    assert _boot(job_macrosteps(configured, _request(tmp_path, boot_partition=2)))[0][0] == (
        "classical"
    )
    timed = _request(
        tmp_path,
        timeout_reboot_classical=Timeout.parse("10 * n"),
        timeout_reboot_kexec=Timeout.parse(7),
    )
    assert _boot(job_macrosteps(configured, timed), n=3) == [
        ("kexec", 7),
        ("classical", 30),
        ("hard_reboot", 30),
    ]
    # A BootNewEnv of kexec only becomes one classical variant with the kexec timeout.
    forced = parse_force_steps(FORCED.replace(",BootNewEnvClassical:1:100", ""))
    only = job_macrosteps(configured, _request(tmp_path, force_steps=forced, disable_kexec=True))
    assert _boot(only) == [("classical", 30)]
    assert only.BroadcastEnv[0].timeout.seconds(1) == 100
    # kareboot's operations boot through the firmware: no kexec.
    reboot = DeploymentRequest(
        user="alice",
        environment=NoEnvironment(name="deploy_env"),
        nodes=("n-1",),
        operation=Operation.RECORDED_ENV,
    )
    assert [t for t, _ in _boot(job_macrosteps(configured, reboot))] == [
        "classical",
        "hard_reboot",
    ]


@pytest.mark.usefixtures("stop_all_actors")
def test_pxe_files_are_removed_at_the_end_of_a_deployment_that_names_them_nowhere(
    api: RunningApi, tmp_path: Path
) -> None:
    from api_fixtures import upload  # noqa: PLC0415

    alice = api.client("alice")
    tftp_root = api.daemon.config.daemon.tftp_root
    kernel = tmp_path / "k"
    kernel.write_bytes(b"KERNEL")
    pxe = {"profile": "KERNEL FILES_PREFIX/k\n", "files": {"k": upload(alice, kernel)}}
    # Refused (an unknown node): nothing stays published.
    refused = deploy(alice, ["n-99"], pxe=pxe)
    assert refused.status_code == 422, refused.text
    assert error_of(refused)["code"] == "unknown_node"
    assert not (tftp_root / "users/alice/k").exists()
    # The upload was given back: the same request works once the node is right. Its dummy
    # BootNewEnv writes no profile, so at its end no profile names the file: removed.
    answer = deploy(alice, ["n-1"], pxe=pxe)
    assert answer.status_code == 201, answer.text
    final = wait_finished(alice, answer.json()["id"])
    assert final["status"] == "succeeded", final
    assert not (tftp_root / "users/alice/k").exists()


def test_held_pxe_files_survive_sweeps_until_released(tmp_path: Path) -> None:
    from kadeployd.pxe import held_files, user_profiles  # noqa: PLC0415

    source = tmp_path / "vmlinuz"
    source.write_bytes(b"K")
    root = tmp_path / "tftp"
    [path] = user_profiles.publish_files(root, "alice", {"vmlinuz": source})
    held_files.hold("request-1", [path])
    assert user_profiles.sweep_user_files(root, grace=0) == 0  # held: kept
    assert held_files.rename("request-1", "deployment-1") == frozenset()
    assert user_profiles.sweep_user_files(root, grace=0) == 0
    assert held_files.release("deployment-1") == {path}
    assert user_profiles.remove_unreferenced(root, [path]) == 1
    assert not (root / path).exists()
    # A request whose deployment ended before the rename holds nothing.
    held_files.hold("request-2", [path])
    assert held_files.rename("request-2", "deployment-1") == {path}
    assert path not in held_files.held()


@pytest.mark.usefixtures("stop_all_actors")
def test_checking_singularities_is_bounded(api: RunningApi) -> None:
    # Each distinct value is checked in the lines naming NODE_SINGULARITY: 100,000 values in a
    # 60 kB line would be 6 GB of checking (minutes of the API's time); refused at once.
    line = "KERNEL FILES_PREFIX/NODE_SINGULARITY" + " x" * 30_000
    values = {f"node-{i}": f"v{i}" for i in range(100_000)}
    answer = deploy(api.client("alice"), ["n-1"], pxe={"profile": line, "singularities": values})
    assert answer.status_code == 413, answer.text[:500]
    error = error_of(answer)
    assert error["details"][0]["path"] == "body.pxe.singularities"
    assert "100000 distinct values" in error["message"]
