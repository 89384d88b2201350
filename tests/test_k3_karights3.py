"""karights3 as an installed subprocess against a server started with `kadeploy-server start`:
-a/-d/-l with -u, -m, -f, -p, Kadeploy3's exclusive rights and -o, its table and exit
statuses."""

from __future__ import annotations

from pathlib import Path

from cli_fixtures import CliServer, cli_server

__all__ = ["cli_server"]

HEADER = (
    "User            Node                                      Partitions\n"
    "####            ####                                      ##########\n"
)


def row(user: str, node: str, parts: str) -> str:
    return f"{user.ljust(15)} {node.ljust(41)} {parts}\n"


def rights_of(server: CliServer, user: str) -> list[tuple[str, str]]:
    with server.api() as client:
        answer = client.get("/v1/rights", params={"user": user})
        assert answer.status_code == 200, answer.text
        return [(r["node"], r["partition"]) for r in answer.json()]


def test_karights3_add_list_delete_overwrite(cli_server: CliServer, tmp_path: Path) -> None:
    added = cli_server.run("karights3", "-a", "-u", "bob", "-m", "n-1", "-p", "2", "-p", "3",
                           user="root")  # fmt: skip
    assert (added.returncode, added.stdout) == (0, ""), added.stderr
    assert rights_of(cli_server, "bob") == [("n-1", "2"), ("n-1", "3")]
    listed = cli_server.run("karights3", "-l", "-u", "bob", user="root")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout == HEADER + row("bob", "n-1", "2,3")

    # A node's rights are one user's: carol's grant is refused, then overwrites with -o.
    refused = cli_server.run("karights3", "-a", "-u", "carol", "-m", "n-1", user="root")
    assert refused.returncode == 11, refused.stdout + refused.stderr
    assert "Some rights are already set for user bob on nodes n-1" in refused.stderr
    assert rights_of(cli_server, "carol") == []
    overwritten = cli_server.run("karights3", "-a", "-o", "-u", "carol", "-m", "n-1", user="root")
    assert overwritten.returncode == 0, overwritten.stderr
    assert rights_of(cli_server, "carol") == [("n-1", "*")]
    assert rights_of(cli_server, "bob") == []
    again = cli_server.run("karights3", "-a", "-u", "carol", "-m", "n-1", user="root")
    assert again.returncode == 14, again.stdout + again.stderr

    nodefile = tmp_path / "nodes"
    nodefile.write_text("n-2\nn-3\n")
    from_file = cli_server.run("karights3", "-a", "-u", "dave", "-f", str(nodefile), user="root")
    assert from_file.returncode == 0, from_file.stderr
    assert rights_of(cli_server, "dave") == [("n-2", "*"), ("n-3", "*")]
    everywhere = cli_server.run("karights3", "-a", "-u", "erin", "-m", "*", user="root")
    assert everywhere.returncode == 0, everywhere.stderr
    assert rights_of(cli_server, "erin") == [("*", "*")]

    removed = cli_server.run("karights3", "-d", "-u", "dave", "-m", "n-3", user="root")
    assert (removed.returncode, removed.stdout) == (0, ""), removed.stderr
    assert rights_of(cli_server, "dave") == [("n-2", "*")]
    none_left = cli_server.run("karights3", "-d", "-u", "dave", "-m", "n-3", user="root")
    assert none_left.returncode == 14
    assert cli_server.run("karights3", "-d", "-u", "dave", user="root").returncode == 0
    assert rights_of(cli_server, "dave") == []


def test_karights3_refusals(cli_server: CliServer) -> None:
    not_admin = cli_server.run("karights3", "-a", "-u", "bob", "-m", "n-2")
    assert not_admin.returncode == 6, not_admin.stdout + not_admin.stderr
    no_user = cli_server.run("karights3", "-a", "-m", "n-2", user="root")
    assert (no_user.returncode, no_user.stderr.strip()) == (1, "You must choose a user")
    useless = cli_server.run("karights3", "-l", "-m", "n-2", user="root")
    assert (useless.returncode, useless.stderr.strip()) == (
        1,
        "Node list is useless when showing rights of a specific user",
    )
    nothing = cli_server.run("karights3", user="root")
    assert (nothing.returncode, nothing.stderr.strip()) == (1, "You must choose an operation")
    bad_user = cli_server.run("karights3", "-a", "-u", "b@d", user="root")
    assert bad_user.returncode == 1
    assert bad_user.stderr.startswith("Option parsing error:")
    unknown = cli_server.run("karights3", "-a", "-u", "bob", "-m", "n-99", user="root")
    assert unknown.returncode == 2, unknown.stdout + unknown.stderr  # invalid node list
    mine = cli_server.run("karights3", "-l")
    assert mine.stdout == HEADER + row("alice", "*", "*")
