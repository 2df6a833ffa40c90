"""Every code example in README.md and docs/*.md runs, so none can rot (T-019).

Each page's fenced ```sh / ```bash / ```python blocks run in page order in one bash session,
as a reader would paste them, in a fresh working directory (so the defaults apply: SQLite file
`./pakaura.db`, the generated local secret, Dapr disabled unless the example enables it):

- `.venv` there points at the environment running the tests, so `.venv/bin/pakaura` works;
- examples are written for the default ports: `8000` (API) and `3500` (sidecar) are moved to
  free ports, and `pakaura serve` / `pakaura dev-sidecar` without `--port` get one;
- `curl` fails on an HTTP error status (`--fail-with-body`), so a 4xx/5xx answer fails the page;
- python blocks run with the environment's interpreter (`python - <<EOF`).

An HTML comment on the line before a fence says how to treat the block:

- `<!-- doc-test: skip REASON -->`: not run (Kubernetes, Docker, an external client, a long
  benchmark, installing the project); the reason is required;
- `<!-- doc-test: background -->`: started in the background (a server); the next block runs
  once its port answers;
- `<!-- doc-test: wait-for-output WORD ... -->` before an output block: waits until the
  background processes' output has every WORD (e.g. the events the sidecar printed).

A runnable block without a marker that fails, fails the test: fix the example or mark it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUNNABLE = {"sh", "bash", "shell", "python"}
MARKER = re.compile(r"<!--\s*doc-test:\s*(?P<kind>[\w-]+)\s*(?P<arg>.*?)\s*-->")
FENCE = re.compile(r"^```(?P<lang>[\w+-]*)\s*$")
PAGE_TIMEOUT = 120


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    marker: str | None  # skip, background, wait-for-output
    arg: str

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    found: list[Block] = []
    lines = page.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        start = i
        end = start + 1
        while end < len(lines) and lines[end].rstrip() != "```":
            end += 1
        marker = None
        arg = ""
        before = start - 1
        while before >= 0 and not lines[before].strip():
            before -= 1
        if before >= 0 and (m := MARKER.search(lines[before])):
            marker, arg = m.group("kind"), m.group("arg")
        found.append(
            Block(
                page=page,
                line=start + 1,
                lang=fence.group("lang").lower(),
                code="\n".join(lines[start + 1 : end]),
                marker=marker,
                arg=arg,
            )
        )
        i = end + 1
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def localize(code: str, api_port: int, sidecar_port: int) -> str:
    """The example with the default ports moved to this run's free ones."""

    def add_port(match: re.Match[str]) -> str:
        command, rest = match.group(1), match.group(2)
        if "--port" in rest:
            return match.group(0)
        port = api_port if command.endswith("serve") else sidecar_port
        return f"{command} --port {port}{rest}"

    code = re.sub(r"(pakaura (?:serve|dev-sidecar))([^\n]*)", add_port, code)
    code = re.sub(r"(?<![\w.])8000(?!\w)", str(api_port), code)
    return re.sub(r"(?<![\w.])3500(?!\w)", str(sidecar_port), code)


PRELUDE = r"""
set -eo pipefail
curl() { command curl --silent --show-error --fail-with-body --max-time 20 "$@"; }
wait_for_port() {  # port
    for _ in $(seq 1 300); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on port $1 after 30 s" >&2
    cat "$DOCTEST_LOGS"/bg-*.log >&2 || true
    return 1
}
wait_for_output() {  # words...
    for _ in $(seq 1 300); do
        local missing=0
        for word in "$@"; do
            grep -qF -- "$word" "$DOCTEST_LOGS"/bg-*.log 2>/dev/null || missing=1
        done
        [ "$missing" = 0 ] && return 0
        sleep 0.1
    done
    echo "background output lacks one of: $*" >&2
    cat "$DOCTEST_LOGS"/bg-*.log >&2 || true
    return 1
}
"""


def script_for(page: Path, api_port: int, sidecar_port: int) -> tuple[str, int]:
    """The page's examples as one bash script, and how many blocks it runs."""
    parts = [PRELUDE]
    ran = 0
    for number, block in enumerate(blocks(page)):
        if block.marker == "skip":
            continue
        if block.marker == "wait-for-output":
            words = " ".join(shlex.quote(word) for word in shlex.split(block.arg))
            parts.append(f"printf '\\n### %s\\n' '{block.where} (waiting for output)' >&2")
            parts.append(f"wait_for_output {words}")
            continue
        if block.lang not in RUNNABLE:
            continue
        ran += 1
        code = localize(block.code, api_port, sidecar_port)
        # On a line of its own: the previous example's output may not end with a newline.
        parts.append(f"printf '\\n### %s\\n' '{block.where}' >&2")
        if block.lang == "python":
            code = f"python - <<'DOCTEST_PYTHON_EOF'\n{code}\nDOCTEST_PYTHON_EOF"
        if block.marker == "background":
            port = sidecar_port if "dev-sidecar" in code else api_port
            log = f'"$DOCTEST_LOGS/bg-{number}.log"'
            parts.append(f"{{\n{code}\n}} >{log} 2>&1 </dev/null &")
            parts.append(f"wait_for_port {port}")
        else:
            parts.append(code)
    return "\n".join(parts) + "\n", ran


