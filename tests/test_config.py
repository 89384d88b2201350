"""Layered configuration: precedence, ranges, validation errors, check-config."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pydantic
import pytest

from kadeploy_core.errors import ConfigError, Problem
from kadeployd.config import Config, load_config

REPO = Path(__file__).resolve().parent.parent
SERVER = [sys.executable, "-c", "from kadeployd.server_cli import main; main()"]

MINIMAL_DEPLOY = """\
daemon:
  state_dir: /tmp/kadeployd-test
boot:
  deploy_kernel: kernels/deploy-vmlinuz
automata:
  macrosteps:
    SetDeploymentEnv: [{type: untrusted, retries: 1, timeout: 100}]
    BroadcastEnv: [{type: direct, retries: 1, timeout: "10 * n"}]
    BootNewEnv: [{type: classical, retries: 1, timeout: 100}]
"""


def write_conf(directory: Path, deploy: str, clusters: dict[str, str], nodes: str) -> Path:
    """A configuration directory made of the given file texts."""
    (directory / "clusters").mkdir(parents=True, exist_ok=True)
    (directory / "deploy.conf").write_text(textwrap.dedent(deploy))
    for name, text in clusters.items():
        (directory / "clusters" / f"{name}.conf").write_text(textwrap.dedent(text))
    (directory / "nodes.conf").write_text(textwrap.dedent(nodes))
    return directory


def problems_of(directory: Path) -> tuple[Problem, ...]:
    with pytest.raises(ConfigError) as caught:
        load_config(directory)
    return caught.value.problems


def only_problem(directory: Path) -> Problem:
    problems = problems_of(directory)
    assert len(problems) == 1, problems
    return problems[0]


def run_server(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SERVER, *args], capture_output=True, text=True, timeout=60, env=env, check=False
    )


# ---------------------------------------------------------------- the shipped example


def test_shipped_example_configuration_is_valid() -> None:
    config = load_config(REPO / "conf")
    assert set(config.clusters) == {"griffon", "graphene"}
    assert len(config.clusters["griffon"]) == 92
    assert config.nodes["griffon-92"].settings.disk.block_device == "/dev/sdb"
    assert config.nodes["griffon-91"].settings.disk.block_device == "/dev/sda"


def test_check_config_cli_accepts_shipped_example() -> None:
    result = run_server("check-config", "--conf", str(REPO / "conf"))
    assert result.returncode == 0, result.stderr
    assert "configuration is valid: 136 nodes" in result.stdout


def test_kadeploy_conf_variable_chooses_the_directory(tmp_path: Path) -> None:
    env = {**os.environ, "KADEPLOY_CONF": str(tmp_path / "nowhere")}
    result = run_server("check-config", env=env)
    assert result.returncode == 1
    assert "configuration directory not found" in result.stderr


# ---------------------------------------------------------------- precedence


@pytest.fixture
def layered(tmp_path: Path) -> Config:
    """Every key set globally; some overridden by the cluster; some of those by one node."""
    write_conf(
        tmp_path,
        MINIMAL_DEPLOY
        + """\
ssh: {user: root, port: 22, connect_timeout: 5}
vars: {a: global-a, b: global-b, c: global-c}
power:
  reboot_hard: [ipmitool, "{bmc}", cycle]
  reboot_soft: [ssh, "{address}", reboot]
