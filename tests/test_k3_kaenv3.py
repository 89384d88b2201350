"""kaenv3 as an installed subprocess against a server started with `kadeploy-server start`:
Kadeploy3's listing, -l PATTERN, --env-user, the visibility and destructive tags, the
checksum updates, -a/-p/-d, and Kadeploy3's exit statuses."""

from __future__ import annotations

from pathlib import Path

from cli_fixtures import CliServer, cli_server
from daemon_fixtures import make_tar_environment

from kadeploy_cli.k3.kaenv3 import short_line

__all__ = ["cli_server"]

HEADER = (
    "Name                  Version User        Description\n"
    "####                  ####### ####        ###########\n"
)
LONG_TEXT = "An environment whose description is far too long for one line of eighty"


def described(directory: Path, name: str, text: str) -> Path:
    """A tiny tar environment with a description line."""
    description = make_tar_environment(directory, name=name)
    description.write_text(description.read_text() + f"description: {text}\n")
    return description


def record(server: CliServer, owner: str, name: str) -> dict[str, object]:
    with server.api() as client:
        answer = client.get(f"/v1/environments/{owner}/{name}")
        assert answer.status_code == 200, answer.text
        found: dict[str, object] = answer.json()
        return found


def test_kaenv3_listing_pattern_env_user_and_visibility_tag(
    cli_server: CliServer, tmp_path: Path
) -> None:
    added = cli_server.run("kaenv3", "-a", str(described(tmp_path, "mine", "My env")))
    assert (added.returncode, added.stdout) == (0, ""), added.stderr
    long_name = "a-rather-long-env-name"  # 22 characters: eats one of the version column
    more = cli_server.run("kaenv3", "-a", str(described(tmp_path, long_name, LONG_TEXT)))
    assert more.returncode == 0, more.stderr

    listed = cli_server.run("kaenv3", "-l")
    assert listed.returncode == 0, listed.stderr
    assert (
        listed.stdout
        == (
            HEADER
            + "tiny                  1       root        \n"  # public first
            + "a-rather-long-env-name 1      alice       "
            + LONG_TEXT[: 80 - (22 + 6 + 11 + 3) - 3]
            + "...\n"
            + "mine                  1       alice       My env\n"
        )
    )
    assert all(len(line) <= 80 for line in listed.stdout.splitlines())

    pattern = cli_server.run("kaenv3", "-l", "mi%")
    assert pattern.stdout == HEADER + "mine                  1       alice       My env\n"
    none = cli_server.run("kaenv3", "-l", "nothing%")
    assert none.returncode == 1
    assert "Resource not found" in none.stderr

    # Bob sees alice's environment only once it is shared and he names her (--env-user).
    before = cli_server.run("kaenv3", "-l", "-u", "alice", user="bob")
    assert (before.returncode, before.stdout) == (0, "No environment has been found\n")
    shared = cli_server.run("kaenv3", "--set-visibility-tag", "mine", "-t", "shared")
    assert (shared.returncode, shared.stdout) == (0, ""), shared.stderr
    assert record(cli_server, "alice", "mine")["visibility"] == "shared"
    after = cli_server.run("kaenv3", "-l", "--env-user", "alice", user="bob")
    assert after.stdout == HEADER + "mine                  1       alice       My env\n"
    assert "mine" not in cli_server.run("kaenv3", "-l", user="bob").stdout

    no_tag = cli_server.run("kaenv3", "--set-visibility-tag", "mine")
    assert no_tag.returncode == 1
    assert no_tag.stderr.strip() == "You must define the visibility value"
    public = cli_server.run("kaenv3", "--set-visibility-tag", "mine", "-t", "public")
    assert public.returncode == 6, public.stderr
    assert "[Kadeploy Error #6]" in public.stderr
    assert record(cli_server, "alice", "mine")["visibility"] == "shared"