def environment(workdir: Path, logs: Path) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("DAPR_", "TOPIC_", "RELAY_", "LOG_", "EVENTS_", "MCP_", "JWT_"))
        and name not in {"DATABASE_URL", "BETTER_AUTH_SECRET", "APP_ENV", "VIRTUAL_ENV"}
    }
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env["DOCTEST_LOGS"] = str(logs)
    env["HOME"] = str(workdir)  # client tools write nothing into the real home
    return env


def pages_with_examples() -> list[Path]:
    """Pages with at least one example to run (the others hold only skipped or output ones)."""
    return [page for page in PAGES if script_for(page, 8000, 3500)[1]]


@pytest.mark.slow
@pytest.mark.parametrize("page", pages_with_examples(), ids=lambda page: page.name)
def test_the_examples_on_the_page_run(page: Path, tmp_path: Path) -> None:
    api_port, sidecar_port = free_port(), free_port()
    script, _ = script_for(page, api_port, sidecar_port)
    workdir, logs = tmp_path / "work", tmp_path / "logs"
    workdir.mkdir()
    logs.mkdir()
    (workdir / ".venv").symlink_to(Path(sys.prefix))
    (tmp_path / "examples.sh").write_text(script, encoding="utf-8")
    env = environment(workdir, logs)
    env["DAPR_HTTP_PORT"] = str(sidecar_port)  # where the examples' default 3500 went
    proc = subprocess.Popen(
        ["bash", str(tmp_path / "examples.sh")],
        cwd=workdir,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its background servers are stopped with it, as a group
    )
    try:
        output, _ = proc.communicate(timeout=PAGE_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"{page.name}: examples still running after {PAGE_TIMEOUT} s\n{output}")
    finally:
        with _suppress_lookup():
            os.killpg(proc.pid, signal.SIGTERM)
            time.sleep(0.3)
            os.killpg(proc.pid, signal.SIGKILL)
    if proc.returncode != 0:
        failed = re.findall(r"^### (\S+)", output, flags=re.MULTILINE)
        where = failed[-1] if failed else "?"
        pytest.fail(f"the example at {where} failed (exit {proc.returncode}):\n{output[-6000:]}")


class _suppress_lookup:
    """Ignores ProcessLookupError: the group may already be gone."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: object, tb: object) -> bool:
        return exc_type is ProcessLookupError


def test_every_marker_is_known_and_every_skip_gives_a_reason() -> None:
    for page in PAGES:
        for block in blocks(page):
            if block.marker is None:
                continue
            assert block.marker in {"skip", "background", "wait-for-output"}, block.where
            if block.marker == "skip":
                assert block.arg.strip(), f"{block.where}: a skipped example says why"
            if block.marker == "background":
                assert block.lang in RUNNABLE, block.where
            if block.marker == "wait-for-output":
                assert shlex.split(block.arg), block.where


def commands_in(code: str) -> list[str]:
    """Shell commands of a block: continuation lines joined, comments and blanks dropped."""
    joined = re.sub(r"\\\n\s*", " ", code)
    return [line for line in joined.splitlines() if line.strip() and not line.startswith("#")]


def test_the_readme_shows_a_tasks_events_within_three_commands() -> None:
    """A fresh clone: install, then three commands (sidecar, API, create a task), then the
    sidecar's output, which the page test waits for."""
    readme = blocks(ROOT / "README.md")
    install = next(b for b in readme if b.lang in RUNNABLE)
    assert "pip install -e ." in install.code
    steps: list[str] = []
    for block in readme[readme.index(install) + 1 :]:
        if block.marker == "wait-for-output":
            assert {"task.created", "task.sync"} <= set(shlex.split(block.arg))
            break
        steps += commands_in(block.code)
    else:
        pytest.fail("the quick start never shows the events")
    assert len(steps) == 3, steps
    assert "pakaura dev-sidecar" in steps[0]
    assert "DAPR_ENABLED=true" in steps[1] and "pakaura serve" in steps[1]
    assert steps[2].startswith("curl -X POST")


def test_every_json_example_parses() -> None:
    json_blocks = [b for page in PAGES for b in blocks(page) if b.lang == "json"]
    assert json_blocks
    for block in json_blocks:
        try:
            json.loads(block.code)
        except ValueError as exc:
            pytest.fail(f"{block.where}: not JSON ({exc})")


def test_localize_moves_the_default_ports() -> None:
    code = "pakaura serve\npakaura dev-sidecar --json\ncurl localhost:8000/x\nDAPR_HTTP_PORT=3500"
    assert localize(code, 18000, 13500).splitlines() == [
        "pakaura serve --port 18000",
        "pakaura dev-sidecar --port 13500 --json",
        "curl localhost:18000/x",
        "DAPR_HTTP_PORT=13500",
    ]
