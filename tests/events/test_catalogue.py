"""The published catalogue: docs/asyncapi.yaml is current and docs/events.md examples conform."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from src.config import Settings
from src.events.asyncapi import build_document, example_event, generate
from src.events.schemas import EVENT_TYPES, TOPIC_SETTING_FOR_TYPE

from tests.support.cloudevents_conformance import FORMAT_CHECKER, assert_conforms

DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DOCS / "asyncapi.yaml").read_text(encoding="utf-8"))
    return loaded


def test_committed_asyncapi_is_current() -> None:
    committed = (DOCS / "asyncapi.yaml").read_text(encoding="utf-8")
    assert committed == generate(), (
        "docs/asyncapi.yaml is stale: run `python -m src.events.asyncapi > docs/asyncapi.yaml`"
    )


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in refs(value)]
    return []


def resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def test_asyncapi_structure(document: dict[str, Any]) -> None:
    assert document["asyncapi"] == "3.0.0"
    assert document["defaultContentType"] == "application/cloudevents+json"
    for ref in refs(document):
        resolve(document, ref)  # every reference points somewhere
    addresses = {c["address"] for c in document["channels"].values()}
    assert addresses == {"task-events", "task-updates", "reminders"}
    names = {m["name"] for m in document["components"]["messages"].values()}
    assert names == set(EVENT_TYPES)
    for operation in document["operations"].values():
        assert operation["action"] == "send"
        channel = resolve(document, operation["channel"]["$ref"])
        for message_ref in operation["messages"]:
            message = resolve(document, resolve(document, message_ref["$ref"])["$ref"])
            setting = TOPIC_SETTING_FOR_TYPE[message["name"]]
            assert channel["address"] == getattr(Settings.model_construct(), setting)


def payload_validator(document: dict[str, Any], message: dict[str, Any]) -> Any:
    schema = {"$ref": message["payload"]["$ref"], "components": document["components"]}
    return jsonschema.Draft202012Validator(schema, format_checker=FORMAT_CHECKER)


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_each_message_example_conforms_to_its_payload_schema(
    document: dict[str, Any], event_type: str
) -> None:
    (message,) = [m for m in document["components"]["messages"].values() if m["name"] == event_type]
    (example,) = message["examples"]
    payload = example["payload"]
    assert_conforms(payload)
    validator = payload_validator(document, message)
    validator.validate(payload)
    # The payload schema is specific: the wrong type, a null attribute or a string `data` fail.
    other = next(t for t in EVENT_TYPES if t != event_type)
    for broken in (
        {**payload, "type": other},
        {**payload, "subject": None},
        {**payload, "data": json.dumps(payload["data"])},
        {k: v for k, v in payload.items() if k != "partitionkey"},
    ):
        assert not validator.is_valid(broken)


def test_topic_names_follow_settings() -> None:
    custom = Settings(topic_task_events="a", topic_task_updates="b", topic_reminders="c")
    doc = build_document(custom)
    assert {c["address"] for c in doc["channels"].values()} == {"a", "b", "c"}


def test_events_md_has_one_conforming_example_per_type() -> None:
    text = (DOCS / "events.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```json\n(.*?)\n```", text, flags=re.DOTALL)
    examples = [json.loads(block) for block in blocks]
    assert sorted(e["type"] for e in examples) == sorted(EVENT_TYPES)
    for example in examples:
        assert_conforms(example)
        # The page shows what the code builds today.
        assert example == example_event(example["type"]).to_dict()


def test_events_md_states_the_delivery_contract() -> None:
    text = (DOCS / "events.md").read_text(encoding="utf-8")
    for phrase in (
        "At-least-once",
        "De-duplicate on `source` + `id`",
        "Per-task order per topic",
        "metadata.partitionKey",
        "/v1.0/healthz/outbound",
    ):
        assert phrase in text
    for event_type in EVENT_TYPES:
        assert f"`{event_type}`" in text
