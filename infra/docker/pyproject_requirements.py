"""Print the runtime dependencies of a pyproject.toml, one per line (T-020).

The image installs these first, in their own layer, so changing the code does not reinstall
every dependency. Usage: python pyproject_requirements.py pyproject.toml > requirements.txt
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path


def runtime_requirements(pyproject: Path) -> list[str]:
    with pyproject.open("rb") as handle:
        project = tomllib.load(handle).get("project", {})
    requirements = project.get("dependencies", [])
    if not isinstance(requirements, list) or not all(isinstance(r, str) for r in requirements):
        raise SystemExit(f"{pyproject}: [project].dependencies must be a list of strings")
    return requirements


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        sys.stderr.write("usage: pyproject_requirements.py PYPROJECT_TOML\n")
        return 2
    sys.stdout.write("".join(f"{line}\n" for line in runtime_requirements(Path(argv[1]))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