disk: {block_device: /dev/sda, deploy_partition: 3, filesystem: ext4}
""",
        {
            "alpha": """\
            ssh: {port: 2222}
            vars: {b: cluster-b, c: cluster-c}
            power:
              reboot_hard: [ipmitool, -H, "{bmc}", chassis, power, cycle]
            disk: {deploy_partition: 4}
            automata:
              macrosteps:
                BootNewEnv: [{type: hard_reboot, retries: 3, timeout: 50}]
            """
        },
        """\
        n-[1-2]:
          cluster: alpha
          address: 10.0.0.[1-2]
          mac: 02:00:00:00:00:[01-02]
          bmc: 10.1.0.[1-2]
        n-3:
          cluster: alpha
          address: 10.0.0.3
          mac: 02:00:00:00:00:03
          bmc: 10.1.0.3
          ssh: {connect_timeout: 1}
          vars: {c: node-c}
          disk: {filesystem: ext3}
          automata:
            macrosteps:
              SetDeploymentEnv: [{type: prod, retries: 0, timeout: 20}]
        """,
    )
    return load_config(tmp_path)


def test_global_value_applies_where_nothing_overrides_it(layered: Config) -> None:
    settings = layered.nodes["n-3"].settings
    assert settings.ssh.user == "root"
    assert settings.vars["a"] == "global-a"
    assert settings.disk.block_device == "/dev/sda"
    assert str(settings.power.reboot_soft) == "ssh {address} reboot"
    assert layered.origins["n-3"]["vars.a"] == "deploy.conf:11"


def test_cluster_overrides_global_key_by_key(layered: Config) -> None:
    settings = layered.nodes["n-1"].settings
    assert settings.ssh.port == 2222
    assert settings.ssh.connect_timeout == 5  # sibling key from the global layer survives
    assert settings.vars == {"a": "global-a", "b": "cluster-b", "c": "cluster-c"}
    assert settings.disk.deploy_partition == 4
    assert settings.disk.filesystem == "ext4"
    assert layered.origins["n-1"]["ssh.port"] == "clusters/alpha.conf:1"
    assert layered.origins["n-1"]["ssh.connect_timeout"] == "deploy.conf:10"


def test_node_overrides_cluster_and_global_key_by_key(layered: Config) -> None:
    settings = layered.nodes["n-3"].settings
    assert settings.ssh.connect_timeout == 1
    assert settings.ssh.port == 2222
    assert settings.vars == {"a": "global-a", "b": "cluster-b", "c": "node-c"}
    assert settings.disk.filesystem == "ext3"
    assert settings.disk.deploy_partition == 4
    assert layered.origins["n-3"]["vars.c"] == "nodes.conf:12"
    assert layered.origins["n-3"]["vars.b"] == "clusters/alpha.conf:2"


def test_lists_are_replaced_whole_not_merged(layered: Config) -> None:
    cluster_node = layered.nodes["n-1"].settings
    assert cluster_node.power.reboot_hard is not None
    assert cluster_node.power.reboot_hard.argv == (
        "ipmitool",
        "-H",
        "{bmc}",
        "chassis",
        "power",
        "cycle",
    )
    boot = cluster_node.automata.macrosteps.BootNewEnv
    assert [(v.type, v.retries) for v in boot] == [("hard_reboot", 3)]
    node = layered.nodes["n-3"].settings.automata.macrosteps
    assert [v.type for v in node.SetDeploymentEnv] == ["prod"]
    assert [v.type for v in node.BootNewEnv] == ["hard_reboot"]
    assert [v.type for v in node.BroadcastEnv] == ["direct"]


def test_node_without_overrides_shares_the_cluster_settings(layered: Config) -> None:
    assert layered.nodes["n-1"].settings is layered.nodes["n-2"].settings


def test_timeout_expression_is_evaluated_for_the_node_count(layered: Config) -> None:
    broadcast = layered.nodes["n-1"].settings.automata.macrosteps.BroadcastEnv[0]
    assert broadcast.timeout.seconds(1) == 10
    assert broadcast.timeout.seconds(300) == 3000


def test_ranges_expand_pairwise(layered: Config) -> None:
    assert [(n.name, n.address, n.mac, n.bmc) for n in layered.nodes.values()][:2] == [
        ("n-1", "10.0.0.1", "02:00:00:00:00:01", "10.1.0.1"),
        ("n-2", "10.0.0.2", "02:00:00:00:00:02", "10.1.0.2"),
    ]
    assert layered.clusters["alpha"] == ("n-1", "n-2", "n-3")


def test_templates_render_to_argument_lists(layered: Config) -> None:
    node = layered.nodes["n-2"]
    assert node.settings.power.reboot_hard is not None
    argv = node.settings.power.reboot_hard.render(node.template_values())
    assert argv == ["ipmitool", "-H", "10.1.0.2", "chassis", "power", "cycle"]


def test_result_is_frozen(layered: Config) -> None:
    node = layered.nodes["n-1"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        node.name = "other"  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        node.settings.ssh.port = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        layered.nodes["x"] = node  # type: ignore[index]


# ---------------------------------------------------------------- malformed input

NODES_OK = """\
n-[1-2]:
  cluster: alpha
  address: 10.0.0.[1-2]
  mac: 02:00:00:00:00:[01-02]