def test_kaenv3_print_add_delete_and_exit_statuses(cli_server: CliServer, tmp_path: Path) -> None:
    description = described(tmp_path, "printed", "Printed env")
    assert cli_server.run("kaenv3", "-a", str(description)).returncode == 0
    again = cli_server.run("kaenv3", "-a", str(description))
    assert again.returncode == 10, again.stdout + again.stderr
    assert "[Kadeploy Error #10]" in again.stderr

    shown = cli_server.run("kaenv3", "-p", "printed")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(
        "---\nname: printed\nversion: 1\ndescription: Printed env\nvisibility: private\n"
        "destructive: false\nos: linux\nimage:\n  file: printed.tar.zst\n  kind: tar\n"
        "  compression: zstd\nboot:\n  kernel: /boot/vmlinuz\n"
    ), shown.stdout
    assert "user:" not in shown.stdout  # Kadeploy3 drops the owner from the printed hash

    gone = cli_server.run("kaenv3", "-d", "printed")
    assert (gone.returncode, gone.stdout) == (0, ""), gone.stderr
    with cli_server.api() as client:
        assert client.get("/v1/environments/alice/printed").status_code == 404
    missing = cli_server.run("kaenv3", "-d", "printed")
    assert missing.returncode == 1
    assert "Traceback" not in missing.stderr

    nothing = cli_server.run("kaenv3")
    assert (nothing.returncode, nothing.stderr.strip()) == (1, "You must choose an operation")
    bad = cli_server.run("kaenv3", "--no-such-option")
    assert bad.returncode == 1
    assert bad.stderr.startswith("Option parsing error:")
    last_wins = cli_server.run("kaenv3", "-p", "printed", "-l", "tin%")
    assert last_wins.returncode == 0 and "tiny" in last_wins.stdout


def test_kaenv3_destructive_tag_and_checksum_updates(cli_server: CliServer, tmp_path: Path) -> None:
    assert cli_server.run("kaenv3", "-a", str(described(tmp_path, "tagged", "x"))).returncode == 0
    assert record(cli_server, "alice", "tagged")["description"]["destructive"] is False  # type: ignore[index]
    toggled = cli_server.run("kaenv3", "--toggle-destructive-tag", "tagged")
    assert (toggled.returncode, toggled.stdout) == (0, ""), toggled.stderr
    assert record(cli_server, "alice", "tagged")["description"]["destructive"] is True  # type: ignore[index]
    assert "destructive: true" in cli_server.run("kaenv3", "-p", "tagged").stdout
    assert cli_server.run("kaenv3", "--toggle-destructive-tag", "tagged").returncode == 0
    assert record(cli_server, "alice", "tagged")["description"]["destructive"] is False  # type: ignore[index]

    recorded = record(cli_server, "alice", "tagged")["checksums"]
    assert set(recorded) == {"image.file"}  # type: ignore[arg-type]
    unchanged = cli_server.run("kaenv3", "--update-image-checksum", "tagged")
    assert unchanged.returncode == 14, unchanged.stdout + unchanged.stderr
    assert "[Kadeploy Error #14]" in unchanged.stderr

    # The image changes on the server: the update records its new checksum.
    image = cli_server.state / "environments" / "alice" / "tagged" / "1" / "tagged.tar.zst"
    with image.open("ab") as handle:
        handle.write(b"\0" * 16)
    updated = cli_server.run("kaenv3", "--update-image-checksum", "tagged")
    assert (updated.returncode, updated.stdout) == (0, ""), updated.stderr
    now = record(cli_server, "alice", "tagged")["checksums"]
    assert now["image.file"] != recorded["image.file"]  # type: ignore[index]
    assert cli_server.run("kaenv3", "--update-image-checksum", "tagged").returncode == 14

    no_archive = cli_server.run("kaenv3", "--update-preinstall-checksum", "tagged")
    assert no_archive.returncode == 14  # no preinstall: nothing to update
    other = cli_server.run("kaenv3", "--update-postinstalls-checksum", "tagged", user="bob")
    assert other.returncode == 1, other.stderr  # bob has no environment of that name


def test_short_line_follows_kadeploy3_columns() -> None:
    def line(name: str, description: str) -> str:
        return short_line(
            {
                "name": name,
                "version": 3,
                "owner": "bob",
                "description": {"description": description},
            }
        )

    assert line("debian", "text") == "debian                3       bob         text\n"
    long_name = "x" * 30  # past the version column: the version is bare, 8 columns counted
    assert line(long_name, "d" * 60) == f"{long_name} 3 bob         " + "d" * 25 + "...\n"
