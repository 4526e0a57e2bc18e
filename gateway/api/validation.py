"""Checks on what a FHIR client writes: body format, JSON shape, and the resource
itself against the R4 models (``fhir.resources``' R4B classes, wire-compatible with
R4 for every type the gateway serves).

Only API writes come through here.  HL7 v2 ingest builds its resources from
mappings that are themselves tested for validity, and validating every ingested
message would cost more than the rest of the hot path together.

Two layers, because ``fhir.resources`` checks structure and datatypes but not
required value-set bindings: after the model accepts a resource, every ``code``
element whose binding is required (the model lists its codes as ``enum_values``)
is checked too — an Appointment with status ``arrived-ish`` is a 422, not a write.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Iterator

import orjson
import pydantic
from fhir.resources.R4B import get_fhir_model_class

from gateway.api.errors import FhirError

JSON_TYPES = ("application/fhir+json", "application/json", "application/json+fhir")
_ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
MAX_ISSUES = 50


def check_content_type(content_type: str | None) -> None:
    """415 unless the body is JSON (an absent Content-Type is read as JSON)."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if not media or media in JSON_TYPES:
        return
    if "xml" in media:
        raise FhirError(415, f"Content-Type '{media}': XML is not supported; send application/fhir+json",
                        code="not-supported")
    raise FhirError(415, f"Content-Type '{media}' is not supported; send application/fhir+json",
                    code="not-supported")


def parse_json_object(body: bytes, *, what: str = "the body") -> dict[str, Any]:
    """The body as a JSON object, or 400."""
    if not body or not body.strip():
        raise FhirError(400, f"{what} is empty; a FHIR resource (JSON) was expected", code="invalid")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise FhirError(400, f"{what} is not valid JSON: {exc}", code="structure") from None
    if not isinstance(value, dict):
        raise FhirError(400, f"{what} must be a JSON object (a FHIR resource), not {type(value).__name__}",
                        code="structure")
    return value


def check_resource_type(resource: dict[str, Any], expected: str) -> None:
    actual = resource.get("resourceType")
    if actual != expected:
        raise FhirError(400, f"resourceType is {actual!r}, but this endpoint takes {expected}",
                        code="invalid", expression=[f"{expected}.resourceType"] if actual else None)


def check_id(res_id: str) -> None:
    if not _ID_RE.match(res_id):
        raise FhirError(400, f"'{res_id}' is not a valid FHIR id (1-64 of A-Z a-z 0-9 - .)", code="invalid")


def validate_resource(resource_type: str, resource: dict[str, Any]) -> None:
    """422 with one issue per problem, each naming the element (FHIRPath-ish)."""
    issues = list(_problems(resource_type, resource))
    if issues:
        summary = issues[0]["diagnostics"] if len(issues) == 1 else \
            f"{len(issues)} problems, the first: {issues[0]['diagnostics']}"
        raise FhirError(422, f"{resource_type} is not valid: {summary}", issues=issues[:MAX_ISSUES])


def _issue(expression: str, diagnostics: str, code: str = "invalid") -> dict[str, Any]:
    return {"severity": "error", "code": code, "diagnostics": diagnostics, "expression": [expression]}


@lru_cache(maxsize=None)
def _model(resource_type: str) -> type[pydantic.BaseModel]:
    return get_fhir_model_class(resource_type)


def _problems(resource_type: str, resource: dict[str, Any]) -> Iterator[dict[str, Any]]:
    try:
        model = _model(resource_type).model_validate(resource)
    except pydantic.ValidationError as exc:
        for error in exc.errors():
            message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
            yield _issue(fhirpath(resource_type, error.get("loc", ())), message,
                         "required" if "required" in str(error.get("type", "")) else "invalid")
        return
    except Exception as exc:  # e.g. a contained resource of an unknown type
        yield _issue(resource_type, f"could not be read as a {resource_type}: {type(exc).__name__} {exc}",
                     "structure")
        return
    yield from _binding_problems(model, resource_type)


def fhirpath(root: str, loc: tuple[Any, ...] | list[Any]) -> str:
    """pydantic's error location as a FHIRPath-like expression:
    ('participant', 0, 'status') -> Appointment.participant[0].status."""
    path = root
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif isinstance(part, str) and part.replace("_", "").isalnum():
            path += f".{part}"
    return path


@lru_cache(maxsize=None)
def _binding_plan(model: type[pydantic.BaseModel]) -> tuple[tuple[str, str, Any], ...]:
    """(attribute, JSON name, required codes or None) per field of a model class: read from
    the class once, not per element of every resource validated (a bulk import's hot path)."""
    plan = []
    for name, field in model.model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        allowed = extra.get("enum_values")
        plan.append((name, field.alias or name, allowed if allowed and "+" not in allowed else None))
    return tuple(plan)  # '+' marks an extensible list: not checked


def _binding_problems(node: pydantic.BaseModel, path: str) -> Iterator[dict[str, Any]]:
    """Walk the validated model; every code with a required binding must be one of its codes."""
    for name, key, allowed in _binding_plan(type(node)):
        value = getattr(node, name, None)
        if value is None:
            continue
        if allowed:
            values = value if isinstance(value, list) else [value]
            for index, code in enumerate(values):
                if isinstance(code, str) and code not in allowed:
                    where = f"{path}.{key}" + (f"[{index}]" if isinstance(value, list) else "")
                    yield _issue(where, f"'{code}' is not a valid code here; expected one of: "
                                        f"{', '.join(allowed)}", "code-invalid")
            continue
        if isinstance(value, pydantic.BaseModel):
            yield from _binding_problems(value, f"{path}.{key}")
        elif isinstance(value, list):
            for index, item in enumerate(value):
                if isinstance(item, pydantic.BaseModel):
                    yield from _binding_problems(item, f"{path}.{key}[{index}]")
