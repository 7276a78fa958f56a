"""Input validation against a model's cog schema, as Replicate does it.

Errors come back the way Replicate words them (gojsonschema-style ``type`` names:
``required``, ``enum``, ``number_lte``, ``number_gte``, ``invalid_type``,
``additional_property_not_allowed``, ``format``), one ``InvalidField`` per problem.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from repligate.errors import InvalidField, InvalidInput
from repligate.fetch import check_reference
from repligate.models.spec import ModelSpec

# torch seeds and most integer inputs end up as 64-bit integers.
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1


@lru_cache(maxsize=32)
def _validator(spec: ModelSpec) -> Draft202012Validator:
    schemas = json.loads(json.dumps(spec.schemas))  # a private copy to tighten
    schemas["Input"]["additionalProperties"] = False
    root = {"$ref": "#/components/schemas/Input", "components": {"schemas": schemas}}
    return Draft202012Validator(root)


def _describe(error: ValidationError) -> InvalidField:
    path = ".".join(str(p) for p in error.absolute_path)
    field = f"input.{path}" if path else "input"
    kind = error.validator
    if kind == "required":
        missing = error.message.split("'")[1]
        return InvalidField("required", "input", f"{missing} is required")
    if kind == "additionalProperties":
        extras = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        return InvalidField(
            "additional_property_not_allowed",
            "input",
            f"Additional property {', '.join(extras)} is not allowed",
        )
    if kind == "enum":
        choices = ", ".join(json.dumps(c) for c in error.validator_value)
        return InvalidField("enum", field, f"{path} must be one of the following: {choices}")
    if kind == "maximum":
        return InvalidField(
            "number_lte", field, f"Must be less than or equal to {error.validator_value}"
        )
    if kind == "minimum":
        return InvalidField(
            "number_gte", field, f"Must be greater than or equal to {error.validator_value}"
        )
    if kind == "type":
        return InvalidField(
            "invalid_type",
            field,
            f"Invalid type. Expected: {error.validator_value}, given: {_json_type(error.instance)}",
        )
    return InvalidField(str(kind), field, error.message)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _extra_checks(spec: ModelSpec, values: dict[str, Any]) -> list[InvalidField]:
    """What JSON Schema does not say but the runners need: finite numbers, integers that
    fit in 64 bits, file inputs that are URLs or data URIs."""
    problems = []
    properties = spec.schemas["Input"]["properties"]
    for name, value in values.items():
        prop = properties.get(name, {})
        field = f"input.{name}"
        if isinstance(value, float) and not math.isfinite(value):
            problems.append(InvalidField("invalid_type", field, "Must be a finite number"))
        elif isinstance(value, int) and not isinstance(value, bool):
            if not _INT_MIN <= value <= _INT_MAX:
                problems.append(InvalidField("number_lte", field, "Must fit in a 64-bit integer"))
        elif prop.get("format") == "uri" and isinstance(value, str) and value != "":
            # Only what is wrong whatever the operator set (scheme, malformed URL or data
            # URI); addresses and sizes depend on settings and are judged at fetch time.
            reason = check_reference(value)
            if reason is not None:
                problems.append(InvalidField("format", field, reason))
    return problems


def validate(spec: ModelSpec, raw: Any) -> dict[str, Any]:
    """Check ``raw`` against the model's Input schema; return it with defaults filled in."""
    if not isinstance(raw, dict):
        raise InvalidInput(
            [InvalidField("invalid_type", "input", "Invalid type. Expected: object")]
        )
    errors = sorted(_validator(spec).iter_errors(raw), key=lambda e: list(e.absolute_path))
    problems = [_describe(e) for e in errors]
    # Every bad field is reported at once: the extra checks cover the fields the schema
    # found nothing wrong with.
    already = {p.field for p in problems}
    problems += [p for p in _extra_checks(spec, raw) if p.field not in already]
    if problems:
        raise InvalidInput(problems)
    filled = dict(raw)
    for name, prop in spec.schemas["Input"]["properties"].items():
        if name not in filled and "default" in prop:
            filled[name] = prop["default"]
    # The model's own checks see the defaults too (an unset width is its default's width).
    if spec.check_input is not None and (problems := spec.check_input(filled)):
        raise InvalidInput(problems)
    return filled
