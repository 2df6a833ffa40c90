"""docs/deploy.md stays true to the files and names it tells users to use (T-020)."""

from __future__ import annotations

import re
import shlex

from tests.infra._chart import INFRA, REPO, effective_values, load_yaml_documents

DOCS = REPO / "docs" / "deploy.md"


def text() -> str:
    return DOCS.read_text(encoding="utf-8")


def test_every_infra_path_in_the_guide_exists() -> None:
    paths = set(re.findall(r"infra/[\w./-]*\w", text()))
    assert paths, "the guide names no infra files"
    missing = sorted(p for p in paths if not (REPO / p).exists())
    assert not missing, f"docs/deploy.md names files that do not exist: {missing}"


def test_guide_applies_every_manifest_it_ships() -> None:
    manifests = {
        str(p.relative_to(REPO))
        for folder in (INFRA / "kafka", INFRA / "dapr" / "kubernetes")
        for p in folder.glob("*.yaml")
    }
    applied = set(re.findall(r"-f (infra/\S+\.yaml)", text()))
    assert manifests <= applied, f"never applied in the guide: {sorted(manifests - applied)}"


def test_documented_dapr_run_matches_the_chart_and_the_local_component() -> None:
    match = re.search(r"^(DAPR_ENABLED=.*?)^```", text(), flags=re.MULTILINE | re.DOTALL)
    assert match, "no `dapr run` command in docs/deploy.md"
    words = shlex.split(match.group(1).replace("\\\n", " "))
    env = dict(w.split("=", 1) for w in words[: words.index("dapr")])
    args = words[words.index("dapr") + 2 : words.index("--")]
    options = dict(zip(args[::2], args[1::2], strict=True))
    app = words[words.index("--") + 1 :]

    values = effective_values("values.yaml")
    assert env["DAPR_ENABLED"] == "true"
    assert options["--app-id"] == values["dapr"]["appId"]
    assert options["--app-port"] == str(values["api"]["port"]) == app[app.index("--port") + 1]
    assert options["--dapr-http-port"] == values["env"]["DAPR_HTTP_PORT"]
    assert app[:2] == ["pakaura", "serve"]
    resources = REPO / options["--resources-path"]
    names = {
        doc["metadata"]["name"] for p in resources.glob("*.yaml") for doc in load_yaml_documents(p)
    }
    assert env["DAPR_PUBSUB_NAME"] in names


def test_guide_reads_events_from_each_topic() -> None:
    topics = {
        effective_values("values-local.yaml")["env"][t]
        for t in ("TOPIC_TASK_EVENTS", "TOPIC_TASK_UPDATES", "TOPIC_REMINDERS")
    }
    body = text()
    assert "kafka-console-consumer.sh" in body
    for topic in topics:
        assert topic in body
