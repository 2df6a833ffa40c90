"""Scans captured logs for secrets: a leak is any occurrence, however it is wrapped."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = ["SecretLeak", "scan_for_secrets"]


@dataclass(frozen=True, slots=True)
class SecretLeak:
    secret_name: str
    line_number: int
    form: str  # "plain", "json-escaped", "base64"


def _forms(value: str) -> dict[str, str]:
    forms = {"plain": value, "json-escaped": json.dumps(value)[1:-1]}
    # A secret logged as bytes in base64 (e.g. inside a dumped header block).
    forms["base64"] = base64.b64encode(value.encode()).decode().rstrip("=")
    unique: dict[str, str] = {}
    for form, needle in forms.items():
        if len(needle) >= 8 and needle not in unique.values():
            unique[form] = needle
    return unique


def scan_for_secrets(text: str, secrets: Mapping[str, str]) -> list[SecretLeak]:
    """Every line of `text` that contains one of `secrets` (name -> value) in any form.

    Short values (< 8 characters) are refused: they would match by chance and prove nothing.
    """
    for name, value in secrets.items():
        if len(value) < 8:
            raise ValueError(f"secret {name} is too short to scan for reliably")
    leaks: list[SecretLeak] = []
    patterns = [
        (name, form, needle) for name, v in secrets.items() for form, needle in _forms(v).items()
    ]
    for number, line in enumerate(text.splitlines(), start=1):
        for name, form, needle in patterns:
            if needle in line:
                leaks.append(SecretLeak(name, number, form))
    return leaks


def scan_files(paths: Iterable[str], secrets: Mapping[str, str]) -> list[tuple[str, SecretLeak]]:
    found = []
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as handle:
            found += [(path, leak) for leak in scan_for_secrets(handle.read(), secrets)]
    return found
