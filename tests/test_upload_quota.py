"""What one user keeps on the daemon's disk is bounded: stored uploads (count and bytes, through
the real API over its Unix socket) and the files of set_pxe under ``users/<user>/`` of the TFTP
root, which go away once no node's profile names them."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_fixtures import RunningApi, error_of, serving_api, upload
from daemon_fixtures import stop_all_actors

from kadeploy_core.errors import InputError
from kadeployd.pxe.files import atomic_write
from kadeployd.pxe.profiles import profile_path
from kadeployd.pxe.user_profiles import check_profile, publish_files, sweep_user_files

pytestmark = pytest.mark.usefixtures("stop_all_actors")
__all__ = ["stop_all_actors"]

KIB = 1024


@pytest.fixture
def api(tmp_path: Path) -> Iterator[RunningApi]:
    """alice may keep 3 uploads of 1 MiB together."""
    extra = "  max_uploads_per_user: 3\n  max_upload_storage_mib: 1\n"
    with serving_api(tmp_path, daemon_extra=extra, environment=False) as running:
        yield running


def send(client: httpx.Client, name: str, size: int) -> httpx.Response:
    return client.post("/v1/uploads", params={"name": name}, content=b"x" * size)


def stored_files(api: RunningApi) -> list[str]:
    return sorted(p.name for p in api.context.uploads.directory.iterdir())


def test_the_number_of_stored_uploads_is_bounded_per_user(api: RunningApi) -> None:
    alice, bob = api.client("alice"), api.client("bob")
    ids = [send(alice, f"f{i}", 10).json()["id"] for i in range(3)]
    refused = send(alice, "f3", 10)
    assert refused.status_code == 429, refused.text
    error = error_of(refused)
    assert error["code"] == "too_many_uploads"
    assert "daemon.max_uploads_per_user" in error["message"] and "3" in error["message"]
    assert send(bob, "g0", 10).status_code == 201  # another user's quota is their own
    assert alice.delete(f"/v1/uploads/{ids[0]}").status_code == 204
    assert send(alice, "f3", 10).status_code == 201
    assert len(alice.get("/v1/uploads").json()) == 3


def test_the_bytes_of_stored_uploads_are_bounded_per_user(api: RunningApi) -> None:
    alice = api.client("alice")
    assert send(alice, "big", 600 * KIB).status_code == 201
    before = stored_files(api)
    refused = send(alice, "bigger", 600 * KIB)
    assert refused.status_code == 413, refused.text
    error = error_of(refused)
    assert error["code"] == "upload_quota_exceeded"
    assert "'bigger'" in error["message"] and "daemon.max_upload_storage_mib" in error["message"]
    assert stored_files(api) == before  # no partial file left
    assert [u["name"] for u in alice.get("/v1/uploads").json()] == ["big"]
    assert send(alice, "small", 300 * KIB).status_code == 201


def set_pxe(client: httpx.Client, profile: str, files: dict[str, str]) -> Any:
    answer = client.post(
        "/v1/reboots",
        json={"nodes": ["n-1"], "kind": "set_pxe", "profile": profile, "files": files},
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


def profile_naming(name: str) -> str:
    return f"DEFAULT mine\nLABEL mine\n  KERNEL FILES_PREFIX/{name}\n"


def age(path: Path, seconds: float = 3600) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_set_pxe_files_no_profile_names_are_removed(api: RunningApi, tmp_path: Path) -> None:
    alice = api.client("alice")
    users = api.daemon.config.daemon.tftp_root / "users" / "alice"
    (tmp_path / "k1").write_bytes(b"kernel one")
    (tmp_path / "k2").write_bytes(b"kernel two")
    set_pxe(alice, profile_naming("k1"), {"k1": upload(alice, tmp_path / "k1")})
    age(users / "k1")
    # n-1's profile still names k1 while k2 is published: k1 stays.
    set_pxe(alice, profile_naming("k2"), {"k2": upload(alice, tmp_path / "k2")})
    assert sorted(p.name for p in users.iterdir()) == ["k1", "k2"]
    # Now nothing names k1: the next publication removes it, keeps k2 (named).
    age(users / "k2")
    (tmp_path / "k3").write_bytes(b"kernel three")
    set_pxe(alice, profile_naming("k2"), {"k3": upload(alice, tmp_path / "k3")})
    assert sorted(p.name for p in users.iterdir()) == ["k2", "k3"]


def test_a_users_set_pxe_files_are_bounded(tmp_path: Path) -> None:
    root = tmp_path / "tftp"
    sources = tmp_path / "sources"
    sources.mkdir()
    for name, size in (("a", 400), ("b", 400), ("c", 400)):
        (sources / name).write_bytes(b"k" * size)
    profile = check_profile(profile_naming("a"), "alice")
    (root / "pxelinux.cfg").mkdir(parents=True)
    atomic_write(root / profile_path("02:00:00:00:09:01"), profile.text.encode())
    assert publish_files(root, "alice", {"a": sources / "a", "b": sources / "b"}, 1000) == [
        "users/alice/a",
        "users/alice/b",
    ]
    with pytest.raises(InputError) as caught:
        publish_files(root, "alice", {"c": sources / "c"}, 1000)
    (problem,) = caught.value.problems
    assert problem.path == "files"
    assert "1200 bytes" in problem.message and "daemon.max_set_pxe_files_mib" in problem.message
    assert sorted(p.name for p in (root / "users/alice").iterdir()) == ["a", "b"]
    # Replacing a file of the same name counts once; a file no profile names goes when old.
    assert publish_files(root, "alice", {"b": sources / "c"}, 1000) == ["users/alice/b"]
    age(root / "users/alice/b")
    assert sweep_user_files(root) == 1
    assert sorted(p.name for p in (root / "users/alice").iterdir()) == ["a"]
    # The node's profile reset (a deployment rewrote it): a is swept too.
    (root / profile_path("02:00:00:00:09:01")).unlink()
    age(root / "users/alice/a")
    assert sweep_user_files(root, ["alice"]) == 1
    assert publish_files(root, "alice", {"c": sources / "c"}, 1000) == ["users/alice/c"]
