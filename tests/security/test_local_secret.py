"""Fail closed, and the generated local secret file cannot be planted, read or raced.

The local secret stands in for BETTER_AUTH_SECRET only for `pakaura serve` on a loopback
address (the quick start) and for `pakaura token`.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import jwt
import pytest
from src.config import DEV_SECRET_FILE, Settings, SettingsError, load_auth_secret

LOCAL = Path("xdg-config") / DEV_SECRET_FILE  # under tmp_path (tests/conftest.py)


def _pakaura(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "src.cli", *args],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "pakaura-api"])
def test_serve_on_a_non_loopback_address_without_a_secret_refuses_to_start(
    tmp_path: Path, host: str
) -> None:
    done = _pakaura("serve", "--host", host, "--port", "1", cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "BETTER_AUTH_SECRET" in lines[0]
    assert not (tmp_path / LOCAL).exists()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_loopback_addresses_count_as_local(host: str) -> None:
    from src.cli import _is_loopback

    assert _is_loopback(host)


def test_token_finds_the_same_secret_from_any_working_directory(tmp_path: Path) -> None:
    first, second = tmp_path / "one", tmp_path / "two"
    first.mkdir()
    second.mkdir()
    a = _pakaura("token", "alice", cwd=first)
    b = _pakaura("token", "bob", cwd=second)
    assert a.returncode == b.returncode == 0, a.stderr + b.stderr
    secret = (tmp_path / LOCAL).read_text().strip()
    for done, user in ((a, "alice"), (b, "bob")):
        assert jwt.decode(done.stdout.strip(), secret, algorithms=["HS256"])["sub"] == user
    assert not list(first.iterdir()) and not list(second.iterdir())


def test_a_symlink_is_never_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("p" * 64)
    target.chmod(0o600)
    path = tmp_path / LOCAL
    path.parent.mkdir(parents=True)
    path.symlink_to(target)
    with pytest.raises(SettingsError, match="symbolic link"):
        load_auth_secret(Settings())


def test_a_dangling_symlink_is_not_created_through(tmp_path: Path) -> None:
    """A planted link to a file the attacker will read later: link() refuses the name."""
    target = tmp_path / "attacker-reads-this"
    path = tmp_path / LOCAL
    path.parent.mkdir(parents=True)
    path.symlink_to(target)
    with pytest.raises(SettingsError, match="symbolic link"):
        load_auth_secret(Settings())
    assert not target.exists()


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_file_others_may_read_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / LOCAL
    path.parent.mkdir(parents=True)
    path.write_text("m" * 64)
    path.chmod(mode)
    with pytest.raises(SettingsError, match="readable by others") as caught:
        load_auth_secret(Settings())
    assert "m" * 64 not in str(caught.value)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file to another user")
def test_a_file_of_another_user_is_refused(tmp_path: Path) -> None:
    path = tmp_path / LOCAL
    path.parent.mkdir(parents=True)
    path.write_text("o" * 64)
    path.chmod(0o600)
    os.chown(path, 4242, -1)
    with pytest.raises(SettingsError, match="another user"):
        load_auth_secret(Settings())


def test_a_directory_in_its_place_is_refused(tmp_path: Path) -> None:
    (tmp_path / LOCAL).mkdir(parents=True)
    with pytest.raises(SettingsError, match="local secret file"):
        load_auth_secret(Settings())


_LOAD = "from src.config import Settings, load_auth_secret; print(load_auth_secret(Settings()))"


def test_processes_starting_at_once_agree_on_one_secret(tmp_path: Path) -> None:
    # Real processes (not fork: the test process has threads), all started before any ends.
    starts = [
        subprocess.Popen(
            [sys.executable, "-c", _LOAD], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(12)
    ]
    outputs = [process.communicate(timeout=120) for process in starts]
    assert all(process.returncode == 0 for process in starts), outputs
    secrets = {out.strip() for out, _ in outputs}
    assert len(secrets) == 1
    path = tmp_path / LOCAL
    assert path.read_text().strip() == secrets.pop()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == [path.name]
