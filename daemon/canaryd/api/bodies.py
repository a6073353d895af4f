"""Request bodies checked against the schemas the OpenAPI document publishes (``api.schemas``).

The check is ``jsonschema`` on the very schema the document carries, so a body the document
accepts is a body the handler accepts, and the other way round; the only code here is the
choice of the one refusal to report and its words. A refusal is a 422 naming the field,
``image: expected a non-empty string of at most 1024 characters``, in the order a person fixes
things: the body's shape first, then unknown fields, then each field in the schema's order,
and within a field its general expectation before a finer rule (``x-message`` says each).

Two readings follow the JSON Schema specification rather than Python's types: ``2.0`` is the
integer 2 (handlers get an ``int``), and ``null`` for an optional field is the same as leaving
it out (for a required one it is "is required").
"""

from __future__ import annotations

import functools
from typing import Any

import jsonschema  # type: ignore[import-untyped]  # no stubs are installed with it

from canaryd.api.edge import ApiError, invalid
from canaryd.api.schemas import IMAGE_FORMAT, schemas
from canaryd.api.webhook import UNSAFE


def _image(value: object) -> bool:
    """An image reference: no whitespace and nothing unprintable (``str.isprintable``)."""
    if not isinstance(value, str):
        return True
    return not any(c.isspace() or not c.isprintable() for c in value)


FORMATS = jsonschema.FormatChecker(formats=())
FORMATS.checks(IMAGE_FORMAT)(_image)  # the formats the request schemas use beyond the standard


@functools.cache
def _validator(name: str) -> Any:
    schema = schemas()[name]
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=FORMATS)


def check_body(name: str, body: Any) -> dict[str, Any]:
    """``body`` checked against the request schema ``name``; ``ApiError(422)`` naming the field
    otherwise. Integral floats of integer fields become ints; null fields are dropped."""
    schema = schemas()[name]
    if not isinstance(body, dict):
        raise ApiError(422, "invalid", "body: expected a JSON object")
    fields: dict[str, Any] = schema["properties"]
    unknown = sorted(set(body) - set(fields))
    if unknown:
        allowed = ", ".join(sorted(fields)) or "none"
        shown = unknown[0] if not UNSAFE.search(unknown[0]) else ascii(unknown[0])
        raise ApiError(422, "invalid", f"{shown[:100]}: unknown field (allowed: {allowed})")
    errors = list(_validator(name).iter_errors(body))
    if errors:
        raise _refusal(errors, list(fields), schema.get("required", []), body)
    return {k: _plain(v, fields[k]) for k, v in body.items() if v is not None}


def _refusal(
    errors: list[Any], order: list[str], required: list[str], body: dict[str, Any]
) -> ApiError:
    """The first problem (of jsonschema's ``ValidationError``s) in reading order, as a 422
    naming its field."""
    for field in order:
        if field in required and body.get(field) is None:
            return invalid(field, "is required")
        mine = [e for e in errors if e.absolute_path and e.absolute_path[0] == field]
        if mine:
            first = min(mine, key=lambda e: len(e.absolute_schema_path))
            message = first.schema.get("x-message") if isinstance(first.schema, dict) else None
            return invalid(field, str(message or first.message))
    return ApiError(422, "invalid", f"body: {errors[0].message}")  # pragma: no cover


def _plain(value: Any, schema: dict[str, Any]) -> Any:
    """An integer field's value as an ``int`` (JSON's ``2.0`` is the integer 2)."""
    kinds = schema.get("type")
    if isinstance(value, float) and (kinds == "integer" or "integer" in (kinds or ())):
        return int(value)
    return value
