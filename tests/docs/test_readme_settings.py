"""The README documents every setting: a field added to `Settings` without a row in the
README's settings table fails here (T-019: the README stands alone)."""

from __future__ import annotations

import re
from pathlib import Path

from src.config import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def settings_table() -> dict[str, str]:
    """`NAME` -> its row, from the table under `## Settings`."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        first_cell = line.split("|")[1]
        for name in re.findall(r"`([A-Z][A-Z0-9_]*)`", first_cell):
            rows[name] = line
    return rows


def env_names() -> list[str]:
    names = []
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias or field.alias
        names.append(str(alias if isinstance(alias, str) else name).upper())
    return names


def test_every_setting_has_a_row_in_the_readme() -> None:
    rows = settings_table()
    missing = [name for name in env_names() if name not in rows]
    assert not missing, f"settings without a row in README.md's settings table: {missing}"


def test_every_row_names_a_real_setting_with_its_default_and_meaning() -> None:
    known = set(env_names())
    for name, row in settings_table().items():
        assert name in known, f"README documents {name}, which is no setting"
        cells = [cell.strip() for cell in row.strip().strip("|").split("|")]
        assert len(cells) == 3 and all(cells), row


def test_the_readme_does_not_point_at_documents_outside_the_repository() -> None:
    text = README.read_text(encoding="utf-8")
    assert "contract" not in text.lower().replace("where the contract is silent", "")
    for target in re.findall(r"\]\(([^)#]+)\)", text):
        if "://" not in target:
            assert (README.parent / target).exists(), target