"""


def conf_with(
    tmp_path: Path, deploy: str = MINIMAL_DEPLOY, cluster: str = "", nodes: str = NODES_OK
) -> Path:
    return write_conf(tmp_path, deploy, {"alpha": cluster}, nodes)


def test_three_mistakes_in_three_files_are_reported_in_one_run(tmp_path: Path) -> None:
    conf_with(
        tmp_path,
        deploy=MINIMAL_DEPLOY + "ssh: {usr: root}\n",
        cluster="disk: {deploy_partition: three}\n",
        nodes=NODES_OK.replace("cluster: alpha", "cluster: alpah"),
    )
    problems = problems_of(tmp_path)
    rendered = [str(p) for p in problems]
    assert len(problems) == 3, rendered
    assert "deploy.conf:10: ssh.usr: unknown key; did you mean 'user'?" in rendered
    assert any(
        r.startswith("clusters/alpha.conf:1: disk.deploy_partition: expected an integer")
        for r in rendered
    )
    assert any(
        r.startswith(
            "nodes.conf:2: n-[1-2].cluster: no cluster file clusters/alpah.conf; did you mean 'alpha'"
        )
        for r in rendered
    )

    result = run_server("check-config", "--conf", str(tmp_path))
    assert result.returncode == 1
    assert "3 errors" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for line in rendered:
        assert line in result.stderr


def test_broken_yaml_names_file_and_line(tmp_path: Path) -> None:
    conf_with(tmp_path, cluster="disk:\n  block_device: [unclosed\n")
    problem = only_problem(tmp_path)
    assert problem.source == "clusters/alpha.conf"
    assert problem.message.startswith("invalid YAML")
    assert problem.line is not None


def test_repeated_yaml_key_is_an_error(tmp_path: Path) -> None:
    conf_with(tmp_path, cluster="disk: {deploy_partition: 3}\ndisk: {deploy_partition: 4}\n")
    problem = only_problem(tmp_path)
    assert (problem.source, problem.path, problem.line) == ("clusters/alpha.conf", "disk", 2)
    assert problem.message == "key repeated"


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    conf_with(tmp_path, cluster="- a\n- b\n")
    assert only_problem(tmp_path).message == "expected a mapping of keys at the top level"


@pytest.mark.parametrize(
    ("cluster", "path", "message"),
    [
        ("ssh: {port: 70000}", "ssh.port", "expected a number <= 65535; got 70000"),
        ("ssh: [root]", "ssh", "expected a mapping (key: value); got a list"),
        (
            "disk: {filesystem: ext5}",
            "disk.filesystem",
            "expected one of ext2, ext3, ext4, xfs; got 'ext5'; did you mean 'ext4' or 'ext3' or 'ext2'?",
        ),
        (
            "boot: {prod_boot: chian}",
            "boot.prod_boot",
            "expected one of chain, localboot; got 'chian'; did you mean 'chain'?",
        ),
        ("power: {reboot_hard: []}", "power.reboot_hard", "expected a non-empty argument list"),
        (
            "power: {reboot_hard: [ipmitool, chassis, power, on]}",
            "power.reboot_hard[3]",
            "got a boolean",
        ),
        (
            "power: {reboot_hard: ['{node.__class__}']}",
            "power.reboot_hard",
            "only plain {name} fields",
        ),
        (
            "power: {reboot_hard: [ipmitool, '{nod}']}",
            "power.reboot_hard",
            "unknown placeholder {nod}; did you mean 'node'",
        ),
        ("disk: {partition_device: '/dev/sda'}", "disk.partition_device", "using {partition}"),
        ("sshh: {}", "sshh", "unknown key; did you mean 'ssh'?"),
    ],
)
def test_wrong_values_are_explained(tmp_path: Path, cluster: str, path: str, message: str) -> None:
    conf_with(tmp_path, cluster=cluster + "\n")
    problem = only_problem(tmp_path)
    assert problem.source == "clusters/alpha.conf"
    assert problem.path == path
    assert message in problem.message
    assert problem.line == 1


@pytest.mark.parametrize(
    ("variant", "message"),
    [
        (
            "{type: untrustd, retries: 1, timeout: 5}",
            "unknown variant 'untrustd' of SetDeploymentEnv; expected one of untrusted, prod, dummy; did you mean 'untrusted'?",
        ),
        ("{type: untrusted, retries: -1, timeout: 5}", "expected a number >= 0; got -1"),
        (
            "{type: untrusted, retries: 1, timeout: soon}",
            "expected seconds (a positive number) or an expression of n",
        ),
        (
            "{type: untrusted, retries: 1, timeout: \"__import__('os').system('id')\"}",
            "is not allowed",
        ),
        ('{type: untrusted, retries: 1, timeout: "n - 5"}', "must be positive for every n"),
        ('{type: untrusted, retries: 1, timeout: "10 / (n - n)"}', "must be positive for every n"),
        ("{type: untrusted, retries: 1, timeout: [1]}", "expected seconds"),
        ("{type: untrusted, retries: 1}", "required key is missing"),
    ],
)
def test_bad_variants_are_explained(tmp_path: Path, variant: str, message: str) -> None:
    cluster = f"automata:\n  macrosteps:\n    SetDeploymentEnv:\n      - {variant}\n"
    conf_with(tmp_path, cluster=cluster)
    problem = only_problem(tmp_path)
    assert message in problem.message, problem
    assert problem.source == "clusters/alpha.conf"
    assert problem.path.startswith("automata.macrosteps.SetDeploymentEnv[0]")


def test_empty_variant_list_is_an_error(tmp_path: Path) -> None:
    conf_with(tmp_path, cluster="automata: {macrosteps: {BroadcastEnv: []}}\n")
    assert "at least one variant of BroadcastEnv" in only_problem(tmp_path).message


def test_missing_required_setting_says_where_it_may_be_set(tmp_path: Path) -> None:
    conf_with(
        tmp_path,
        deploy=MINIMAL_DEPLOY.replace("boot:\n  deploy_kernel: kernels/deploy-vmlinuz\n", ""),
    )
    problem = only_problem(tmp_path)
    assert problem.path == "boot"
    assert problem.source == "clusters/alpha.conf"
    assert "set it in deploy.conf, in clusters/alpha.conf or in the node's entry" in problem.message


def test_error_in_a_node_override_points_at_nodes_conf(tmp_path: Path) -> None:
    nodes = (
        NODES_OK
        + "n-3:\n  cluster: alpha\n  address: 10.0.0.3\n  mac: 02:00:00:00:00:03\n  disk: {deploy_partition: 0}\n"
    )
    conf_with(tmp_path, nodes=nodes)
    problem = only_problem(tmp_path)
    assert (problem.source, problem.path, problem.line) == (
        "nodes.conf",
        "disk.deploy_partition",
        9,
    )


def test_error_in_deploy_conf_is_reported_once_for_many_clusters(tmp_path: Path) -> None:
    write_conf(
        tmp_path,
        MINIMAL_DEPLOY + "ssh: {port: -1}\n",
        {"alpha": "", "beta": ""},
        NODES_OK + "m-1: {cluster: beta, address: 10.0.1.1, mac: 02:00:00:00:01:01}\n",
    )
    problem = only_problem(tmp_path)
    assert (problem.source, problem.path) == ("deploy.conf", "ssh.port")


def test_misspelled_daemon_section_is_suggested(tmp_path: Path) -> None:
    conf_with(tmp_path, deploy=MINIMAL_DEPLOY.replace("daemon:", "deamon:"))
    problem = only_problem(tmp_path)
    assert (problem.source, problem.path, problem.line) == ("deploy.conf", "deamon", 1)
    assert problem.message == "unknown key; did you mean 'daemon'?"


def test_daemon_section_is_validated(tmp_path: Path) -> None:
    deploy = MINIMAL_DEPLOY.replace(
        "daemon:\n", "daemon:\n  reboot_window: 0\n  api: {tcp_listen: nowhere}\n"
    )
    conf_with(tmp_path, deploy=deploy)
    found = {(p.path, p.line) for p in problems_of(tmp_path)}
    assert found == {("daemon.reboot_window", 2), ("daemon.api.tcp_listen", 3)}


@pytest.mark.parametrize(
    ("nodes", "path", "message"),
    [
        (
            "n-[1-3]:\n  cluster: alpha\n  address: 10.0.0.[1-2]\n  mac: 02:00:00:00:00:[01-03]\n",
            "n-[1-3].address",
            "range of 2 values for 3 nodes",
        ),
        (
            "n-[1-3]:\n  cluster: alpha\n  address: 10.0.0.1\n  mac: 02:00:00:00:00:[01-03]\n",
            "n-[1-3].address",
            "needs a range of 3 values",
        ),
        (
            "n-[3-1]:\n  cluster: alpha\n  address: 10.0.0.1\n  mac: 02:00:00:00:00:01\n",
            "n-[3-1]",
            "bad node range",
        ),
        (
            "n-[1-2:\n  cluster: alpha\n  address: 10.0.0.1\n  mac: 02:00:00:00:00:01\n",
            "n-[1-2",
            "bad node range",
        ),
        (
            "n-1:\n  cluster: alpha\n  address: 10.0.0.1\n  mac: 02:00:00:00:00\n",
            "n-1.mac",
            "expected a MAC address",
        ),
        (
            "n-1:\n  address: 10.0.0.1\n  mac: 02:00:00:00:00:01\n",
            "n-1.cluster",
            "required key is missing",
        ),
        (
            "n-1:\n  cluster: alpha\n  mac: 02:00:00:00:00:01\n",
            "n-1.address",
            "required key is missing",
        ),
        (
            "n-1:\n  cluster: alpha\n  address: 10.0.0.1\n  mac: 02:00:00:00:00:01\n  power: {reboot_hard: [ipmitool, '{bmc}']}\n",
            "n-1.bmc",
            "power.reboot_hard uses {bmc}",
        ),
        ("n-1: [cluster, alpha]\n", "n-1", "expected a mapping with cluster, address and mac"),
    ],
)
def test_bad_node_entries_are_explained(
    tmp_path: Path, nodes: str, path: str, message: str
) -> None:
    conf_with(tmp_path, nodes=nodes)
    problem = only_problem(tmp_path)
    assert problem.source == "nodes.conf"
    assert problem.path == path
    assert message in problem.message
    assert problem.line is not None


def test_duplicate_names_and_addresses_are_errors(tmp_path: Path) -> None:
    nodes = NODES_OK + "n-2:\n  cluster: alpha\n  address: 10.0.0.1\n  mac: 02:00:00:00:00:09\n"
    conf_with(tmp_path, nodes=nodes)
    messages = sorted(p.message for p in problems_of(tmp_path))
    assert messages == [
        "address 10.0.0.1 is also defined by entry 'n-[1-2]'",
        "node name n-2 is also defined by entry 'n-[1-2]'",
    ]


def test_cluster_without_nodes_is_an_error(tmp_path: Path) -> None:
    write_conf(tmp_path, MINIMAL_DEPLOY, {"alpha": "", "empty": ""}, NODES_OK)
    problem = only_problem(tmp_path)
    assert (problem.source, problem.message) == (
        "clusters/empty.conf",
        "cluster 'empty' has no node in nodes.conf",
    )


def test_missing_files_are_all_reported(tmp_path: Path) -> None:
    tmp_path.joinpath("empty").mkdir()
    found = {str(p) for p in problems_of(tmp_path / "empty")}
    assert found == {
        "deploy.conf: file not found",
        "nodes.conf: file not found",
        "clusters/: no cluster file: add clusters/<cluster>.conf",
    }


def test_check_config_node_shows_values_and_their_files(layered: Config, tmp_path: Path) -> None:
    result = run_server("check-config", "--conf", str(tmp_path), "--node", "n-3")
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    assert lines["vars.c"].endswith("# nodes.conf:12")
    assert lines["vars.b"].endswith("# clusters/alpha.conf:2")
    assert lines["ssh.user"].endswith("# deploy.conf:10")
    assert lines["ssh.keepalive_interval"].endswith("# default")


def test_check_config_masks_secrets(tmp_path: Path) -> None:
    conf_with(tmp_path, cluster="vars: {ipmi_password: hunter2, ipmi_password_file: /etc/pw}\n")
    result = run_server("check-config", "--conf", str(tmp_path), "--node", "n-1")
    assert result.returncode == 0, result.stderr
    assert "hunter2" not in result.stdout
    assert "/etc/pw" in result.stdout


def test_check_config_unknown_node_suggests_names(tmp_path: Path) -> None:
    conf_with(tmp_path)
    result = run_server("check-config", "--conf", str(tmp_path), "--node", "n-7")
    assert result.returncode == 2
    assert "unknown node 'n-7'" in result.stderr
    assert "did you mean" in result.stderr
    assert "Traceback" not in result.stderr
