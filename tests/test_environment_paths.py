"""A path named in an environment description tells the caller nothing about the server's disk.

The daemon runs as root. A user's description naming a file under a 0700 directory of another
account must get the same answer as one naming a missing path; an administrator's server paths
are checked with the administrator's own account, and a file that account may not read is
answered like a missing one.
"""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_fixtures import RunningApi, api_config, error_of, socket_dir, start_api, upload
from daemon_fixtures import make_tar_environment, stop_all_actors

from kadeployd.api.environments import read_access_of

pytestmark = pytest.mark.usefixtures("stop_all_actors")
__all__ = ["socket_dir", "stop_all_actors"]

NOBODY = pwd.getpwnam("nobody")


@pytest.fixture
def api(tmp_path: Path, socket_dir: Path) -> Iterator[RunningApi]:
    """The dummy daemon, with the unprivileged account ``nobody`` among the administrators."""
    socket_path = socket_dir / "api.sock"
    conf = api_config(tmp_path / "conf", socket_path)
    deploy = conf / "deploy.conf"
    deploy.write_text(
        deploy.read_text().replace("almighty_users: [root]", "almighty_users: [root, nobody]")
    )
    running = start_api(conf, socket_path)
    running.tokens["nobody"] = running.context.tokens.add("nobody")
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def host_dirs() -> Iterator[Path]:
    """Under /tmp (searchable by everyone): ``secret/`` (0700, root's) holding a file,
    ``theirs/`` (0700, nobody's) holding a file, ``open/`` (0755) holding a readable file."""
    base = Path(tempfile.mkdtemp(prefix="kd-paths-", dir="/tmp"))
    os.chmod(base, 0o755)
    image = make_tar_environment(base).with_suffix(".tar.zst")
    for name, owner, mode in (
        ("secret", 0, 0o700),
        ("theirs", NOBODY.pw_uid, 0o700),
        ("open", 0, 0o755),
    ):
        directory = base / name
        directory.mkdir()
        shutil.copy(image, directory / "img.tar.zst")
        os.chmod(directory / "img.tar.zst", 0o644)
        os.chown(directory, owner, NOBODY.pw_gid if owner else 0)
        os.chmod(directory, mode)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def description(image: Path) -> str:
    return (
        "name: probe\nversion: 1\nos: linux\n"
        f"image: {{file: {image}, kind: tar, compression: zstd}}\n"
        "boot: {kernel: /boot/vmlinuz}\nfilesystem: ext4\n"
    )


def answer_about(api: RunningApi, user: str, image: Path, how: str) -> tuple[int, str]:
    """The API's answer to ``user`` registering (or deploying) a description naming ``image``,
    with the path itself replaced by a placeholder so that two answers can be compared."""
    client = api.client(user)
    if how == "register":
        answer = client.post("/v1/environments", json={"description": description(image)})
    else:
        answer = client.post(
            "/v1/deployments",
            json={"nodes": ["n-1"], "anonymous_environment": {"description": description(image)}},
        )
    error_of(answer)  # an error answer of the usual shape
    return answer.status_code, answer.text.replace(str(image), "PATH")


@pytest.mark.parametrize("how", ["register", "deploy"])
def test_a_user_learns_nothing_about_a_path_under_another_accounts_private_directory(
    api: RunningApi, host_dirs: Path, how: str
) -> None:
    existing = host_dirs / "theirs" / "img.tar.zst"
    missing = host_dirs / "nothere" / "img.tar.zst"
    assert existing.is_file() and not missing.exists()
    first = answer_about(api, "alice", existing, how)
    second = answer_about(api, "alice", missing, how)
    assert first == second
    assert first[0] == 422
    assert "not among the uploaded files" in first[1]


def test_an_administrators_server_paths_are_read_with_the_administrators_rights(
    api: RunningApi, host_dirs: Path
) -> None:
    unreadable = host_dirs / "secret" / "img.tar.zst"
    missing = host_dirs / "nothere" / "img.tar.zst"
    first = answer_about(api, "nobody", unreadable, "register")
    assert first == answer_about(api, "nobody", missing, "register")
    assert first[0] == 422 and "file not found" in first[1]
    readable = host_dirs / "open" / "img.tar.zst"
    accepted = api.client("nobody").post(
        "/v1/environments", json={"description": description(readable)}
    )
    assert accepted.status_code == 201, accepted.text
    # root reads everything, as before.
    as_root = api.client("root").post(
        "/v1/environments",
        json={"description": description(unreadable).replace("probe", "probe-root")},
    )
    assert as_root.status_code == 201, as_root.text


def test_uploaded_files_still_work_for_a_user(api: RunningApi, tmp_path: Path) -> None:
    tiny = make_tar_environment(tmp_path)
    alice = api.client("alice")
    image = upload(alice, tiny.with_suffix(".tar.zst"), "tiny.tar.zst")
    answer = alice.post(
        "/v1/environments", json={"description": tiny.read_text(), "files": {"tiny.tar.zst": image}}
    )
    assert answer.status_code == 201, answer.text


def test_read_access_follows_links_and_directory_permissions(host_dirs: Path) -> None:
    may_read = read_access_of("nobody")
    assert may_read is not None and read_access_of("root") is None
    assert may_read(host_dirs / "open" / "img.tar.zst")
    assert not may_read(host_dirs / "secret" / "img.tar.zst")
    assert may_read(host_dirs / "theirs" / "img.tar.zst")  # its own directory
    assert not may_read(host_dirs / "open")  # a directory is not a file
    link = host_dirs / "open" / "link"
    link.symlink_to("../secret/img.tar.zst")
    assert not may_read(link)
    (host_dirs / "open" / "good").symlink_to(host_dirs / "open" / "img.tar.zst")
    assert may_read(host_dirs / "open" / "good")
    loop = host_dirs / "open" / "loop"
    loop.symlink_to("loop")
    assert not may_read(loop)
    assert read_access_of("no-such-account-here")(host_dirs / "open" / "img.tar.zst") is False  # type: ignore[misc]
