"""Checks that an event on the wire conforms to CloudEvents 1.0 and to our contract (§2).

`assert_conforms(raw)` parses the event with the official `cloudevents` SDK (2.x,
`cloudevents.core`), checks the attributes the SDK would silently invent when missing (`id`,
`time`, `specversion`), and validates `data` against the JSON Schema of its pydantic model with
RFC 3339 date-time checking. Returns the parsed JSON object.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

import jsonschema
from cloudevents.core.formats.json import JSONFormat
from src.events.schemas import EVENT_TYPES, data_model_for

__all__ = ["FORMAT_CHECKER", "assert_conforms", "validate_data"]

_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$", re.IGNORECASE
)
FORMAT_CHECKER = jsonschema.FormatChecker()


@FORMAT_CHECKER.checks("date-time", raises=ValueError)
def _is_rfc3339(value: object) -> bool:
    if not isinstance(value, str):
        return True
    if not _RFC3339.match(value):
        raise ValueError(f"{value!r} is not an RFC 3339 date-time")
    datetime.fromisoformat(value.replace("Z", "+00:00"))
    return True


@FORMAT_CHECKER.checks("uuid", raises=ValueError)
def _is_uuid(value: object) -> bool:
    import uuid

    if isinstance(value, str):
        uuid.UUID(value)
    return True


_SCHEMAS: dict[str, dict[str, Any]] = {}


def validate_data(event_type: str, data: Any) -> None:
    """Validates `data` against the serialization JSON Schema of the type's pydantic model."""
    schema = _SCHEMAS.get(event_type)
    if schema is None:
        schema = data_model_for(event_type).model_json_schema(mode="serialization")
        _SCHEMAS[event_type] = schema
    jsonschema.Draft202012Validator(schema, format_checker=FORMAT_CHECKER).validate(data)


def assert_conforms(raw: bytes | str | dict[str, Any]) -> dict[str, Any]:
    text = raw if isinstance(raw, str | bytes) else json.dumps(raw)
    obj = json.loads(text)
    assert isinstance(obj, dict), "a structured-mode CloudEvent is a JSON object"
    # The SDK invents these when missing, so check them on the raw JSON.
    for name in ("id", "specversion", "time", "source", "type", "subject", "partitionkey"):
        assert isinstance(obj.get(name), str) and obj[name], f"attribute {name} missing or empty"
    assert None not in obj.values(), f"null attributes: {[k for k, v in obj.items() if v is None]}"
    assert obj["specversion"] == "1.0"
    assert obj["type"] in EVENT_TYPES, obj["type"]
    assert obj["time"].endswith("Z"), "time must be UTC"
    _is_rfc3339(obj["time"])
    assert obj.get("datacontenttype") == "application/json"
    assert isinstance(obj.get("data"), dict), "data must be a JSON object, not a string"
    for name in obj:
        assert re.fullmatch(r"[a-z0-9]{1,20}", name), f"bad attribute name {name!r}"

    event = JSONFormat().read(None, text)
    assert event.get_id() == obj["id"]
    assert event.get_source() == obj["source"]
    assert event.get_type() == obj["type"]
    assert event.get_subject() == obj["subject"]
    assert event.get_time() == datetime.fromisoformat(obj["time"].replace("Z", "+00:00"))
    assert event.get_extension("partitionkey") == obj["partitionkey"]
    assert event.get_data() == obj["data"]

    data = obj["data"]
    validate_data(obj["type"], data)
    assert obj["subject"] == obj["partitionkey"] == str(data["task_id"])
    assert data["timestamp"] == obj["time"]
    return obj
