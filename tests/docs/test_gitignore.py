"""What a local run leaves in the working directory is ignored by git (T-019): the SQLite
file and its journals, the relay's leader lock beside it, the generated local secret, .env."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_FILES = [
    "pakaura.db",
    "pakaura.db-wal",
    "pakaura.db-shm",
    "pakaura.db-journal",
    "pakaura.db.relay-lock",
    "data/other.db.relay-lock",
    ".pakaura-dev-secret",
    ".env",
    ".venv",  # the README's virtualenv; tox-uv also leaves a `.venv` file naming its env
]


@pytest.mark.skipif(
    shutil.which("git") is None or not (ROOT / ".git").exists(), reason="not a git checkout"
)
@pytest.mark.parametrize("name", RUNTIME_FILES)
def test_runtime_files_are_ignored(name: str) -> None:
    done = subprocess.run(
        ["git", "-C", str(ROOT), "check-ignore", "--no-index", "--quiet", name],
        check=False,
        timeout=30,
    )
    assert done.returncode == 0, f"{name} is not ignored by .gitignore"
